#include "runtime/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace spanserve::engine {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
// Below this temperature sampling is greedy (vLLM's _SAMPLING_EPS).
constexpr float kMinTemperature = 1e-5f;

uint64_t SplitMix(uint64_t& x) {
  uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

inline uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

// The largest entry, ties to the lowest id; NaN entries lose to every number (all NaN: 0).
int32_t ArgMax(std::span<const float> v) {
  int32_t best = 0;
  for (int32_t i = 1; i < static_cast<int32_t>(v.size()); ++i) {
    if (v[i] > v[best] || (std::isnan(v[best]) && !std::isnan(v[i]))) best = i;
  }
  return best;
}

}  // namespace

void Rng::Seed(uint64_t seed) {
  uint64_t x = seed;
  for (uint64_t& s : s_) s = SplitMix(x);
}

uint64_t Rng::Next() {
  const uint64_t result = Rotl(s_[1] * 5, 7) * 9;
  const uint64_t t = s_[1] << 17;
  s_[2] ^= s_[0];
  s_[3] ^= s_[1];
  s_[1] ^= s_[2];
  s_[0] ^= s_[3];
  s_[2] ^= t;
  s_[3] = Rotl(s_[3], 45);
  return result;
}

SamplerScratch::SamplerScratch(int32_t vocab_size)
    : weights(vocab_size), cand(vocab_size), counts(vocab_size, 0), seen(vocab_size, 0) {}

void ApplyPenalties(const SampleContext& ctx, std::span<float> logits, SamplerScratch& scratch) {
  const SamplingParams& p = *ctx.params;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (p.repetition_penalty != 1.0f) {
    const float rp = p.repetition_penalty;
    for (std::span<const int32_t> part : {ctx.prompt, ctx.output}) {
      for (int32_t t : part) {
        if (t < 0 || t >= vocab || scratch.seen[t]) continue;
        scratch.seen[t] = 1;
        logits[t] = logits[t] > 0 ? logits[t] / rp : logits[t] * rp;
      }
    }
    for (std::span<const int32_t> part : {ctx.prompt, ctx.output}) {
      for (int32_t t : part) {
        if (t >= 0 && t < vocab) scratch.seen[t] = 0;
      }
    }
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {
    for (int32_t t : ctx.output) {
      if (t >= 0 && t < vocab) ++scratch.counts[t];
    }
    for (int32_t t : ctx.output) {
      if (t < 0 || t >= vocab || scratch.counts[t] == 0) continue;
      logits[t] -= p.frequency_penalty * static_cast<float>(scratch.counts[t]) + p.presence_penalty;
      scratch.counts[t] = 0;  // each distinct token once; also restores the all-zero state
    }
  }
}

int32_t ApplyMasks(const SamplingParams& p, std::span<const float> w, SamplerScratch& scratch) {
  int32_t* cand = scratch.cand.data();
  const int32_t vocab = static_cast<int32_t>(w.size());
  // The top token has weight 1, so min-p keeps the tokens of weight >= min_p.
  const float min_w = p.min_p;
  int32_t n = 0;
  for (int32_t i = 0; i < vocab; ++i) {
    if (w[i] > 0.0f && w[i] >= min_w) cand[n++] = i;
  }
  auto better = [w](int32_t a, int32_t b) { return w[a] > w[b] || (w[a] == w[b] && a < b); };
  if (p.top_k > 0 && p.top_k < n) {
    std::nth_element(cand, cand + p.top_k - 1, cand + n, better);
    n = p.top_k;
  }
  if (p.top_p < 1.0f && n > 1) {
    double total = 0;
    for (int32_t i = 0; i < n; ++i) total += w[cand[i]];
    const double target = static_cast<double>(p.top_p) * total;
    // Sort only the heavy tokens: lower the bar until they alone reach top_p of the mass.
    int32_t m = n;
    for (float bar = 1e-2f; bar > 0.0f; bar = bar > 1e-30f ? bar * 1e-3f : 0.0f) {
      int32_t* mid = std::partition(cand, cand + n, [&](int32_t i) { return w[i] >= bar; });
      double mass = 0;
      for (int32_t* it = cand; it != mid; ++it) mass += w[*it];
      if (mass >= target) {
        m = static_cast<int32_t>(mid - cand);
        break;
      }
    }
    std::sort(cand, cand + m, better);
    double cum = 0;
    int32_t keep = 0;
    while (keep < m) {
      cum += w[cand[keep++]];
      if (cum >= target) break;
    }
    n = keep;
  }
  return n;
}

void ApplyTokenMasks(const SampleContext& ctx, std::span<float> logits, SamplerScratch& scratch) {
  const SamplingParams& p = *ctx.params;
  if (!p.allowed_token_ids.empty()) {
    // The [vocab] flags, all zero between calls, mark the allowed ids (validated).
    std::vector<char>& keep = scratch.seen;
    for (int32_t t : p.allowed_token_ids) keep[t] = 1;
    for (size_t i = 0; i < logits.size(); ++i) {
      if (keep[i] == 0) logits[i] = kNegInf;
    }
    for (int32_t t : p.allowed_token_ids) keep[t] = 0;
  }
  for (const std::vector<int32_t>& word : p.bad_words) {
    // The word's last token is banned where the output ends with the tokens before it.
    const size_t prefix = word.size() - 1;
    if (prefix > ctx.output.size()) continue;
    if (std::equal(word.begin(), word.end() - 1, ctx.output.end() - prefix)) {
      logits[word.back()] = kNegInf;
    }
  }
}

int32_t SampleToken(const SampleContext& ctx, std::span<float> logits, Rng& rng,
                    SamplerScratch& scratch) {
  const SamplingParams& p = *ctx.params;
  const int32_t vocab = static_cast<int32_t>(logits.size());
  if (ctx.suppress_stop) {
    if (!p.ignore_eos) {
      for (int32_t t : ctx.eos_ids) {
        if (t >= 0 && t < vocab) logits[t] = kNegInf;
      }
    }
    for (int32_t t : p.stop_token_ids) logits[t] = kNegInf;
  }
  ApplyTokenMasks(ctx, logits, scratch);
  // Validated ids; a masked token stays masked (-inf + bias).
  for (const auto& [t, bias] : p.logit_bias) logits[t] += bias;
  ApplyPenalties(ctx, logits, scratch);
  if (p.temperature < kMinTemperature) return ArgMax(logits);

  // Total over every input validation accepts: a tiny repetition_penalty divides a positive
  // logit past FLT_MAX (+inf), suppression and masks give -inf, and a model may emit NaN.
  // NaN weighs nothing; +inf logits share the draw equally; all -inf / NaN: the argmax.
  const int32_t top = ArgMax(logits);
  const float max = logits[top];
  if (!(max > kNegInf)) return top;
  float* w = scratch.weights.data();
  if (std::isinf(max)) {
    for (int32_t i = 0; i < vocab; ++i) w[i] = logits[i] == max ? 1.0f : 0.0f;
  } else {
    const float inv_t = 1.0f / p.temperature;
    for (int32_t i = 0; i < vocab; ++i) w[i] = std::exp((logits[i] - max) * inv_t);
  }
  // The top token weighs exactly 1 and passes every mask, so n >= 1; should it ever not,
  // the argmax answers rather than a failed check.
  const int32_t n = ApplyMasks(p, {w, static_cast<size_t>(vocab)}, scratch);
  if (n <= 0) return top;
  double total = 0;
  for (int32_t i = 0; i < n; ++i) total += w[scratch.cand[i]];
  const double u = rng.Uniform() * total;
  double cum = 0;
  for (int32_t i = 0; i < n; ++i) {
    cum += w[scratch.cand[i]];
    if (u < cum) return scratch.cand[i];
  }
  return scratch.cand[n - 1];
}

void ComputeLogprobs(std::span<const float> logits, int32_t token, int32_t top_n,
                     PositionLogprobs* out) {
  const int32_t vocab = static_cast<int32_t>(logits.size());
  const float max = logits[ArgMax(logits)];
  const float own = logits[token];
  double sum = 0;
  int32_t above = 0;
  for (float l : logits) {
    sum += std::exp(static_cast<double>(l) - max);
    above += l > own;
  }
  const double log_z = max + std::log(sum);
  out->token = token;
  out->logprob = static_cast<float>(own - log_z);
  out->rank = above + 1;
  out->top.clear();
  if (top_n <= 0) return;
  // Insertion into a small sorted list: O(vocab · top_n) worst case, top_n <= kMaxLogprobs.
  auto& top = out->top;
  for (int32_t i = 0; i < vocab; ++i) {
    const float l = logits[i];
    if (static_cast<int32_t>(top.size()) == top_n && l <= top.back().logprob) continue;
    const auto at = std::upper_bound(top.begin(), top.end(), l,
                                     [](float v, const TokenLogprob& e) { return v > e.logprob; }) -
                    top.begin();
    if (static_cast<int32_t>(top.size()) == top_n) top.pop_back();
    top.insert(top.begin() + at, TokenLogprob{i, l});
  }
  for (TokenLogprob& e : top) e.logprob = static_cast<float>(e.logprob - log_z);
}

}  // namespace spanserve::engine
