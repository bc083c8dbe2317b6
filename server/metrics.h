// Prometheus metrics of the server (DESIGN.md §7), served as text on /metrics.
// Per-request histograms and counters are recorded as requests finish; engine gauges
// (running, waiting, KV usage) and cumulative engine counters are refreshed from
// Engine::Stats() by a small poller, so the engine thread never waits on a scrape.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "runtime/engine/engine.h"

namespace prometheus {
class Exposer;
class Registry;
class Histogram;
class Counter;
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace spanserve::server {

class ServerMetrics {
 public:
  // Listens on `address` (host:port) and serves /metrics. UNAVAILABLE if it cannot bind.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ServerMetrics>> Start(
      const std::string& address);
  ~ServerMetrics();

  // Starts polling `engine` (which must outlive this or StopPolling).
  void WatchEngine(const engine::Engine* engine);
  void StopPolling();
  void RecordFinished(const engine::FinalInfo& final);

 private:
  ServerMetrics() = default;
  void Poll();

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Histogram* ttft_ = nullptr;
  prometheus::Histogram* tpot_ = nullptr;
  prometheus::Histogram* e2e_ = nullptr;
  prometheus::Histogram* queue_ = nullptr;
  prometheus::Histogram* prefill_ = nullptr;
  prometheus::Histogram* decode_ = nullptr;
  prometheus::Counter* prompt_tokens_ = nullptr;
  prometheus::Counter* generation_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* success_ = nullptr;
  prometheus::Gauge* running_ = nullptr;
  prometheus::Gauge* waiting_ = nullptr;
  prometheus::Gauge* kv_usage_ = nullptr;
  prometheus::Gauge* preemptions_ = nullptr;
  prometheus::Gauge* prefix_queries_ = nullptr;
  prometheus::Gauge* prefix_hits_ = nullptr;
  std::atomic<const engine::Engine*> engine_{nullptr};
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace spanserve::server
