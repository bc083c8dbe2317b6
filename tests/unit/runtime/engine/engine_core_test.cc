// The engine's invariants on a tiny model, stepping the core by hand: batch invariance,
// chunked prefill, prefix cache, preemption, stop conditions, logprobs, no leaked blocks.
#include "runtime/engine/engine_core.h"

#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <numeric>
#include <random>
#include <regex>
#include <thread>
#include <tuple>

#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/cuda_backend.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/grammar.h"
#include "runtime/engine/regex.h"
#include "test_model.h"

namespace spanserve::engine {
namespace {

using testing::Collected;

// The suite's backend: the CPU's, or with SPANSERVE_TEST_BACKEND=cuda_emu the CUDA backend on
// its CPU emulation, or =cuda the CUDA plugin (ctest runs the engine's invariants on each:
// tests/unit/runtime/engine/CMakeLists.txt).
class EngineCoreTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    const char* name = std::getenv("SPANSERVE_TEST_BACKEND");
    const std::string backend = name != nullptr ? name : "cpu";
    model::Model::Options options{.num_threads = 1};
    if (backend != "cpu") {
      absl::StatusOr<std::unique_ptr<kernels::Backend>> be =
          backend == "cuda_emu" ? kernels::cuda::CreateCudaBackend({})
                                : kernels::CreateBackend(backend, {});
      if (!be.ok()) {
        skip_ = be.status().ToString();
        return;
      }
      backend_ = std::move(*be).release();
      options.backend = backend_;
    }
    auto m = model::Model::Load(testing::TinyModelDir(), options);
    ASSERT_TRUE(m.ok()) << m.status();
    model_ = std::move(*m).release();
  }
  static void TearDownTestSuite() {
    delete model_;
    model_ = nullptr;
    delete backend_;
    backend_ = nullptr;
  }
  void SetUp() override {
    if (!skip_.empty()) GTEST_SKIP() << "no such backend here: " << skip_;
  }

  static EngineOptions Options() {
    EngineOptions o;
    o.num_kv_blocks = 256;
    o.max_batched_tokens = 64;
    o.max_num_seqs = 64;
    o.detokenize = testing::FakeDecode;
    return o;
  }

  struct Run {
    std::vector<Collected> out;
    std::map<std::pair<RequestId, int32_t>, std::vector<float>> logits;
    int64_t preemptions = 0;
    int64_t prefix_hits = 0;
  };

  // Runs `requests` in waves (each wave is added when the previous one is done; one wave
  // per request runs each alone). Checks the pool is whole at the end and that every
  // request got exactly one final output, as its last.
  static Run RunWaves(const EngineOptions& options, const std::vector<Request>& requests,
                      const std::vector<std::vector<int>>& waves, bool record_logits = false,
                      model::Model* model = nullptr) {
    auto core = EngineCore::Create(model != nullptr ? model : model_, options);
    EXPECT_TRUE(core.ok()) << core.status();
    Run run;
    if (record_logits) {
      (*core)->set_logits_observer([&run](RequestId id, int32_t pos, std::span<const float> l) {
        run.logits[{id, pos}].assign(l.begin(), l.end());
      });
    }
    std::vector<std::shared_ptr<RequestStream>> streams(requests.size());
    run.out.resize(requests.size());
    for (const auto& wave : waves) {
      for (int i : wave) {
        EXPECT_TRUE((*core)->ValidateRequest(requests[i]).ok());
        streams[i] = std::make_shared<RequestStream>(i + 1);
        (*core)->Add((*core)->MakeSequence(i + 1, requests[i], streams[i], /*seed=*/1000 + i));
      }
      for (int steps = 0; (*core)->Step(); ++steps) EXPECT_LT(steps, 100000);
    }
    for (size_t i = 0; i < requests.size(); ++i) {
      testing::DrainQueued(*streams[i], &run.out[i]);
      EXPECT_EQ(run.out[i].num_finals, 1) << "request " << i;
      EXPECT_TRUE(streams[i]->finished());
    }
    (*core)->blocks().CheckConsistency();
    EXPECT_EQ((*core)->blocks().num_used(), 0);
    EXPECT_EQ((*core)->blocks().num_free(), (*core)->blocks().num_blocks());
    run.preemptions = (*core)->scheduler().num_preemptions();
    run.prefix_hits = (*core)->scheduler().prefix_cache_hits();
    return run;
  }

  // The largest |logit difference| over the row's largest |logit|, between the rows both
  // runs recorded (with `prompts`: only positions inside request id's prompt); *compared
  // counts the rows.
  static double WorstLogitDifference(const Run& exact, const Run& other,
                                     const std::vector<Request>* prompts, int* compared) {
    double worst = 0;
    *compared = 0;
    for (const auto& [key, row] : exact.logits) {
      auto it = other.logits.find(key);
      const auto& [id, pos] = key;
      if (it == other.logits.end() ||
          (prompts != nullptr && pos >= static_cast<int32_t>((*prompts)[id - 1].prompt.size()))) {
        continue;
      }
      ++*compared;
      float scale = 0;
      for (float x : row) scale = std::max(scale, std::fabs(x));
      for (size_t i = 0; i < row.size(); ++i) {
        worst = std::max(worst, std::fabs(static_cast<double>(row[i]) - it->second[i]) / scale);
      }
    }
    return worst;
  }

  static std::vector<std::vector<int>> Alone(int n) {
    std::vector<std::vector<int>> w(n);
    for (int i = 0; i < n; ++i) w[i] = {i};
    return w;
  }
  static std::vector<std::vector<int>> Together(int n) {
    std::vector<int> all(n);
    std::iota(all.begin(), all.end(), 0);
    return {all};
  }

  // A golden case's greedy generations (golden.json "generations"): one greedy request per
  // prompt, as many tokens as transformers generated, EOS ignored; *want: those tokens.
  static std::vector<Request> GoldenGenerations(const std::string& dir,
                                                std::vector<std::vector<int32_t>>* want) {
    std::ifstream in(dir + "/golden.json");
    const nlohmann::json j = nlohmann::json::parse(in);
    std::vector<Request> gens;
    for (const auto& g : j.at("generations")) {
      Request r;
      r.prompt = g.at("prompt").get<std::vector<int32_t>>();
      want->push_back(g.at("tokens").get<std::vector<int32_t>>());
      r.sampling.temperature = 0;
      r.sampling.max_tokens = static_cast<int32_t>(want->back().size());
      r.sampling.ignore_eos = true;
      gens.push_back(std::move(r));
    }
    return gens;
  }

  static std::vector<Request> RandomRequests(int n, uint32_t seed, bool greedy) {
    std::mt19937 rng(seed);
    std::vector<Request> reqs(n);
    for (Request& r : reqs) {
      const int len = std::uniform_int_distribution<int>(1, 40)(rng);
      for (int i = 0; i < len; ++i) r.prompt.push_back(3 + rng() % 90);
      r.sampling.max_tokens = std::uniform_int_distribution<int>(1, 24)(rng);
      if (greedy) {
        r.sampling.temperature = 0;
      } else {
        r.sampling.temperature = 0.8f;
        r.sampling.top_p = 0.9f;
        r.sampling.top_k = 40;
        r.sampling.seed = rng();
      }
    }
    return reqs;
  }

  // The requests run one at a time; the same tokens come batched, and batched with so few
  // KV blocks that some are preempted. Returns the run alone.
  static Run RunAloneExpectingTheSameBatchedAndPreempted(const EngineOptions& options,
                                                         const std::vector<Request>& reqs) {
    const int n = static_cast<int>(reqs.size());
    Run alone = RunWaves(options, reqs, Alone(n));
    ExpectSameTokens(alone, RunWaves(options, reqs, Together(n)));
    EngineOptions tight = options;
    tight.num_kv_blocks = 12;
    const Run pressed = RunWaves(tight, reqs, Together(n));
    EXPECT_GT(pressed.preemptions, 0);
    ExpectSameTokens(alone, pressed);
    return alone;
  }

  static void ExpectSameTokens(const Run& a, const Run& b) {
    ASSERT_EQ(a.out.size(), b.out.size());
    for (size_t i = 0; i < a.out.size(); ++i) {
      EXPECT_EQ(a.out[i].tokens, b.out[i].tokens) << "request " << i;
      EXPECT_EQ(a.out[i].text, b.out[i].text) << "request " << i;
      EXPECT_EQ(a.out[i].final.reason, b.out[i].final.reason) << "request " << i;
    }
  }
  // Every logits row both runs computed is bit-identical; returns how many were compared.
  static int ExpectSameLogits(const Run& a, const Run& b) {
    int compared = 0;
    for (const auto& [key, row] : a.logits) {
      auto it = b.logits.find(key);
      if (it == b.logits.end()) continue;
      ++compared;
      EXPECT_EQ(0, std::memcmp(row.data(), it->second.data(), row.size() * sizeof(float)))
          << "request " << key.first << " position " << key.second;
    }
    return compared;
  }

  // For a model whose RoPE depends on the prompt's length (dynamic NTK, LongRoPE; context
  // 32, 128 positions, golden generations in `dir`/golden.json): chunked = whole prefill,
  // prefix cache on = off with the given hits of requests 1-4 and 6-7, and transformers'
  // greedy tokens alone, batched and under preemption.
  static void ExpectLengthDependentRopeInvariances(model::Model& m, const std::string& dir,
                                                   uint32_t seed,
                                                   const int (&cached_prompt_tokens)[6]) {
    // A shared 44-token prefix: requests 0-2 that prompt, 3 and 4 longer prompts over it, 5-7
    // shorter than the context (32) over its first 20 tokens; then 8 random ones.
    std::mt19937 rng(seed);
    std::vector<int32_t> shared(44);
    for (int32_t& t : shared) t = 3 + rng() % 90;
    std::vector<Request> reqs(16);
    for (size_t i = 0; i < reqs.size(); ++i) {
      Request& r = reqs[i];
      if (i < 3) {
        r.prompt = shared;
      } else if (i < 5) {
        r.prompt = shared;
        for (size_t j = 0; j < 2 * i; ++j) r.prompt.push_back(3 + rng() % 90);
      } else if (i < 8) {
        r.prompt.assign(shared.begin(), shared.begin() + 20);
        for (size_t j = 0; j < i; ++j) r.prompt.push_back(3 + rng() % 90);
      } else {
        const int len = std::uniform_int_distribution<int>(1, 70)(rng);
        for (int k = 0; k < len; ++k) r.prompt.push_back(3 + rng() % 90);
      }
      r.sampling.temperature = 0;
      r.sampling.max_tokens = 24;
      r.sampling.ignore_eos = true;
      r.sampling.prompt_logprobs = 0;  // logits at every prompt position
    }
    // Requests 0 and 5 first fill the prefix cache; the others then may hit it.
    const std::vector<std::vector<int>> waves = {{0, 5},
                                                 {1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}};
    EngineOptions chunked = Options();
    chunked.max_batched_tokens = 7;
    EngineOptions whole = Options();
    whole.enable_chunked_prefill = false;
    whole.max_batched_tokens = 128;
    whole.enable_prefix_caching = false;
    EngineOptions uncached = chunked;
    uncached.enable_prefix_caching = false;
    // Chunked = whole prefill, with the logits of every prompt position.
    const Run a = RunWaves(chunked, reqs, waves, true, &m);
    const Run b = RunWaves(whole, reqs, waves, true, &m);
    ExpectSameTokens(a, b);
    int prompt_positions = 0;
    for (const Request& r : reqs) prompt_positions += r.prompt.size();
    EXPECT_GE(ExpectSameLogits(a, b), prompt_positions);
    // Prefix cache on = off (without prompt logprobs, which keep a prompt from the cache): the
    // same tokens and the same logits at every generated position.
    std::vector<Request> plain = reqs;
    for (Request& r : plain) r.sampling.prompt_logprobs.reset();
    const Run on = RunWaves(chunked, plain, waves, true, &m);
    const Run off = RunWaves(uncached, plain, waves, true, &m);
    ExpectSameTokens(on, off);
    ExpectSameTokens(on, a);
    EXPECT_GE(ExpectSameLogits(on, off), 16 * 24);
    EXPECT_EQ(off.prefix_hits, 0);
    // Prefix-cache hits of requests 1-4 and 6-7, as the rotation regime allows them.
    const int cached_of[] = {1, 2, 3, 4, 6, 7};
    for (int k = 0; k < 6; ++k) {
      EXPECT_EQ(on.out[cached_of[k]].final.cached_prompt_tokens, cached_prompt_tokens[k])
          << "request " << cached_of[k];
    }

    // transformers' batch-1 greedy decoding with its KV cache (golden.json "generations"),
    // alone, together with the requests above, and under block pressure (preempted sequences
    // recompute their output as a prompt yet keep the rotation of the original one).
    std::vector<std::vector<int32_t>> want;
    const std::vector<Request> gens = GoldenGenerations(dir, &want);
    ASSERT_EQ(gens.size(), 2u);
    std::vector<Request> mixed = gens;
    mixed.insert(mixed.end(), reqs.begin() + 8, reqs.end());
    for (Request& r : mixed) r.sampling.prompt_logprobs.reset();
    const int n = static_cast<int>(mixed.size());
    EngineOptions tight = chunked;
    tight.num_kv_blocks = 8;  // one full-length sequence (128 tokens)
    for (const auto& [name, options, run_waves] :
         {std::tuple{"alone", Options(), Alone(n)}, std::tuple{"chunked", chunked, Together(n)},
          std::tuple{"pressured", tight, Together(n)}}) {
      SCOPED_TRACE(name);
      const Run run = RunWaves(options, mixed, run_waves, false, &m);
      for (size_t i = 0; i < gens.size(); ++i) EXPECT_EQ(run.out[i].tokens, want[i]) << i;
      if (std::string(name) == "pressured") {
        EXPECT_GT(run.preemptions, 0);
        EXPECT_GT(run.out[0].final.num_preemptions + run.out[1].final.num_preemptions, 0);
      }
    }
  }

  // The Gemma 2 / Gemma 3 checks (below): layer `local_layer` has `window`, `global_layer`
  // none.
  void ExpectGemmaInvariances(const std::string& name, const std::string& type, int local_layer,
                              int global_layer, int window);

  static model::Model* model_;
  static kernels::Backend* backend_;
  static std::string skip_;
};

model::Model* EngineCoreTest::model_ = nullptr;
kernels::Backend* EngineCoreTest::backend_ = nullptr;
std::string EngineCoreTest::skip_;

TEST_F(EngineCoreTest, GreedyOutputIsTheSameAloneAndTogether) {
  const std::vector<Request> reqs = RandomRequests(32, 1, /*greedy=*/true);
  const Run alone = RunWaves(Options(), reqs, Alone(32), true);
  const Run together = RunWaves(Options(), reqs, Together(32), true);
  ExpectSameTokens(alone, together);
  EXPECT_GT(ExpectSameLogits(alone, together), 32);
}

TEST_F(EngineCoreTest, SeededSamplingIsTheSameAloneAndTogether) {
  const std::vector<Request> reqs = RandomRequests(16, 2, /*greedy=*/false);
  ExpectSameTokens(RunWaves(Options(), reqs, Alone(16)), RunWaves(Options(), reqs, Together(16)));
  // And a different seed changes the output.
  std::vector<Request> other = reqs;
  for (Request& r : other) {
    r.sampling.seed = *r.sampling.seed + 1;
    r.sampling.max_tokens = 24;
  }
  std::vector<Request> same = reqs;
  for (Request& r : same) r.sampling.max_tokens = 24;
  const Run a = RunWaves(Options(), same, Together(16));
  const Run b = RunWaves(Options(), other, Together(16));
  int differ = 0;
  for (size_t i = 0; i < a.out.size(); ++i) differ += a.out[i].tokens != b.out[i].tokens;
  EXPECT_GT(differ, 8);
}

TEST_F(EngineCoreTest, ChunkedAndUnchunkedPrefillGiveTheSameLogits) {
  std::vector<Request> reqs = RandomRequests(8, 3, true);
  for (Request& r : reqs) r.sampling.prompt_logprobs = 0;  // logits at every prompt position
  EngineOptions chunked = Options();
  chunked.max_batched_tokens = 7;
  EngineOptions whole = Options();
  whole.enable_chunked_prefill = false;
  whole.max_batched_tokens = 128;
  const Run a = RunWaves(chunked, reqs, Together(8), true);
  const Run b = RunWaves(whole, reqs, Together(8), true);
  ExpectSameTokens(a, b);
  EXPECT_EQ(a.logits.size(), b.logits.size());
  int prompt_positions = 0;
  for (const Request& r : reqs) prompt_positions += r.prompt.size();
  EXPECT_GE(ExpectSameLogits(a, b), prompt_positions);
}

TEST_F(EngineCoreTest, PrefixCacheOnAndOffGiveTheSameLogits) {
  std::mt19937 rng(4);
  std::vector<int32_t> shared(40);
  for (int32_t& t : shared) t = 3 + rng() % 90;
  std::vector<Request> reqs(9);
  for (size_t i = 0; i < reqs.size(); ++i) {
    reqs[i].prompt = shared;
    for (size_t j = 0; j < i % 4; ++j) reqs[i].prompt.push_back(3 + rng() % 90);
    reqs[i].sampling.temperature = 0;
    reqs[i].sampling.max_tokens = 8;
  }
  // Request 0 first fills the cache; the others then hit it.
  std::vector<std::vector<int>> waves = {{0}, {1, 2, 3, 4, 5, 6, 7, 8}};
  EngineOptions on = Options();
  EngineOptions off = Options();
  off.enable_prefix_caching = false;
  const Run a = RunWaves(on, reqs, waves, true);
  const Run b = RunWaves(off, reqs, waves, true);
  EXPECT_GE(a.prefix_hits, 8 * 32);  // two full 16-token blocks each
  EXPECT_EQ(b.prefix_hits, 0);
  ExpectSameTokens(a, b);
  EXPECT_GE(ExpectSameLogits(a, b), 9 * 8);
  // Request 0's own prompt, repeated: identical, and served from the cache.
  for (size_t i = 1; i < reqs.size(); ++i) EXPECT_EQ(a.out[i].final.cached_prompt_tokens, 32);
}

// A bf16 KV cache: half the bytes per block; alone/together, chunked/whole and prefix cache
// on/off stay bit-identical; and the logits stay close to the exact f32 cache's.
TEST_F(EngineCoreTest, Bf16KvCacheKeepsTheInvariancesAndStaysCloseToF32) {
  std::vector<Request> reqs = RandomRequests(16, 7, /*greedy=*/true);
  for (Request& r : reqs) r.sampling.prompt_logprobs = 0;
  EngineOptions bf16 = Options();
  bf16.kv_cache_dtype = DType::kBF16;
  {
    auto f = EngineCore::Create(model_, Options());
    auto b = EngineCore::Create(model_, bf16);
    ASSERT_TRUE(f.ok() && b.ok());
    EXPECT_EQ((*b)->info().kv_cache_dtype, DType::kBF16);
    EXPECT_EQ((*f)->info().kv_cache_dtype, DType::kF32);
    EXPECT_EQ(2 * (*b)->info().kv_cache_bytes, (*f)->info().kv_cache_bytes);
  }
  const Run alone = RunWaves(bf16, reqs, Alone(16), true);
  const Run together = RunWaves(bf16, reqs, Together(16), true);
  ExpectSameTokens(alone, together);
  EXPECT_GT(ExpectSameLogits(alone, together), 16 * 2);

  EngineOptions chunked = bf16;
  chunked.max_batched_tokens = 7;
  chunked.enable_prefix_caching = false;
  const Run c = RunWaves(chunked, reqs, Together(16), true);
  ExpectSameTokens(c, together);
  EXPECT_EQ(c.logits.size(), together.logits.size());
  EXPECT_EQ(ExpectSameLogits(c, together), static_cast<int>(together.logits.size()));

  // Against the exact cache: every logit within 2 % of the row's largest magnitude.
  const Run exact = RunWaves(Options(), reqs, Together(16), true);
  int compared = 0;
  const double worst = WorstLogitDifference(exact, together, nullptr, &compared);
  EXPECT_GT(compared, 16 * 2);
  EXPECT_LT(worst, 0.02);
  EXPECT_GT(worst, 0.0);  // it is a different cache, not the f32 one
  std::printf("bf16 vs f32 KV: largest logit difference %.3g of the row's largest logit\n", worst);
}

// bf16 compute (Model::Options::compute_dtype) on a bf16 checkpoint: the same invariances
// as exact compute (alone = together, chunked = whole), and logits close to exact ones. On
// span_bf16 (k = 40, 72) and on the bundled dense model (k = 128, 384: multiples of 32, so
// its products run on AMX tiles where the CPU has them).
TEST_F(EngineCoreTest, Bf16ComputeKeepsTheInvariancesAndStaysCloseToF32) {
  if (!kernels::cpu::CpuHasBf16Dot()) GTEST_SKIP() << "this CPU has no AVX512_BF16";
  for (const std::string& dir :
       {testing::TinyModelDir("span_bf16"),
        std::string(SPANSERVE_SOURCE_DIR) + "/models/spanserve-span-12l"}) {
    SCOPED_TRACE(dir);
    auto bf16 = model::Model::Load(dir, {.num_threads = 1, .compute_dtype = DType::kBF16});
    auto f32 = model::Model::Load(dir, {.num_threads = 1});
    ASSERT_TRUE(bf16.ok() && f32.ok()) << bf16.status() << f32.status();
    {
      auto core = EngineCore::Create(bf16->get(), Options());
      ASSERT_TRUE(core.ok());
      EXPECT_EQ((*core)->info().compute_dtype, DType::kBF16);
    }
    std::vector<Request> reqs = RandomRequests(16, 9, /*greedy=*/true);
    for (Request& r : reqs) r.sampling.prompt_logprobs = 0;
    const Run alone = RunWaves(Options(), reqs, Alone(16), true, bf16->get());
    const Run together = RunWaves(Options(), reqs, Together(16), true, bf16->get());
    ExpectSameTokens(alone, together);
    EXPECT_GT(ExpectSameLogits(alone, together), 16 * 2);
    EngineOptions chunked = Options();
    chunked.max_batched_tokens = 7;
    chunked.enable_prefix_caching = false;
    const Run c = RunWaves(chunked, reqs, Together(16), true, bf16->get());
    ExpectSameTokens(c, together);
    EXPECT_EQ(ExpectSameLogits(c, together), static_cast<int>(together.logits.size()));

    // Against exact compute, over the prompts (greedy continuations may part ways at a near
    // tie): every logit within 5 % of the row's largest magnitude.
    const Run exact = RunWaves(Options(), reqs, Together(16), true, f32->get());
    int compared = 0;
    const double worst = WorstLogitDifference(exact, together, &reqs, &compared);
    EXPECT_GT(compared, 16 * 2);
    EXPECT_LT(worst, 0.05);  // span_bf16, 3 random layers: 0.021
    EXPECT_GT(worst, 0.0);   // the bf16 path did run
    std::printf("bf16 vs f32 compute: largest logit difference %.3g of the row's largest logit\n",
                worst);
  }
}

TEST_F(EngineCoreTest, EveryRequestCompletesCorrectlyUnderBlockPressure) {
  std::vector<Request> reqs = RandomRequests(12, 5, true);
  std::vector<Request> sampled = RandomRequests(12, 6, false);
  reqs.insert(reqs.end(), sampled.begin(), sampled.end());
  for (Request& r : reqs) {
    r.sampling.max_tokens = 40;
    r.sampling.ignore_eos = true;
  }
  EngineOptions tight = Options();
  tight.num_kv_blocks = 8;  // one full-length sequence (128 tokens)
  const Run pressured = RunWaves(tight, reqs, Together(24));
  const Run roomy = RunWaves(Options(), reqs, Together(24));
  EXPECT_GT(pressured.preemptions, 0);
  EXPECT_EQ(roomy.preemptions, 0);
  ExpectSameTokens(pressured, roomy);
  int preempted_requests = 0;
  for (const Collected& c : pressured.out) {
    EXPECT_EQ(c.final.reason, FinishReason::kLength);
    EXPECT_EQ(c.final.generated_tokens, 40);
    preempted_requests += c.final.num_preemptions > 0;
  }
  EXPECT_GT(preempted_requests, 0);
}

TEST_F(EngineCoreTest, StopStringsSpanTokensAndAreExcluded) {
  Request r;
  for (int i = 0; i < 10; ++i) r.prompt.push_back(5 + 7 * i);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = 12;
  r.sampling.ignore_eos = true;
  const Run base = RunWaves(Options(), {r}, Alone(1));
  const std::string text = base.out[0].text;
  ASSERT_EQ(text.size(), 24u);  // two letters per token
  EXPECT_EQ(text, testing::FakeDecode(base.out[0].tokens));
  // A stop string from the middle of token 2 to the middle of token 4.
  std::string stop = text.substr(5, 4);
  ASSERT_EQ(text.find(stop), 5u);
  r.sampling.stop = {"zzzzzz", stop};
  const Run cut = RunWaves(Options(), {r}, Alone(1));
  const Collected& c = cut.out[0];
  EXPECT_EQ(c.text, text.substr(0, 5));
  EXPECT_EQ(c.final.reason, FinishReason::kStop);
  EXPECT_EQ(c.final.stop_string, stop);
  ASSERT_EQ(c.tokens.size(), 5u);  // the match completes inside token 4
  EXPECT_TRUE(std::equal(c.tokens.begin(), c.tokens.end(), base.out[0].tokens.begin()));
  // Below min_tokens stop strings do not fire.
  r.sampling.min_tokens = 8;
  const Run late = RunWaves(Options(), {r}, Alone(1));
  EXPECT_EQ(late.out[0].tokens.size(), 12u);
  EXPECT_EQ(late.out[0].text, text);
}

TEST_F(EngineCoreTest, StopTokenIdsAndMinTokens) {
  Request r;
  r.prompt = {10, 20, 30, 40};
  r.sampling.temperature = 0;
  r.sampling.max_tokens = 10;
  r.sampling.ignore_eos = true;
  const Run base = RunWaves(Options(), {r}, Alone(1));
  const int32_t first = base.out[0].tokens[0];
  r.sampling.stop_token_ids = {first};
  const Run stopped = RunWaves(Options(), {r}, Alone(1));
  EXPECT_EQ(stopped.out[0].tokens, std::vector<int32_t>{first});
  EXPECT_EQ(stopped.out[0].final.reason, FinishReason::kStop);
  EXPECT_EQ(stopped.out[0].final.stop_token, first);
  EXPECT_EQ(stopped.out[0].text, "");  // the stop token's text is not output
  r.sampling.min_tokens = 3;
  const Run held = RunWaves(Options(), {r}, Alone(1));
  const std::vector<int32_t>& t = held.out[0].tokens;
  ASSERT_GE(t.size(), 3u);
  EXPECT_EQ(std::count(t.begin(), t.begin() + 3, first), 0);
}

// vLLM's include_stop_str_in_output and skip_special_tokens (FakeDecode: ids 0..2 are
// special, 2 is EOS).
TEST_F(EngineCoreTest, IncludeStopStrAndSpecialTokensInTheText) {
  Request r;
  for (int i = 0; i < 10; ++i) r.prompt.push_back(5 + 7 * i);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = 12;
  r.sampling.ignore_eos = true;
  const Run base = RunWaves(Options(), {r}, Alone(1));
  const std::string text = base.out[0].text;
  ASSERT_EQ(text.size(), 24u);
  // A stop string ending inside token 4: kept, and nothing after it.
  const std::string stop = text.substr(5, 4);
  ASSERT_EQ(text.find(stop), 5u);
  r.sampling.stop = {stop};
  r.sampling.include_stop_str_in_output = true;
  const Run cut = RunWaves(Options(), {r}, Alone(1));
  EXPECT_EQ(cut.out[0].text, text.substr(0, 9));
  EXPECT_EQ(cut.out[0].final.stop_string, stop);
  // A stop token id (the first token not seen before it, after the first): its text is kept.
  const std::vector<int32_t>& t = base.out[0].tokens;
  size_t k = 1;
  while (k < t.size() && std::find(t.begin(), t.begin() + k, t[k]) != t.begin() + k) ++k;
  ASSERT_LT(k, t.size());
  r.sampling.stop.clear();
  r.sampling.stop_token_ids = {t[k]};
  const Run stopped = RunWaves(Options(), {r}, Alone(1));
  EXPECT_EQ(stopped.out[0].tokens.size(), k + 1);
  EXPECT_EQ(stopped.out[0].text, text.substr(0, 2 * (k + 1)));
  r.sampling.include_stop_str_in_output = false;
  EXPECT_EQ(RunWaves(Options(), {r}, Alone(1)).out[0].text, text.substr(0, 2 * k));

  // Special tokens: left out of the text unless skip_special_tokens is false.
  Request s;
  s.prompt = {10, 20, 30, 40};
  s.sampling.temperature = 1;
  s.sampling.seed = 7;
  s.sampling.max_tokens = 24;
  s.sampling.ignore_eos = true;
  s.sampling.allowed_token_ids = {0, 1, 2, 40, 41};
  for (const bool skip : {true, false}) {
    s.sampling.skip_special_tokens = skip;
    const Collected c = RunWaves(Options(), {s}, Alone(1)).out[0];
    ASSERT_EQ(c.tokens.size(), 24u);
    EXPECT_GT(std::count_if(c.tokens.begin(), c.tokens.end(), [](int32_t t) { return t <= 2; }), 0);
    EXPECT_EQ(c.text, testing::FakeDecode(c.tokens, skip));
  }
  // EOS ends the output; its text is there only when included and not skipped.
  s.sampling.ignore_eos = false;
  s.sampling.allowed_token_ids = {2};
  for (const bool include : {false, true}) {
    for (const bool skip : {true, false}) {
      s.sampling.include_stop_str_in_output = include;
      s.sampling.skip_special_tokens = skip;
      const Collected c = RunWaves(Options(), {s}, Alone(1)).out[0];
      EXPECT_EQ(c.tokens, std::vector<int32_t>{2});
      EXPECT_EQ(c.final.stop_token, 2);
      EXPECT_EQ(c.text, include && !skip ? "<2>" : "");
    }
  }
}

// vLLM's allowed_token_ids and bad_words: sampled outputs keep to them, the same alone and
// batched.
TEST_F(EngineCoreTest, AllowedTokenIdsAndBadWordsHoldAloneAndBatched) {
  Request r;
  for (int i = 0; i < 8; ++i) r.prompt.push_back(3 + 11 * i);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = 16;
  r.sampling.ignore_eos = true;
  const std::vector<int32_t> base = RunWaves(Options(), {r}, Alone(1)).out[0].tokens;
  ASSERT_EQ(base.size(), 16u);
  // A one-token word is never generated; a two-token word never as a pair.
  Request single = r;
  single.sampling.bad_words = {{base[0]}};
  const std::vector<int32_t> a = RunWaves(Options(), {single}, Alone(1)).out[0].tokens;
  EXPECT_EQ(std::count(a.begin(), a.end(), base[0]), 0);
  Request pair = r;
  pair.sampling.bad_words = {{base[2], base[3]}};
  const std::vector<int32_t> b = RunWaves(Options(), {pair}, Alone(1)).out[0].tokens;
  EXPECT_TRUE(std::equal(base.begin(), base.begin() + 3, b.begin()));
  EXPECT_NE(b[3], base[3]);
  for (size_t i = 1; i < b.size(); ++i) {
    EXPECT_FALSE(b[i - 1] == base[2] && b[i] == base[3]) << i;
  }
  // Masks that leave nothing (only EOS allowed while min_tokens holds it back): the output
  // ends with no token, never with the argmax of an all -inf row (token 0).
  for (const float temperature : {0.0f, 1.0f}) {
    Request none = r;
    none.sampling.temperature = temperature;
    none.sampling.ignore_eos = false;
    none.sampling.min_tokens = 3;
    none.sampling.allowed_token_ids = {2};  // the tiny model's EOS
    const Run run = RunWaves(Options(), {none}, Alone(1));
    EXPECT_TRUE(run.out[0].tokens.empty()) << ::testing::PrintToString(run.out[0].tokens);
    EXPECT_EQ(run.out[0].final.reason, FinishReason::kStop);
  }
  // Sampled requests with a token set and bad words: alone and together alike.
  std::vector<Request> reqs;
  const std::vector<int32_t> allowed = {4, 9, 16, 25, 36, 49, 64, 81};
  for (int i = 0; i < 6; ++i) {
    Request q;
    for (int j = 0; j < 5 + i; ++j) q.prompt.push_back(7 + 13 * (i + j) % 90);
    q.sampling.temperature = 1.5f;
    q.sampling.seed = 100 + i;
    q.sampling.max_tokens = 20;
    q.sampling.ignore_eos = true;
    q.sampling.allowed_token_ids = allowed;
    q.sampling.bad_words = {{16}, {25, 36}};
    reqs.push_back(q);
  }
  const Run alone = RunWaves(Options(), reqs, Alone(6));
  const Run together = RunWaves(Options(), reqs, Together(6));
  for (int i = 0; i < 6; ++i) {
    const std::vector<int32_t>& t = alone.out[i].tokens;
    EXPECT_EQ(together.out[i].tokens, t) << i;
    ASSERT_EQ(t.size(), 20u);
    for (size_t k = 0; k < t.size(); ++k) {
      EXPECT_NE(std::find(allowed.begin(), allowed.end(), t[k]), allowed.end()) << t[k];
      EXPECT_NE(t[k], 16);
      if (k > 0) {
        EXPECT_FALSE(t[k - 1] == 25 && t[k] == 36);
      }
    }
  }
}

// JSON mode (ResponseFormat::kJsonObject) over token bytes given to the tiny vocabulary: every
// output's bytes are a JSON object's prefix, EOS comes only after the closing brace, a request
// that ignores EOS (or may not stop yet) ends at the brace, and the outputs are the same
// alone, batched and under preemption.
TEST_F(EngineCoreTest, JsonModeKeepsOutputsJsonObjectsAndTheInvariances) {
  const std::vector<std::string> fragments = {
      "{", "}",    "\"",     "a",        "1",    ":",    ",",   " ",  "[",
      "]", "true", "\"k\":", "{\"",      "\"}",  "null", "-",   "0",  ".",
      "5", "e",    "\\n",    "\xC3\xA9", "\xC3", "\xA9", "x\"", "]}", "\n"};
  constexpr int32_t kEos = 2;
  const auto bytes_of = [&](int32_t id) {
    return id == kEos ? std::string() : fragments[id % fragments.size()];
  };
  EngineOptions options = Options();
  options.token_bytes = std::make_shared<const TokenBytesTable>(97, bytes_of);
  std::vector<Request> reqs = RandomRequests(24, 9, /*greedy=*/false);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.sampling.response_format = ResponseFormat::kJsonObject;
    r.sampling.max_tokens = 40;
    if (i % 3 == 0) r.sampling.temperature = 0;
    if (i % 4 == 1) r.sampling.ignore_eos = true;
    if (i % 5 == 2) r.sampling.min_tokens = 30;
  }
  const Run alone = RunAloneExpectingTheSameBatchedAndPreempted(options, reqs);
  // A stop string that the text's last letter begins and nothing completes: the stop
  // matcher holds that letter back until the output ends.
  std::vector<Request> held = reqs;
  for (size_t i = 0; i < held.size(); ++i) {
    const std::string& text = alone.out[i].text;
    if (!text.empty()) held[i].sampling.stop = {text.substr(text.size() - 1) + "#"};
  }
  const Run held_back = RunWaves(options, held, Together(static_cast<int>(held.size())));
  ExpectSameTokens(alone, held_back);
  int complete = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Collected& c = alone.out[i];
    JsonMatcher m;
    for (size_t j = 0; j < c.tokens.size(); ++j) {
      if (c.tokens[j] == kEos) {
        EXPECT_TRUE(m.complete()) << "EOS before the closing brace";
        EXPECT_EQ(j + 1, c.tokens.size());
        EXPECT_FALSE(reqs[i].sampling.ignore_eos);
        break;
      }
      ASSERT_TRUE(m.Feed(bytes_of(c.tokens[j]))) << "token " << j;
    }
    // All of the text, none held back: an object ends the output where EOS may not yet.
    std::vector<int32_t> text_tokens = c.tokens;
    if (!text_tokens.empty() && text_tokens.back() == kEos) text_tokens.pop_back();
    EXPECT_EQ(c.text, testing::FakeDecode(text_tokens));
    if (c.final.reason == FinishReason::kStop) {
      EXPECT_TRUE(m.complete());
      ++complete;
    } else {
      EXPECT_EQ(c.tokens.size(), 40u);
    }
  }
  EXPECT_GT(complete, 4);
  // Without the table such a request is refused.
  auto core = EngineCore::Create(model_, Options());
  ASSERT_TRUE(core.ok());
  EXPECT_EQ((*core)->ValidateRequest(reqs[0]).code(), absl::StatusCode::kInvalidArgument);
}

// Structured outputs: every output is a prefix of a text the schema accepts (one with an
// anyOf of two objects that share a key, so two states stay open), EOS only after it is
// whole, and the outputs the same alone, batched and under preemption.
TEST_F(EngineCoreTest, JsonSchemaKeepsOutputsValidAndTheInvariances) {
  const std::vector<std::string> fragments = {
      "{",   "}",   "\"",    "a",     "1",  ":",      ",",      " ",        "[",     "]",
      "{\"", "\"}", "\"k\"", "\"a\"", "-",  "0",      "true",   "false",    "null",  "\"x\":",
      "b",   "k",   "2",     "x",     "\n", "\"b\":", "\"k\":", "\"a\": [", "], \"", "\"kind"};
  constexpr int32_t kEos = 2;
  const auto bytes_of = [&](int32_t id) {
    return id == kEos ? std::string() : fragments[id % fragments.size()];
  };
  const char* kSchema = R"({"anyOf": [
      {"type": "object", "properties": {"k": {"type": "integer"}, "a": {"type": "array",
       "items": {"enum": ["a", "b", true]}, "maxItems": 3}}, "required": ["k", "a"]},
      {"type": "object", "properties": {"k": {"type": "string", "maxLength": 2},
       "x": {"type": ["boolean", "null"]}}, "required": ["k"]}]})";
  auto schema = JsonSchema::Compile(kSchema);
  ASSERT_TRUE(schema.ok()) << schema.status();
  EngineOptions options = Options();
  options.token_bytes = std::make_shared<const TokenBytesTable>(97, bytes_of);
  std::vector<Request> reqs = RandomRequests(24, 9, /*greedy=*/false);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.sampling.response_format = ResponseFormat::kJsonSchema;
    r.sampling.json_schema = *schema;
    r.sampling.max_tokens = 40;
    if (i % 3 == 0) r.sampling.temperature = 0;
    if (i % 4 == 1) r.sampling.ignore_eos = true;
  }
  const Run alone = RunAloneExpectingTheSameBatchedAndPreempted(options, reqs);
  int complete = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Collected& c = alone.out[i];
    JsonState m(schema->get());
    std::string text;
    for (size_t j = 0; j < c.tokens.size(); ++j) {
      if (c.tokens[j] == kEos) {
        EXPECT_TRUE(m.complete()) << "EOS before the text is whole";
        EXPECT_EQ(j + 1, c.tokens.size());
        break;
      }
      text += bytes_of(c.tokens[j]);
      ASSERT_TRUE(m.Feed(bytes_of(c.tokens[j]))) << text;
    }
    if (c.final.reason == FinishReason::kStop) {
      ASSERT_TRUE(m.complete()) << text;
      ++complete;
      const nlohmann::json doc = nlohmann::json::parse(text);
      ASSERT_TRUE(doc.is_object()) << text;
      if (doc["k"].is_number_integer()) {
        EXPECT_TRUE(doc["a"].is_array() && doc["a"].size() <= 3) << text;
        EXPECT_EQ(doc.size(), 2u) << text;
      } else {
        EXPECT_TRUE(doc["k"].is_string() && doc["k"].get<std::string>().size() <= 2) << text;
      }
    } else {
      EXPECT_EQ(c.tokens.size(), 40u);
    }
  }
  EXPECT_GT(complete, 4);
}

// guided_regex (ResponseFormat::kRegex): every output's bytes are a prefix of a match, EOS
// comes only after a match, an output that may not stop there goes on to a longer match or
// ends where none goes on, and the outputs are the same alone, batched and under preemption.
TEST_F(EngineCoreTest, GuidedRegexKeepsOutputsMatchingAndTheInvariances) {
  const std::vector<std::string> fragments = {"a",  "b", "ab",  "c", "-",  "1",    "12",
                                              "x",  "(", "ba",  "5", "-9", "\xC3", "\xA9",
                                              "é1", " ", "abc", "0", "c-", "7"};
  constexpr int32_t kEos = 2;
  const auto bytes_of = [&](int32_t id) {
    return id == kEos ? std::string() : fragments[id % fragments.size()];
  };
  auto regex = RegexDfa::Compile("(?:ab|c|é)+-\\d{1,3}");
  ASSERT_TRUE(regex.ok()) << regex.status();
  EngineOptions options = Options();
  options.token_bytes = std::make_shared<const TokenBytesTable>(97, bytes_of);
  std::vector<Request> reqs = RandomRequests(24, 9, /*greedy=*/false);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.sampling.response_format = ResponseFormat::kRegex;
    r.sampling.regex = *regex;
    r.sampling.max_tokens = 40;
    if (i % 3 == 0) r.sampling.temperature = 0;
    if (i % 4 == 1) r.sampling.ignore_eos = true;
    if (i % 5 == 2) r.sampling.min_tokens = 6;
  }
  const Run alone = RunAloneExpectingTheSameBatchedAndPreempted(options, reqs);
  const std::regex whole("(?:ab|c|\xC3\xA9)+-[0-9]{1,3}");
  int matched = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Collected& c = alone.out[i];
    uint32_t state = (*regex)->start();
    std::string text;
    for (size_t j = 0; j < c.tokens.size(); ++j) {
      if (c.tokens[j] == kEos) {
        EXPECT_TRUE((*regex)->accepting(state)) << "EOS before a match: " << text;
        EXPECT_EQ(j + 1, c.tokens.size());
        EXPECT_FALSE(reqs[i].sampling.ignore_eos);
        EXPECT_GE(static_cast<int32_t>(j), reqs[i].sampling.min_tokens);
        break;
      }
      text += bytes_of(c.tokens[j]);
      state = (*regex)->Walk(state, bytes_of(c.tokens[j]));
      ASSERT_NE(state, RegexDfa::kDead) << text;
    }
    if (c.final.reason == FinishReason::kStop) {
      EXPECT_TRUE(std::regex_match(text, whole)) << text;
      // Without EOS (ignore_eos, min_tokens) it stops only where no longer match goes on.
      if (c.tokens.empty() || c.tokens.back() != kEos) {
        EXPECT_TRUE((*regex)->final(state)) << text;
      }
      ++matched;
    } else {
      EXPECT_EQ(c.tokens.size(), 40u);
    }
  }
  EXPECT_GT(matched, 4);
}

// A sentence of the grammar in GuidedGrammarKeepsOutputsSentencesAndTheInvariances, by
// recursive descent: item ("," item){0,3}, item = "(" item ")" | -?[0-9]{1,3} | (ab|c|é)+.
bool IsGrammarSentence(const std::string& s) {
  size_t i = 0;
  std::function<bool()> item = [&]() -> bool {
    if (i < s.size() && s[i] == '(') {
      ++i;
      if (!item() || i >= s.size() || s[i] != ')') return false;
      ++i;
      return true;
    }
    const size_t start = i;
    if (i < s.size() && s[i] == '-') ++i;
    size_t digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
    if (digits > 0 || i > start) return digits >= 1 && digits <= 3;
    size_t words = 0;
    for (;;) {
      if (s.compare(i, 2, "ab") == 0 || s.compare(i, 2, "\xC3\xA9") == 0) {
        i += 2;
      } else if (s.compare(i, 1, "c") == 0) {
        i += 1;
      } else {
        break;
      }
      ++words;
    }
    return words > 0;
  };
  if (!item()) return false;
  for (int k = 0; k < 3 && i < s.size() && s[i] == ','; ++k) {
    ++i;
    if (!item()) return false;
  }
  return i == s.size();
}

// GBNF guided decoding (ResponseFormat::kGrammar) over token bytes given to the tiny
// vocabulary: outputs are sentence prefixes token by token, EOS only after a sentence, an
// output without EOS stops only where nothing may follow, and outputs are the same alone,
// batched and preempted.
TEST_F(EngineCoreTest, GuidedGrammarKeepsOutputsSentencesAndTheInvariances) {
  const std::vector<std::string> fragments = {"a",  "b",   "ab", "c",  "-",  "1",    "12",   "(",
                                              ")",  ",",   "5",  "-9", "((", "\xC3", "\xA9", "é1",
                                              "))", "abc", "0",  "c,", "7",  "),",   ",("};
  constexpr int32_t kEos = 2;
  const auto bytes_of = [&](int32_t id) {
    return id == kEos ? std::string() : fragments[id % fragments.size()];
  };
  auto grammar = Grammar::Compile(R"gbnf(# nested items
root ::= item ("," item){0,3}
item ::= "(" item ")" | num | word
num  ::= "-"? [0-9]{1,3}
word ::= ("ab" | "c" | "\u00e9")+
)gbnf");
  ASSERT_TRUE(grammar.ok()) << grammar.status();
  EngineOptions options = Options();
  options.token_bytes = std::make_shared<const TokenBytesTable>(97, bytes_of);
  std::vector<Request> reqs = RandomRequests(24, 9, /*greedy=*/false);
  for (size_t i = 0; i < reqs.size(); ++i) {
    Request& r = reqs[i];
    r.sampling.response_format = ResponseFormat::kGrammar;
    r.sampling.grammar = *grammar;
    r.sampling.max_tokens = 40;
    if (i % 3 == 0) r.sampling.temperature = 0;
    if (i % 4 == 1) r.sampling.ignore_eos = true;
    if (i % 5 == 2) r.sampling.min_tokens = 6;
  }
  const Run alone = RunAloneExpectingTheSameBatchedAndPreempted(options, reqs);
  int sentences = 0;
  int nested = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "request " << i);
    const Collected& c = alone.out[i];
    GrammarState state(grammar->get());
    std::string text;
    for (size_t j = 0; j < c.tokens.size(); ++j) {
      if (c.tokens[j] == kEos) {
        EXPECT_TRUE(state.accepting()) << "EOS before a sentence: " << text;
        EXPECT_EQ(j + 1, c.tokens.size());
        EXPECT_FALSE(reqs[i].sampling.ignore_eos);
        EXPECT_GE(static_cast<int32_t>(j), reqs[i].sampling.min_tokens);
        break;
      }
      text += bytes_of(c.tokens[j]);
      ASSERT_TRUE(state.Feed(bytes_of(c.tokens[j]))) << text;
    }
    if (c.final.reason == FinishReason::kStop) {
      EXPECT_TRUE(IsGrammarSentence(text)) << text;
      if (c.tokens.empty() || c.tokens.back() != kEos) {
        EXPECT_TRUE(state.final()) << text;
      }
      ++sentences;
      nested += text.find('(') != std::string::npos;
    } else {
      EXPECT_EQ(c.tokens.size(), 40u);
    }
  }
  EXPECT_GT(sentences, 4);
  EXPECT_GT(nested, 0);
}

TEST_F(EngineCoreTest, LengthFinishesAtMaxTokensAndAtTheContext) {
  Request r;
  r.prompt.assign(120, 9);
  r.sampling.temperature = 0;
  r.sampling.ignore_eos = true;
  r.sampling.max_tokens = 100;
  const Run run = RunWaves(Options(), {r}, Alone(1));
  EXPECT_EQ(run.out[0].final.reason, FinishReason::kLength);
  EXPECT_EQ(run.out[0].final.generated_tokens, 8);  // 128 positions
  EXPECT_EQ(run.out[0].tokens.size(), 8u);
}

TEST_F(EngineCoreTest, LogprobsMatchPromptLogprobsOfTheSameTokens) {
  Request r;
  r.prompt = {4, 8, 15, 16, 23, 42};
  r.sampling.temperature = 0;
  r.sampling.ignore_eos = true;
  r.sampling.max_tokens = 6;
  r.sampling.logprobs = 3;
  const Run gen = RunWaves(Options(), {r}, Alone(1));
  const Collected& g = gen.out[0];
  ASSERT_EQ(g.logprobs.size(), 6u);
  for (size_t i = 0; i < 6; ++i) {
    EXPECT_EQ(g.logprobs[i].token, g.tokens[i]);
    ASSERT_EQ(g.logprobs[i].top.size(), 3u);
    EXPECT_EQ(g.logprobs[i].top[0].token, g.tokens[i]);  // greedy: the most likely
    EXPECT_EQ(g.logprobs[i].top[0].logprob, g.logprobs[i].logprob);
  }
  // Scoring prompt + generated (no generation) reports the same numbers.
  Request score;
  score.prompt = r.prompt;
  score.prompt.insert(score.prompt.end(), g.tokens.begin(), g.tokens.end());
  score.sampling.max_tokens = 0;
  score.sampling.prompt_logprobs = 2;
  const Run scored = RunWaves(Options(), {score}, Alone(1));
  const Collected& s = scored.out[0];
  EXPECT_EQ(s.final.reason, FinishReason::kLength);
  EXPECT_TRUE(s.tokens.empty());
  ASSERT_EQ(s.prompt_logprobs.size(), score.prompt.size() - 1);
  for (size_t i = 0; i < 6; ++i) {
    const PositionLogprobs& p = s.prompt_logprobs[r.prompt.size() - 1 + i];
    EXPECT_EQ(p.token, g.tokens[i]);
    EXPECT_EQ(p.logprob, g.logprobs[i].logprob) << i;
    EXPECT_EQ(p.top.size(), 2u);
  }
}

// Scoring continuations of one context (the Score RPC): logprobs from the context's end
// only, the context's blocks shared through the prefix cache, the numbers the same as a
// request that asks for every prompt position.
TEST_F(EngineCoreTest, PromptLogprobsFromAPositionShareTheContext) {
  std::vector<int32_t> context;
  for (int i = 0; i < 53; ++i) context.push_back((i * 7 + 3) % 90 + 1);
  const std::vector<std::vector<int32_t>> conts = {{5}, {6, 7, 8}, {9, 10}, {11}};
  std::vector<Request> full, from;
  for (const auto& c : conts) {
    Request r;
    r.prompt = context;
    r.prompt.insert(r.prompt.end(), c.begin(), c.end());
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 1;
    r.sampling.prompt_logprobs = 1;
    full.push_back(r);
    r.sampling.prompt_logprobs_from = static_cast<int32_t>(context.size());
    from.push_back(r);
  }
  const Run a = RunWaves(Options(), full, Alone(4));
  // The first computes the context; the others find its full blocks in the prefix cache.
  const Run b = RunWaves(Options(), from, {{0}, {1, 2, 3}});
  EXPECT_EQ(a.prefix_hits, 0);  // every position's logprobs: nothing may be skipped
  EXPECT_EQ(b.prefix_hits, 3 * 48);
  for (size_t i = 0; i < conts.size(); ++i) {
    const auto& want = a.out[i].prompt_logprobs;
    const auto& got = b.out[i].prompt_logprobs;
    ASSERT_EQ(want.size(), context.size() + conts[i].size() - 1);
    ASSERT_EQ(got.size(), conts[i].size()) << i;
    for (size_t j = 0; j < got.size(); ++j) {
      const PositionLogprobs& w = want[context.size() - 1 + j];
      EXPECT_EQ(got[j].token, w.token);
      EXPECT_EQ(got[j].logprob, w.logprob) << i << " " << j;
      ASSERT_EQ(got[j].top.size(), 1u);
      EXPECT_EQ(got[j].top[0].token, w.top[0].token);
    }
  }
}

TEST_F(EngineCoreTest, CancelAndDeadlineTakeEffectAtTheNextStepAndFreeBlocks) {
  auto core = *EngineCore::Create(model_, Options());
  Request r;
  r.prompt.assign(30, 7);
  r.sampling.max_tokens = 80;
  r.sampling.ignore_eos = true;
  auto cancel_stream = std::make_shared<RequestStream>(1);
  core->Add(core->MakeSequence(1, r, cancel_stream, 1));
  Request d = r;
  d.deadline = Clock::now() + std::chrono::milliseconds(30);
  auto deadline_stream = std::make_shared<RequestStream>(2);
  core->Add(core->MakeSequence(2, d, deadline_stream, 2));
  core->Step();
  core->Step();
  EXPECT_GT(core->blocks().num_used(), 0);
  cancel_stream->Cancel();
  core->Step();
  Collected c;
  testing::DrainQueued(*cancel_stream, &c);
  EXPECT_EQ(c.num_finals, 1);
  EXPECT_EQ(c.final.reason, FinishReason::kCancelled);
  EXPECT_EQ(c.final.generated_tokens, 2);
  std::this_thread::sleep_for(std::chrono::milliseconds(40));
  core->Step();
  Collected dc;
  testing::DrainQueued(*deadline_stream, &dc);
  EXPECT_EQ(dc.num_finals, 1);
  EXPECT_EQ(dc.final.reason, FinishReason::kDeadline);
  EXPECT_EQ(core->blocks().num_used(), 0);
  EXPECT_FALSE(core->has_work());
  core->blocks().CheckConsistency();
}

// A model whose every layer attends to its last 8 positions (hf_mistral_sliding): blocks
// wholly before the window go back to the pool as a sequence grows, so sequences of 110
// tokens (28 blocks of 4 each if kept) run, four at once, in a pool of 14 blocks; every
// logit is still bit-identical to a whole-sequence forward pass that keeps every block.
TEST_F(EngineCoreTest, SlidingWindowGivesBackBlocksBeforeTheWindowAndKeepsEveryLogit) {
  model::Model::Options mo;
  mo.num_threads = 1;
  mo.backend = backend_;
  auto loaded = model::Model::Load(testing::TinyModelDir("hf_mistral_sliding"), mo);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  model::Model& m = **loaded;
  ASSERT_EQ(m.config().KvWindow(), 8);
  EngineOptions o = Options();
  o.block_size = 4;
  o.num_kv_blocks = 14;
  o.max_batched_tokens = 8;
  std::mt19937 rng(9);
  std::vector<Request> reqs(4);
  for (Request& r : reqs) {
    const int len = std::uniform_int_distribution<int>(30, 50)(rng);
    for (int i = 0; i < len; ++i) r.prompt.push_back(3 + rng() % 90);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 60;
    r.sampling.ignore_eos = true;
    r.sampling.prompt_logprobs = 0;  // logits at every prompt position too
  }
  reqs.push_back(reqs[0]);  // again, after the others: its early blocks may be cached
  const Run run = RunWaves(o, reqs, {{0, 1, 2, 3}, {4}}, /*record_logits=*/true, &m);
  EXPECT_EQ(run.out[4].tokens, run.out[0].tokens);

  // The reference: each whole sequence in one pass, every block kept.
  const model::ModelConfig& c = m.config();
  auto cache = *model::KvCache::Create(m.backend(), c, 4, 32);
  model::ForwardWorkspace ws(m.backend());
  std::vector<int32_t> table(32);
  std::iota(table.begin(), table.end(), 0);
  int compared = 0;
  for (size_t i = 0; i < reqs.size(); ++i) {
    ASSERT_EQ(run.out[i].tokens.size(), 60u) << "request " << i;
    std::vector<int32_t> seq(reqs[i].prompt.begin(), reqs[i].prompt.end());
    seq.insert(seq.end(), run.out[i].tokens.begin(), run.out[i].tokens.end() - 1);
    const model::SequenceInput s{seq, 0, table, model::LogitsMode::kAll};
    std::vector<float> ref(seq.size() * c.vocab_size);
    ASSERT_TRUE(m.Forward({&s, 1}, *cache, ws, ref.data()).ok());
    for (size_t pos = 0; pos < seq.size(); ++pos) {
      auto it = run.logits.find({static_cast<RequestId>(i + 1), static_cast<int32_t>(pos)});
      if (it == run.logits.end()) continue;
      ++compared;
      ASSERT_EQ(0, std::memcmp(it->second.data(), ref.data() + pos * c.vocab_size,
                               c.vocab_size * sizeof(float)))
          << "request " << i << " position " << pos;
    }
  }
  EXPECT_GE(compared, 4 * (30 + 59));

  // The model reads a released entry (-1) only where no layer looks: before the window of
  // the first new position.
  std::vector<float> logits(c.vocab_size);
  const std::vector<int32_t> one = {5};
  const std::vector<int32_t> early = {-1, 0, 1, 2};
  model::SequenceInput ok{one, 12, early, model::LogitsMode::kLast};  // reads 5..12
  EXPECT_TRUE(m.Forward({&ok, 1}, *cache, ws, logits.data()).ok());
  model::SequenceInput bad{one, 10, early, model::LogitsMode::kLast};  // reads 3..10
  const absl::Status st = m.Forward({&bad, 1}, *cache, ws, logits.data());
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
}

// Gemma 2 (hf_gemma2: a window of 6 on layers 0 and 2, full attention on 1 and 3, soft-capped
// scores and logits) and Gemma 3 (hf_gemma3: a window of 5 and RoPE base 100 on the local
// layers, full attention with scaled RoPE on 2 and 5), in blocks of 4: transformers' greedy
// tokens alone, batched, chunked and under preemption; chunked = whole prefill and prefix
// cache on = off, logit for logit; and since the full-attention layers read every position
// no block is given back early: every logit equals a whole-sequence forward pass over blocks
// all kept.
void EngineCoreTest::ExpectGemmaInvariances(const std::string& name, const std::string& type,
                                            int local_layer, int global_layer, int window) {
  model::Model::Options mo;
  mo.num_threads = 1;
  mo.backend = backend_;
  const std::string dir = testing::TinyModelDir(name);
  auto loaded = model::Model::Load(dir, mo);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  model::Model& m = **loaded;
  const model::ModelConfig& c = m.config();
  ASSERT_EQ(c.model_type, type);
  ASSERT_EQ(c.LayerSlidingWindow(local_layer), window);
  ASSERT_EQ(c.LayerSlidingWindow(global_layer), 0);
  ASSERT_EQ(c.KvWindow(), 0);

  std::vector<std::vector<int32_t>> want;
  std::vector<Request> reqs = GoldenGenerations(dir, &want);
  ASSERT_EQ(reqs.size(), 2u);
  // Requests over the first generation's prompt and more (prefix-cache hits of its first
  // block), and random ones.
  std::mt19937 rng(13);
  for (int i = 0; i < 8; ++i) {
    Request r;
    if (i < 3) r.prompt = reqs[0].prompt;
    const int len = std::uniform_int_distribution<int>(1, 30)(rng);
    for (int k = 0; k < len; ++k) r.prompt.push_back(3 + rng() % 90);
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 20;
    r.sampling.ignore_eos = true;
    reqs.push_back(std::move(r));
  }
  const int n = static_cast<int>(reqs.size());
  EngineOptions chunked = Options();
  chunked.block_size = 4;
  chunked.max_batched_tokens = 7;
  EngineOptions whole = chunked;
  whole.enable_chunked_prefill = false;
  whole.max_batched_tokens = 128;
  whole.enable_prefix_caching = false;
  EngineOptions tight = chunked;
  tight.max_model_len = 64;
  tight.num_kv_blocks = 16;  // one 64-token sequence
  const std::vector<std::vector<int>> waves = {{0}, {1, 2, 3, 4, 5, 6, 7, 8, 9}};
  const Run a = RunWaves(chunked, reqs, waves, true, &m);
  const Run b = RunWaves(whole, reqs, waves, true, &m);
  const Run alone = RunWaves(chunked, reqs, Alone(n), false, &m);
  const Run pressured = RunWaves(tight, reqs, Together(n), false, &m);
  for (int i = 0; i < 2; ++i) {
    EXPECT_EQ(a.out[i].tokens, want[i]) << i;
    EXPECT_EQ(alone.out[i].tokens, want[i]) << i;
    EXPECT_EQ(pressured.out[i].tokens, want[i]) << i;
  }
  ExpectSameTokens(a, b);
  ExpectSameTokens(a, alone);
  ExpectSameTokens(a, pressured);
  EXPECT_GE(ExpectSameLogits(a, b), 2 * 16);
  EXPECT_GT(a.prefix_hits, 0);
  EXPECT_EQ(b.prefix_hits, 0);
  EXPECT_GT(pressured.preemptions, 0);

  // Each generated position's logits: a whole-sequence forward pass, every block kept.
  auto cache = *model::KvCache::Create(m.backend(), c, 4, 32);
  model::ForwardWorkspace ws(m.backend());
  std::vector<int32_t> table(32);
  std::iota(table.begin(), table.end(), 0);
  int compared = 0;
  for (int i = 0; i < n; ++i) {
    std::vector<int32_t> seq(reqs[i].prompt.begin(), reqs[i].prompt.end());
    seq.insert(seq.end(), a.out[i].tokens.begin(), a.out[i].tokens.end() - 1);
    const model::SequenceInput s{seq, 0, table, model::LogitsMode::kAll};
    std::vector<float> ref(seq.size() * c.vocab_size);
    ASSERT_TRUE(m.Forward({&s, 1}, *cache, ws, ref.data()).ok());
    for (size_t pos = reqs[i].prompt.size() - 1; pos < seq.size(); ++pos) {
      auto it = a.logits.find({static_cast<RequestId>(i + 1), static_cast<int32_t>(pos)});
      ASSERT_NE(it, a.logits.end()) << "request " << i << " position " << pos;
      ++compared;
      ASSERT_EQ(0, std::memcmp(it->second.data(), ref.data() + pos * c.vocab_size,
                               c.vocab_size * sizeof(float)))
          << "request " << i << " position " << pos;
    }
  }
  EXPECT_GE(compared, 24 + 16 + 8 * 20);
}

TEST_F(EngineCoreTest, Gemma2KeepsTheInvariancesAndEqualsTransformersGenerate) {
  ExpectGemmaInvariances("hf_gemma2", "gemma2", 0, 1, 6);
}

TEST_F(EngineCoreTest, Gemma3KeepsTheInvariancesAndEqualsTransformersGenerate) {
  ExpectGemmaInvariances("hf_gemma3", "gemma3_text", 0, 2, 5);
}

// Dynamic NTK RoPE (max_position_embeddings 32, factor 4): prompts within and past the
// context; chunked = whole prefill, prefix cache on = off (a prompt past the context rotates
// its tokens for its own length, so it shares blocks only with prompts of that length),
// preemption's recompute = no preemption, and transformers' greedy generate.
TEST_F(EngineCoreTest, DynamicRopeKeepsTheInvariancesAndEqualsTransformersGenerate) {
  model::Model::Options mo;
  mo.num_threads = 1;
  mo.backend = backend_;
  const std::string dir = testing::TinyModelDir("hf_llama_dynamic");
  auto loaded = model::Model::Load(dir, mo);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  model::Model& m = **loaded;
  ASSERT_EQ(m.config().rope_scaling.type, model::RopeScalingType::kDynamic);
  ASSERT_EQ(m.config().max_position_embeddings, 32);
  ASSERT_EQ(m.config().MaxPositions(), 128);

  // The same 44-token prompt shares its two full blocks, a prompt below the context its
  // first (16 of the 20 tokens in common); the longer prompts over the 44 share none
  // (rotated for another length).
  ExpectLengthDependentRopeInvariances(m, dir, 11, {32, 32, 0, 0, 16, 16});
}

// LongRoPE (Phi-3; original_max_position_embeddings 32, max_position_embeddings 128):
// chunked = whole prefill, prefix cache on = off (every prompt past 32 tokens rotates all its
// tokens with the long factors, so such prompts share one chain of their own, apart from the
// prompts up to 32), preemption's recompute = no preemption, and transformers' greedy
// decoding with its KV cache.
TEST_F(EngineCoreTest, LongRopeKeepsTheInvariancesAndEqualsTransformersCachedDecoding) {
  model::Model::Options mo;
  mo.num_threads = 1;
  mo.backend = backend_;
  const std::string dir = testing::TinyModelDir("hf_phi3_longrope");
  auto loaded = model::Model::Load(dir, mo);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  model::Model& m = **loaded;
  ASSERT_EQ(m.config().rope_scaling.type, model::RopeScalingType::kLongRope);
  ASSERT_EQ(m.config().rope_scaling.original_max_position_embeddings, 32);
  ASSERT_EQ(m.config().MaxPositions(), 128);

  // Every prompt past the context shares the 44-token prompt's two full blocks; one below it
  // the first (16 of the 20 tokens in common), which the long prompts do not share.
  ExpectLengthDependentRopeInvariances(m, dir, 12, {32, 32, 32, 32, 16, 16});
}

}  // namespace
}  // namespace spanserve::engine
