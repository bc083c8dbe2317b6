// Prometheus metrics of the server (DESIGN.md §7), served as text on /metrics.
// Per-request histograms and counters are recorded as requests finish; engine gauges
// (running, waiting, KV usage) and cumulative engine counters are refreshed from
// Engine::Stats() by a small poller, so the engine thread never waits on a scrape.
//
// Every series carries a `model_name` label: one server may serve several models, each
// with its own engine.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

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

  // Starts polling `engine` (which must outlive this or StopPolling) under the label
  // model_name=`model_name`. Call once per served model.
  void WatchEngine(const std::string& model_name, const engine::Engine* engine);
  void StopPolling();
  // Records a finished request of model `model_name`.
  void RecordFinished(const std::string& model_name, const engine::FinalInfo& final);

 private:
  // The series of one model (children of the families below).
  struct PerModel {
    prometheus::Histogram* ttft = nullptr;
    prometheus::Histogram* tpot = nullptr;
    prometheus::Histogram* e2e = nullptr;
    prometheus::Histogram* queue = nullptr;
    prometheus::Histogram* prefill = nullptr;
    prometheus::Histogram* decode = nullptr;
    prometheus::Counter* prompt_tokens = nullptr;
    prometheus::Counter* generation_tokens = nullptr;
    prometheus::Gauge* running = nullptr;
    prometheus::Gauge* waiting = nullptr;
    prometheus::Gauge* kv_usage = nullptr;
    prometheus::Gauge* preemptions = nullptr;
    prometheus::Gauge* prefix_queries = nullptr;
    prometheus::Gauge* prefix_hits = nullptr;
  };
  ServerMetrics() = default;
  void Poll();
  // The series of `model_name`, created on first use. Requires mu_.
  PerModel& ModelLocked(const std::string& model_name);

  std::unique_ptr<prometheus::Exposer> exposer_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Histogram>* ttft_ = nullptr;
  prometheus::Family<prometheus::Histogram>* tpot_ = nullptr;
  prometheus::Family<prometheus::Histogram>* e2e_ = nullptr;
  prometheus::Family<prometheus::Histogram>* queue_ = nullptr;
  prometheus::Family<prometheus::Histogram>* prefill_ = nullptr;
  prometheus::Family<prometheus::Histogram>* decode_ = nullptr;
  prometheus::Family<prometheus::Counter>* prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* generation_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* success_ = nullptr;
  prometheus::Family<prometheus::Gauge>* running_ = nullptr;
  prometheus::Family<prometheus::Gauge>* waiting_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_usage_ = nullptr;
  prometheus::Family<prometheus::Gauge>* preemptions_ = nullptr;
  prometheus::Family<prometheus::Gauge>* prefix_queries_ = nullptr;
  prometheus::Family<prometheus::Gauge>* prefix_hits_ = nullptr;

  std::mutex mu_;
  std::map<std::string, PerModel> models_;                                  // guarded by mu_
  std::vector<std::pair<std::string, const engine::Engine*>> engines_;     // guarded by mu_
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace spanserve::server
