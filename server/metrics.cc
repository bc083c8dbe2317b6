#include "server/metrics.h"

#include <algorithm>
#include <cstdio>
#include <exception>
#include <string>

#include <prometheus/collectable.h>
#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <prometheus/text_serializer.h>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "runtime/engine/block_manager.h"
#include "runtime/model/model.h"

namespace spanserve::server {
namespace {

// Request latencies: 1 ms to 5 minutes (a long generation, or a queue under overload).
const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75,
      1,     2.5,    5,     7.5,  10,    20,   30,    60,  120,  300};
  return *buckets;
}

// Upper bounds 1, 2, 4, ..., 2^(n-1): the engine's StepHistogram buckets, so counts are exact.
prometheus::Histogram::BucketBoundaries PowerOfTwoBuckets(int n) {
  prometheus::Histogram::BucketBoundaries b;
  for (int i = 0; i < n; ++i) b.push_back(static_cast<double>(int64_t{1} << i));
  return b;
}
constexpr int kBatchSizeBuckets = 10;   // 1 .. 512 sequences
constexpr int kBatchTokenBuckets = 15;  // 1 .. 16384 tokens

prometheus::Family<prometheus::Histogram>* AddHistogram(prometheus::Registry& registry,
                                                        const std::string& name,
                                                        const std::string& help) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Gauge>* AddGauge(prometheus::Registry& registry,
                                                const std::string& name, const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry);
}

prometheus::Family<prometheus::Counter>* AddCounter(prometheus::Registry& registry,
                                                    const std::string& name,
                                                    const std::string& help) {
  return &prometheus::BuildCounter().Name(name).Help(help).Register(registry);
}

void IncrementBy(prometheus::Counter* c, int64_t now, int64_t before) {
  if (now > before) c->Increment(static_cast<double>(now - before));
}

// Turns the engine's step counts since `before` into observations of `h` (upper bounds
// 1, 2, ..., 2^(num_bounds-1); larger values land in +Inf).
void ObserveSteps(prometheus::Histogram* h, int num_bounds, const engine::StepHistogram& now,
                  const engine::StepHistogram& before, std::vector<double>* increments) {
  if (now.count <= before.count) return;
  increments->assign(num_bounds + 1, 0.0);
  for (int i = 0; i < engine::StepHistogram::kBuckets; ++i) {
    (*increments)[std::min(i, num_bounds)] += static_cast<double>(now.counts[i] - before.counts[i]);
  }
  h->ObserveMultiple(*increments, static_cast<double>(now.sum - before.sum));
}

}  // namespace

// Refreshes the engine series right before the registry is serialised, so a scrape sees
// the engine as of the scrape, not as of the last poll.
class ServerMetrics::ScrapeRefresh : public prometheus::Collectable {
 public:
  explicit ScrapeRefresh(ServerMetrics* metrics) : metrics_(metrics) {}
  std::vector<prometheus::MetricFamily> Collect() const override {
    metrics_->PollAll();
    return metrics_->registry_->Collect();
  }

 private:
  ServerMetrics* const metrics_;
};

ServerMetrics::ServerMetrics(const MetricsOptions& options)
    : options_(options), epoch_(std::chrono::steady_clock::now()) {}

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Start(const std::string& address,
                                                                    const MetricsOptions& options) {
  if (!(options.expert_window_s > 0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: expert_window_s must be positive, got ", options.expert_window_s));
  }
  if (options.poll_interval_ms <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: poll_interval_ms must be positive, got ", options.poll_interval_ms));
  }
  if (options.max_expert_series < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("metrics: max_expert_series must be >= 0, got ", options.max_expert_series));
  }
  std::unique_ptr<ServerMetrics> m(new ServerMetrics(options));
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;
  m->ttft_ = AddHistogram(r, "spanserve_time_to_first_token_seconds",
                          "Submit to first generated token, per request that produced one");
  m->tpot_ = AddHistogram(r, "spanserve_inter_token_latency_seconds",
                          "Mean time per output token after the first, per request with two or "
                          "more generated tokens");
  m->e2e_ = AddHistogram(r, "spanserve_e2e_request_latency_seconds", "Submit to finish");
  m->queue_ = AddHistogram(r, "spanserve_request_queue_time_seconds",
                           "Submit to first scheduled (0 if never scheduled)");
  m->prefill_ =
      AddHistogram(r, "spanserve_request_prefill_time_seconds", "First scheduled to first token");
  m->decode_ = AddHistogram(r, "spanserve_request_decode_time_seconds", "First token to finish");
  m->batch_size_ = AddHistogram(r, "spanserve_batch_size", "Sequences per engine step");
  m->batch_tokens_ = AddHistogram(r, "spanserve_batch_tokens", "Tokens per engine step");
  m->prompt_tokens_ =
      AddCounter(r, "spanserve_prompt_tokens_total", "Prompt tokens of finished requests");
  m->generation_tokens_ =
      AddCounter(r, "spanserve_generation_tokens_total", "Generated tokens of finished requests");
  m->success_ =
      AddCounter(r, "spanserve_request_success_total", "Finished requests by finish reason");
  m->preemptions_ = AddCounter(r, "spanserve_num_preemptions_total",
                               "Requests preempted (KV blocks taken back, recomputed later)");
  m->prefix_queries_ = AddCounter(r, "spanserve_prefix_cache_queries_total",
                                  "Prompt tokens looked up in the prefix cache");
  m->prefix_hits_ =
      AddCounter(r, "spanserve_prefix_cache_hits_total", "Prompt tokens found in the prefix cache");
  m->running_ = AddGauge(r, "spanserve_num_requests_running", "Requests holding KV blocks");
  m->waiting_ = AddGauge(r, "spanserve_num_requests_waiting", "Requests waiting to run");
  m->kv_usage_ = AddGauge(r, "spanserve_kv_cache_usage_ratio", "KV blocks used / total");
  m->model_info_ = AddGauge(r, "spanserve_model_info",
                            "1 for each served model; its configuration in the labels");
  m->refresh_ = std::make_shared<ScrapeRefresh>(m.get());
  try {
    // prometheus-cpp (civetweb) reports a failed bind by throwing; keep it inside.
    m->exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  m->exposer_->RegisterCollectable(m->refresh_);
  return m;
}

std::string ServerMetrics::ScrapeText() const {
  return prometheus::TextSerializer().Serialize(refresh_->Collect());
}

ServerMetrics::~ServerMetrics() {
  exposer_.reset();  // no scrape runs past this point
  StopPolling();
}

double ServerMetrics::Now() const {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - epoch_).count();
}

ServerMetrics::PerModel& ServerMetrics::ModelLocked(const std::string& model_name) {
  auto [it, inserted] = models_.try_emplace(model_name);
  PerModel& p = it->second;
  if (inserted) {
    const prometheus::Labels labels = {{"model_name", model_name}};
    p.ttft = &ttft_->Add(labels, LatencyBuckets());
    p.tpot = &tpot_->Add(labels, LatencyBuckets());
    p.e2e = &e2e_->Add(labels, LatencyBuckets());
    p.queue = &queue_->Add(labels, LatencyBuckets());
    p.prefill = &prefill_->Add(labels, LatencyBuckets());
    p.decode = &decode_->Add(labels, LatencyBuckets());
    p.prompt_tokens = &prompt_tokens_->Add(labels);
    p.generation_tokens = &generation_tokens_->Add(labels);
  }
  return p;
}

prometheus::Family<prometheus::Counter>& ServerMetrics::ExpertTokensFamily() {
  if (expert_tokens_ == nullptr) {
    expert_tokens_ = AddCounter(*registry_, "spanserve_moe_expert_tokens_total",
                                "Tokens routed to an expert (once per top-k slot)");
  }
  return *expert_tokens_;
}

prometheus::Family<prometheus::Counter>& ServerMetrics::LayerTokensFamily() {
  if (layer_tokens_ == nullptr) {
    layer_tokens_ = AddCounter(*registry_, "spanserve_moe_layer_tokens_total",
                               "Tokens routed in an MoE layer, all experts (once per top-k "
                               "slot); exported instead of per-expert counters when capped");
  }
  return *layer_tokens_;
}

prometheus::Family<prometheus::Gauge>& ServerMetrics::BalancednessFamily() {
  if (balancedness_ == nullptr) {
    balancedness_ = AddGauge(*registry_, "spanserve_moe_layer_balancedness",
                             "Mean / max tokens per expert over the sliding window (1: balanced)");
  }
  return *balancedness_;
}

prometheus::Family<prometheus::Gauge>& ServerMetrics::LoadCvFamily() {
  if (load_cv_ == nullptr) {
    load_cv_ = AddGauge(*registry_, "spanserve_moe_layer_load_cv",
                        "Coefficient of variation of tokens per expert over the sliding window");
  }
  return *load_cv_;
}

prometheus::Family<prometheus::Gauge>& ServerMetrics::ResidualRmsFamily() {
  if (residual_rms_ == nullptr) {
    residual_rms_ = AddGauge(*registry_, "spanserve_residual_rms",
                             "RMS of each block's output (the residual stream leaving the "
                             "block) over the tokens of the latest sampled engine step");
  }
  return *residual_rms_;
}

void ServerMetrics::WatchEngine(const std::string& model_name, const engine::Engine* engine) {
  // The warm-up's last step may still be publishing its stats: let it, so the baseline
  // below holds all of it and the counters count served traffic only.
  for (int i = 0; i < 1000; ++i) {
    const engine::EngineStats s = engine->Stats();
    if (s.requests_finished >= s.requests_submitted) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    ModelLocked(model_name);
  }
  auto w = std::make_unique<Watched>();
  w->model_name = model_name;
  w->engine = engine;
  const prometheus::Labels labels = {{"model_name", model_name}};
  std::lock_guard<std::mutex> lock(poll_mu_);
  w->running = &running_->Add(labels);
  w->waiting = &waiting_->Add(labels);
  w->kv_usage = &kv_usage_->Add(labels);
  const engine::EngineInfo& info = engine->info();
  model_info_
      ->Add({{"model_name", model_name},
             {"architecture", info.model_type},
             {"norm_placement", info.norm_placement},
             {"kv_cache_dtype", std::string(engine::KvCacheDtypeName(info.kv_cache_dtype))},
             {"compute_dtype", std::string(model::F32OrBf16Name(info.compute_dtype))},
             {"device", info.device},
             {"kv_block_size", std::to_string(info.block_size)},
             {"kv_blocks", std::to_string(info.num_kv_blocks)}})
      .Set(1);
  w->preemptions = &preemptions_->Add(labels);
  w->prefix_queries = &prefix_queries_->Add(labels);
  w->prefix_hits = &prefix_hits_->Add(labels);
  w->batch_size = &batch_size_->Add(labels, PowerOfTwoBuckets(kBatchSizeBuckets));
  w->batch_tokens = &batch_tokens_->Add(labels, PowerOfTwoBuckets(kBatchTokenBuckets));
  w->last = engine->Stats();

  const engine::ExpertLoadSnapshot load = engine->ExpertLoad();
  if (!load.tokens.empty()) {
    const int64_t num_layers = static_cast<int64_t>(load.tokens.size());
    w->layer_ids = load.layer_ids;
    w->num_experts = static_cast<int32_t>(load.tokens[0].size());
    const int64_t series = num_layers * w->num_experts;
    w->capped = series > options_.max_expert_series;
    if (w->capped) {
      std::fprintf(stderr,
                   "spanserve-server: metrics: %s has %lld MoE layers x %d experts = %lld "
                   "series, above --metrics_max_expert_series=%d: exporting "
                   "spanserve_moe_layer_tokens_total per layer instead of "
                   "spanserve_moe_expert_tokens_total per expert\n",
                   model_name.c_str(), static_cast<long long>(num_layers), w->num_experts,
                   static_cast<long long>(series), options_.max_expert_series);
    }
    for (int64_t i = 0; i < num_layers; ++i) {
      SPANSERVE_CHECK_EQ(static_cast<int32_t>(load.tokens[i].size()), w->num_experts);
      const std::string layer = std::to_string(load.layer_ids[i]);
      prometheus::Labels layer_labels = labels;
      layer_labels["layer"] = layer;
      w->balancedness.push_back(&BalancednessFamily().Add(layer_labels));
      w->load_cv.push_back(&LoadCvFamily().Add(layer_labels));
      w->balancedness.back()->Set(1.0);
      if (w->capped) {
        w->expert_tokens.push_back(&LayerTokensFamily().Add(layer_labels));
      } else {
        for (int32_t e = 0; e < w->num_experts; ++e) {
          prometheus::Labels expert_labels = layer_labels;
          expert_labels["expert"] = std::to_string(e);
          w->expert_tokens.push_back(&ExpertTokensFamily().Add(expert_labels));
        }
      }
      w->last_expert_tokens.insert(w->last_expert_tokens.end(), load.tokens[i].begin(),
                                   load.tokens[i].end());
    }
    // About 256 snapshots per window at most, however often polls and scrapes come.
    w->window = std::make_unique<ExpertLoadWindow>(options_.expert_window_s,
                                                   options_.expert_window_s / 256);
    w->window->Add(Now(), w->last_expert_tokens);
  }
  PollLocked(*w);
  watched_.push_back(std::move(w));
  if (!poller_.joinable()) poller_ = std::thread([this] { PollerLoop(); });
}

void ServerMetrics::StopPolling() {
  {
    std::lock_guard<std::mutex> lock(stop_mu_);
    stop_ = true;
  }
  stop_cv_.notify_all();
  if (poller_.joinable()) poller_.join();
  std::lock_guard<std::mutex> lock(poll_mu_);
  watched_.clear();
}

void ServerMetrics::PollerLoop() {
  std::unique_lock<std::mutex> lock(stop_mu_);
  while (!stop_) {
    lock.unlock();
    PollAll();
    lock.lock();
    stop_cv_.wait_for(lock, std::chrono::milliseconds(options_.poll_interval_ms),
                      [this] { return stop_; });
  }
}

void ServerMetrics::PollAll() {
  std::lock_guard<std::mutex> lock(poll_mu_);
  for (auto& w : watched_) PollLocked(*w);
}

void ServerMetrics::PollLocked(Watched& w) {
  engine::EngineStats s = w.engine->Stats();
  w.running->Set(s.num_running);
  w.waiting->Set(s.num_waiting);
  w.kv_usage->Set(s.kv_cache_usage_ratio);
  IncrementBy(w.preemptions, s.num_preemptions, w.last.num_preemptions);
  IncrementBy(w.prefix_queries, s.prefix_cache_queries, w.last.prefix_cache_queries);
  IncrementBy(w.prefix_hits, s.prefix_cache_hits, w.last.prefix_cache_hits);
  ObserveSteps(w.batch_size, kBatchSizeBuckets, s.batch_seqs, w.last.batch_seqs, &increments_);
  ObserveSteps(w.batch_tokens, kBatchTokenBuckets, s.batch_tokens, w.last.batch_tokens,
               &increments_);
  if (!s.residual_rms.empty()) {
    if (w.residual_rms.empty()) {
      for (size_t l = 0; l < s.residual_rms.size(); ++l) {
        w.residual_rms.push_back(
            &ResidualRmsFamily().Add({{"model_name", w.model_name}, {"layer", std::to_string(l)}}));
      }
    }
    for (size_t l = 0; l < s.residual_rms.size() && l < w.residual_rms.size(); ++l) {
      w.residual_rms[l]->Set(s.residual_rms[l]);
    }
  }
  w.last = std::move(s);

  if (w.window == nullptr) return;
  const engine::ExpertLoadSnapshot load = w.engine->ExpertLoad();
  scratch_.clear();
  for (const auto& layer : load.tokens) scratch_.insert(scratch_.end(), layer.begin(), layer.end());
  if (scratch_.size() != w.last_expert_tokens.size()) return;  // not a shape this engine gives
  const size_t num_layers = w.layer_ids.size();
  const size_t E = static_cast<size_t>(w.num_experts);
  for (size_t l = 0; l < num_layers; ++l) {
    int64_t layer_now = 0, layer_before = 0;
    for (size_t e = 0; e < E; ++e) {
      const size_t i = l * E + e;
      if (!w.capped) IncrementBy(w.expert_tokens[i], scratch_[i], w.last_expert_tokens[i]);
      layer_now += scratch_[i];
      layer_before += w.last_expert_tokens[i];
    }
    if (w.capped) IncrementBy(w.expert_tokens[l], layer_now, layer_before);
  }
  w.last_expert_tokens.swap(scratch_);
  const double now = Now();
  w.window->Add(now, w.last_expert_tokens);
  w.window->Delta(now, w.last_expert_tokens, &window_delta_);
  for (size_t l = 0; l < num_layers; ++l) {
    const LayerBalance b =
        ComputeLayerBalance(std::span<const int64_t>(window_delta_).subspan(l * E, E));
    w.balancedness[l]->Set(b.balancedness);
    w.load_cv[l]->Set(b.load_cv);
  }
}

void ServerMetrics::RecordFinished(const std::string& model_name, const engine::FinalInfo& final) {
  PerModel* p;
  {
    std::lock_guard<std::mutex> lock(models_mu_);
    p = &ModelLocked(model_name);  // std::map: the element stays put
  }
  const engine::RequestTimings& t = final.timings;
  if (final.generated_tokens > 0) p->ttft->Observe(t.ttft_s);
  if (final.generated_tokens > 1) p->tpot->Observe(t.decode_s / (final.generated_tokens - 1));
  p->e2e->Observe(t.e2e_s);
  p->queue->Observe(t.queue_s);
  p->prefill->Observe(t.prefill_s);
  p->decode->Observe(t.decode_s);
  p->prompt_tokens->Increment(final.prompt_tokens);
  p->generation_tokens->Increment(final.generated_tokens);
  success_
      ->Add({{"model_name", model_name},
             {"finished_reason", std::string(engine::FinishReasonName(final.reason))}})
      .Increment();
}

}  // namespace spanserve::server
