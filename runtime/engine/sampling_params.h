// Per-request sampling parameters (vLLM semantics) and their validation. The gRPC layer
// converts its proto message into this struct and calls ValidateSamplingParams before
// Submit, so a bad field is reported as INVALID_ARGUMENT naming the field.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"

namespace spanserve::engine {

// The most alternatives a request may ask for per position (logprobs, prompt_logprobs).
inline constexpr int32_t kMaxLogprobs = 20;
// The most stop strings and stop token ids per request.
inline constexpr int32_t kMaxStopStrings = 16;
inline constexpr int32_t kMaxStopTokenIds = 64;
// The most token ids a request's logit_bias may name, and the largest bias (OpenAI's range).
inline constexpr int32_t kMaxLogitBias = 1024;
inline constexpr float kMaxLogitBiasValue = 100.0f;
// The most token sequences bad_words may hold (each word gives one or two), and tokens each.
inline constexpr int32_t kMaxBadWordSequences = 512;
inline constexpr int32_t kMaxBadWordTokens = 64;

// The form of the output text. kJsonObject (OpenAI's JSON mode): every token keeps the
// output a valid prefix of a JSON object (engine/json_grammar.h), and EOS (or a stop token)
// can only follow its closing brace, which ends the output if neither may (ignore_eos,
// min_tokens). kJsonSchema (structured outputs): the same, the output a JSON text that
// `json_schema` accepts (engine/json_schema.h). Both need the tokenizer's token bytes
// (EngineOptions::token_bytes). kChoice (vLLM's guided_choice): the output is one of
// `choices`, token by token a prefix of one; EOS (or a stop token) only after a whole one.
// kRegex (vLLM's guided_regex): the output matches `regex` (engine/regex.h), token by token
// a prefix of a match; EOS (or a stop token) only after a match. kGrammar (vLLM's
// guided_grammar, llama.cpp's grammar): the output is a sentence of `grammar` (a GBNF
// grammar, engine/grammar.h), token by token a prefix of one; EOS (or a stop token) only
// after a whole one.
enum class ResponseFormat : uint8_t { kText, kJsonObject, kJsonSchema, kChoice, kRegex, kGrammar };

// guided_choice's bounds: strings, and bytes each.
inline constexpr int32_t kMaxChoices = 256;
inline constexpr int32_t kMaxChoiceBytes = 4096;

class Grammar;
class JsonSchema;
class RegexDfa;

struct SamplingParams {
  // 0: greedy (argmax; ties go to the lowest token id). Otherwise logits are divided by it.
  float temperature = 1.0f;
  // Keep the k most likely tokens; 0 or -1: off.
  int32_t top_k = 0;
  // Keep the smallest set of most likely tokens whose probability reaches top_p; 1: off.
  float top_p = 1.0f;
  // Drop tokens whose probability is below min_p × the top token's probability; 0: off.
  float min_p = 0.0f;
  // vLLM semantics. repetition_penalty (> 0, 1: off) divides positive / multiplies negative
  // logits of every token seen in the prompt or output; presence_penalty (in [-2, 2]) is
  // subtracted once from every token in the output so far, frequency_penalty (in [-2, 2])
  // once per occurrence in the output so far.
  float repetition_penalty = 1.0f;
  float presence_penalty = 0.0f;
  float frequency_penalty = 0.0f;
  // (token id, bias): the bias is added to that token's logit before the penalties (after
  // min_tokens' masks), as vLLM orders them; greedy takes the argmax of the biased logits.
  // Ids in [0, vocab) (one named twice gets both), biases in ±kMaxLogitBiasValue.
  std::vector<std::pair<int32_t, float>> logit_bias;
  // vLLM's allowed_token_ids: only these ids may be drawn (every other logit is -inf before
  // the penalties, EOS included unless listed); empty: every id. Ids in [0, vocab).
  std::vector<int32_t> allowed_token_ids;
  // vLLM's bad_words, as token sequences (the server tokenizes each word as vLLM does): the
  // last token of a sequence cannot be drawn where the output so far ends with the others
  // (a one-token sequence is never drawn). Only the output is looked at, not the prompt.
  std::vector<std::vector<int32_t>> bad_words;
  // Same seed, same prompt, same params → same output, whatever else is in the batch.
  // Unset: a seed drawn from the engine's own generator at submit.
  std::optional<uint64_t> seed;

  // Generated tokens: at most max_tokens (>= 1), and EOS / stop ids / stop strings are
  // ignored until min_tokens (0 ..= max_tokens) have been generated.
  int32_t max_tokens = 16;
  int32_t min_tokens = 0;
  // The model's EOS ids (config.json eos_token_id) do not stop generation.
  bool ignore_eos = false;
  // Generation stops after any of these ids (the id is part of the output tokens).
  std::vector<int32_t> stop_token_ids;
  // Generation stops when the output text contains any of these (non-empty) strings; the
  // match, and anything after it, is excluded from the output text. Needs a detokenizer
  // (EngineOptions::detokenize); without one, a request with stop strings is rejected.
  std::vector<std::string> stop;
  // vLLM's include_stop_str_in_output: the stop string that ended the output stays in its
  // text (what followed it in the same token does not), and so does the text of a stop
  // token id or EOS that ended it (a special token's only with skip_special_tokens false).
  bool include_stop_str_in_output = false;
  // Special tokens (the tokenizer's added tokens marked special) are left out of the text;
  // false: they are written as their content, as vLLM's skip_special_tokens.
  bool skip_special_tokens = true;
  ResponseFormat response_format = ResponseFormat::kText;
  // Set exactly when response_format is kJsonSchema.
  std::shared_ptr<const JsonSchema> json_schema;
  // Set exactly when response_format is kChoice: non-empty strings, kMaxChoices at most.
  std::shared_ptr<const std::vector<std::string>> choices;
  // Set exactly when response_format is kRegex.
  std::shared_ptr<const RegexDfa> regex;
  // Set exactly when response_format is kGrammar.
  std::shared_ptr<const Grammar> grammar;
  // Whether to detokenize the output (RequestOutput::text). Stop strings force it on.
  bool detokenize = true;

  // Log-probabilities of each generated token and of its `logprobs` most likely
  // alternatives (0: the chosen token only); unset: none. Computed from the model's
  // raw log-softmax (before temperature, logit_bias, penalties and masks), like vLLM's
  // default.
  std::optional<int32_t> logprobs;
  // The same for every prompt token after the first (scoring / loglikelihood).
  std::optional<int32_t> prompt_logprobs;
  // With prompt_logprobs: only prompt positions >= this (>= 1) get them. The positions
  // before it need no logits, so they may come from the prefix cache: scoring K
  // continuations of one context computes the context once, not K times.
  int32_t prompt_logprobs_from = 1;

  bool greedy() const { return temperature == 0.0f; }
};

// The server adds at most this many stops of its own to a client's validated ones (the
// chat template's end-of-turn token or string), so the engine admits that many more.
inline constexpr int32_t kServerAddedStops = 1;
enum class StopLimits {
  kClient,  // kMaxStopStrings / kMaxStopTokenIds: what a request may carry
  kEngine,  // those plus kServerAddedStops
};

// INVALID_ARGUMENT naming the first bad field (e.g. "top_p must be in (0, 1], got 1.5").
// vocab_size bounds the token ids in stop_token_ids.
[[nodiscard]] absl::Status ValidateSamplingParams(const SamplingParams& params, int32_t vocab_size,
                                                  StopLimits limits = StopLimits::kClient);

}  // namespace spanserve::engine
