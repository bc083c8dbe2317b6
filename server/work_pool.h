// A few threads of their own for long CPU work that a call must not do on gRPC's threads
// (tokenizing a megabyte of text takes a core for a good part of a second): health checks
// and short calls keep their threads. The threads run at a lower scheduling priority
// (nice), so the engine's step and gRPC's own threads come first on a busy host.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace spanserve::server {

class WorkPool {
 public:
  // `threads` >= 1; at most `max_queued` tasks wait (TryPost refuses the next).
  WorkPool(int threads, int max_queued);
  ~WorkPool();  // runs what was posted, then joins
  WorkPool(const WorkPool&) = delete;
  WorkPool& operator=(const WorkPool&) = delete;

  // Queues `task`; false (and `task` dropped) when max_queued tasks already wait.
  bool TryPost(std::function<void()> task);

 private:
  void Run();

  const int max_queued_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> tasks_;  // guarded by mu_
  bool stopping_ = false;                    // guarded by mu_
  std::vector<std::thread> threads_;
};

}  // namespace spanserve::server
