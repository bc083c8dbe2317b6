#include "common/meminfo.h"

#include <unistd.h>

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

}  // namespace
}  // namespace spanserve
