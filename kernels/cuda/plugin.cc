// The entry points of libspanserve_cuda.so, the CUDA backend plugin (DESIGN.md §3). The
// server, CLI and benchmarks dlopen it for --device cuda (kernels/backend.cc); it is built
// from the same sources as they are, and refuses a caller built from other headers.
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"

extern "C" {

__attribute__((visibility("default"))) const char* spanserve_backend_plugin_abi() {
  return SPANSERVE_BACKEND_ABI;
}

__attribute__((visibility("default"))) void spanserve_create_cuda_backend(
    const spanserve::kernels::BackendOptions* options,
    absl::StatusOr<std::unique_ptr<spanserve::kernels::Backend>>* out) {
  *out = spanserve::kernels::cuda::CreateCudaBackend(*options);
}

}  // extern "C"
