#include "kernels/backend.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
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

namespace {

constexpr char kCudaPlugin[] = "libspanserve_cuda.so";

using AbiFn = const char* (*)();
using CreateFn = void (*)(const BackendOptions*, absl::StatusOr<std::unique_ptr<Backend>>*);

std::string ExecutableDir() {
  std::string path(4096, '\0');
  const ssize_t n = readlink("/proc/self/exe", path.data(), path.size());
  if (n <= 0) return "";
  path.resize(static_cast<size_t>(n));
  const size_t slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

// The plugin's handle, opened once per process (the library stays loaded: backends made
// from it may live until exit).
struct Plugin {
  void* handle = nullptr;
  absl::Status status;
};

Plugin OpenCudaPlugin() {
  std::vector<std::string> candidates;
  if (const char* env = std::getenv("SPANSERVE_CUDA_PLUGIN"); env != nullptr && *env != '\0') {
    candidates.push_back(env);
  } else {
    if (const std::string dir = ExecutableDir(); !dir.empty()) {
      candidates.push_back(absl::StrCat(dir, "/", kCudaPlugin));
      candidates.push_back(absl::StrCat(dir, "/../lib/", kCudaPlugin));
    }
#ifdef SPANSERVE_CUDA_PLUGIN_BUILD_DIR
    candidates.push_back(absl::StrCat(SPANSERVE_CUDA_PLUGIN_BUILD_DIR, "/", kCudaPlugin));
#endif
    candidates.push_back(kCudaPlugin);  // the dynamic linker's search path
  }
  std::vector<std::string> missing;
  for (const std::string& path : candidates) {
    const bool has_dir = path.find('/') != std::string::npos;
    if (has_dir && access(path.c_str(), F_OK) != 0) {
      missing.push_back(path);
      continue;
    }
    dlerror();
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (handle == nullptr) {
      const char* why = dlerror();
      const std::string reason = why != nullptr ? why : "unknown error";
      if (!has_dir && reason.find(kCudaPlugin) != std::string::npos &&
          reason.find("No such file") != std::string::npos) {
        missing.push_back(absl::StrCat(path, " (the library search path)"));
        continue;
      }
      return {nullptr, absl::FailedPreconditionError(absl::StrCat(
                           "the CUDA backend plugin ", path, " could not be loaded: ", reason,
                           " (it needs the CUDA runtime and cuBLAS libraries on the library "
                           "path and the NVIDIA driver's libcuda)"))};
    }
    auto abi = reinterpret_cast<AbiFn>(dlsym(handle, "spanserve_backend_plugin_abi"));
    if (abi == nullptr || std::string_view(abi()) != SPANSERVE_BACKEND_ABI) {
      dlclose(handle);
      return {nullptr, absl::FailedPreconditionError(absl::StrCat(
                           "the CUDA backend plugin ", path,
                           " was built from other SpanServe sources than this program (backend "
                           "ABI ",
                           abi != nullptr ? abi() : "unknown", ", want ", SPANSERVE_BACKEND_ABI,
                           "); rebuild both together"))};
    }
    return {handle, absl::OkStatus()};
  }
  if (const char* env = std::getenv("SPANSERVE_CUDA_PLUGIN"); env != nullptr && *env != '\0') {
    return {nullptr,
            absl::FailedPreconditionError(absl::StrCat(
                "the CUDA backend plugin SPANSERVE_CUDA_PLUGIN names, ", env, ", does not exist"))};
  }
  return {nullptr, absl::FailedPreconditionError(
                       absl::StrCat("this build has no CUDA backend: its plugin ", kCudaPlugin,
                                    " was not found (looked for ", absl::StrJoin(missing, ", "),
                                    "); it is built where nvcc is found at configure time, or set "
                                    "SPANSERVE_CUDA_PLUGIN to its path"))};
}

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  static const Plugin* plugin = new Plugin(OpenCudaPlugin());
  if (!plugin->status.ok()) return plugin->status;
  auto create = reinterpret_cast<CreateFn>(dlsym(plugin->handle, "spanserve_create_cuda_backend"));
  if (create == nullptr) {
    return absl::FailedPreconditionError(
        "the CUDA backend plugin lacks its entry point spanserve_create_cuda_backend");
  }
  absl::StatusOr<std::unique_ptr<Backend>> backend;
  create(&options, &backend);
  return backend;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device,
                                                       const BackendOptions& options) {
  switch (device) {
    case Device::kCpu:
      return cpu::CreateCpuBackend(options);
    case Device::kCuda:
      return CreateCudaBackend(options);
  }
  return absl::InvalidArgumentError("unknown device");
}

absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device,
                                                       const BackendOptions& options) {
  if (device == "cpu") return CreateBackend(Device::kCpu, options);
  if (device == "cuda") return CreateBackend(Device::kCuda, options);
  if (device == "auto") {
    absl::StatusOr<std::unique_ptr<Backend>> cuda = CreateBackend(Device::kCuda, options);
    if (cuda.ok()) return cuda;
    return CreateBackend(Device::kCpu, options);
  }
  return absl::InvalidArgumentError(
      absl::StrCat("device must be cpu, cuda or auto, got \"", std::string(device), "\""));
}

}  // namespace spanserve::kernels
