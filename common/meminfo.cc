#include "common/meminfo.h"

#include <algorithm>
#include <fstream>
#include <string>

#include "common/cgroup.h"

namespace spanserve {

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
  for (const std::string& dir : CgroupDirs("memory")) {
    std::optional<double> limit = ReadCgroupNumber(dir + "/memory.max");  // v2
    std::optional<double> used = ReadCgroupNumber(dir + "/memory.current");
    if (!limit.has_value()) {  // v1, which reports "no limit" as a number past 2^62
      limit = ReadCgroupNumber(dir + "/memory.limit_in_bytes");
      used = ReadCgroupNumber(dir + "/memory.usage_in_bytes");
    }
    if (!limit.has_value() || *limit >= 0x1p62) continue;
    const int64_t room = std::max<int64_t>(0, static_cast<int64_t>(*limit - used.value_or(0)));
    headroom = headroom.has_value() ? std::min(*headroom, room) : room;
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
