// Turning one row of logits into the next token, per request (vLLM semantics):
//   suppress EOS / stop ids (below min_tokens) → allowed_token_ids, bad_words → logit_bias
//   → repetition, frequency, presence penalties → greedy argmax, or temperature → min-p
//   → top-k → top-p → draw.
// Everything a request's choice depends on is its own logits, params, tokens and RNG, so
// the same seed gives the same output whatever else is in the batch.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "runtime/engine/request.h"
#include "runtime/engine/sampling_params.h"

namespace spanserve::engine {

// A request's random generator (xoshiro256**, seeded through splitmix64).
class Rng {
 public:
  explicit Rng(uint64_t seed = 0) { Seed(seed); }
  void Seed(uint64_t seed);
  uint64_t Next();
  // Uniform in [0, 1), 53 bits.
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

 private:
  uint64_t s_[4];
};

// Reused buffers, sized to the vocabulary once; one per engine thread.
class SamplerScratch {
 public:
  explicit SamplerScratch(int32_t vocab_size);
  std::vector<float> weights;   // [vocab]
  std::vector<int32_t> cand;    // [vocab]
  std::vector<int32_t> counts;  // [vocab], all zero between calls
  std::vector<char> seen;       // [vocab], all zero between calls
};

struct SampleContext {
  const SamplingParams* params = nullptr;
  std::span<const int32_t> prompt;
  std::span<const int32_t> output;   // generated so far
  std::span<const int32_t> eos_ids;  // the model's EOS ids (ignored if params->ignore_eos)
  // Below min_tokens: EOS and stop token ids cannot be drawn.
  bool suppress_stop = false;
};

// Chooses the next token. `logits`: [vocab], overwritten (penalties, temperature). Where the
// masks leave no token (every logit -inf), it returns the argmax with logits[token] -inf, which
// the engine takes as the end of the output.
int32_t SampleToken(const SampleContext& ctx, std::span<float> logits, Rng& rng,
                    SamplerScratch& scratch);

// Log-softmax of `logits` at `token`, and the `top_n` largest entries (most likely first,
// ties to the lower id) into *out.
void ComputeLogprobs(std::span<const float> logits, int32_t token, int32_t top_n,
                     PositionLogprobs* out);

// The pieces of SampleToken, exposed for tests. Each works in place on [vocab] rows.
void ApplyPenalties(const SampleContext& ctx, std::span<float> logits, SamplerScratch& scratch);
// allowed_token_ids and bad_words: the ids they rule out get -inf.
void ApplyTokenMasks(const SampleContext& ctx, std::span<float> logits, SamplerScratch& scratch);
// Keeps the tokens the min-p / top-k / top-p masks let through, as indices into
// scratch.cand[0 .. return value), from `weights` = exp((logit - max) / temperature).
int32_t ApplyMasks(const SamplingParams& params, std::span<const float> weights,
                   SamplerScratch& scratch);

}  // namespace spanserve::engine
