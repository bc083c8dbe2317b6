#include "kernels/backend.h"

#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/cpu_backend.h"

namespace spanserve::kernels {

std::string_view DeviceName(Device device) {
  switch (device) {
    case Device::kCpu:
      return "cpu";
    case Device::kCuda:
      return "cuda";
  }
  return "unknown";
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device,
                                                       const BackendOptions& options) {
  switch (device) {
    case Device::kCpu:
      return cpu::CreateCpuBackend(options);
    case Device::kCuda:
      break;
  }
  return absl::UnimplementedError(
      absl::StrCat("this build has no ", std::string(DeviceName(device)), " backend"));
}

}  // namespace spanserve::kernels
