// How much memory this process can still take: the kernel's MemAvailable and, inside a
// container, its cgroup's memory limit less what the group uses.
#pragma once

#include <cstdint>
#include <optional>

namespace spanserve {

// MemAvailable from /proc/meminfo, in bytes; nullopt if it cannot be read.
std::optional<int64_t> MemAvailableBytes();

// The tightest memory.max − memory.current (cgroup v2) or limit_in_bytes − usage_in_bytes
// (v1) of this process's cgroup and its ancestors, in bytes (at least 0); nullopt without a
// limit.
std::optional<int64_t> CgroupMemoryHeadroomBytes();

// The smaller of the two that exist; nullopt if neither does.
std::optional<int64_t> AvailableMemoryBytes();

}  // namespace spanserve
