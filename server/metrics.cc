#include "server/metrics.h"

#include <chrono>
#include <exception>
#include <string>

#include <prometheus/counter.h>
#include <prometheus/exposer.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include "absl/strings/str_cat.h"

namespace spanserve::server {
namespace {

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = new prometheus::Histogram::BucketBoundaries{
      0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  return *buckets;
}

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

}  // namespace

absl::StatusOr<std::unique_ptr<ServerMetrics>> ServerMetrics::Start(const std::string& address) {
  std::unique_ptr<ServerMetrics> m(new ServerMetrics());
  try {
    // prometheus-cpp (civetweb) reports a failed bind by throwing; keep it inside.
    m->exposer_ = std::make_unique<prometheus::Exposer>(address);
  } catch (const std::exception& e) {
    return absl::UnavailableError(
        absl::StrCat("metrics: cannot listen on ", address, ": ", e.what()));
  }
  m->registry_ = std::make_shared<prometheus::Registry>();
  prometheus::Registry& r = *m->registry_;
  m->ttft_ = AddHistogram(r, "spanserve_time_to_first_token_seconds", "Submit to first token");
  m->tpot_ = AddHistogram(r, "spanserve_inter_token_latency_seconds",
                          "Mean time per output token after the first, per request");
  m->e2e_ = AddHistogram(r, "spanserve_e2e_request_latency_seconds", "Submit to finish");
  m->queue_ = AddHistogram(r, "spanserve_request_queue_time_seconds", "Waiting in the queue");
  m->prefill_ = AddHistogram(r, "spanserve_request_prefill_time_seconds", "Prefill phase");
  m->decode_ = AddHistogram(r, "spanserve_request_decode_time_seconds", "Decode phase");
  m->prompt_tokens_ =
      AddCounter(r, "spanserve_prompt_tokens_total", "Prompt tokens of finished requests");
  m->generation_tokens_ =
      AddCounter(r, "spanserve_generation_tokens_total", "Generated tokens of finished requests");
  m->success_ =
      AddCounter(r, "spanserve_request_success_total", "Finished requests by finish reason");
  m->running_ = AddGauge(r, "spanserve_num_requests_running", "Requests holding KV blocks");
  m->waiting_ = AddGauge(r, "spanserve_num_requests_waiting", "Requests waiting to run");
  m->kv_usage_ = AddGauge(r, "spanserve_kv_cache_usage_ratio", "KV blocks used / total");
  // Cumulative engine counts, mirrored as gauges: they come as totals from Engine::Stats().
  m->preemptions_ = AddGauge(r, "spanserve_num_preemptions", "Preemptions since start-up");
  m->prefix_queries_ =
      AddGauge(r, "spanserve_prefix_cache_queries", "Prompt tokens looked up in the prefix cache");
  m->prefix_hits_ = AddGauge(r, "spanserve_prefix_cache_hits", "Prompt tokens found there");
  m->exposer_->RegisterCollectable(m->registry_);
  return m;
}

ServerMetrics::~ServerMetrics() { StopPolling(); }

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
    p.running = &running_->Add(labels);
    p.waiting = &waiting_->Add(labels);
    p.kv_usage = &kv_usage_->Add(labels);
    p.preemptions = &preemptions_->Add(labels);
    p.prefix_queries = &prefix_queries_->Add(labels);
    p.prefix_hits = &prefix_hits_->Add(labels);
  }
  return p;
}

void ServerMetrics::WatchEngine(const std::string& model_name, const engine::Engine* engine) {
  std::lock_guard<std::mutex> lock(mu_);
  ModelLocked(model_name);
  engines_.emplace_back(model_name, engine);
  if (!poller_.joinable()) poller_ = std::thread([this] { Poll(); });
}

void ServerMetrics::StopPolling() {
  stop_.store(true);
  if (poller_.joinable()) poller_.join();
  std::lock_guard<std::mutex> lock(mu_);
  engines_.clear();
}

void ServerMetrics::Poll() {
  while (!stop_.load()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (const auto& [name, engine] : engines_) {
        const engine::EngineStats s = engine->Stats();
        PerModel& p = ModelLocked(name);
        p.running->Set(s.num_running);
        p.waiting->Set(s.num_waiting);
        p.kv_usage->Set(s.kv_cache_usage_ratio);
        p.preemptions->Set(static_cast<double>(s.num_preemptions));
        p.prefix_queries->Set(static_cast<double>(s.prefix_cache_queries));
        p.prefix_hits->Set(static_cast<double>(s.prefix_cache_hits));
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

void ServerMetrics::RecordFinished(const std::string& model_name,
                                   const engine::FinalInfo& final) {
  const engine::RequestTimings& t = final.timings;
  std::lock_guard<std::mutex> lock(mu_);
  PerModel& p = ModelLocked(model_name);
  if (final.generated_tokens > 0) p.ttft->Observe(t.ttft_s);
  if (final.generated_tokens > 1) p.tpot->Observe(t.decode_s / (final.generated_tokens - 1));
  p.e2e->Observe(t.e2e_s);
  p.queue->Observe(t.queue_s);
  p.prefill->Observe(t.prefill_s);
  p.decode->Observe(t.decode_s);
  p.prompt_tokens->Increment(final.prompt_tokens);
  p.generation_tokens->Increment(final.generated_tokens);
  success_
      ->Add({{"model_name", model_name},
             {"finished_reason", std::string(engine::FinishReasonName(final.reason))}})
      .Increment();
}

}  // namespace spanserve::server
