#include "common/thread_pool.h"

#include <immintrin.h>
#include <linux/futex.h>
#include <sched.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <climits>
#include <cmath>
#include <map>
#include <string>

#include "common/cgroup.h"
#include "common/check.h"

namespace spanserve {
namespace {

thread_local ThreadPool* current_pool = nullptr;
thread_local bool in_job = false;  // this thread is running a part of some pool's job

// std::atomic<uint32_t> is a plain 32-bit word: the futex is its address.
uint32_t* Word(std::atomic<uint32_t>* a) { return reinterpret_cast<uint32_t*>(a); }
void FutexWait(std::atomic<uint32_t>* a, uint32_t expected) {
  syscall(SYS_futex, Word(a), FUTEX_WAIT_PRIVATE, expected, nullptr, nullptr, 0);
}
void FutexWake(std::atomic<uint32_t>* a, int count) {
  syscall(SYS_futex, Word(a), FUTEX_WAKE_PRIVATE, count, nullptr, nullptr, 0);
}

// Spins until pred() holds or ThreadPool::kSpinMicros pass; returns whether it holds.
template <typename Pred>
bool SpinFor(Pred pred) {
  const auto deadline =
      std::chrono::steady_clock::now() + std::chrono::microseconds(ThreadPool::kSpinMicros);
  for (int spins = 1;; ++spins) {
    if (pred()) return true;
    _mm_pause();
    if (spins % 32 == 0 && std::chrono::steady_clock::now() > deadline) return pred();
  }
}

// The tightest CPU quota of this process's cgroup and its ancestors (cgroup v2 cpu.max, or
// v1 cpu.cfs_quota_us / cpu.cfs_period_us), in whole cores rounded up; 0 without one.
int CgroupCpuLimit() {
  int limit = 0;
  for (const std::string& dir : CgroupDirs("cpu")) {
    std::optional<double> quota = ReadCgroupNumber(dir + "/cpu.max", 0);
    std::optional<double> period = ReadCgroupNumber(dir + "/cpu.max", 1);
    if (!quota.has_value()) {
      quota = ReadCgroupNumber(dir + "/cpu.cfs_quota_us");
      period = ReadCgroupNumber(dir + "/cpu.cfs_period_us");
    }
    if (!quota.has_value() || !period.has_value() || *quota <= 0 || *period <= 0) continue;
    const int cores = std::max(1, static_cast<int>(std::ceil(*quota / *period)));
    limit = limit == 0 ? cores : std::min(limit, cores);
  }
  return limit;
}

}  // namespace

ThreadPool::ThreadPool(int threads) : threads_(threads) {
  SPANSERVE_CHECK_GE(threads, 1);
  workers_.reserve(threads - 1);
  for (int i = 1; i < threads; ++i) workers_.emplace_back([this] { Work(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(run_mutex_);
    stop_.store(true, std::memory_order_seq_cst);
    generation_.fetch_add(1, std::memory_order_seq_cst);
    FutexWake(&generation_, INT_MAX);
  }
  for (std::thread& w : workers_) w.join();
}

void ThreadPool::Work() {
  in_job = true;  // a worker only ever runs jobs: Run from inside one runs serially
  uint32_t seen = 0;
  while (true) {
    uint32_t gen = generation_.load(std::memory_order_acquire);
    if (gen == seen) {
      SpinFor([&] { return (gen = generation_.load(std::memory_order_acquire)) != seen; });
      while (gen == seen) {
        // Announce the sleep, then look again: a Run that bumped the generation before the
        // announcement is seen here; one after it sees the sleeper and wakes it.
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        if (generation_.load(std::memory_order_seq_cst) == seen) FutexWait(&generation_, seen);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        gen = generation_.load(std::memory_order_acquire);
      }
    }
    seen = gen;
    if (stop_.load(std::memory_order_seq_cst)) return;
    // Claim parts of whatever job is current (a later one than `gen`, if this thread was slow:
    // its parts are as good). A failed claim touches nothing of the job; a successful one holds
    // the job open, so job_ stays valid until the part returns.
    const auto n = static_cast<uint32_t>(threads_);
    for (uint32_t t; (t = claimed_.fetch_add(1, std::memory_order_seq_cst)) < n;) {
      (*job_)(t, threads_);
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == n &&
          caller_asleep_.load(std::memory_order_seq_cst) != 0) {
        FutexWake(&done_, 1);
      }
    }
  }
}

void ThreadPool::Run(absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (threads_ == 1 || in_job) {
    fn(0, 1);
    return;
  }
  std::lock_guard<std::mutex> lock(run_mutex_);
  const auto n = static_cast<uint32_t>(threads_);
  // Every part of the previous job was claimed (claimed_ >= n), so until the reset below no
  // claim succeeds and no thread reads job_ (before the first job, no worker claims: each
  // waits for a new generation first).
  job_ = &fn;
  done_.store(0, std::memory_order_seq_cst);
  claimed_.store(0, std::memory_order_seq_cst);  // opens the job
  generation_.fetch_add(1, std::memory_order_seq_cst);
  if (sleepers_.load(std::memory_order_seq_cst) > 0) FutexWake(&generation_, INT_MAX);

  in_job = true;
  for (uint32_t t; (t = claimed_.fetch_add(1, std::memory_order_seq_cst)) < n;) {
    fn(t, threads_);
    done_.fetch_add(1, std::memory_order_seq_cst);
  }
  in_job = false;

  if (!SpinFor([&] { return done_.load(std::memory_order_acquire) == n; })) {
    uint32_t finished;
    while ((finished = done_.load(std::memory_order_acquire)) != n) {
      caller_asleep_.store(1, std::memory_order_seq_cst);
      finished = done_.load(std::memory_order_seq_cst);
      if (finished != n) FutexWait(&done_, finished);
      caller_asleep_.store(0, std::memory_order_relaxed);
    }
  }
  job_ = nullptr;
}

ThreadPool* CurrentPool() { return current_pool; }

UsePool::UsePool(ThreadPool* pool) : previous_(current_pool) { current_pool = pool; }
UsePool::~UsePool() { current_pool = previous_; }

void Parallel(absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (current_pool == nullptr) {
    fn(0, 1);
  } else {
    current_pool->Run(fn);
  }
}

int64_t ParallelThreads() {
  return current_pool == nullptr || in_job ? 1 : current_pool->threads();
}

void ParallelFor(int64_t n, int64_t min_parallel, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (n <= 0) return;
  if (n < min_parallel || ParallelThreads() == 1) {
    fn(0, n);
    return;
  }
  Parallel([&](int64_t t, int64_t threads) {
    const int64_t begin = n * t / threads;
    const int64_t end = n * (t + 1) / threads;
    if (begin < end) fn(begin, end);
  });
}

void ParallelRows(int64_t rows, int64_t cols, int64_t min_elements,
                  absl::FunctionRef<void(int64_t, int64_t)> fn) {
  ParallelFor(rows, rows * cols >= min_elements ? 2 : rows + 1, fn);
}

int AvailableCpus() {
  cpu_set_t set;
  CPU_ZERO(&set);
  int cpus = sched_getaffinity(0, sizeof(set), &set) == 0
                 ? CPU_COUNT(&set)
                 : static_cast<int>(std::thread::hardware_concurrency());
  cpus = std::max(cpus, 1);
  if (const int limit = CgroupCpuLimit(); limit > 0) cpus = std::min(cpus, limit);
  return cpus;
}

int UsableThreads(int requested) {
  const int cpus = AvailableCpus();
  return requested > 0 ? std::min(requested, cpus) : cpus;
}

std::shared_ptr<ThreadPool> SharedThreadPool(int threads) {
  static std::mutex mutex;
  static auto* pools = new std::map<int, std::weak_ptr<ThreadPool>>();
  std::lock_guard<std::mutex> lock(mutex);
  std::weak_ptr<ThreadPool>& slot = (*pools)[threads];
  std::shared_ptr<ThreadPool> pool = slot.lock();
  if (pool == nullptr) {
    pool = std::make_shared<ThreadPool>(threads);
    slot = pool;
  }
  return pool;
}

}  // namespace spanserve
