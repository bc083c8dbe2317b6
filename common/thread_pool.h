// The compute threads of the CPU kernels (and of load-time conversions): a pool that the calling
// thread joins (it runs parts of every job, so a pool of N threads uses N cores, not N + 1).
// Between jobs the workers spin for a bounded time (the ~300 jobs of one forward pass follow each
// other within microseconds) and then sleep on a futex, so an idle server costs nothing and a busy
// one makes no context switch per job. The pool replaces OpenMP, whose passive barriers slept and
// woke at every job inside the engine (docs/PERFORMANCE.md).
//
// A job's parts are claimed, not assigned: every thread, the caller first, takes the next
// unclaimed part until none is left, and the job ends when every part has returned. On a host
// whose other processes keep a worker off its core, the threads still running take its parts
// instead of waiting a scheduler time slice for it at every job.
//
// Kernels do not take a pool argument: they use the pool installed on the calling thread
// (UsePool), and without one they run on the calling thread alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/functional/function_ref.h"

namespace spanserve {

class ThreadPool {
 public:
  // `threads` ≥ 1 counts the calling thread: threads − 1 workers are started.
  explicit ThreadPool(int threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int threads() const { return threads_; }

  // Runs fn(t, n) for every t in [0, n), n = threads(), each part once on whichever of the
  // pool's threads claims it first (the calling thread included), and returns when every part
  // has returned. Calls from several threads take turns; a call from inside a job (any pool's)
  // runs fn(0, 1) on the calling thread.
  void Run(absl::FunctionRef<void(int64_t, int64_t)> fn);

  // How long a thread spins on a job's start or end before it sleeps.
  static constexpr int64_t kSpinMicros = 100;

 private:
  void Work();

  const int threads_;
  std::mutex run_mutex_;  // one job at a time
  // The job: generation_ counts jobs started; a worker that sees it change runs job_.
  std::atomic<uint32_t> generation_{0};
  std::atomic<uint32_t> claimed_{0};  // parts of the current job claimed (may run past n)
  std::atomic<uint32_t> done_{0};     // parts of the current job returned
  std::atomic<int32_t> sleepers_{0};  // workers asleep on generation_
  std::atomic<int32_t> caller_asleep_{0};
  const absl::FunctionRef<void(int64_t, int64_t)>* job_ = nullptr;
  // Read by workers that may still be leaving a job the other threads finished.
  std::atomic<bool> stop_{false};
  std::vector<std::thread> workers_;
};

// The pool kernels called on this thread use; nullptr: none (they run on this thread alone).
ThreadPool* CurrentPool();

// Installs `pool` on this thread for the guard's lifetime (nullptr: none), restoring the
// previous one after.
class UsePool {
 public:
  explicit UsePool(ThreadPool* pool);
  ~UsePool();
  UsePool(const UsePool&) = delete;
  UsePool& operator=(const UsePool&) = delete;

 private:
  ThreadPool* previous_;
};

// Runs fn(t, n) on the current pool's threads (fn(0, 1) without one).
void Parallel(absl::FunctionRef<void(int64_t, int64_t)> fn);
// The number of parts Parallel would run now.
int64_t ParallelThreads();
// fn(begin, end) over contiguous, equal ranges of [0, n), one per thread; serially when n <
// min_parallel (the work is too small to pay a job's start).
void ParallelFor(int64_t n, int64_t min_parallel, absl::FunctionRef<void(int64_t, int64_t)> fn);
// ParallelFor over `rows` rows of `cols` elements, serially below `min_elements` in all.
void ParallelRows(int64_t rows, int64_t cols, int64_t min_elements,
                  absl::FunctionRef<void(int64_t, int64_t)> fn);

// The cores this process may use: its CPU affinity set, bounded by a cgroup CPU quota
// (cpu.max, as a container's CPU limit sets) rounded up; at least 1.
int AvailableCpus();
// `requested` threads (0: all) but never more than AvailableCpus().
int UsableThreads(int requested);

// The process's shared pool of `threads` threads (created on first use, kept while a holder
// lives): every model of a server shares one, so two engines never oversubscribe the cores.
std::shared_ptr<ThreadPool> SharedThreadPool(int threads);

}  // namespace spanserve
