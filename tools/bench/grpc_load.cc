// grpc_load: a load generator for spanserve-server. Fixed concurrency (N clients, each
// sending its next request when the last one ends) or an open Poisson arrival rate.
// Reports TTFT, TPOT (per-request mean time per output token), ITL (gaps between streamed
// chunks) and end-to-end latency percentiles, plus token throughput, as JSON on stdout.
// server_ttft_s is the engine's own TTFT from the final chunk; ttft_overhead_s (client TTFT
// minus it) is what gRPC, the server and the client add.
//   grpc_load --address=127.0.0.1:50051 --concurrency=64 --requests=512 --max_tokens=64
//   grpc_load --rate=20 --requests=200
//   grpc_load --protocol=http --address=127.0.0.1:8000   (the OpenAI front: streamed
//                                                         /v1/completions, SSE)
// Over HTTP the server's own TTFT is not reported (server_ttft_s and ttft_overhead_s are 0).
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <httplib.h>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"
#include "spanserve/v1/spanserve.grpc.pb.h"

ABSL_FLAG(std::string, address, "127.0.0.1:50051", "server address");
ABSL_FLAG(std::string, token, "", "bearer token");
ABSL_FLAG(int, concurrency, 16, "closed loop: clients in flight (ignored with --rate)");
ABSL_FLAG(double, rate, 0, "open loop: Poisson arrivals per second (0: closed loop)");
ABSL_FLAG(int, requests, 256, "requests in total");
ABSL_FLAG(int, max_tokens, 64, "tokens per request (EOS ignored, so exactly this many)");
ABSL_FLAG(std::string, prompt, "And God said unto Moses,", "prompt text");
ABSL_FLAG(std::vector<std::string>, prompt_ids, {},
          "prompt token ids instead of text (for models without tokenizer.json)");
ABSL_FLAG(int, channels, 4, "gRPC channels (connections) the clients share round-robin");
ABSL_FLAG(std::string, protocol, "grpc",
          "grpc (Generate) or http (the OpenAI front's streamed /v1/completions at --address)");

namespace {

namespace v1 = spanserve::v1;
using Clock = std::chrono::steady_clock;

struct Sample {
  bool ok = false;
  double ttft_s = 0;
  double server_ttft_s = 0;
  double e2e_s = 0;
  int tokens = 0;
  std::vector<double> itl_s;
};

Sample RunOne(v1::SpanServe::Stub& stub) {
  v1::GenerateRequest request;
  if (const auto ids = absl::GetFlag(FLAGS_prompt_ids); !ids.empty()) {
    for (const std::string& id : ids) {
      request.mutable_prompt()->mutable_token_ids()->add_ids(std::stoi(id));
    }
  } else {
    request.mutable_prompt()->set_text(absl::GetFlag(FLAGS_prompt));
  }
  request.mutable_sampling()->set_temperature(0.0f);
  request.mutable_sampling()->set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  request.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  if (const std::string t = absl::GetFlag(FLAGS_token); !t.empty()) {
    context.AddMetadata("authorization", "Bearer " + t);
  }
  Sample s;
  const auto start = Clock::now();
  auto last = start;
  auto reader = stub.Generate(&context, request);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) {
    if (chunk.has_final()) s.server_ttft_s = chunk.final().timings().ttft_s();
    if (chunk.token_ids_size() == 0) continue;
    const auto now = Clock::now();
    if (s.tokens == 0) {
      s.ttft_s = std::chrono::duration<double>(now - start).count();
    } else {
      s.itl_s.push_back(std::chrono::duration<double>(now - last).count());
    }
    last = now;
    s.tokens += chunk.token_ids_size();
  }
  s.ok = reader->Finish().ok();
  s.e2e_s = std::chrono::duration<double>(Clock::now() - start).count();
  return s;
}

// One streamed /v1/completions call; each SSE event with text is a token arrival (the
// server sends one event per engine output), and usage gives the token count.
Sample RunOneHttp(const std::string& address) {
  // One kept-alive connection per client thread, as an SDK's connection pool keeps.
  const size_t colon = address.rfind(':');
  thread_local httplib::Client client(address.substr(0, colon),
                                      std::stoi(address.substr(colon + 1)));
  client.set_read_timeout(600, 0);
  client.set_keep_alive(true);
  client.set_tcp_nodelay(true);  // as the SDKs' clients behave: no Nagle wait on the body
  nlohmann::json body = {{"max_tokens", absl::GetFlag(FLAGS_max_tokens)},
                         {"temperature", 0},
                         {"ignore_eos", true},
                         {"stream", true},
                         {"stream_options", {{"include_usage", true}}}};
  if (const auto ids = absl::GetFlag(FLAGS_prompt_ids); !ids.empty()) {
    body["prompt"] = nlohmann::json::array();
    for (const std::string& id : ids) body["prompt"].push_back(std::stoi(id));
  } else {
    body["prompt"] = absl::GetFlag(FLAGS_prompt);
  }
  httplib::Headers headers;
  if (const std::string t = absl::GetFlag(FLAGS_token); !t.empty()) {
    headers.emplace("Authorization", "Bearer " + t);
  }
  Sample s;
  const auto start = Clock::now();
  auto last = start;
  int events = 0;
  std::string buffer;
  bool done = false;
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.headers = headers;
  req.headers.emplace("Content-Type", "application/json");
  req.body = body.dump();
  req.content_receiver = [&](const char* data, size_t size, uint64_t, uint64_t) {
    buffer.append(data, size);
    size_t end;
    while ((end = buffer.find("\n\n")) != std::string::npos) {
      const std::string event = buffer.substr(0, end);
      buffer.erase(0, end + 2);
      if (event.rfind("data: ", 0) != 0) continue;
      const std::string payload = event.substr(6);
      if (payload == "[DONE]") {
        done = true;
        continue;
      }
      const nlohmann::json chunk = nlohmann::json::parse(payload, nullptr, false);
      if (chunk.is_discarded()) continue;
      if (chunk.contains("usage") && chunk["usage"].is_object()) {
        s.tokens = chunk["usage"].value("completion_tokens", 0);
      }
      if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
      const auto now = Clock::now();
      if (events == 0) {
        s.ttft_s = std::chrono::duration<double>(now - start).count();
      } else {
        s.itl_s.push_back(std::chrono::duration<double>(now - last).count());
      }
      last = now;
      ++events;
    }
    return true;
  };
  auto res = client.send(req);
  s.ok = res && res->status == 200 && done;
  s.e2e_s = std::chrono::duration<double>(Clock::now() - start).count();
  return s;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * (v.size() - 1) + 0.5))];
}

std::string Stats(const std::vector<double>& v) {
  double mean = 0;
  for (double x : v) mean += x;
  mean = v.empty() ? 0 : mean / v.size();
  return absl::StrFormat("{\"mean\":%.6f,\"p50\":%.6f,\"p90\":%.6f,\"p99\":%.6f}", mean,
                         Percentile(v, 50), Percentile(v, 90), Percentile(v, 99));
}

}  // namespace

int main(int argc, char** argv) {
  // --help lists this file's flags (absl matches by program name, which has a dash).
  absl::FlagsUsageConfig usage_config;
  usage_config.contains_help_flags = [](absl::string_view file) {
    return absl::EndsWith(file, "grpc_load.cc");
  };
  usage_config.contains_helpshort_flags = usage_config.contains_help_flags;
  absl::SetFlagsUsageConfig(usage_config);
  absl::SetProgramUsageMessage("Load generator for spanserve-server; JSON results on stdout.");
  absl::ParseCommandLine(argc, argv);
  const int total = absl::GetFlag(FLAGS_requests);
  const double rate = absl::GetFlag(FLAGS_rate);
  std::vector<std::unique_ptr<v1::SpanServe::Stub>> stubs;
  for (int i = 0; i < std::max(1, absl::GetFlag(FLAGS_channels)); ++i) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.channel_id", i);  // distinct args: a connection of its own
    stubs.push_back(v1::SpanServe::NewStub(grpc::CreateCustomChannel(
        absl::GetFlag(FLAGS_address), grpc::InsecureChannelCredentials(), args)));
  }
  const bool http = absl::GetFlag(FLAGS_protocol) == "http";
  if (!http && absl::GetFlag(FLAGS_protocol) != "grpc") {
    std::fprintf(stderr, "grpc_load: --protocol must be grpc or http\n");
    return 2;
  }
  const std::string address = absl::GetFlag(FLAGS_address);
  auto run_one = [&](int i) {
    return http ? RunOneHttp(address) : RunOne(*stubs[i % stubs.size()]);
  };
  std::vector<Sample> samples(total);
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> threads;
  if (rate > 0) {
    // Open loop: one thread per request, started at exponential gaps.
    std::mt19937_64 rng(42);
    std::exponential_distribution<double> gap(rate);
    auto at = start;
    for (int i = 0; i < total; ++i) {
      std::this_thread::sleep_until(at);
      threads.emplace_back([&, i] { samples[i] = run_one(i); });
      at += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(gap(rng)));
    }
  } else {
    for (int c = 0; c < absl::GetFlag(FLAGS_concurrency); ++c) {
      threads.emplace_back([&, c] {
        for (int i; (i = next.fetch_add(1)) < total;) samples[i] = run_one(c);
      });
    }
  }
  for (auto& t : threads) t.join();
  const double wall_s = std::chrono::duration<double>(Clock::now() - start).count();
  std::vector<double> ttft, server_ttft, overhead, tpot, itl, e2e;
  int64_t tokens = 0;
  int failed = 0;
  for (const Sample& s : samples) {
    if (!s.ok) {
      ++failed;
      continue;
    }
    tokens += s.tokens;
    ttft.push_back(s.ttft_s);
    server_ttft.push_back(s.server_ttft_s);
    overhead.push_back(s.ttft_s - s.server_ttft_s);
    e2e.push_back(s.e2e_s);
    if (s.tokens > 1) tpot.push_back((s.e2e_s - s.ttft_s) / (s.tokens - 1));
    itl.insert(itl.end(), s.itl_s.begin(), s.itl_s.end());
  }
  std::printf(
      "{\"protocol\":\"%s\",\"mode\":\"%s\",\"concurrency\":%d,\"rate\":%.3f,\"requests\":%d,"
      "\"failed\":%d,"
      "\"max_tokens\":%d,\"wall_s\":%.3f,\"output_tokens\":%lld,\"output_tokens_per_s\":%.1f,"
      "\"requests_per_s\":%.2f,\"ttft_s\":%s,\"server_ttft_s\":%s,\"ttft_overhead_s\":%s,\"tpot_"
      "s\":%s,\"itl_s\":%s,\"e2e_s\":%s}\n",
      http ? "http" : "grpc", rate > 0 ? "poisson" : "closed", absl::GetFlag(FLAGS_concurrency),
      rate, total, failed, absl::GetFlag(FLAGS_max_tokens), wall_s, static_cast<long long>(tokens),
      tokens / wall_s, (total - failed) / wall_s, Stats(ttft).c_str(), Stats(server_ttft).c_str(),
      Stats(overhead).c_str(), Stats(tpot).c_str(), Stats(itl).c_str(), Stats(e2e).c_str());
  return failed == 0 ? 0 : 1;
}
