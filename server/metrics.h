// Prometheus metrics of the server (DESIGN.md §7, docs/METRICS.md), served as text on
// /metrics. Per-request histograms and counters are recorded as requests finish; everything
// that comes from the engine (gauges, cumulative engine counters, per-step batch
// histograms, expert load, residual RMS) is refreshed from Engine::Stats() / ExpertLoad()
// at every scrape, before the text is written, and by a poller thread every
// poll_interval_ms (which also feeds the expert-load window). The engine thread never
// waits on a scrape: it keeps plain cumulative counts that the poller turns into deltas.
//
// Engine-derived counters count from WatchEngine (the start-up warm-up is excluded), so on
// an otherwise idle server they match the requests clients sent.
//
// Every series carries a `model_name` label: one server may serve several models, each
// with its own engine.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/engine.h"
#include "server/expert_load_window.h"

namespace prometheus {
class Exposer;
class Registry;
class Collectable;
class Histogram;
class Counter;
class Gauge;
template <typename T>
class Family;
}  // namespace prometheus

namespace spanserve::server {

struct MetricsOptions {
  // Expert-load balance gauges look back this many seconds.
  double expert_window_s = 60;
  // Above this many layers × experts series, per-expert counters are replaced by one
  // spanserve_moe_layer_tokens_total per layer (bounded label cardinality).
  int32_t max_expert_series = 4096;
  // The poller refreshes the engine series (and takes expert-load snapshots) this often.
  int32_t poll_interval_ms = 1000;
};

class ServerMetrics {
 public:
  // Listens on `address` (host:port) and serves /metrics. UNAVAILABLE if it cannot bind,
  // INVALID_ARGUMENT for bad options.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<ServerMetrics>> Start(
      const std::string& address, const MetricsOptions& options = {});
  ~ServerMetrics();

  // Starts polling `engine` (which must outlive this or StopPolling) under the label
  // model_name=`model_name`. Call once per served model, after its warm-up: waits (up to a
  // second) for the engine to finish what was submitted so far and counts from there.
  void WatchEngine(const std::string& model_name, const engine::Engine* engine);
  void StopPolling();
  // Records a finished request of model `model_name`.
  void RecordFinished(const std::string& model_name, const engine::FinalInfo& final);
  // What a scrape of /metrics answers, in Prometheus's text format (the HTTP front's /metrics).
  std::string ScrapeText() const;

 private:
  class ScrapeRefresh;
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
  };
  // One watched engine: its series and the totals seen at the last poll. Guarded by poll_mu_.
  struct Watched {
    std::string model_name;
    const engine::Engine* engine = nullptr;
    prometheus::Gauge* running = nullptr;
    prometheus::Gauge* waiting = nullptr;
    prometheus::Gauge* kv_usage = nullptr;
    prometheus::Counter* preemptions = nullptr;
    prometheus::Counter* prefix_queries = nullptr;
    prometheus::Counter* prefix_hits = nullptr;
    prometheus::Histogram* batch_size = nullptr;
    prometheus::Histogram* batch_tokens = nullptr;
    engine::EngineStats last;  // totals already exported
    // MoE: flat [moe layer][expert] totals already exported, and their series.
    std::vector<int32_t> layer_ids;
    int32_t num_experts = 0;
    bool capped = false;  // per-layer token counters instead of per-expert ones
    std::vector<int64_t> last_expert_tokens;
    std::vector<prometheus::Counter*> expert_tokens;  // per expert, or per layer if capped
    std::vector<prometheus::Gauge*> balancedness;     // per layer
    std::vector<prometheus::Gauge*> load_cv;          // per layer
    std::unique_ptr<ExpertLoadWindow> window;
    std::vector<prometheus::Gauge*> residual_rms;  // per layer, once sampled
  };

  explicit ServerMetrics(const MetricsOptions& options);
  // Polls every watched engine (the poller, and every scrape).
  void PollAll();
  void PollLocked(Watched& w);
  void PollerLoop();
  // Seconds since this object was made (the expert-load window's clock).
  double Now() const;
  // The series of `model_name`, created on first use. Requires models_mu_.
  PerModel& ModelLocked(const std::string& model_name);
  // Families created on first use (MoE and residual RMS exist only where they apply).
  // Require poll_mu_.
  prometheus::Family<prometheus::Counter>& ExpertTokensFamily();
  prometheus::Family<prometheus::Counter>& LayerTokensFamily();
  prometheus::Family<prometheus::Gauge>& BalancednessFamily();
  prometheus::Family<prometheus::Gauge>& LoadCvFamily();
  prometheus::Family<prometheus::Gauge>& ResidualRmsFamily();

  const MetricsOptions options_;
  const std::chrono::steady_clock::time_point epoch_;
  std::shared_ptr<prometheus::Registry> registry_;
  std::shared_ptr<ScrapeRefresh> refresh_;
  std::unique_ptr<prometheus::Exposer> exposer_;
  prometheus::Family<prometheus::Histogram>* ttft_ = nullptr;
  prometheus::Family<prometheus::Histogram>* tpot_ = nullptr;
  prometheus::Family<prometheus::Histogram>* e2e_ = nullptr;
  prometheus::Family<prometheus::Histogram>* queue_ = nullptr;
  prometheus::Family<prometheus::Histogram>* prefill_ = nullptr;
  prometheus::Family<prometheus::Histogram>* decode_ = nullptr;
  prometheus::Family<prometheus::Histogram>* batch_size_ = nullptr;
  prometheus::Family<prometheus::Histogram>* batch_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* prompt_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* generation_tokens_ = nullptr;
  prometheus::Family<prometheus::Counter>* success_ = nullptr;
  prometheus::Family<prometheus::Counter>* preemptions_ = nullptr;
  prometheus::Family<prometheus::Counter>* prefix_queries_ = nullptr;
  prometheus::Family<prometheus::Counter>* prefix_hits_ = nullptr;
  prometheus::Family<prometheus::Gauge>* running_ = nullptr;
  prometheus::Family<prometheus::Gauge>* waiting_ = nullptr;
  prometheus::Family<prometheus::Gauge>* kv_usage_ = nullptr;
  prometheus::Family<prometheus::Gauge>* model_info_ = nullptr;
  prometheus::Family<prometheus::Counter>* expert_tokens_ = nullptr;  // guarded by poll_mu_
  prometheus::Family<prometheus::Counter>* layer_tokens_ = nullptr;   // guarded by poll_mu_
  prometheus::Family<prometheus::Gauge>* balancedness_ = nullptr;     // guarded by poll_mu_
  prometheus::Family<prometheus::Gauge>* load_cv_ = nullptr;          // guarded by poll_mu_
  prometheus::Family<prometheus::Gauge>* residual_rms_ = nullptr;     // guarded by poll_mu_

  // Request path (RecordFinished): a short lookup only, never held while polling.
  std::mutex models_mu_;
  std::map<std::string, PerModel> models_;  // guarded by models_mu_
  // Engine path (poller and scrapes).
  std::mutex poll_mu_;
  std::vector<std::unique_ptr<Watched>> watched_;  // guarded by poll_mu_
  std::vector<int64_t> scratch_;                   // guarded by poll_mu_
  std::vector<int64_t> window_delta_;              // guarded by poll_mu_
  std::vector<double> increments_;                 // guarded by poll_mu_

  std::mutex stop_mu_;
  std::condition_variable stop_cv_;
  bool stop_ = false;  // guarded by stop_mu_
  std::thread poller_;
};

}  // namespace spanserve::server
