// End-to-end tests of spanserve-server: the real binary on a loopback port, a real gRPC
// client (DESIGN.md §8, issue 6).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "grpc/reflection/v1alpha/reflection.grpc.pb.h"
#include "http_client.h"
#include "runtime/engine/engine.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;

struct StreamResult {
  grpc::Status status;
  std::vector<v1::GenerateChunk> chunks;
  std::vector<int32_t> ids() const {
    std::vector<int32_t> out;
    for (const auto& c : chunks) out.insert(out.end(), c.token_ids().begin(), c.token_ids().end());
    return out;
  }
  std::string text() const {
    std::string out;
    for (const auto& c : chunks) out += c.text();
    return out;
  }
};

v1::GenerateRequest GreedyRequest(const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(prompt);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  return r;
}

StreamResult RunGenerate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& request,
                         milliseconds timeout = milliseconds(120000),
                         const std::string& token = "") {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + timeout);
  if (!token.empty()) context.AddMetadata("authorization", "Bearer " + token);
  StreamResult result;
  auto reader = stub.Generate(&context, request);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) result.chunks.push_back(chunk);
  result.status = reader->Finish();
  return result;
}

v1::ModelInfo Info(v1::SpanServe::Stub& stub) {
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_TRUE(stub.GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  return info;
}

// True once the engine holds no running request and no KV block: what a cancelled or
// expired request must leave behind within a step or so.
bool WaitForIdleEngine(v1::SpanServe::Stub& stub, milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    const v1::ModelInfo info = Info(stub);
    if (info.num_requests_running() == 0 && info.num_requests_waiting() == 0 &&
        info.kv_blocks_used() == 0) {
      return true;
    }
    std::this_thread::sleep_for(milliseconds(5));
  }
  return false;
}

TEST(ServerTest, GenerateStreamsTheEnginesGreedyOutputInOrder) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const StreamResult result = RunGenerate(*stub, GreedyRequest("And God said", 40));
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  ASSERT_FALSE(result.chunks.empty());
  const uint64_t id = result.chunks[0].request_id();
  EXPECT_NE(id, 0u);
  for (size_t i = 0; i < result.chunks.size(); ++i) {
    EXPECT_EQ(result.chunks[i].request_id(), id);
    EXPECT_EQ(result.chunks[i].has_final(), i + 1 == result.chunks.size()) << "chunk " << i;
  }
  const v1::FinalInfo& final = result.chunks.back().final();

  // The same request through the engine in this process.
  auto tok = tokenizer::Tokenizer::FromFile(DefaultModelDir() + "/tokenizer.json");
  ASSERT_TRUE(tok.ok());
  engine::EngineOptions options;
  options.kv_cache_bytes = 64 << 20;
  options.detokenize = [t = tok->get()](std::span<const int32_t> ids, bool skip_special_tokens) {
    return t->Decode(ids, skip_special_tokens);
  };
  auto engine = engine::Engine::Create(DefaultModelDir(), options, /*num_threads=*/1);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine::Request request;
  request.prompt = *(*tok)->Encode("And God said", /*add_special_tokens=*/true);
  request.sampling.temperature = 0.0f;
  request.sampling.max_tokens = 40;
  auto handle = (*engine)->Submit(std::move(request));
  ASSERT_TRUE(handle.ok());
  std::vector<int32_t> expected_ids;
  std::string expected_text;
  engine::RequestOutput out;
  std::optional<engine::FinalInfo> expected_final;
  while (handle->stream->Next(&out)) {
    expected_ids.insert(expected_ids.end(), out.token_ids.begin(), out.token_ids.end());
    expected_text += out.text;
    if (out.final) expected_final = out.final;
  }
  EXPECT_EQ(result.ids(), expected_ids);
  EXPECT_EQ(result.text(), expected_text);
  ASSERT_TRUE(expected_final.has_value());
  EXPECT_EQ(final.generated_tokens(), expected_final->generated_tokens);
  EXPECT_EQ(final.prompt_tokens(), expected_final->prompt_tokens);
  EXPECT_EQ(final.finish_reason(), expected_final->reason == engine::FinishReason::kStop
                                       ? v1::FINISH_REASON_STOP
                                       : v1::FINISH_REASON_LENGTH);
  EXPECT_GT(final.timings().e2e_s(), 0.0);
  EXPECT_GE(final.timings().e2e_s(), final.timings().ttft_s());
  EXPECT_NE(server.log().find("\"event\":\"request_finished\""), std::string::npos);
}

TEST(ServerTest, TokenizeDetokenizeInfoAndLogprobs) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  v1::TokenizeResponse tokens;
  {
    grpc::ClientContext context;
    v1::TokenizeRequest request;
    request.set_text("In the beginning God created the heaven and the earth.");
    request.set_add_special_tokens(false);
    ASSERT_TRUE(stub->Tokenize(&context, request, &tokens).ok());
    EXPECT_GT(tokens.token_ids_size(), 3);
    EXPECT_EQ(tokens.tokens_size(), tokens.token_ids_size());
  }
  {
    grpc::ClientContext context;
    v1::DetokenizeRequest request;
    *request.mutable_token_ids() = tokens.token_ids();
    v1::DetokenizeResponse response;
    ASSERT_TRUE(stub->Detokenize(&context, request, &response).ok());
    EXPECT_EQ(response.text(), "In the beginning God created the heaven and the earth.");
  }
  const v1::ModelInfo info = Info(*stub);
  EXPECT_EQ(info.architecture(), "spanserve");
  EXPECT_EQ(info.norm_placement(), "span");
  EXPECT_FALSE(info.is_moe());
  EXPECT_EQ(info.max_model_len(), 1024);
  EXPECT_GT(info.kv_blocks_total(), 0);
  {
    grpc::ClientContext context;
    v1::ExpertLoad load;
    ASSERT_TRUE(stub->GetExpertLoad(&context, v1::GetExpertLoadRequest(), &load).ok());
    EXPECT_EQ(load.layers_size(), 0);
    EXPECT_NE(load.note(), "");
  }
  v1::GenerateRequest request = GreedyRequest("And God said", 5);
  request.mutable_sampling()->set_logprobs(3);
  const StreamResult result = RunGenerate(*stub, request);
  ASSERT_TRUE(result.status.ok());
  int n = 0;
  for (const auto& c : result.chunks) {
    ASSERT_EQ(c.logprobs_size(), c.token_ids_size());
    for (int i = 0; i < c.logprobs_size(); ++i) {
      EXPECT_EQ(c.logprobs(i).token_id(), c.token_ids(i));
      EXPECT_LE(c.logprobs(i).logprob(), 0.0f);
      ASSERT_EQ(c.logprobs(i).top_size(), 3);
      // Greedy: the chosen token is the most likely one.
      EXPECT_EQ(c.logprobs(i).top(0).token_id(), c.token_ids(i));
      ++n;
    }
  }
  EXPECT_EQ(n, 5);
}

// Tokenize takes at most 1/12 of --max_message_bytes of text (so that its answer fits): the
// text's own bytes, whatever else the request carries.
TEST(ServerTest, TokenizeBoundsTheTextItself) {
  ServerProcess server({"--max_message_bytes=120000"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  for (const int64_t n : {10000, 10001}) {
    v1::TokenizeRequest request;
    request.set_text(std::string(static_cast<size_t>(n), 'x'));
    request.set_model("spanserve-span-12l");
    v1::TokenizeResponse response;
    grpc::ClientContext context;
    const grpc::Status status = stub->Tokenize(&context, request, &response);
    if (n == 10000) {
      EXPECT_TRUE(status.ok()) << status.error_message();
    } else {
      EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
      EXPECT_NE(status.error_message().find("text: 10001 bytes"), std::string::npos)
          << status.error_message();
    }
  }
}

TEST(ServerTest, ScoreMatchesGenerateLogprobsAndGreedyness) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  // The greedy continuation of the context is greedy by definition, and its score is the
  // sum of the logprobs Generate reports for it.
  v1::GenerateRequest gen = GreedyRequest("In the beginning God", 4);
  gen.mutable_sampling()->set_logprobs(0);
  const StreamResult result = RunGenerate(*stub, gen);
  ASSERT_TRUE(result.status.ok());
  double sum = 0;
  for (const auto& c : result.chunks) {
    for (const auto& lp : c.logprobs()) sum += lp.logprob();
  }
  v1::ScoreRequest request;
  request.mutable_context()->set_text("In the beginning God");
  v1::TokenIds* greedy = request.add_continuations()->mutable_token_ids();
  for (int32_t id : result.ids()) greedy->add_ids(id);
  request.add_continuations()->set_text(" zebra quantum");
  v1::ScoreResponse response;
  grpc::ClientContext context;
  const grpc::Status status = stub->Score(&context, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.scores_size(), 2);
  EXPECT_TRUE(response.scores(0).is_greedy());
  EXPECT_EQ(response.scores(0).num_tokens(), 4);
  EXPECT_NEAR(response.scores(0).logprob(), sum, 1e-3);
  EXPECT_FALSE(response.scores(1).is_greedy());
  EXPECT_LT(response.scores(1).logprob(), response.scores(0).logprob());
}

TEST(ServerTest, SixtyFourConcurrentStreamsAllComplete) {
  ServerProcess server({});
  auto channel = server.Channel();
  std::vector<StreamResult> results(64);
  std::vector<std::thread> threads;
  for (int i = 0; i < 64; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::SpanServe::NewStub(channel);
      v1::GenerateRequest r = GreedyRequest(i % 2 ? "And God said" : "In the beginning", 24);
      r.mutable_sampling()->set_ignore_eos(true);
      results[i] = RunGenerate(*stub, r);
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < 64; ++i) {
    ASSERT_TRUE(results[i].status.ok()) << i << ": " << results[i].status.error_message();
    EXPECT_EQ(results[i].ids().size(), 24u) << i;
    // Greedy output does not depend on the batch.
    EXPECT_EQ(results[i].ids(), results[i % 2].ids()) << i;
  }
}

TEST(ServerTest, CancellationMidStreamFreesTheRequest) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::GenerateRequest r = GreedyRequest("And God said", 1000);
  r.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->Generate(&context, r);
  v1::GenerateChunk chunk;
  int tokens = 0;
  while (tokens < 3 && reader->Read(&chunk)) tokens += chunk.token_ids_size();
  ASSERT_GE(tokens, 3);
  context.TryCancel();
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForIdleEngine(*stub, milliseconds(2000)));
  EXPECT_TRUE(RunGenerate(*stub, GreedyRequest("And", 2)).status.ok());
}

TEST(ServerTest, ClientsVanishingAtRandomPointsLeaveTheServerHealthy) {
  ServerProcess server({});
  auto channel = server.Channel();
  std::vector<std::thread> threads;
  for (int i = 0; i < 32; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::SpanServe::NewStub(channel);
      for (int round = 0; round < 4; ++round) {
        grpc::ClientContext context;
        // Some calls expire, the others are cancelled after 0..7 chunks.
        if ((i + round) % 3 == 0) {
          context.set_deadline(std::chrono::system_clock::now() + milliseconds(5 + 7 * i));
        }
        v1::GenerateRequest r = GreedyRequest("And God said", 200);
        r.mutable_sampling()->set_ignore_eos(true);
        auto reader = stub->Generate(&context, r);
        v1::GenerateChunk chunk;
        for (int k = 0; k < (i * 7 + round) % 8 && reader->Read(&chunk); ++k) {
        }
        context.TryCancel();
        while (reader->Read(&chunk)) {
        }
        reader->Finish();
      }
    });
  }
  for (auto& t : threads) t.join();
  auto stub = v1::SpanServe::NewStub(channel);
  EXPECT_TRUE(WaitForIdleEngine(*stub, milliseconds(5000)));
  const StreamResult after = RunGenerate(*stub, GreedyRequest("And God said", 8));
  EXPECT_TRUE(after.status.ok()) << after.status.error_message();
  server.Signal(SIGTERM);
  EXPECT_EQ(server.Wait(seconds(30)), std::optional<int>(0)) << server.log();
}

TEST(ServerTest, AbortByRequestId) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  grpc::ClientContext context;
  v1::GenerateRequest r = GreedyRequest("And God said", 1000);
  r.mutable_sampling()->set_ignore_eos(true);
  auto reader = stub->Generate(&context, r);
  v1::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  grpc::ClientContext abort_context;
  v1::AbortRequest abort;
  abort.set_request_id(chunk.request_id());
  v1::AbortResponse response;
  ASSERT_TRUE(stub->Abort(&abort_context, abort, &response).ok());
  EXPECT_TRUE(response.aborted());
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  EXPECT_TRUE(WaitForIdleEngine(*stub, milliseconds(2000)));
}

TEST(ServerTest, DeadlineReachesTheEngine) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  v1::GenerateRequest r = GreedyRequest("And God said", 400);
  r.mutable_sampling()->set_ignore_eos(true);
  // The deadline is a quarter of the request's own time, so it ends mid-generation however
  // fast the engine is (a fixed 300 ms was once longer than the whole request).
  const auto whole_start = std::chrono::steady_clock::now();
  ASSERT_TRUE(RunGenerate(*stub, r).status.ok());
  const auto took =
      std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - whole_start);
  const auto start = std::chrono::steady_clock::now();
  const StreamResult result = RunGenerate(*stub, r, std::max(milliseconds(1), took / 4));
  EXPECT_EQ(result.status.error_code(), grpc::StatusCode::DEADLINE_EXCEEDED) << took.count();
  EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(5));
  EXPECT_TRUE(WaitForIdleEngine(*stub, milliseconds(2000)));
}

TEST(ServerTest, InvalidArgumentsNameTheFieldAndDoNotDisturbOthers) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  // A good request in flight while bad ones come and go.
  v1::GenerateRequest good = GreedyRequest("And God said", 64);
  good.mutable_sampling()->set_ignore_eos(true);
  StreamResult good_result;
  std::thread good_thread([&] { good_result = RunGenerate(*stub, good); });

  auto expect_invalid = [&](const v1::GenerateRequest& r, const std::string& field) {
    const StreamResult res = RunGenerate(*stub, r);
    EXPECT_EQ(res.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << field;
    EXPECT_NE(res.status.error_message().find(field), std::string::npos)
        << field << ": " << res.status.error_message();
  };
  v1::GenerateRequest r = GreedyRequest("", 4);
  expect_invalid(r, "prompt");
  r = GreedyRequest("x", 4);
  r.clear_prompt();
  expect_invalid(r, "prompt");
  r = GreedyRequest("x", 4);
  for (int i = 0; i < 1100; ++i) r.mutable_prompt()->mutable_token_ids()->add_ids(5);
  expect_invalid(r, "prompt");
  r = GreedyRequest("x", 4);
  r.mutable_prompt()->mutable_token_ids()->add_ids(999999);
  expect_invalid(r, "prompt.token_ids[0]");
  r = GreedyRequest("x", 4);
  r.mutable_sampling()->set_top_p(1.5f);
  expect_invalid(r, "top_p");
  r = GreedyRequest("x", 4);
  r.mutable_sampling()->set_temperature(-1.0f);
  expect_invalid(r, "temperature");
  r = GreedyRequest("x", 0);
  expect_invalid(r, "max_tokens");
  r = GreedyRequest("x", 4);
  r.mutable_sampling()->set_logprobs(1000);
  expect_invalid(r, "logprobs");

  good_thread.join();
  ASSERT_TRUE(good_result.status.ok()) << good_result.status.error_message();
  EXPECT_EQ(good_result.ids().size(), 64u);
}

TEST(ServerTest, FullQueueAnswersResourceExhaustedAtOnce) {
  ServerProcess server({"--max_num_seqs=1", "--max_waiting_requests=1"});
  auto channel = server.Channel();
  constexpr int kCalls = 6;
  std::vector<grpc::StatusCode> codes(kCalls);
  std::vector<double> seconds_taken(kCalls);
  std::vector<std::thread> threads;
  for (int i = 0; i < kCalls; ++i) {
    threads.emplace_back([&, i] {
      auto stub = v1::SpanServe::NewStub(channel);
      v1::GenerateRequest r = GreedyRequest("And God said", 200);
      r.mutable_sampling()->set_ignore_eos(true);
      const auto start = std::chrono::steady_clock::now();
      codes[i] = RunGenerate(*stub, r).status.error_code();
      seconds_taken[i] =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    });
  }
  for (auto& t : threads) t.join();
  int ok = 0;
  int exhausted = 0;
  double slowest_ok = 0;
  for (int i = 0; i < kCalls; ++i) {
    if (codes[i] == grpc::StatusCode::OK) {
      ++ok;
      slowest_ok = std::max(slowest_ok, seconds_taken[i]);
    }
    if (codes[i] == grpc::StatusCode::RESOURCE_EXHAUSTED) {
      ++exhausted;
      EXPECT_LT(seconds_taken[i], 1.0);  // rejected at once, not after waiting
    }
  }
  EXPECT_EQ(ok + exhausted, kCalls);
  EXPECT_GE(ok, 1);
  EXPECT_GE(exhausted, 1);
}

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

TEST(ServerTest, TlsWithAGeneratedCertificate) {
  const std::string dir = MakeTempDir("tls");
  const std::string cmd =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost "
      "-addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout " +
      dir + "/key.pem -out " + dir + "/cert.pem 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0);
  ServerProcess server({"--tls_cert=" + dir + "/cert.pem", "--tls_key=" + dir + "/key.pem"},
                       /*wait_serving=*/false);
  grpc::SslCredentialsOptions options;
  options.pem_root_certs = ReadAll(dir + "/cert.pem");
  auto channel = grpc::CreateChannel(server.address(), grpc::SslCredentials(options));
  auto stub = v1::SpanServe::NewStub(channel);
  const auto deadline = std::chrono::steady_clock::now() + seconds(60);
  StreamResult result;
  do {
    result = RunGenerate(*stub, GreedyRequest("And God said", 8));
  } while (result.status.error_code() == grpc::StatusCode::UNAVAILABLE &&
           std::chrono::steady_clock::now() < deadline);
  ASSERT_TRUE(result.status.ok()) << result.status.error_message();
  EXPECT_EQ(result.ids().size(), 8u);
  // A plaintext client cannot talk to it.
  auto plain = v1::SpanServe::NewStub(server.Channel());
  EXPECT_EQ(RunGenerate(*plain, GreedyRequest("And", 2), milliseconds(3000)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
}

TEST(ServerTest, BearerTokenAuth) {
  ServerProcess server({"--auth_token=s3cret"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::GenerateRequest r = GreedyRequest("And God said", 4);
  EXPECT_EQ(RunGenerate(*stub, r).status.error_code(), grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(RunGenerate(*stub, r, seconds(60), "wrong").status.error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_TRUE(RunGenerate(*stub, r, seconds(60), "s3cret").status.ok());
  grpc::ClientContext context;
  v1::ModelInfo info;
  EXPECT_EQ(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  // Health stays open for load balancers and probes.
  EXPECT_EQ(server.Health(), "SERVING");
}

TEST(ServerTest, HealthTransitionsAndGracefulDrain) {
  ServerProcess server({"--debug_load_delay_s=1.5", "--drain_grace_s=30"}, /*wait_serving=*/false);
  auto stub = v1::SpanServe::NewStub(server.Channel());
  EXPECT_EQ(server.Health(), "NOT_SERVING");
  EXPECT_EQ(server.Health("spanserve.v1.SpanServe"), "NOT_SERVING");
  EXPECT_EQ(RunGenerate(*stub, GreedyRequest("And", 2)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  ASSERT_TRUE(server.WaitForHealth("SERVING", seconds(60))) << server.log();
  EXPECT_EQ(server.Health("spanserve.v1.SpanServe"), "SERVING");

  // A long request in flight when SIGTERM arrives finishes; new calls are refused.
  v1::GenerateRequest r = GreedyRequest("And God said", 300);
  r.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, r);
  v1::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  int tokens = chunk.token_ids_size();
  server.Signal(SIGTERM);
  ASSERT_TRUE(server.WaitForHealth("NOT_SERVING", seconds(5)));
  EXPECT_EQ(RunGenerate(*stub, GreedyRequest("And", 2)).status.error_code(),
            grpc::StatusCode::UNAVAILABLE);
  while (reader->Read(&chunk)) tokens += chunk.token_ids_size();
  const grpc::Status status = reader->Finish();
  EXPECT_TRUE(status.ok()) << status.error_message();
  EXPECT_EQ(tokens, 300);
  EXPECT_EQ(server.Wait(seconds(30)), std::optional<int>(0)) << server.log();
}

TEST(ServerTest, DrainCancelsWhatOutlivesTheGracePeriod) {
  ServerProcess server({"--drain_grace_s=0.3"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  v1::GenerateRequest r = GreedyRequest("And God said", 1000);
  r.mutable_sampling()->set_ignore_eos(true);
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, r);
  v1::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  server.Signal(SIGINT);
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(server.Wait(seconds(30)), std::optional<int>(0)) << server.log();
}

// --threads beyond the CPUs the process may use would only make compute threads wait for
// each other: the server uses as many as there are, and says so.
TEST(ServerTest, ComputeThreadsAreNeverMoreThanTheCpus) {
  ServerProcess server({"--threads=1000"});
  const std::string log = server.log();
  std::smatch m;
  ASSERT_TRUE(std::regex_search(log, m,
                                std::regex(R"(on cpu \([a-z0-9]+, ([0-9]+) threads: 1000 asked, )"
                                           R"(([0-9]+) CPUs available\))")))
      << log;
  EXPECT_EQ(m[1], m[2]);
  EXPECT_LE(std::stoi(m[1]), static_cast<int>(std::thread::hardware_concurrency()));
}

TEST(ServerTest, ConfigFileSetsFlagsAndTheCommandLineWins) {
  const std::string dir = MakeTempDir("config");
  std::ofstream(dir + "/serve.json")
      << R"({"auth_token": "from-config", "max_waiting_requests": 7, "max_num_seqs": 5})";
  ServerProcess server({"--config=" + dir + "/serve.json", "--max_num_seqs=3"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  {
    grpc::ClientContext context;
    v1::ModelInfo info;
    EXPECT_EQ(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).error_code(),
              grpc::StatusCode::UNAUTHENTICATED);
  }
  grpc::ClientContext context;
  context.AddMetadata("authorization", "Bearer from-config");
  v1::ModelInfo info;
  ASSERT_TRUE(stub->GetModelInfo(&context, v1::GetModelInfoRequest(), &info).ok());
  EXPECT_EQ(info.max_waiting_requests(), 7);
  EXPECT_EQ(info.max_num_seqs(), 3);
}

TEST(ServerTest, MoeModelReportsExpertLoad) {
  ServerProcess server(
      {"--model=" + std::string(SPANSERVE_SOURCE_DIR) + "/models/spanserve-span-moe-12l"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  ASSERT_TRUE(RunGenerate(*stub, GreedyRequest("And God said", 8)).status.ok());
  const v1::ModelInfo info = Info(*stub);
  EXPECT_TRUE(info.is_moe());
  grpc::ClientContext context;
  v1::ExpertLoad load;
  ASSERT_TRUE(stub->GetExpertLoad(&context, v1::GetExpertLoadRequest(), &load).ok());
  ASSERT_GT(load.layers_size(), 0);
  for (const v1::LayerExpertLoad& layer : load.layers()) {
    ASSERT_EQ(layer.tokens_size(), info.num_experts());
    int64_t routed = 0;
    for (int64_t n : layer.tokens()) routed += n;
    // Each token goes to experts_per_token experts; the warm-up and this request ran.
    EXPECT_GT(routed, 0);
    EXPECT_EQ(routed % info.experts_per_token(), 0);
  }
}

TEST(ServerTest, ModelWithoutTokenizerServesTokenIds) {
  ServerProcess server(
      {"--model=" + std::string(SPANSERVE_SOURCE_DIR) + "/tests/data/models/span"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  v1::GenerateRequest r = GreedyRequest("x", 6);
  for (int id : {1, 5, 9, 13}) r.mutable_prompt()->mutable_token_ids()->add_ids(id);
  r.mutable_sampling()->set_ignore_eos(true);
  const StreamResult ok = RunGenerate(*stub, r);
  ASSERT_TRUE(ok.status.ok()) << ok.status.error_message();
  EXPECT_EQ(ok.ids().size(), 6u);
  const StreamResult text = RunGenerate(*stub, GreedyRequest("hello", 2));
  EXPECT_EQ(text.status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(text.status.error_message().find("prompt.text"), std::string::npos);
  grpc::ClientContext context;
  v1::TokenizeRequest request;
  request.set_text("hello");
  v1::TokenizeResponse response;
  EXPECT_EQ(stub->Tokenize(&context, request, &response).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
}

TEST(ServerTest, PrometheusMetrics) {
  const int metrics_port = FreePort();
  ServerProcess server({"--metrics_address=127.0.0.1:" + std::to_string(metrics_port)});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  ASSERT_TRUE(RunGenerate(*stub, GreedyRequest("And God said", 8)).status.ok());
  const std::string text = HttpGet(metrics_port, "/metrics").body;
  EXPECT_NE(text.find("spanserve_request_success_total{finished_reason=\"length\","
                      "model_name=\"spanserve-span-12l\"} 1"),
            std::string::npos)
      << text;
  EXPECT_NE(
      text.find("spanserve_time_to_first_token_seconds_count{model_name=\"spanserve-span-12l\"} 1"),
      std::string::npos)
      << text;
  EXPECT_NE(text.find("spanserve_kv_cache_usage_ratio"), std::string::npos);
}

TEST(ServerTest, Bf16KvCacheHoldsTwiceTheBlocksAndServes) {
  int32_t f32_blocks = 0;
  std::vector<int32_t> f32_tokens;
  {
    ServerProcess server({});
    auto stub = v1::SpanServe::NewStub(server.Channel());
    const v1::ModelInfo info = Info(*stub);
    EXPECT_EQ(info.kv_cache_dtype(), "f32");
    EXPECT_EQ(info.compute_dtype(), "f32");
    f32_blocks = info.kv_blocks_total();
    const StreamResult r = RunGenerate(*stub, GreedyRequest("And God said", 8));
    ASSERT_TRUE(r.status.ok());
    for (const auto& c : r.chunks)
      f32_tokens.insert(f32_tokens.end(), c.token_ids().begin(), c.token_ids().end());
  }
  ServerProcess server({"--kv_cache_dtype=bf16"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = Info(*stub);
  EXPECT_EQ(info.kv_cache_dtype(), "bf16");
  // The same --kv_cache_bytes buys twice the blocks (the pool is whole blocks, rounded down).
  EXPECT_GE(info.kv_blocks_total(), 2 * f32_blocks);
  EXPECT_LE(info.kv_blocks_total(), 2 * f32_blocks + 1);
  const StreamResult r = RunGenerate(*stub, GreedyRequest("And God said", 8));
  ASSERT_TRUE(r.status.ok());
  std::vector<int32_t> tokens;
  for (const auto& c : r.chunks)
    tokens.insert(tokens.end(), c.token_ids().begin(), c.token_ids().end());
  EXPECT_EQ(tokens.size(), 8u);
  // On the bundled model, 8 greedy tokens do not change with the cache's rounding.
  EXPECT_EQ(tokens, f32_tokens);

  try {
    ServerProcess bad({"--kv_cache_dtype=fp8"});
    ADD_FAILURE() << "a server with --kv_cache_dtype=fp8 started";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("kv_cache_dtype must be auto, f32 or bf16, got \"fp8\""),
              std::string::npos)
        << e.what();
  }
}

TEST(ServerTest, Bf16ComputeServesAndSaysSo) {
  try {
    ServerProcess bad({"--compute_dtype=fp8"});
    ADD_FAILURE() << "a server with --compute_dtype=fp8 started";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("compute_dtype must be auto, f32 or bf16, got \"fp8\""),
              std::string::npos)
        << e.what();
  }
  __builtin_cpu_init();
  const char* cap = std::getenv("SPANSERVE_MAX_ISA");
  if (!__builtin_cpu_supports("avx512bf16") || (cap != nullptr && std::string(cap) == "avx2")) {
    GTEST_SKIP() << "no AVX512_BF16 here (or SPANSERVE_MAX_ISA=avx2)";
  }
  ServerProcess server({"--compute_dtype=bf16"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const v1::ModelInfo info = Info(*stub);
  EXPECT_EQ(info.compute_dtype(), "bf16");
  const StreamResult r = RunGenerate(*stub, GreedyRequest("And God said", 8));
  ASSERT_TRUE(r.status.ok());
  int tokens = 0;
  for (const auto& c : r.chunks) tokens += c.token_ids_size();
  EXPECT_EQ(tokens, 8);
}

TEST(ServerTest, ReflectionListsTheService) {
  ServerProcess server({});
  auto stub = grpc::reflection::v1alpha::ServerReflection::NewStub(server.Channel());
  grpc::ClientContext context;
  auto stream = stub->ServerReflectionInfo(&context);
  grpc::reflection::v1alpha::ServerReflectionRequest request;
  request.set_list_services("");
  ASSERT_TRUE(stream->Write(request));
  grpc::reflection::v1alpha::ServerReflectionResponse response;
  ASSERT_TRUE(stream->Read(&response));
  std::set<std::string> names;
  for (const auto& s : response.list_services_response().service()) names.insert(s.name());
  EXPECT_TRUE(names.count("spanserve.v1.SpanServe"));
  EXPECT_TRUE(names.count("grpc.health.v1.Health"));
  // The service's file descriptor is served too, so tools can call it without the .proto.
  request.set_file_containing_symbol("spanserve.v1.SpanServe");
  ASSERT_TRUE(stream->Write(request));
  ASSERT_TRUE(stream->Read(&response));
  EXPECT_GT(response.file_descriptor_response().file_descriptor_proto_size(), 0);
  stream->WritesDone();
  EXPECT_TRUE(stream->Finish().ok());
}

}  // namespace
}  // namespace spanserve::testing
