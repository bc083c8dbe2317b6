// Sampling parameters one at a time, on hand-made logits.
#include "runtime/engine/sampler.h"

#include <cmath>
#include <limits>
#include <map>
#include <numeric>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

using ::testing::HasSubstr;

constexpr int32_t kVocab = 8;
// Probabilities proportional to 8, 4, 2, 1, ... at temperature 1.
std::vector<float> Logits() {
  std::vector<float> l(kVocab);
  for (int i = 0; i < kVocab; ++i) l[i] = -static_cast<float>(i) * std::log(2.0f);
  return l;
}

int32_t Draw(const SamplingParams& p, Rng& rng, SamplerScratch& scratch,
             std::vector<float> logits = Logits(), std::vector<int32_t> output = {}) {
  SampleContext ctx;
  ctx.params = &p;
  ctx.output = output;
  return SampleToken(ctx, logits, rng, scratch);
}

std::set<int32_t> Support(const SamplingParams& p, int draws = 4000) {
  SamplerScratch scratch(kVocab);
  Rng rng(1);
  std::set<int32_t> seen;
  for (int i = 0; i < draws; ++i) seen.insert(Draw(p, rng, scratch));
  return seen;
}

TEST(SamplerTest, GreedyTakesTheArgmaxLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  SamplerScratch scratch(kVocab);
  Rng rng(0);
  std::vector<float> l = {0, 3, 1, 3, 0, 0, 0, 0};
  EXPECT_EQ(Draw(p, rng, scratch, l), 1);
}

TEST(SamplerTest, SameSeedSameDraws) {
  SamplingParams p;
  SamplerScratch scratch(kVocab);
  Rng a(99), b(99), c(100);
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 64; ++i) {
    da.push_back(Draw(p, a, scratch));
    db.push_back(Draw(p, b, scratch));
    dc.push_back(Draw(p, c, scratch));
  }
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(SamplerTest, TemperatureOneFollowsTheSoftmax) {
  SamplingParams p;
  SamplerScratch scratch(kVocab);
  Rng rng(5);
  std::map<int32_t, int> count;
  constexpr int kDraws = 20000;
  for (int i = 0; i < kDraws; ++i) ++count[Draw(p, rng, scratch)];
  const double z = 2.0 - std::pow(0.5, kVocab - 1);
  for (int i = 0; i < 4; ++i) {
    EXPECT_NEAR(count[i] / double(kDraws), std::pow(0.5, i) / z, 0.015) << "token " << i;
  }
  // A high temperature flattens the distribution.
  p.temperature = 100;
  count.clear();
  for (int i = 0; i < kDraws; ++i) ++count[Draw(p, rng, scratch)];
  EXPECT_NEAR(count[7] / double(kDraws), 1.0 / kVocab, 0.02);
}

TEST(SamplerTest, TopKKeepsTheKMostLikely) {
  SamplingParams p;
  p.top_k = 3;
  EXPECT_EQ(Support(p), (std::set<int32_t>{0, 1, 2}));
  p.top_k = 1;
  EXPECT_EQ(Support(p), (std::set<int32_t>{0}));
}

TEST(SamplerTest, TopPKeepsTheSmallestNucleus) {
  // Masses 8/15, 4/15, 2/15, 1/15 (roughly, ignoring the tiny tail).
  SamplingParams p;
  p.top_p = 0.5f;  // the top token alone holds 0.5+
  EXPECT_EQ(Support(p), (std::set<int32_t>{0}));
  p.top_p = 0.7f;  // 0.50 + 0.25 = 0.75
  EXPECT_EQ(Support(p), (std::set<int32_t>{0, 1}));
  p.top_p = 0.8f;  // + 0.125 = 0.875
  EXPECT_EQ(Support(p), (std::set<int32_t>{0, 1, 2}));
  // After top-k, top-p applies to the renormalised top-k mass: 8/14, 4/14, 2/14.
  p.top_k = 3;
  p.top_p = 0.8f;  // 0.571 + 0.286 = 0.857
  EXPECT_EQ(Support(p), (std::set<int32_t>{0, 1}));
}

TEST(SamplerTest, MinPDropsTokensFarBelowTheTop) {
  SamplingParams p;
  p.min_p = 0.2f;  // weights relative to the top: 1, .5, .25, .125
  EXPECT_EQ(Support(p), (std::set<int32_t>{0, 1, 2}));
  p.min_p = 0.6f;
  EXPECT_EQ(Support(p), (std::set<int32_t>{0}));
}

TEST(SamplerTest, MasksOnALargeVocabulary) {
  // The top-p path that sorts only heavy tokens must agree with a full sort.
  constexpr int32_t kBig = 50000;
  std::vector<float> l(kBig);
  for (int32_t i = 0; i < kBig; ++i) l[i] = std::sin(i * 0.37f) * 4;
  SamplingParams p;
  p.top_p = 0.9f;
  SamplerScratch scratch(kBig);
  std::vector<float> w(kBig);
  float max = *std::max_element(l.begin(), l.end());
  for (int32_t i = 0; i < kBig; ++i) w[i] = std::exp(l[i] - max);
  const int32_t n = ApplyMasks(p, w, scratch);
  std::vector<int32_t> order(kBig);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); });
  double total = 0, cum = 0;
  for (float x : w) total += x;
  int32_t want = 0;
  while (cum < 0.9 * total) cum += w[order[want++]];
  EXPECT_EQ(n, want);
  std::vector<int32_t> got(scratch.cand.begin(), scratch.cand.begin() + n);
  std::sort(got.begin(), got.end());
  std::vector<int32_t> expect(order.begin(), order.begin() + want);
  std::sort(expect.begin(), expect.end());
  EXPECT_EQ(got, expect);
}

TEST(SamplerTest, PenaltiesFollowVllm) {
  SamplingParams p;
  p.repetition_penalty = 2.0f;
  p.frequency_penalty = 0.5f;
  p.presence_penalty = 0.25f;
  SamplerScratch scratch(kVocab);
  std::vector<float> l = {1, 1, 1, -1, -1, 4, 0, 0};
  const std::vector<int32_t> prompt = {0, 3};
  const std::vector<int32_t> output = {1, 1, 4};
  SampleContext ctx;
  ctx.params = &p;
  ctx.prompt = prompt;
  ctx.output = output;
  ApplyPenalties(ctx, l, scratch);
  EXPECT_FLOAT_EQ(l[0], 0.5f);                     // prompt, positive: divided
  EXPECT_FLOAT_EQ(l[3], -2.0f);                    // prompt, negative: multiplied
  EXPECT_FLOAT_EQ(l[1], 0.5f - 2 * 0.5f - 0.25f);  // output twice
  EXPECT_FLOAT_EQ(l[4], -2.0f - 0.5f - 0.25f);     // output once
  EXPECT_FLOAT_EQ(l[2], 1.0f);                     // unseen
  EXPECT_FLOAT_EQ(l[5], 4.0f);
  // The scratch is clean again.
  for (int32_t c : scratch.counts) EXPECT_EQ(c, 0);
  for (char c : scratch.seen) EXPECT_EQ(c, 0);
}

// A repetition penalty near 0 divides positive logits past FLT_MAX: the draw must still
// be total (it once failed a check and took the server down), whatever the masks.
TEST(SamplerTest, ExtremePenaltiesAndNonFiniteLogitsStillDraw) {
  SamplerScratch scratch(kVocab);
  Rng rng(7);
  const std::vector<int32_t> prompt = {0, 1, 5};
  for (float rp : {1e-38f, 1e-45f, 3e38f}) {
    for (float temperature : {1e-5f, 1.0f, 100.0f}) {
      for (float top_p : {1.0f, 0.5f}) {
        for (float min_p : {0.0f, 1.0f}) {
          SamplingParams p;
          p.temperature = temperature;
          p.repetition_penalty = rp;
          p.top_p = top_p;
          p.min_p = min_p;
          p.frequency_penalty = 2.0f;
          p.presence_penalty = -2.0f;
          SampleContext ctx;
          ctx.params = &p;
          ctx.prompt = prompt;
          std::vector<float> l = {3, 2, -1, 0.5f, -7, 1, 0, 0};
          const int32_t t = SampleToken(ctx, l, rng, scratch);
          if (rp < 1.0f) {
            // Tokens 0, 1 and 5 are at +inf: one of them is drawn.
            EXPECT_TRUE(t == 0 || t == 1 || t == 5) << rp << " " << temperature << " " << t;
          } else {
            EXPECT_TRUE(t >= 0 && t < kVocab);
          }
        }
      }
    }
  }
  SamplingParams p;
  SampleContext ctx;
  ctx.params = &p;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> l = {nan, -inf, 2, nan, 2, -inf, nan, nan};
  for (int i = 0; i < 64; ++i) {
    std::vector<float> row = l;
    const int32_t t = SampleToken(ctx, row, rng, scratch);
    EXPECT_TRUE(t == 2 || t == 4) << t;  // NaN weighs nothing
  }
  std::vector<float> none(kVocab, -inf);
  none[3] = nan;
  EXPECT_EQ(SampleToken(ctx, none, rng, scratch), 0);  // nothing to weigh: the lowest id
  p.temperature = 0;
  std::vector<float> g = {nan, 1, 4, nan, 4, 0, 0, 0};
  EXPECT_EQ(SampleToken(ctx, g, rng, scratch), 2);  // greedy skips NaN
}

TEST(SamplerTest, MinTokensSuppressesEosAndStopIds) {
  SamplingParams p;
  p.temperature = 0;
  p.stop_token_ids = {1};
  SamplerScratch scratch(kVocab);
  Rng rng(0);
  const std::vector<int32_t> eos = {0};
  SampleContext ctx;
  ctx.params = &p;
  ctx.eos_ids = eos;
  ctx.suppress_stop = true;
  std::vector<float> l = Logits();
  EXPECT_EQ(SampleToken(ctx, l, rng, scratch), 2);  // 0 (EOS) and 1 (stop id) are out
  ctx.suppress_stop = false;
  l = Logits();
  EXPECT_EQ(SampleToken(ctx, l, rng, scratch), 0);
}

TEST(SamplerTest, LogitBiasShiftsTheLogitsBeforeThePenaltiesAndAfterTheMasks) {
  SamplerScratch scratch(kVocab);
  Rng rng(0);
  SamplingParams p;
  p.temperature = 0;
  // Greedy takes the argmax of the biased logits: 0 unbiased, 1 with 0 pushed down, 5 with 5
  // pulled up.
  EXPECT_EQ(Draw(p, rng, scratch), 0);
  p.logit_bias = {{0, -100.0f}};
  EXPECT_EQ(Draw(p, rng, scratch), 1);
  p.logit_bias = {{0, -100.0f}, {5, 100.0f}};
  EXPECT_EQ(Draw(p, rng, scratch), 5);

  // Before the repetition penalty, as vLLM orders them: token 1 (seen in the prompt, logit
  // 0) biased by 4 is (0 + 4) / 2 = 2 < 3, token 0's; after the penalty it would be 4 > 3.
  p.logit_bias = {{1, 4.0f}};
  p.repetition_penalty = 2.0f;
  const std::vector<int32_t> prompt = {1};
  SampleContext ctx;
  ctx.params = &p;
  ctx.prompt = prompt;
  std::vector<float> l = {3, 0, -5, -5, -5, -5, -5, -5};
  EXPECT_EQ(SampleToken(ctx, l, rng, scratch), 0);
  EXPECT_FLOAT_EQ(l[1], 2.0f);

  // A token min_tokens masks stays masked, however it is biased.
  p.repetition_penalty = 1.0f;
  p.logit_bias = {{0, 100.0f}};
  const std::vector<int32_t> eos = {0};
  ctx.prompt = {};
  ctx.eos_ids = eos;
  ctx.suppress_stop = true;
  l = Logits();
  EXPECT_EQ(SampleToken(ctx, l, rng, scratch), 1);

  // Sampling: a token biased by -100 is never drawn, one biased by +100 always.
  SamplingParams s;
  s.logit_bias = {{0, -100.0f}};
  EXPECT_EQ(Support(s).count(0), 0u);
  EXPECT_EQ(Support(s).size(), static_cast<size_t>(kVocab - 1));
  s.logit_bias = {{6, 100.0f}};
  EXPECT_EQ(Support(s), std::set<int32_t>({6}));
}

TEST(SamplerTest, LogprobsAreTheLogSoftmaxWithTopAlternatives) {
  const std::vector<float> l = {1, 3, 2, 3, 0, -1, 0.5f, 0};
  PositionLogprobs lp;
  ComputeLogprobs(l, 2, 3, &lp);
  double z = 0;
  for (float x : l) z += std::exp(x);
  EXPECT_EQ(lp.token, 2);
  EXPECT_NEAR(lp.logprob, 2 - std::log(z), 1e-6);
  ASSERT_EQ(lp.top.size(), 3u);
  EXPECT_EQ(lp.top[0].token, 1);  // ties to the lower id
  EXPECT_EQ(lp.top[1].token, 3);
  EXPECT_EQ(lp.top[2].token, 2);
  EXPECT_NEAR(lp.top[0].logprob, 3 - std::log(z), 1e-6);
  EXPECT_EQ(lp.rank, 3);  // two tokens (1 and 3) are likelier
  ComputeLogprobs(l, 4, 0, &lp);
  EXPECT_TRUE(lp.top.empty());
  EXPECT_EQ(lp.rank, 6);  // ties (7) share the rank
  ComputeLogprobs(l, 3, 0, &lp);
  EXPECT_EQ(lp.rank, 1);
}

// A chat request may carry the most stops a client may send; the server then adds the
// template's end of turn, and the engine must still take it (it once refused it).
TEST(SamplingParamsTest, TheEngineTakesTheServersEndOfTurnStopBeyondTheClientsMaximum) {
  SamplingParams p;
  for (int i = 0; i < kMaxStopStrings; ++i) p.stop.push_back("s" + std::to_string(i));
  for (int i = 0; i < kMaxStopTokenIds; ++i) p.stop_token_ids.push_back(i);
  EXPECT_TRUE(ValidateSamplingParams(p, 100).ok());
  p.stop.push_back("<|im_end|>");
  p.stop_token_ids.push_back(99);
  EXPECT_FALSE(ValidateSamplingParams(p, 100).ok());  // from a client: one too many
  EXPECT_TRUE(ValidateSamplingParams(p, 100, StopLimits::kEngine).ok());
  p.stop.push_back("x");
  EXPECT_FALSE(ValidateSamplingParams(p, 100, StopLimits::kEngine).ok());
}

TEST(SamplingParamsTest, ValidationNamesTheField) {
  auto bad = [](auto mutate) {
    SamplingParams p;
    mutate(p);
    return ValidateSamplingParams(p, 100);
  };
  EXPECT_TRUE(bad([](SamplingParams&) {}).ok());
  EXPECT_THAT(bad([](auto& p) { p.temperature = -1; }).message(), HasSubstr("temperature"));
  EXPECT_THAT(bad([](auto& p) { p.top_k = -2; }).message(), HasSubstr("top_k"));
  EXPECT_THAT(bad([](auto& p) { p.top_p = 0; }).message(), HasSubstr("top_p"));
  EXPECT_THAT(bad([](auto& p) { p.top_p = 1.5f; }).message(), HasSubstr("top_p"));
  EXPECT_THAT(bad([](auto& p) { p.min_p = 2; }).message(), HasSubstr("min_p"));
  EXPECT_THAT(bad([](auto& p) { p.repetition_penalty = 0; }).message(),
              HasSubstr("repetition_penalty"));
  EXPECT_THAT(bad([](auto& p) { p.presence_penalty = 3; }).message(),
              HasSubstr("presence_penalty"));
  EXPECT_THAT(bad([](auto& p) { p.frequency_penalty = -3; }).message(),
              HasSubstr("frequency_penalty"));
  EXPECT_THAT(bad([](auto& p) { p.max_tokens = -1; }).message(), HasSubstr("max_tokens"));
  EXPECT_THAT(bad([](auto& p) { p.min_tokens = 20; }).message(), HasSubstr("min_tokens"));
  EXPECT_THAT(bad([](auto& p) { p.stop_token_ids = {100}; }).message(),
              HasSubstr("stop_token_ids"));
  EXPECT_THAT(bad([](auto& p) { p.stop = {""}; }).message(), HasSubstr("stop"));
  EXPECT_THAT(bad([](auto& p) { p.logprobs = 21; }).message(), HasSubstr("logprobs"));
  EXPECT_THAT(bad([](auto& p) { p.prompt_logprobs = -1; }).message(), HasSubstr("prompt_logprobs"));
  EXPECT_TRUE(bad([](auto& p) { p.logit_bias = {{0, -100.0f}, {99, 100.0f}}; }).ok());
  EXPECT_THAT(bad([](auto& p) {
                p.logit_bias = {{100, 1.0f}};
              }).message(),
              HasSubstr("logit_bias"));
  EXPECT_THAT(bad([](auto& p) { p.logit_bias = {{-1, 1.0f}}; }).message(), HasSubstr("logit_bias"));
  EXPECT_THAT(bad([](auto& p) {
                p.logit_bias = {{1, 100.5f}};
              }).message(),
              HasSubstr("logit_bias"));
  EXPECT_THAT(bad([](auto& p) {
                p.logit_bias = {{1, std::nanf("")}};
              }).message(),
              HasSubstr("logit_bias"));
  EXPECT_THAT(bad([](auto& p) {
                p.logit_bias.assign(kMaxLogitBias + 1, {1, 1.0f});
              }).message(),
              HasSubstr("at most 1024"));
  EXPECT_EQ(bad([](auto& p) { p.top_p = 2; }).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace spanserve::engine
