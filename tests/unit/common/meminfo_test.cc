#include "common/meminfo.h"

#include <unistd.h>

#include <filesystem>
#include <string>
#include <vector>

#include "common/cgroup.h"
#include "gtest/gtest.h"

namespace spanserve {
namespace {

TEST(MemInfoTest, AvailableMemoryIsPositiveAndAtMostMemAvailableAndThePhysicalMemory) {
  const std::optional<int64_t> mem = MemAvailableBytes();
  ASSERT_TRUE(mem.has_value());  // Linux always has it
  const int64_t physical = static_cast<int64_t>(sysconf(_SC_PHYS_PAGES)) * sysconf(_SC_PAGESIZE);
  EXPECT_GT(*mem, 0);
  EXPECT_LE(*mem, physical);
  const std::optional<int64_t> available = AvailableMemoryBytes();
  ASSERT_TRUE(available.has_value());
  EXPECT_LE(*available, *mem);
  if (const std::optional<int64_t> group = CgroupMemoryHeadroomBytes(); group.has_value()) {
    EXPECT_GE(*group, 0);
    EXPECT_LE(*available, *group);
  }
}

// Every directory listed is under /sys/fs/cgroup, and the first (the process's own group in
// the first hierarchy /proc/self/cgroup names for the controller) exists.
TEST(CgroupTest, DirsRunFromTheProcesssGroupUpward) {
  for (const char* controller : {"cpu", "memory"}) {
    const std::vector<std::string> dirs = CgroupDirs(controller);
    for (const std::string& dir : dirs) EXPECT_EQ(dir.rfind("/sys/fs/cgroup", 0), 0u) << dir;
    if (!dirs.empty()) {
      EXPECT_TRUE(std::filesystem::is_directory(dirs.front())) << dirs.front();
    }
  }
  EXPECT_EQ(ReadCgroupNumber("/nonexistent/cpu.max"), std::nullopt);
}

}  // namespace
}  // namespace spanserve
