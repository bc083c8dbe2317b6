#include "common/meminfo.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace spanserve {
namespace {

std::optional<int64_t> ReadNumber(const std::string& path) {
  std::ifstream in(path);
  std::string word;
  if (!(in >> word) || word == "max") return std::nullopt;
  try {
    return std::stoll(word);
  } catch (...) {
    return std::nullopt;
  }
}

}  // namespace

std::optional<int64_t> MemAvailableBytes() {
  std::ifstream in("/proc/meminfo");
  std::string key;
  int64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "MemAvailable:") return kib * 1024;
  }
  return std::nullopt;
}

std::optional<int64_t> CgroupMemoryHeadroomBytes() {
  std::optional<int64_t> headroom;
  auto take = [&headroom](std::optional<int64_t> limit, std::optional<int64_t> used) {
    // v1 reports "no limit" as a huge number; anything past 2^62 is none.
    if (!limit.has_value() || *limit >= (int64_t{1} << 62)) return;
    const int64_t room = std::max<int64_t>(0, *limit - used.value_or(0));
    headroom = headroom.has_value() ? std::min(*headroom, room) : room;
  };
  std::ifstream self("/proc/self/cgroup");
  std::string line;
  while (std::getline(self, line)) {
    if (line.rfind("0::", 0) == 0) {  // v2: from the process's group up to the root
      std::string path = line.substr(3);
      while (true) {
        const std::string dir = "/sys/fs/cgroup" + (path == "/" ? std::string() : path);
        take(ReadNumber(dir + "/memory.max"), ReadNumber(dir + "/memory.current"));
        if (path.empty() || path == "/") break;
        path = path.substr(0, path.rfind('/'));
      }
    } else if (line.find(":memory:") != std::string::npos) {  // v1: the mounted group
      take(ReadNumber("/sys/fs/cgroup/memory/memory.limit_in_bytes"),
           ReadNumber("/sys/fs/cgroup/memory/memory.usage_in_bytes"));
    }
  }
  return headroom;
}

std::optional<int64_t> AvailableMemoryBytes() {
  const std::optional<int64_t> mem = MemAvailableBytes();
  const std::optional<int64_t> group = CgroupMemoryHeadroomBytes();
  if (mem.has_value() && group.has_value()) return std::min(*mem, *group);
  return mem.has_value() ? mem : group;
}

}  // namespace spanserve
