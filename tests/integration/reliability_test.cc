// The defects an outside battery found in the server (issue 15), each through a real client
// against the real binary: a bad request fails alone, with its own status, and nothing
// else on the server or the connection is lost.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "nlohmann/json.hpp"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;
using std::chrono::milliseconds;
using std::chrono::seconds;

v1::GenerateRequest Request(const std::string& prompt, int max_tokens) {
  v1::GenerateRequest r;
  r.mutable_prompt()->set_text(prompt);
  r.mutable_sampling()->set_temperature(0.0f);
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_ignore_eos(true);
  return r;
}

struct Streamed {
  grpc::Status status;
  std::vector<v1::GenerateChunk> chunks;
  int tokens() const {
    int n = 0;
    for (const auto& c : chunks) n += c.token_ids_size();
    return n;
  }
};

Streamed Generate(v1::SpanServe::Stub& stub, const v1::GenerateRequest& r,
                  const std::vector<std::pair<std::string, std::string>>& metadata = {}) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + seconds(120));
  for (const auto& [k, v] : metadata) context.AddMetadata(k, v);
  Streamed out;
  auto reader = stub.Generate(&context, r);
  v1::GenerateChunk chunk;
  while (reader->Read(&chunk)) out.chunks.push_back(chunk);
  out.status = reader->Finish();
  return out;
}

// A good request streaming on the same channel for the whole of a test's body.
class Bystander {
 public:
  Bystander(v1::SpanServe::Stub& stub, int tokens)
      : thread_(
            [this, &stub, tokens] { result_ = Generate(stub, Request("And God said", tokens)); }) {}
  Streamed Join() {
    thread_.join();
    return result_;
  }

 private:
  Streamed result_;
  std::thread thread_;
};

bool Healthy(const ServerProcess& server) { return server.Health() == "SERVING"; }

TEST(ReliabilityTest, ExtremeSamplingValuesFailAloneOrServe) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  Bystander bystander(*stub, 48);
  // Once aborted the whole server on a failed check in the sampler: every seen token's
  // positive logit divided by a tiny penalty is +inf.
  for (float rp : {1e-38f, 1e-45f, 3.4e38f}) {
    for (float temperature : {1e-5f, 1.0f, 1e6f}) {
      v1::GenerateRequest r = Request("And God said, Let there be light", 6);
      r.mutable_sampling()->set_temperature(temperature);
      r.mutable_sampling()->set_repetition_penalty(rp);
      r.mutable_sampling()->set_top_p(0.5f);
      r.mutable_sampling()->set_min_p(1.0f);
      r.mutable_sampling()->set_frequency_penalty(2.0f);
      r.mutable_sampling()->set_presence_penalty(-2.0f);
      const Streamed res = Generate(*stub, r);
      ASSERT_TRUE(res.status.ok())
          << rp << " " << temperature << ": " << res.status.error_message();
      EXPECT_EQ(res.tokens(), 6);
    }
  }
  const Streamed b = bystander.Join();
  EXPECT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(b.tokens(), 48);
  EXPECT_TRUE(Healthy(server));
}

TEST(ReliabilityTest, RequestIdsAreUnguessableAndAbortAfterTheEndIsFalse) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  std::vector<uint64_t> ids;
  for (int i = 0; i < 8; ++i) {
    const Streamed res = Generate(*stub, Request("And God said", 2));
    ASSERT_TRUE(res.status.ok());
    ASSERT_FALSE(res.chunks.empty());
    ids.push_back(res.chunks.front().request_id());
    // Seen to the end: Abort must say it took no effect.
    grpc::ClientContext context;
    v1::AbortRequest abort;
    abort.set_request_id(ids.back());
    v1::AbortResponse response;
    ASSERT_TRUE(stub->Abort(&context, abort, &response).ok());
    EXPECT_FALSE(response.aborted()) << "request " << ids.back() << " had finished";
  }
  // Drawn at random: no two close together (sequential ids were 1, 2, 3, ...).
  for (size_t i = 0; i < ids.size(); ++i) {
    EXPECT_NE(ids[i], 0u);
    for (size_t j = 0; j < i; ++j) {
      const uint64_t gap = ids[i] > ids[j] ? ids[i] - ids[j] : ids[j] - ids[i];
      EXPECT_GT(gap, uint64_t{1} << 20) << ids[i] << " vs " << ids[j];
    }
  }
  // A live request is still found by its id, and its neighbours are not.
  grpc::ClientContext context;
  auto reader = stub->Generate(&context, Request("And God said", 1000));
  v1::GenerateChunk chunk;
  ASSERT_TRUE(reader->Read(&chunk));
  for (uint64_t guess : {chunk.request_id() + 1, chunk.request_id() - 1, uint64_t{1}}) {
    grpc::ClientContext c;
    v1::AbortRequest abort;
    abort.set_request_id(guess);
    v1::AbortResponse response;
    ASSERT_TRUE(stub->Abort(&c, abort, &response).ok());
    EXPECT_FALSE(response.aborted());
  }
  grpc::ClientContext c;
  v1::AbortRequest abort;
  abort.set_request_id(chunk.request_id());
  v1::AbortResponse response;
  ASSERT_TRUE(stub->Abort(&c, abort, &response).ok());
  EXPECT_TRUE(response.aborted());
  while (reader->Read(&chunk)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
}

TEST(ReliabilityTest, RequestLogStaysJsonAndEchoesAreBounded) {
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  constexpr char kNasty[] = "it's \"x\" \\ \x01\x02\n\x7f\0.";
  const std::string nasty(kNasty, sizeof(kNasty) - 1);  // the NUL byte included
  const std::string huge(100000, 'q');
  for (const std::string& id : {nasty, huge}) {
    v1::GenerateRequest r = Request("And God said", 2);
    r.set_client_request_id(id);
    ASSERT_TRUE(Generate(*stub, r).status.ok());
  }
  // NOT_FOUND names the model, bounded.
  v1::GenerateRequest r = Request("And God said", 2);
  r.set_model(std::string(100000, 'm'));
  const Streamed res = Generate(*stub, r);
  EXPECT_EQ(res.status.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_LT(res.status.error_message().size(), 1024u);
  EXPECT_NE(res.status.error_message().find("100000 bytes"), std::string::npos);

  std::this_thread::sleep_for(milliseconds(200));  // the log lines are written at the end
  std::istringstream log(server.log());
  std::string line;
  std::vector<std::string> ids;
  while (std::getline(log, line)) {
    if (line.find("\"request_finished\"") == std::string::npos) continue;
    EXPECT_LT(line.size(), 1024u);
    nlohmann::json j;
    ASSERT_NO_THROW(j = nlohmann::json::parse(line)) << line;
    ids.push_back(j.at("client_request_id").get<std::string>());
  }
  ASSERT_EQ(ids.size(), 2u);
  EXPECT_EQ(ids[0], nasty);
  EXPECT_EQ(ids[1].substr(0, 16), std::string(16, 'q'));
  EXPECT_LT(ids[1].size(), 200u);
}

TEST(ReliabilityTest, ScoreChecksItsLimitsBeforeExpanding) {
  ServerProcess server({"--max_waiting_requests=64"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const int64_t rss_before = RssKb(server.pid());
  // A long context with thousands of one-token continuations: refused before it is
  // expanded (it once cost ~8.6 KB of server memory per continuation).
  v1::ScoreRequest big;
  for (int i = 0; i < 400; ++i) big.mutable_context()->mutable_token_ids()->add_ids(100 + i);
  for (int i = 0; i < 50000; ++i) big.add_continuations()->mutable_token_ids()->add_ids(7);
  for (int round = 0; round < 3; ++round) {
    grpc::ClientContext context;
    v1::ScoreResponse response;
    const grpc::Status s = stub->Score(&context, big, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("continuations"), std::string::npos) << s.error_message();
  }
  // More than the waiting queue holds: refused as a whole, at once.
  v1::ScoreRequest over;
  over.mutable_context()->set_text("And God said");
  for (int i = 0; i < 100; ++i) over.add_continuations()->set_text(" light");
  {
    grpc::ClientContext context;
    v1::ScoreResponse response;
    EXPECT_EQ(stub->Score(&context, over, &response).error_code(),
              grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  if (!kSanitizedBuild) {
    EXPECT_LT(RssKb(server.pid()) - rss_before, 64 * 1024) << "kB of RSS growth";
  }

  // Scores of many continuations of one context equal the scores of each alone.
  v1::ScoreRequest many;
  many.mutable_context()->set_text(
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep.");
  const std::vector<std::string> words = {
      " And", " the", " Spirit", " zebra", " of God", " moved", " upon", " the face of the waters"};
  for (const auto& w : words) many.add_continuations()->set_text(w);
  grpc::ClientContext context;
  v1::ScoreResponse together;
  ASSERT_TRUE(stub->Score(&context, many, &together).ok());
  ASSERT_EQ(together.scores_size(), static_cast<int>(words.size()));
  for (size_t i = 0; i < words.size(); ++i) {
    v1::ScoreRequest one;
    *one.mutable_context() = many.context();
    one.add_continuations()->set_text(words[i]);
    grpc::ClientContext c;
    v1::ScoreResponse alone;
    ASSERT_TRUE(stub->Score(&c, one, &alone).ok());
    EXPECT_EQ(alone.context_tokens(), together.context_tokens());
    ASSERT_EQ(alone.scores(0).num_tokens(), together.scores(i).num_tokens()) << words[i];
    EXPECT_NEAR(alone.scores(0).logprob(), together.scores(i).logprob(), 1e-4) << words[i];
    EXPECT_EQ(alone.scores(0).is_greedy(), together.scores(i).is_greedy()) << words[i];
  }
}

TEST(ReliabilityTest, OversizedMetadataFailsAloneOnItsConnection) {
  ServerProcess server({});
  auto channel = server.Channel();
  auto stub = v1::SpanServe::NewStub(channel);
  Bystander bystander(*stub, 64);
  std::this_thread::sleep_for(milliseconds(100));
  for (size_t bytes : {9000u, 20000u, 200000u}) {
    const Streamed res =
        Generate(*stub, Request("And God said", 2), {{"x-big", std::string(bytes, 'a')}});
    // Refused by the server, per call (the transport takes up to 9 MiB).
    EXPECT_EQ(res.status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << bytes;
    EXPECT_NE(res.status.error_message().find("--max_metadata_bytes"), std::string::npos)
        << bytes << ": " << res.status.error_message();
  }
  // Many small headers add up too.
  std::vector<std::pair<std::string, std::string>> many;
  for (int i = 0; i < 400; ++i) many.emplace_back("x-h" + std::to_string(i), std::string(40, 'b'));
  EXPECT_FALSE(Generate(*stub, Request("And God said", 2), many).status.ok());
  const Streamed b = bystander.Join();
  EXPECT_TRUE(b.status.ok()) << b.status.error_message();
  EXPECT_EQ(b.tokens(), 64);
  // The channel is still good for the next call.
  EXPECT_TRUE(Generate(*stub, Request("And God said", 2), {{"x-small", "ok"}}).status.ok());
}

TEST(ReliabilityTest, HugeTokenizeIsRefusedAndHealthStaysPrompt) {
  ServerProcess server({"--max_message_bytes=16777216"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  // Over the bound: refused at once, naming the field, before any tokenizing.
  {
    v1::TokenizeRequest r;
    r.set_text(std::string(15 << 20, 'a'));
    grpc::ClientContext context;
    v1::TokenizeResponse response;
    const auto start = std::chrono::steady_clock::now();
    const grpc::Status s = stub->Tokenize(&context, r, &response);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    EXPECT_NE(s.error_message().find("text"), std::string::npos) << s.error_message();
    EXPECT_LT(std::chrono::steady_clock::now() - start, seconds(2));
  }
  // The largest accepted text, six at once: each answers (the answer fits), and health
  // answers well inside a Kubernetes probe's 1 s meanwhile.
  std::string text;
  const std::string verse = "And God said, Let there be light: and there was light. ";
  while (text.size() + verse.size() + 16 < (16u << 20) / 12) text += verse;  // 16: framing
  std::atomic<int> ok{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 6; ++i) {
    threads.emplace_back([&] {
      v1::TokenizeRequest r;
      r.set_text(text);
      grpc::ClientContext context;
      v1::TokenizeResponse response;
      const grpc::Status s = stub->Tokenize(&context, r, &response);
      if (s.ok() && response.token_ids_size() > 1000) ok.fetch_add(1);
      EXPECT_TRUE(s.ok()) << s.error_message();
    });
  }
  double worst = 0;
  for (int i = 0; i < 20; ++i) {
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(server.Health(), "SERVING");
    worst = std::max(
        worst, std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    std::this_thread::sleep_for(milliseconds(50));
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 6);
  // Inside the 1 s default timeout of a Kubernetes probe, sanitizers included.
  EXPECT_LT(worst, 1.0) << "seconds for a health check during tokenization";
}

TEST(ReliabilityTest, HugeDetokenizeIsRefusedAtOnce) {
  ServerProcess server({"--max_message_bytes=16777216"});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  v1::DetokenizeRequest r;
  for (int i = 0; i < 600000; ++i) r.add_token_ids(100 + i % 50);
  grpc::ClientContext context;
  v1::DetokenizeResponse response;
  const grpc::Status s = stub->Detokenize(&context, r, &response);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(s.error_message().find("token_ids"), std::string::npos) << s.error_message();
  // Within the bound: answered.
  v1::DetokenizeRequest ok;
  for (int i = 0; i < 100000; ++i) ok.add_token_ids(100 + i % 50);
  grpc::ClientContext c;
  EXPECT_TRUE(stub->Detokenize(&c, ok, &response).ok());
  EXPECT_GT(response.text().size(), 100000u);
}

TEST(ReliabilityTest, InvalidUtf8AnswersInvalidArgumentNamingTheField) {
  ServerProcess server({});
  auto channel = server.Channel();
  grpc::GenericStub generic(channel);
  // TokenizeRequest{text = "ab\xff"} and GenerateRequest{prompt{text = "\xc0\x80"}}, by hand.
  const std::string tokenize = std::string(
      "\x0a\x03"
      "ab\xff",
      5);
  const std::string generate = std::string("\x0a\x04\x0a\x02\xc0\x80", 6);
  for (const auto& [method, bytes, field] :
       std::vector<std::tuple<std::string, std::string, std::string>>{
           {"/spanserve.v1.SpanServe/Tokenize", tokenize, "text"},
           {"/spanserve.v1.SpanServe/Generate", generate, "prompt.text"}}) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + seconds(30));
    grpc::CompletionQueue cq;
    // Generate streams, but fails before its first message: a unary call sees its status.
    auto call = generic.PrepareUnaryCall(&context, method, request, &cq);
    grpc::ByteBuffer response;
    grpc::Status status;
    call->StartCall();
    call->Finish(&response, &status, reinterpret_cast<void*>(1));
    void* tag = nullptr;
    bool ok = false;
    ASSERT_TRUE(cq.Next(&tag, &ok));
    EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << method;
    EXPECT_NE(status.error_message().find(field), std::string::npos)
        << method << ": " << status.error_message();
    EXPECT_NE(status.error_message().find("UTF-8"), std::string::npos) << status.error_message();
    cq.Shutdown();
  }
  EXPECT_TRUE(Healthy(server));
}

}  // namespace
}  // namespace spanserve::testing
