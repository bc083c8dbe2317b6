// Every kernel test runs its kernels on a pool of three threads, more than CI's two cores:
// the work splits unevenly, as it does on machines whose core count does not divide the
// shapes. Tests that compare thread counts install their own pools on top.
#include <memory>

#include "common/thread_pool.h"
#include "gtest/gtest.h"

namespace spanserve::kernels::cpu::testing {
namespace {

class KernelThreads : public ::testing::Environment {
 public:
  void SetUp() override {
    pool_ = std::make_unique<ThreadPool>(3);
    use_ = std::make_unique<UsePool>(pool_.get());
  }
  void TearDown() override {
    use_.reset();
    pool_.reset();
  }

 private:
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<UsePool> use_;
};

[[maybe_unused]] const ::testing::Environment* const kKernelThreads =
    ::testing::AddGlobalTestEnvironment(new KernelThreads);

}  // namespace
}  // namespace spanserve::kernels::cpu::testing
