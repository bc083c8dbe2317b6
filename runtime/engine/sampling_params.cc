#include "runtime/engine/sampling_params.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace spanserve::engine {
namespace {

absl::Status Bad(const std::string& field, const std::string& want, auto got) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", want, ", got ", got));
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, int32_t vocab_size,
                                    StopLimits limits) {
  const int32_t extra = limits == StopLimits::kEngine ? kServerAddedStops : 0;
  if (!std::isfinite(p.temperature) || p.temperature < 0.0f) {
    return Bad("temperature", ">= 0", p.temperature);
  }
  if (p.top_k < -1) return Bad("top_k", "-1, 0 (off) or positive", p.top_k);
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return Bad("top_p", "in (0, 1]", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p <= 1.0f)) return Bad("min_p", "in [0, 1]", p.min_p);
  if (!(p.repetition_penalty > 0.0f) || !std::isfinite(p.repetition_penalty)) {
    return Bad("repetition_penalty", "> 0", p.repetition_penalty);
  }
  if (!(p.presence_penalty >= -2.0f && p.presence_penalty <= 2.0f)) {
    return Bad("presence_penalty", "in [-2, 2]", p.presence_penalty);
  }
  if (!(p.frequency_penalty >= -2.0f && p.frequency_penalty <= 2.0f)) {
    return Bad("frequency_penalty", "in [-2, 2]", p.frequency_penalty);
  }
  if (static_cast<int32_t>(p.logit_bias.size()) > kMaxLogitBias) {
    return Bad("logit_bias", absl::StrCat("at most ", kMaxLogitBias, " token ids"),
               p.logit_bias.size());
  }
  for (const auto& [id, bias] : p.logit_bias) {
    if (id < 0 || id >= vocab_size) {
      return Bad("logit_bias", absl::StrCat("keyed by token ids in [0, ", vocab_size, ")"), id);
    }
    if (!(bias >= -kMaxLogitBiasValue && bias <= kMaxLogitBiasValue)) {
      return Bad("logit_bias",
                 absl::StrCat("values in [", -kMaxLogitBiasValue, ", ", kMaxLogitBiasValue, "]"),
                 bias);
    }
  }
  if (static_cast<int64_t>(p.allowed_token_ids.size()) > vocab_size) {
    return Bad("allowed_token_ids", absl::StrCat("at most ", vocab_size, " ids (the vocabulary)"),
               p.allowed_token_ids.size());
  }
  for (int32_t id : p.allowed_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return Bad("allowed_token_ids", absl::StrCat("token ids in [0, ", vocab_size, ")"), id);
    }
  }
  if (static_cast<int32_t>(p.bad_words.size()) > kMaxBadWordSequences) {
    return Bad("bad_words", absl::StrCat("at most ", kMaxBadWordSequences, " token sequences"),
               p.bad_words.size());
  }
  for (const std::vector<int32_t>& word : p.bad_words) {
    if (word.empty() || static_cast<int32_t>(word.size()) > kMaxBadWordTokens) {
      return Bad("bad_words", absl::StrCat("words of 1 to ", kMaxBadWordTokens, " tokens"),
                 word.size());
    }
    for (int32_t id : word) {
      if (id < 0 || id >= vocab_size) {
        return Bad("bad_words", absl::StrCat("token ids in [0, ", vocab_size, ")"), id);
      }
    }
  }
  if (p.max_tokens < 0) return Bad("max_tokens", ">= 0", p.max_tokens);
  if (p.min_tokens < 0 || p.min_tokens > p.max_tokens) {
    return Bad("min_tokens", absl::StrCat("in [0, max_tokens = ", p.max_tokens, "]"), p.min_tokens);
  }
  if (static_cast<int32_t>(p.stop_token_ids.size()) > kMaxStopTokenIds + extra) {
    return Bad("stop_token_ids", absl::StrCat("at most ", kMaxStopTokenIds + extra, " ids"),
               p.stop_token_ids.size());
  }
  for (int32_t id : p.stop_token_ids) {
    if (id < 0 || id >= vocab_size) {
      return Bad("stop_token_ids", absl::StrCat("token ids in [0, ", vocab_size, ")"), id);
    }
  }
  if (static_cast<int32_t>(p.stop.size()) > kMaxStopStrings + extra) {
    return Bad("stop", absl::StrCat("at most ", kMaxStopStrings + extra, " strings"),
               p.stop.size());
  }
  for (const std::string& s : p.stop) {
    if (s.empty()) return absl::InvalidArgumentError("stop strings must not be empty");
  }
  if (p.logprobs.has_value() && (*p.logprobs < 0 || *p.logprobs > kMaxLogprobs)) {
    return Bad("logprobs", absl::StrCat("in [0, ", kMaxLogprobs, "]"), *p.logprobs);
  }
  if (p.prompt_logprobs.has_value() &&
      (*p.prompt_logprobs < 0 || *p.prompt_logprobs > kMaxLogprobs)) {
    return Bad("prompt_logprobs", absl::StrCat("in [0, ", kMaxLogprobs, "]"), *p.prompt_logprobs);
  }
  if (p.prompt_logprobs_from < 1)
    return Bad("prompt_logprobs_from", ">= 1", p.prompt_logprobs_from);
  if ((p.response_format == ResponseFormat::kJsonSchema) != (p.json_schema != nullptr)) {
    return absl::InvalidArgumentError(
        "response_format: json_schema needs a compiled schema, and only it takes one");
  }
  if ((p.response_format == ResponseFormat::kChoice) != (p.choices != nullptr)) {
    return absl::InvalidArgumentError(
        "guided_choice: the choice format needs its strings, and only it takes them");
  }
  if ((p.response_format == ResponseFormat::kRegex) != (p.regex != nullptr)) {
    return absl::InvalidArgumentError(
        "guided_regex: the regex format needs its compiled pattern, and only it takes one");
  }
  if ((p.response_format == ResponseFormat::kGrammar) != (p.grammar != nullptr)) {
    return absl::InvalidArgumentError(
        "guided_grammar: the grammar format needs its compiled grammar, and only it takes one");
  }
  if (p.choices != nullptr) {
    if (p.choices->empty() || static_cast<int64_t>(p.choices->size()) > kMaxChoices) {
      return Bad("guided_choice", absl::StrCat("1 to ", kMaxChoices, " strings"),
                 static_cast<int64_t>(p.choices->size()));
    }
    for (const std::string& c : *p.choices) {
      if (c.empty() || static_cast<int64_t>(c.size()) > kMaxChoiceBytes) {
        return Bad("guided_choice", absl::StrCat("strings of 1 to ", kMaxChoiceBytes, " bytes"),
                   static_cast<int64_t>(c.size()));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace spanserve::engine
