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

prometheus::Histogram* AddHistogram(prometheus::Registry& registry, const std::string& name,
                                    const std::string& help) {
  return &prometheus::BuildHistogram().Name(name).Help(help).Register(registry).Add(
      {}, LatencyBuckets());
}

prometheus::Gauge* AddGauge(prometheus::Registry& registry, const std::string& name,
                            const std::string& help) {
  return &prometheus::BuildGauge().Name(name).Help(help).Register(registry).Add({});
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
  m->prompt_tokens_ = &prometheus::BuildCounter()
                           .Name("spanserve_prompt_tokens_total")
                           .Help("Prompt tokens of finished requests")
                           .Register(r)
                           .Add({});
  m->generation_tokens_ = &prometheus::BuildCounter()
                               .Name("spanserve_generation_tokens_total")
                               .Help("Generated tokens of finished requests")
                               .Register(r)
                               .Add({});
  m->success_ = &prometheus::BuildCounter()
                     .Name("spanserve_request_success_total")
                     .Help("Finished requests by finish reason")
                     .Register(r);
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

void ServerMetrics::WatchEngine(const engine::Engine* engine) {
  engine_.store(engine);
  if (!poller_.joinable()) poller_ = std::thread([this] { Poll(); });
}

void ServerMetrics::StopPolling() {
  stop_.store(true);
  if (poller_.joinable()) poller_.join();
  engine_.store(nullptr);
}

void ServerMetrics::Poll() {
  while (!stop_.load()) {
    if (const engine::Engine* engine = engine_.load(); engine != nullptr) {
      const engine::EngineStats s = engine->Stats();
      running_->Set(s.num_running);
      waiting_->Set(s.num_waiting);
      kv_usage_->Set(s.kv_cache_usage_ratio);
      preemptions_->Set(static_cast<double>(s.num_preemptions));
      prefix_queries_->Set(static_cast<double>(s.prefix_cache_queries));
      prefix_hits_->Set(static_cast<double>(s.prefix_cache_hits));
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
  }
}

void ServerMetrics::RecordFinished(const engine::FinalInfo& final) {
  const engine::RequestTimings& t = final.timings;
  if (final.generated_tokens > 0) ttft_->Observe(t.ttft_s);
  if (final.generated_tokens > 1) tpot_->Observe(t.decode_s / (final.generated_tokens - 1));
  e2e_->Observe(t.e2e_s);
  queue_->Observe(t.queue_s);
  prefill_->Observe(t.prefill_s);
  decode_->Observe(t.decode_s);
  prompt_tokens_->Increment(final.prompt_tokens);
  generation_tokens_->Increment(final.generated_tokens);
  success_->Add({{"finished_reason", std::string(engine::FinishReasonName(final.reason))}})
      .Increment();
}

}  // namespace spanserve::server
