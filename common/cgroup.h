// Where this process's cgroup files are, for the limits a container sets (CPU quota,
// memory limit): common/thread_pool.cc and common/meminfo.cc read them.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace spanserve {

// The directories holding this process's cgroup files for `controller` ("cpu", "memory"):
// its group and every ancestor up to the root (a limit anywhere above applies), under the
// cgroup v2 mount and under the v1 mount of `controller` where the process has one.
std::vector<std::string> CgroupDirs(std::string_view controller);

// The index-th whitespace-separated word of file `path` as a number; nullopt if the file or
// the word is missing or not a number (cpu.max's and memory.max's "max": no limit).
std::optional<double> ReadCgroupNumber(const std::string& path, int index = 0);

}  // namespace spanserve
