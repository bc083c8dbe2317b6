// Exactness of the Prometheus metrics (DESIGN.md §7, docs/METRICS.md, issue 8): the real
// spanserve-server runs a known workload through a real gRPC client, then /metrics is
// scraped over HTTP and every engine-independent quantity must come out exact: token
// totals, requests by finish reason, histogram counts, per-step batch histograms, prefix
// cache counts, and per MoE layer the routed tokens = tokens forwarded × top-k.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "http_client.h"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using Labels = std::map<std::string, std::string>;

constexpr char kDense[] = "spanserve-span-12l";
constexpr char kMoe[] = "spanserve-span-moe-12l";

std::string MoeModelDir() { return std::string(SPANSERVE_SOURCE_DIR) + "/models/" + kMoe; }

struct Sample {
  std::string name;
  Labels labels;
  double value = 0;
};

// Parses Prometheus text format (our label values hold no quotes or commas).
std::vector<Sample> ParseMetrics(const std::string& text) {
  std::vector<Sample> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.empty() || line[0] == '#') continue;
    Sample s;
    size_t pos = line.find_first_of("{ ");
    s.name = line.substr(0, pos);
    if (line[pos] == '{') {
      const size_t close = line.find('}', pos);
      std::istringstream labels(line.substr(pos + 1, close - pos - 1));
      for (std::string kv; std::getline(labels, kv, ',');) {
        const size_t eq = kv.find('=');
        s.labels[kv.substr(0, eq)] = kv.substr(eq + 2, kv.size() - eq - 3);
      }
      pos = close + 1;
    }
    s.value = std::strtod(line.c_str() + pos + 1, nullptr);
    out.push_back(std::move(s));
  }
  return out;
}

class Scrape {
 public:
  explicit Scrape(std::vector<Sample> samples) : samples_(std::move(samples)) {}
  // The samples named `name` whose labels include `labels`.
  std::vector<Sample> Find(const std::string& name, const Labels& labels) const {
    std::vector<Sample> out;
    for (const Sample& s : samples_) {
      if (s.name != name) continue;
      bool match = true;
      for (const auto& [k, v] : labels) {
        auto it = s.labels.find(k);
        match &= it != s.labels.end() && it->second == v;
      }
      if (match) out.push_back(s);
    }
    return out;
  }
  // The one sample named `name` with `labels`; NaN (and a test failure) if not exactly one.
  double Value(const std::string& name, const Labels& labels) const {
    const std::vector<Sample> found = Find(name, labels);
    EXPECT_EQ(found.size(), 1u) << name;
    return found.size() == 1 ? found[0].value : std::nan("");
  }
  bool Has(const std::string& prefix) const {
    for (const Sample& s : samples_) {
      if (s.name.rfind(prefix, 0) == 0) return true;
    }
    return false;
  }

 private:
  std::vector<Sample> samples_;
};

// Scrapes once the engine of `model` is idle (nothing running or waiting): the engine
// publishes its stats right after the step that sent a request's last token, so a scrape
// racing that step would see the step before. Polls, no fixed sleep.
Scrape ScrapeWhenIdle(int port, const std::string& model) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  for (;;) {
    Scrape s(ParseMetrics(HttpGet(port, "/metrics").body));
    const auto running = s.Find("spanserve_num_requests_running", {{"model_name", model}});
    const auto waiting = s.Find("spanserve_num_requests_waiting", {{"model_name", model}});
    if ((running.size() == 1 && running[0].value == 0 && waiting.size() == 1 &&
         waiting[0].value == 0) ||
        std::chrono::steady_clock::now() > deadline) {
      return s;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

v1::GenerateRequest IdsRequest(int32_t first_id, int32_t n, int max_tokens,
                               std::vector<int32_t> stop_ids = {}) {
  v1::GenerateRequest r;
  for (int32_t i = 0; i < n; ++i) r.mutable_prompt()->mutable_token_ids()->add_ids(first_id + i);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_ignore_eos(true);
  for (int32_t id : stop_ids) r.mutable_sampling()->add_stop_token_ids(id);
  return r;
}

struct Result {
  grpc::Status status;
  std::vector<int32_t> ids;
  v1::FinalInfo final;
};

Result Generate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  Result result;
  auto reader = stub.Generate(&context, request);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    result.ids.insert(result.ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (chunk.has_final()) result.final = chunk.final();
  }
  result.status = reader->Finish();
  return result;
}

// What a workload must leave in the metrics.
struct Expected {
  int64_t requests = 0;
  int64_t length = 0;
  int64_t stop = 0;
  int64_t prompt_tokens = 0;
  int64_t generated_tokens = 0;
  int64_t multi_token_requests = 0;  // generated >= 2: one inter-token latency each
  int64_t prefix_hits = 0;
  int64_t forwarded_tokens = 0;  // tokens the model computed: prompt - cached + generated - 1
};

// Five greedy requests, one at a time, so every engine step holds exactly one sequence:
// prompts of 5, 9, 20 and again 20 tokens (the repeat finds its first full 16-token block
// in the prefix cache), then the first prompt again stopped by a stop token id.
Expected RunWorkload(v1::SpanServe::Stub& stub) {
  Expected e;
  auto run = [&](const v1::GenerateRequest& request, int32_t want_hits) {
    const Result r = Generate(stub, request);
    EXPECT_TRUE(r.status.ok()) << r.status.error_message();
    const int64_t prompt = request.prompt().token_ids().ids_size();
    const int64_t generated = static_cast<int64_t>(r.ids.size());
    EXPECT_EQ(r.final.generated_tokens(), generated);
    EXPECT_EQ(r.final.cached_prompt_tokens(), want_hits);
    ++e.requests;
    if (r.final.finish_reason() == v1::FINISH_REASON_LENGTH) ++e.length;
    if (r.final.finish_reason() == v1::FINISH_REASON_STOP) ++e.stop;
    e.prompt_tokens += prompt;
    e.generated_tokens += generated;
    e.multi_token_requests += generated >= 2 ? 1 : 0;
    e.prefix_hits += want_hits;
    // The last generated token is never fed back.
    e.forwarded_tokens += prompt - want_hits + generated - 1;
    return r;
  };
  const Result first = run(IdsRequest(10, 5, 6), 0);
  EXPECT_EQ(first.ids.size(), 6u);
  EXPECT_EQ(run(IdsRequest(30, 9, 4), 0).ids.size(), 4u);
  EXPECT_EQ(run(IdsRequest(100, 20, 6), 0).ids.size(), 6u);
  EXPECT_EQ(run(IdsRequest(100, 20, 6), 16).ids.size(), 6u);
  // Greedy repeats the first request's tokens, so stopping on its third token ends at that
  // token's first occurrence.
  const int32_t stop_id = first.ids.at(2);
  const Result stopped = run(IdsRequest(10, 5, 6, {stop_id}), 0);
  size_t want = 0;
  while (first.ids[want] != stop_id) ++want;
  EXPECT_EQ(stopped.ids.size(), want + 1);
  EXPECT_EQ(stopped.final.finish_reason(), v1::FINISH_REASON_STOP);
  EXPECT_EQ(e.length, 4);
  EXPECT_EQ(e.stop, 1);
  return e;
}

// Everything that must be exact for any model after RunWorkload.
void ExpectCommonMetrics(const Scrape& s, const std::string& model, const Expected& e) {
  const Labels m = {{"model_name", model}};
  EXPECT_EQ(s.Value("spanserve_prompt_tokens_total", m), e.prompt_tokens);
  EXPECT_EQ(s.Value("spanserve_generation_tokens_total", m), e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_request_success_total",
                    {{"model_name", model}, {"finished_reason", "length"}}),
            e.length);
  EXPECT_EQ(s.Value("spanserve_request_success_total",
                    {{"model_name", model}, {"finished_reason", "stop"}}),
            e.stop);
  for (const char* h :
       {"spanserve_time_to_first_token_seconds", "spanserve_e2e_request_latency_seconds",
        "spanserve_request_queue_time_seconds", "spanserve_request_prefill_time_seconds",
        "spanserve_request_decode_time_seconds"}) {
    EXPECT_EQ(s.Value(std::string(h) + "_count", m), e.requests) << h;
    // Buckets run from 1 ms to 300 s; +Inf holds every observation.
    EXPECT_GE(s.Value(std::string(h) + "_bucket", {{"model_name", model}, {"le", "0.001"}}), 0);
    EXPECT_EQ(s.Value(std::string(h) + "_bucket", {{"model_name", model}, {"le", "300"}}),
              e.requests);
    EXPECT_EQ(s.Value(std::string(h) + "_bucket", {{"model_name", model}, {"le", "+Inf"}}),
              e.requests);
  }
  EXPECT_GT(s.Value("spanserve_e2e_request_latency_seconds_sum", m), 0);
  EXPECT_EQ(s.Value("spanserve_inter_token_latency_seconds_count", m), e.multi_token_requests);
  EXPECT_EQ(s.Value("spanserve_num_preemptions_total", m), 0);
  EXPECT_EQ(s.Value("spanserve_prefix_cache_queries_total", m), e.prompt_tokens);
  EXPECT_EQ(s.Value("spanserve_prefix_cache_hits_total", m), e.prefix_hits);
  // One sequence per step; each step generates one token (prompts fit one prefill step).
  EXPECT_EQ(s.Value("spanserve_batch_size_count", m), e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_batch_size_sum", m), e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_batch_size_bucket", {{"model_name", model}, {"le", "1"}}),
            e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_batch_size_bucket", {{"model_name", model}, {"le", "512"}}),
            e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_batch_tokens_count", m), e.generated_tokens);
  EXPECT_EQ(s.Value("spanserve_batch_tokens_sum", m), e.forwarded_tokens);
  // The 20-token prefill (4 tokens of the repeat after its cached block, the decode steps
  // 1 each, the first prompts 5 and 9): steps above 16 tokens are exactly the one prefill.
  EXPECT_EQ(s.Value("spanserve_batch_tokens_bucket", {{"model_name", model}, {"le", "16"}}),
            e.generated_tokens - 1);
  EXPECT_EQ(s.Value("spanserve_num_requests_running", m), 0);
  EXPECT_EQ(s.Value("spanserve_num_requests_waiting", m), 0);
  const auto info = s.Find("spanserve_model_info", m);
  ASSERT_EQ(info.size(), 1u);
  EXPECT_EQ(info[0].value, 1);
  EXPECT_EQ(info[0].labels.at("architecture"), "spanserve");
  EXPECT_EQ(info[0].labels.at("norm_placement"), "span");
  EXPECT_EQ(info[0].labels.at("kv_cache_dtype"), "f32");
  EXPECT_EQ(info[0].labels.at("compute_dtype"), "f32");
  EXPECT_EQ(info[0].labels.at("kv_block_size"), "16");
  EXPECT_GT(std::stoi(info[0].labels.at("kv_blocks")), 0);
  const double kv = s.Value("spanserve_kv_cache_usage_ratio", m);
  EXPECT_GE(kv, 0);
  EXPECT_LE(kv, 1);
}

TEST(MetricsTest, DenseWorkloadIsExactAndResidualRmsCoversEveryLayer) {
  const int port = FreePort();
  ServerProcess server({"--metrics_address=127.0.0.1:" + std::to_string(port),
                        "--residual_rms_every_n_steps=1", "--threads=1"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const Expected e = RunWorkload(*stub);
  const Scrape s = ScrapeWhenIdle(port, kDense);
  ExpectCommonMetrics(s, kDense, e);
  // A dense model exports no expert series.
  EXPECT_FALSE(s.Has("spanserve_moe_"));
  // Residual RMS: one positive, finite gauge per layer (12), labelled 0..11.
  const std::vector<Sample> rms = s.Find("spanserve_residual_rms", {{"model_name", kDense}});
  ASSERT_EQ(rms.size(), 12u);
  std::set<std::string> layers;
  for (const Sample& r : rms) {
    layers.insert(r.labels.at("layer"));
    EXPECT_GT(r.value, 0) << "layer " << r.labels.at("layer");
    EXPECT_TRUE(std::isfinite(r.value));
  }
  for (int l = 0; l < 12; ++l) EXPECT_TRUE(layers.count(std::to_string(l))) << l;
}

TEST(MetricsTest, MoeExpertTokensEqualTokensForwardedTimesTopK) {
  const int port = FreePort();
  ServerProcess server({"--model=" + MoeModelDir(),
                        "--metrics_address=127.0.0.1:" + std::to_string(port), "--threads=1"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  ASSERT_TRUE(info.is_moe());
  const int top_k = info.experts_per_token();
  const int num_experts = info.num_experts();
  const Expected e = RunWorkload(*stub);
  const Scrape s = ScrapeWhenIdle(port, kMoe);
  ExpectCommonMetrics(s, kMoe, e);
  // Residual sampling is off by default: no such series at all.
  EXPECT_FALSE(s.Has("spanserve_residual_rms"));
  EXPECT_FALSE(s.Has("spanserve_moe_layer_tokens_total"));  // 96 series: not capped

  // Per layer: Σ over experts = tokens forwarded × top-k; every MoE layer (all 12 here).
  std::map<std::string, std::vector<double>> per_layer;
  for (const Sample& x : s.Find("spanserve_moe_expert_tokens_total", {{"model_name", kMoe}})) {
    per_layer[x.labels.at("layer")].push_back(x.value);
  }
  ASSERT_EQ(static_cast<int>(per_layer.size()), info.num_layers());
  for (const auto& [layer, experts] : per_layer) {
    ASSERT_EQ(static_cast<int>(experts.size()), num_experts) << "layer " << layer;
    double sum = 0, max = 0;
    for (double v : experts) {
      sum += v;
      max = std::max(max, v);
    }
    EXPECT_EQ(sum, static_cast<double>(e.forwarded_tokens * top_k)) << "layer " << layer;
    // The window (60 s) covers the whole workload: its balance is that of these counters.
    const Labels l = {{"model_name", kMoe}, {"layer", layer}};
    const double balancedness = s.Value("spanserve_moe_layer_balancedness", l);
    EXPECT_GT(balancedness, 0);
    EXPECT_LE(balancedness, 1);
    EXPECT_NEAR(balancedness, sum / num_experts / max, 1e-12) << "layer " << layer;
    const double mean = sum / num_experts;
    double var = 0;
    for (double v : experts) var += (v - mean) * (v - mean);
    EXPECT_NEAR(s.Value("spanserve_moe_layer_load_cv", l), std::sqrt(var / num_experts) / mean,
                1e-9)
        << "layer " << layer;
  }
}

TEST(MetricsTest, CappedExpertSeriesFallBackToPerLayerCounters) {
  const int port = FreePort();
  ServerProcess server({"--model=" + MoeModelDir(),
                        "--metrics_address=127.0.0.1:" + std::to_string(port), "--threads=1",
                        "--metrics_max_expert_series=50"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const Result r = Generate(*stub, IdsRequest(10, 5, 6));
  ASSERT_TRUE(r.status.ok()) << r.status.error_message();
  ASSERT_EQ(r.ids.size(), 6u);
  const Scrape s = ScrapeWhenIdle(port, kMoe);
  EXPECT_FALSE(s.Has("spanserve_moe_expert_tokens_total"));
  const std::vector<Sample> layers =
      s.Find("spanserve_moe_layer_tokens_total", {{"model_name", kMoe}});
  ASSERT_EQ(layers.size(), 12u);
  for (const Sample& x : layers) {
    EXPECT_EQ(x.value, (5 + 6 - 1) * 2) << "layer " << x.labels.at("layer");  // × top-2
    const double b = s.Value("spanserve_moe_layer_balancedness",
                             {{"model_name", kMoe}, {"layer", x.labels.at("layer")}});
    EXPECT_GT(b, 0);
    EXPECT_LE(b, 1);
  }
  // Said once, at start-up.
  const std::string log = server.log();
  const std::string said = "above --metrics_max_expert_series=50";
  const size_t at = log.find(said);
  ASSERT_NE(at, std::string::npos) << log;
  EXPECT_EQ(log.find(said, at + 1), std::string::npos);
}

// The balance gauges cover the last --metrics_expert_window_s only: once the window has slid
// past the traffic they read "balanced" again, while the counters keep every token.
TEST(MetricsTest, ExpertBalanceWindowForgetsOldTraffic) {
  const int port = FreePort();
  ServerProcess server({"--model=" + MoeModelDir(),
                        "--metrics_address=127.0.0.1:" + std::to_string(port), "--threads=1",
                        "--metrics_expert_window_s=0.5", "--metrics_poll_interval_ms=20"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const auto sent = std::chrono::steady_clock::now();
  ASSERT_TRUE(Generate(*stub, IdsRequest(10, 20, 8)).status.ok());
  const Scrape busy = ScrapeWhenIdle(port, kMoe);
  const Labels layer0 = {{"model_name", kMoe}, {"layer", "0"}};
  double counted = 0;
  for (const Sample& x : busy.Find("spanserve_moe_expert_tokens_total", layer0)) {
    counted += x.value;
  }
  EXPECT_EQ(counted, (20 + 8 - 1) * 2);
  // 27 tokens x 2 slots over 8 experts cannot be perfectly even.
  EXPECT_LT(busy.Value("spanserve_moe_layer_balancedness", layer0), 1);
  EXPECT_GT(busy.Value("spanserve_moe_layer_load_cv", layer0), 0);
  // Wait (bounded) for the window to slide past the request.
  for (;;) {
    const Scrape s(ParseMetrics(HttpGet(port, "/metrics").body));
    if (s.Value("spanserve_moe_layer_balancedness", layer0) == 1.0) {
      EXPECT_EQ(s.Value("spanserve_moe_layer_load_cv", layer0), 0);
      double still = 0;
      for (const Sample& x : s.Find("spanserve_moe_expert_tokens_total", layer0)) {
        still += x.value;
      }
      EXPECT_EQ(still, counted);
      break;
    }
    ASSERT_LT(std::chrono::steady_clock::now() - sent, std::chrono::seconds(20));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // Not long before the window (0.5 s) had passed since the request (polls are 20 ms apart).
  EXPECT_GE(std::chrono::steady_clock::now() - sent, std::chrono::milliseconds(300));
}

// Counters only grow, and a second scrape of an idle server reads the same values: the
// refresh on scrape adds deltas, never totals twice.
// The HTTP front serves /metrics too (as vLLM does on its API port): the same series and
// values as the metrics port; without --metrics_address it answers 404.
TEST(MetricsTest, TheHttpFrontServesTheSameMetrics) {
  const int port = FreePort();
  const int http_port = FreePort();
  ServerProcess server({"--metrics_address=127.0.0.1:" + std::to_string(port),
                        "--http_address=127.0.0.1:" + std::to_string(http_port), "--threads=1"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  ASSERT_TRUE(Generate(*stub, IdsRequest(10, 5, 3)).status.ok());
  const Scrape a = ScrapeWhenIdle(port, kDense);
  const HttpResponse text = HttpGet(http_port, "/metrics");
  ASSERT_EQ(text.status, 200) << text.body;
  const Scrape b(ParseMetrics(text.body));
  const Labels m = {{"model_name", kDense}};
  for (const char* name : {"spanserve_prompt_tokens_total", "spanserve_generation_tokens_total",
                           "spanserve_batch_size_count", "spanserve_num_requests_running"}) {
    EXPECT_EQ(a.Value(name, m), b.Value(name, m)) << name;
  }
  EXPECT_EQ(b.Value("spanserve_prompt_tokens_total", m), 5);
  EXPECT_TRUE(b.Has("spanserve_time_to_first_token_seconds"));

  const int bare_port = FreePort();
  ServerProcess bare({"--http_address=127.0.0.1:" + std::to_string(bare_port), "--threads=1"});
  const HttpResponse off = HttpGet(bare_port, "/metrics");
  EXPECT_EQ(off.status, 404);
  EXPECT_NE(off.body.find("--metrics_address"), std::string::npos) << off.body;
}

TEST(MetricsTest, RepeatedScrapesDoNotDoubleCount) {
  const int port = FreePort();
  ServerProcess server({"--metrics_address=127.0.0.1:" + std::to_string(port), "--threads=1",
                        "--metrics_poll_interval_ms=5"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  ASSERT_TRUE(Generate(*stub, IdsRequest(10, 5, 3)).status.ok());
  const Scrape a = ScrapeWhenIdle(port, kDense);
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // several polls in between
  const Scrape b = ScrapeWhenIdle(port, kDense);
  const Labels m = {{"model_name", kDense}};
  for (const char* name :
       {"spanserve_batch_size_count", "spanserve_batch_tokens_sum",
        "spanserve_prefix_cache_queries_total", "spanserve_prompt_tokens_total"}) {
    EXPECT_EQ(a.Value(name, m), b.Value(name, m)) << name;
  }
  EXPECT_EQ(b.Value("spanserve_batch_size_count", m), 3);
  EXPECT_EQ(b.Value("spanserve_batch_tokens_sum", m), 5 + 3 - 1);
  EXPECT_EQ(b.Value("spanserve_prefix_cache_queries_total", m), 5);
}

}  // namespace
}  // namespace spanserve::testing
