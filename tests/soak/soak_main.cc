// spanserve_soak: a bounded soak of the real server over loopback (issue 15). It starts
// spanserve-server with a KV pool small enough to force preemption, records every valid
// request's output alone (unloaded), then runs a mix from many clients at once: valid
// greedy and seeded-sampling requests, Score calls sharing a context, malformed requests,
// cancellations and deadline-bound calls. It stops by itself (request count or time) and
// exits non-zero unless: the server never crashed, every valid output equals its unloaded
// run, every malformed request got its code, all KV blocks are free at the end, RSS grew
// under 5 % from the first to the last quarter, and SIGTERM drained to exit 0.
//
//   spanserve_soak [--requests=N] [--max_seconds=S] [--clients=C] [--seed=K]
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>

#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

struct Options {
  int requests = 2000;
  double max_seconds = 300;
  int clients = 16;
  uint64_t seed = 1;
};

Options ParseArgs(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&](const std::string& name) -> const char* {
      return a.rfind(name + "=", 0) == 0 ? a.c_str() + name.size() + 1 : nullptr;
    };
    if (const char* v = value("--requests")) {
      o.requests = std::atoi(v);
    } else if (const char* v = value("--max_seconds")) {
      o.max_seconds = std::atof(v);
    } else if (const char* v = value("--clients")) {
      o.clients = std::atoi(v);
    } else if (const char* v = value("--seed")) {
      o.seed = std::strtoull(v, nullptr, 10);
    } else {
      std::fprintf(stderr,
                   "usage: spanserve_soak [--requests=N] [--max_seconds=S] "
                   "[--clients=C] [--seed=K]\n");
      std::exit(2);
    }
  }
  return o;
}

struct Generated {
  grpc::Status status;
  std::vector<int32_t> ids;
  int preemptions = 0;
};

Generated RunGenerate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& r,
                      milliseconds timeout = milliseconds(300000), int cancel_after = -1,
                      const std::string& metadata_value = "") {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!metadata_value.empty()) context.AddMetadata("x-soak", metadata_value);
  Generated out;
  auto reader = stub.Generate(&context, r);
  v1::GenerateChunk chunk;
  int chunks = 0;
  while (reader->Read(&chunk)) {
    out.ids.insert(out.ids.end(), chunk.token_ids().begin(), chunk.token_ids().end());
    if (chunk.has_final()) out.preemptions = chunk.final().num_preemptions();
    if (++chunks == cancel_after) context.TryCancel();
  }
  out.status = reader->Finish();
  return out;
}

struct Scored {
  grpc::Status status;
  std::vector<double> logprobs;
};

Scored RunScore(v1::SpanServe::Stub& stub, const v1::ScoreRequest& r) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(300));
  v1::ScoreResponse response;
  Scored out;
  out.status = stub.Score(&context, r, &response);
  for (const auto& s : response.scores()) out.logprobs.push_back(s.logprob());
  return out;
}

// The valid requests, each with its output alone.
struct Valid {
  v1::GenerateRequest request;
  std::vector<int32_t> expected;
};

std::vector<Valid> ValidRequests() {
  const std::vector<std::string> prompts = {
      "And God said, Let there be light",
      "In the beginning God created the heaven and the earth. And the earth was without form",
      "The LORD is my shepherd; I shall not want.",
      "Blessed are the meek: for they shall inherit the earth.",
      "And it came to pass in those days, that there went out a decree from Caesar Augustus",
      "Vanity of vanities, saith the Preacher",
  };
  // Shared prefixes: the prefix cache serves them, and preemption takes its blocks back.
  const std::string prefix =
      "Now the serpent was more subtil than any beast of the field which the LORD God had made. "
      "And he said unto the woman, Yea, hath God said, Ye shall not eat of every tree of the "
      "garden? ";
  std::vector<Valid> out;
  for (size_t i = 0; i < prompts.size(); ++i) {
    for (const std::string& p : {prompts[i], prefix + prompts[i]}) {
      v1::GenerateRequest greedy;
      greedy.mutable_prompt()->set_text(p);
      greedy.mutable_sampling()->set_temperature(0.0f);
      greedy.mutable_sampling()->set_max_tokens(12 + static_cast<int>(i) * 6);
      greedy.mutable_sampling()->set_ignore_eos(true);
      out.push_back({greedy, {}});
      v1::GenerateRequest sampled = greedy;
      sampled.mutable_sampling()->set_temperature(0.9f);
      sampled.mutable_sampling()->set_top_p(0.9f);
      sampled.mutable_sampling()->set_top_k(40);
      sampled.mutable_sampling()->set_seed(1000 + i);
      sampled.mutable_sampling()->set_repetition_penalty(1.1f);
      out.push_back({sampled, {}});
    }
  }
  return out;
}

v1::ScoreRequest ScoreRequest() {
  v1::ScoreRequest r;
  r.mutable_context()->set_text(
      "And God called the light Day, and the darkness he called Night. And the evening and "
      "the morning were the first");
  for (const char* c : {" day.", " night.", " light", " zebra", " morning and evening"}) {
    r.add_continuations()->set_text(c);
  }
  return r;
}

// Malformed requests and the code each must get.
struct Malformed {
  std::string name;
  v1::GenerateRequest request;
  grpc::StatusCode code;
  std::string metadata;  // a value for an oversized header, if any
};

std::vector<Malformed> MalformedRequests() {
  v1::GenerateRequest base;
  base.mutable_prompt()->set_text("And God said");
  base.mutable_sampling()->set_max_tokens(4);
  std::vector<Malformed> out;
  auto add = [&](const std::string& name, grpc::StatusCode code, auto edit) {
    v1::GenerateRequest r = base;
    edit(r);
    out.push_back({name, r, code, ""});
  };
  add("top_p", grpc::StatusCode::INVALID_ARGUMENT,
      [](auto& r) { r.mutable_sampling()->set_top_p(2.0f); });
  add("temperature", grpc::StatusCode::INVALID_ARGUMENT,
      [](auto& r) { r.mutable_sampling()->set_temperature(-1.0f); });
  add("token_id", grpc::StatusCode::INVALID_ARGUMENT,
      [](auto& r) { r.mutable_prompt()->mutable_token_ids()->add_ids(1 << 30); });
  add("empty_prompt", grpc::StatusCode::INVALID_ARGUMENT,
      [](auto& r) { r.mutable_prompt()->set_text(""); });
  add("too_long", grpc::StatusCode::INVALID_ARGUMENT, [](auto& r) {
    for (int i = 0; i < 400; ++i) r.mutable_prompt()->mutable_token_ids()->add_ids(7);
  });
  add("unknown_model", grpc::StatusCode::NOT_FOUND,
      [](auto& r) { r.set_model(std::string(5000, 'm')); });
  add("stop_ids", grpc::StatusCode::INVALID_ARGUMENT, [](auto& r) {
    for (int i = 0; i < 100; ++i) r.mutable_sampling()->add_stop_token_ids(1);
  });
  add("rep_penalty", grpc::StatusCode::OK, [](auto& r) {  // accepted, and must not crash
    r.mutable_sampling()->set_temperature(1.0f);
    r.mutable_sampling()->set_repetition_penalty(1e-38f);
  });
  out.push_back({"metadata", base, grpc::StatusCode::RESOURCE_EXHAUSTED, std::string(20000, 'h')});
  return out;
}

// Invalid UTF-8 in TokenizeRequest.text, sent as bytes.
grpc::StatusCode InvalidUtf8(grpc::GenericStub& generic) {
  const std::string bytes(
      "\x0a\x03"
      "ab\xff",
      5);
  grpc::Slice slice(bytes);
  grpc::ByteBuffer request(&slice, 1);
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(60));
  grpc::CompletionQueue cq;
  auto call = generic.PrepareUnaryCall(&context, "/spanserve.v1.SpanServe/Tokenize", request, &cq);
  grpc::ByteBuffer response;
  grpc::Status status;
  call->StartCall();
  call->Finish(&response, &status, nullptr);
  void* tag = nullptr;
  bool ok = false;
  cq.Next(&tag, &ok);
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return status.error_code();
}

struct Tally {
  std::mutex mu;
  std::map<std::string, int> count;     // by kind
  std::map<std::string, int> failures;  // by kind: wrong output or wrong code
  std::vector<std::string> examples;
  int64_t preemptions = 0;
  void Add(const std::string& kind, bool ok, const std::string& why = "") {
    std::lock_guard<std::mutex> lock(mu);
    ++count[kind];
    if (!ok) {
      ++failures[kind];
      if (examples.size() < 20) examples.push_back(kind + ": " + why);
    }
  }
};

int Run(const Options& o) {
  std::printf("spanserve_soak: %d requests at most, %.0f s at most, %d clients, seed %llu\n",
              o.requests, o.max_seconds, o.clients, static_cast<unsigned long long>(o.seed));
  ServerProcess server({"--max_model_len=256", "--num_kv_blocks=24", "--max_num_seqs=16",
                        "--max_batched_tokens=256", "--drain_grace_s=60"});
  auto channel = server.Channel();
  auto stub = v1::SpanServe::NewStub(channel);
  grpc::GenericStub generic(channel);

  // Unloaded: each valid request alone.
  std::vector<Valid> valid = ValidRequests();
  for (Valid& v : valid) {
    const Generated g = RunGenerate(*stub, v.request);
    if (!g.status.ok()) {
      std::fprintf(stderr, "spanserve_soak: unloaded run failed: %s\n",
                   g.status.error_message().c_str());
      return 1;
    }
    v.expected = g.ids;
  }
  const v1::ScoreRequest score = ScoreRequest();
  const Scored score_alone = RunScore(*stub, score);
  if (!score_alone.status.ok()) return 1;
  const std::vector<Malformed> malformed = MalformedRequests();

  // RSS, sampled through the run.
  std::atomic<bool> running{true};
  std::vector<int64_t> rss;
  std::thread sampler([&] {
    while (running.load()) {
      rss.push_back(RssKb(server.pid()));
      std::this_thread::sleep_for(milliseconds(100));
    }
  });

  Tally tally;
  std::atomic<int> next{0};
  const auto start = Clock::now();
  const auto stop_at = start + std::chrono::duration_cast<Clock::duration>(
                                   std::chrono::duration<double>(o.max_seconds));
  std::vector<std::thread> clients;
  for (int c = 0; c < o.clients; ++c) {
    clients.emplace_back([&, c] {
      std::mt19937_64 rng(o.seed * 7919 + c);
      while (next.fetch_add(1) < o.requests && Clock::now() < stop_at) {
        const int roll = static_cast<int>(rng() % 100);
        if (roll < 50) {
          const Valid& v = valid[rng() % valid.size()];
          const Generated g = RunGenerate(*stub, v.request);
          tally.Add(
              "valid", g.status.ok() && g.ids == v.expected,
              g.status.ok() ? "output differs from the unloaded run" : g.status.error_message());
          std::lock_guard<std::mutex> lock(tally.mu);
          tally.preemptions += g.preemptions;
        } else if (roll < 60) {
          const Scored s = RunScore(*stub, score);
          bool same = s.status.ok() && s.logprobs.size() == score_alone.logprobs.size();
          for (size_t i = 0; same && i < s.logprobs.size(); ++i) {
            same = std::abs(s.logprobs[i] - score_alone.logprobs[i]) < 1e-5;
          }
          tally.Add("score", same, s.status.error_message());
        } else if (roll < 75) {
          const size_t k = rng() % (malformed.size() + 1);
          if (k == malformed.size()) {
            const grpc::StatusCode code = InvalidUtf8(generic);
            tally.Add("malformed", code == grpc::StatusCode::INVALID_ARGUMENT,
                      "utf8: code " + std::to_string(code));
            continue;
          }
          const Malformed& m = malformed[k];
          const Generated g = RunGenerate(*stub, m.request, milliseconds(300000), -1, m.metadata);
          tally.Add("malformed", g.status.error_code() == m.code,
                    m.name + ": code " + std::to_string(g.status.error_code()) + " " +
                        g.status.error_message());
        } else if (roll < 88) {
          // Cancelled after 1-3 chunks: CANCELLED, unless the whole output had come in those
          // chunks (a slow reader gets coalesced ones), which must then start as unloaded.
          const Valid& v = valid[rng() % valid.size()];
          v1::GenerateRequest r = v.request;
          r.mutable_sampling()->set_max_tokens(120);
          const Generated g =
              RunGenerate(*stub, r, milliseconds(300000), 1 + static_cast<int>(rng() % 3));
          const bool finished = g.status.ok() && g.ids.size() >= v.expected.size() &&
                                std::equal(v.expected.begin(), v.expected.end(), g.ids.begin());
          tally.Add("cancelled", g.status.error_code() == grpc::StatusCode::CANCELLED || finished,
                    "code " + std::to_string(g.status.error_code()));
        } else {
          // Past its deadline it ends DEADLINE_EXCEEDED; if it finishes first (the context
          // holds 256 tokens), its output starts with the unloaded run's.
          const Valid& v = valid[rng() % valid.size()];
          v1::GenerateRequest r = v.request;
          r.mutable_sampling()->set_max_tokens(200);
          const Generated g = RunGenerate(*stub, r, milliseconds(20 + rng() % 150));
          const bool finished = g.status.ok() && g.ids.size() >= v.expected.size() &&
                                std::equal(v.expected.begin(), v.expected.end(), g.ids.begin());
          tally.Add("deadline",
                    g.status.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED || finished,
                    "code " + std::to_string(g.status.error_code()));
        }
      }
    });
  }
  for (auto& t : clients) t.join();
  running.store(false);
  sampler.join();
  const double elapsed = std::chrono::duration<double>(Clock::now() - start).count();

  // Idle and whole: no running or waiting request, no KV block held.
  bool idle = false;
  v1::ModelInfo info;
  for (int i = 0; i < 500 && !idle; ++i) {
    grpc::ClientContext context;
    info.Clear();
    idle = stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok() &&
           info.num_requests_running() == 0 && info.num_requests_waiting() == 0 &&
           info.kv_blocks_used() == 0;
    if (!idle) std::this_thread::sleep_for(milliseconds(10));
  }
  const std::string health = server.Health();

  // RSS: mean of the first quarter of the samples against the last quarter.
  const size_t q = std::max<size_t>(1, rss.size() / 4);
  double first = 0, last = 0;
  for (size_t i = 0; i < q && i < rss.size(); ++i) first += static_cast<double>(rss[i]);
  for (size_t i = rss.size() - std::min(q, rss.size()); i < rss.size(); ++i) {
    last += static_cast<double>(rss[i]);
  }
  first /= static_cast<double>(q);
  last /= static_cast<double>(q);
  const double growth = first > 0 ? (last - first) / first : 0;

  server.Signal(SIGTERM);
  const std::optional<int> exit_code = server.Wait(seconds(90));

  int total = 0, failed = 0;
  std::printf("\n%-10s %9s %9s\n", "kind", "requests", "failures");
  for (const auto& [kind, n] : tally.count) {
    std::printf("%-10s %9d %9d\n", kind.c_str(), n, tally.failures[kind]);
    total += n;
    failed += tally.failures[kind];
  }
  std::printf("%-10s %9d %9d\n", "all", total, failed);
  std::printf("\n%.1f s, %.1f requests/s; preemptions seen by valid requests: %lld\n", elapsed,
              total / elapsed, static_cast<long long>(tally.preemptions));
  std::printf("KV blocks used at the end: %d of %d; running %d, waiting %d; health %s\n",
              info.kv_blocks_used(), info.kv_blocks_total(), info.num_requests_running(),
              info.num_requests_waiting(), health.c_str());
  std::printf("server RSS: first quarter %.1f MB, last quarter %.1f MB (%+.2f %%), %zu samples\n",
              first / 1024, last / 1024, growth * 100, rss.size());
  std::printf("SIGTERM: exit %s\n", exit_code ? std::to_string(*exit_code).c_str() : "none");
  for (const std::string& e : tally.examples) std::printf("  failure: %s\n", e.c_str());
  // Under a sanitizer RSS is mostly its shadow memory and quarantine, not the server's:
  // reported, not asserted (LeakSanitizer checks the server at its exit instead).
  if (kSanitizedBuild) std::printf("(RSS growth not asserted: sanitizer build)\n");
  const bool ok = failed == 0 && idle && health == "SERVING" &&
                  (kSanitizedBuild || growth < 0.05) && exit_code == std::optional<int>(0) &&
                  total > 0;
  std::printf("\nspanserve_soak: %s\n", ok ? "PASS" : "FAIL");
  if (!ok && exit_code != std::optional<int>(0)) std::printf("%s\n", server.log().c_str());
  return ok ? 0 : 1;
}

}  // namespace
}  // namespace spanserve::testing

int main(int argc, char** argv) {
  return spanserve::testing::Run(spanserve::testing::ParseArgs(argc, argv));
}
