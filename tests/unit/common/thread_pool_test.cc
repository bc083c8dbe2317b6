#include "common/thread_pool.h"

#include <sched.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace spanserve {
namespace {

TEST(ThreadPoolTest, RunsEveryPartOnce) {
  ThreadPool pool(4);
  EXPECT_EQ(pool.threads(), 4);
  for (int job = 0; job < 1000; ++job) {
    std::vector<std::atomic<int>> runs(4);
    pool.Run([&](int64_t t, int64_t n) {
      ASSERT_EQ(n, 4);
      runs[t].fetch_add(1);
    });
    for (auto& r : runs) ASSERT_EQ(r.load(), 1) << "job " << job;
  }
}

// Parts are claimed, not assigned: when the workers are asleep (a pause longer than the spin
// before each job), waking them takes longer than these parts do, and the caller runs parts
// that would otherwise have waited for a worker. With parts assigned per thread the caller
// ran exactly one part of every job.
TEST(ThreadPoolTest, TheCallerTakesThePartsOfWorkersNotYetRunning) {
  ThreadPool pool(3);
  int jobs_run_by_the_caller_alone = 0;
  for (int job = 0; job < 20; ++job) {
    std::this_thread::sleep_for(std::chrono::microseconds(3 * ThreadPool::kSpinMicros));
    std::atomic<int> by_caller{0};
    const std::thread::id caller = std::this_thread::get_id();
    pool.Run([&](int64_t, int64_t) {
      if (std::this_thread::get_id() == caller) by_caller.fetch_add(1);
    });
    if (by_caller.load() == 3) ++jobs_run_by_the_caller_alone;
  }
  EXPECT_GT(jobs_run_by_the_caller_alone, 0);
}

// Workers that went to sleep between jobs (a pause longer than the spin) wake for the next.
TEST(ThreadPoolTest, SleepingWorkersWakeForTheNextJob) {
  ThreadPool pool(3);
  for (int job = 0; job < 20; ++job) {
    std::this_thread::sleep_for(std::chrono::microseconds(3 * ThreadPool::kSpinMicros));
    std::atomic<int> parts{0};
    pool.Run([&](int64_t t, int64_t) {
      // A slow part: the caller gives up spinning and sleeps until the last one ends.
      if (t == 2)
        std::this_thread::sleep_for(std::chrono::microseconds(2 * ThreadPool::kSpinMicros));
      parts.fetch_add(1);
    });
    ASSERT_EQ(parts.load(), 3);
  }
}

TEST(ThreadPoolTest, ARunInsideAJobRunsOnItsThreadAlone) {
  ThreadPool pool(3);
  std::atomic<int> inner{0};
  pool.Run([&](int64_t, int64_t) {
    pool.Run([&](int64_t t, int64_t n) {
      EXPECT_EQ(t, 0);
      EXPECT_EQ(n, 1);
      inner.fetch_add(1);
    });
  });
  EXPECT_EQ(inner.load(), 3);
}

// Two engines stepping at once take turns on one pool; every job completes whole.
TEST(ThreadPoolTest, CallersOnSeveralThreadsTakeTurns) {
  ThreadPool pool(3);
  std::atomic<int64_t> total{0};
  std::vector<std::thread> callers;
  for (int c = 0; c < 4; ++c) {
    callers.emplace_back([&] {
      for (int job = 0; job < 500; ++job) {
        std::atomic<int> parts{0};
        pool.Run([&](int64_t, int64_t) { parts.fetch_add(1); });
        EXPECT_EQ(parts.load(), 3);
        total.fetch_add(parts.load());
      }
    });
  }
  for (auto& c : callers) c.join();
  EXPECT_EQ(total.load(), 4 * 500 * 3);
}

TEST(ThreadPoolTest, OneThreadRunsOnTheCaller) {
  ThreadPool pool(1);
  int parts = 0;
  pool.Run([&](int64_t t, int64_t n) {
    EXPECT_EQ(t, 0);
    EXPECT_EQ(n, 1);
    ++parts;
  });
  EXPECT_EQ(parts, 1);
}

TEST(ParallelForTest, CoversTheRangeOnceInContiguousPieces) {
  ThreadPool pool(3);
  UsePool use(&pool);
  EXPECT_EQ(ParallelThreads(), 3);
  for (int64_t n : {0, 1, 2, 3, 7, 100, 1001}) {
    std::vector<std::atomic<int>> hits(n);
    std::atomic<int> pieces{0};
    ParallelFor(n, 2, [&](int64_t begin, int64_t end) {
      EXPECT_LT(begin, end);
      pieces.fetch_add(1);
      for (int64_t i = begin; i < end; ++i) hits[i].fetch_add(1);
    });
    for (int64_t i = 0; i < n; ++i) ASSERT_EQ(hits[i].load(), 1) << "n " << n << " i " << i;
    EXPECT_LE(pieces.load(), n < 2 ? 1 : 3);
  }
}

TEST(ParallelForTest, SmallWorkRunsInOnePiece) {
  ThreadPool pool(3);
  UsePool use(&pool);
  int pieces = 0;
  ParallelRows(/*rows=*/4, /*cols=*/10, /*min_elements=*/1000, [&](int64_t begin, int64_t end) {
    EXPECT_EQ(begin, 0);
    EXPECT_EQ(end, 4);
    ++pieces;
  });
  EXPECT_EQ(pieces, 1);
}

TEST(UsePoolTest, InstallsAndRestores) {
  EXPECT_EQ(CurrentPool(), nullptr);
  EXPECT_EQ(ParallelThreads(), 1);
  ThreadPool a(2);
  ThreadPool b(3);
  {
    UsePool use_a(&a);
    EXPECT_EQ(CurrentPool(), &a);
    {
      UsePool use_b(&b);
      EXPECT_EQ(CurrentPool(), &b);
      EXPECT_EQ(ParallelThreads(), 3);
    }
    EXPECT_EQ(CurrentPool(), &a);
    // Another thread has its own (none).
    std::thread([] { EXPECT_EQ(CurrentPool(), nullptr); }).join();
  }
  EXPECT_EQ(CurrentPool(), nullptr);
  int parts = 0;
  Parallel([&](int64_t, int64_t n) {
    EXPECT_EQ(n, 1);
    ++parts;
  });
  EXPECT_EQ(parts, 1);
}

TEST(SharedThreadPoolTest, OnePoolPerSizeWhileItIsHeld) {
  std::shared_ptr<ThreadPool> a = SharedThreadPool(2);
  std::shared_ptr<ThreadPool> b = SharedThreadPool(2);
  std::shared_ptr<ThreadPool> c = SharedThreadPool(3);
  EXPECT_EQ(a.get(), b.get());
  EXPECT_NE(a.get(), c.get());
  EXPECT_EQ(c->threads(), 3);
}

TEST(AvailableCpusTest, IsTheAffinitySetAtMost) {
  cpu_set_t set;
  CPU_ZERO(&set);
  ASSERT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  EXPECT_GE(AvailableCpus(), 1);
  EXPECT_LE(AvailableCpus(), CPU_COUNT(&set));
}

}  // namespace
}  // namespace spanserve
