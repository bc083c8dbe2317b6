// Proto ↔ runtime conversion at the edge: nothing past this file sees a proto message.
#pragma once

#include <cstdint>
#include <optional>
#include <string_view>
#include <vector>

#include <grpcpp/server_context.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/engine/engine.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/served_model.h"
#include "spanserve/v1/spanserve.pb.h"

namespace spanserve::server {

// The prompt's token ids for `model` (which must be ready). INVALID_ARGUMENT naming `field`
// (e.g. "prompt.text") when it is unset, empty, encodes to nothing, holds an id outside the
// vocabulary, is text while the model has no tokenizer, or is chat while the model's chat
// template is missing or unsupported (the message then names the model and the families).
// Chat: the template's text, encoded recognising special tokens and adding none.
absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::Prompt& prompt, absl::string_view field,
                                               const ServedModel& model);

// The ids of `text` by the model's tokenizer; empty when it encodes to nothing (the caller
// decides whether that is an error). INVALID_ARGUMENT naming `field` when the model has no
// tokenizer, the text is too long to fit the context (refused before it is tokenized) or is
// not UTF-8.
absl::StatusOr<std::vector<int32_t>> EncodeText(std::string_view text, bool add_special_tokens,
                                                absl::string_view field, const ServedModel& model);

// The text a chat prompt stands for: the model's chat template applied to the messages
// (PromptIds encodes exactly this). INVALID_ARGUMENT as PromptIds for chat.
absl::StatusOr<std::string> ChatPromptText(const v1::Chat& chat, absl::string_view field,
                                           const ServedModel& model);

// The length of `text` once its trailing whitespace is removed as Python's str.rstrip()
// removes it (every code point for which str.isspace() is true: ASCII \t \n \v \f \r,
// U+001C..U+001F, space, U+0085, U+00A0, U+1680, U+2000..U+200A, U+2028, U+2029, U+202F,
// U+205F, U+3000), which lm-evaluation-harness's `_encode_pair` moves from the context to
// the continuation. `text` must be valid UTF-8.
size_t PythonRstripLength(std::string_view text);

// HFLM.prefix_token_id, what lm-evaluation-harness scores a continuation after when the
// context is empty: the tokenizer's BOS, else its EOS; for a model without a tokenizer (or
// with neither), its first EOS id. INVALID_ARGUMENT when the model has none of them.
absl::StatusOr<int32_t> PrefixTokenId(const ServedModel& model);

// A Score call's token ids, as lm-evaluation-harness 0.4.x computes them for each (context,
// continuation) pair (TemplateLM.loglikelihood and `_encode_pair`, for an HF causal model
// with its default add_bos_token; ScoreRequest in the proto gives the rule). Continuation i
// is scored after contexts[context_of[i]]: every text continuation after contexts[0], so
// the prefix cache shares it.
struct ScoreIds {
  // One context, or two when a text context ending in whitespace precedes both text
  // continuations (contexts[0], without the whitespace) and token-id ones (contexts[1], the
  // text as given).
  std::vector<std::vector<int32_t>> contexts;
  std::vector<uint8_t> context_of;
  std::vector<std::vector<int32_t>> continuations;
  int32_t context_tokens = 0;  // ScoreResponse.context_tokens
};
// INVALID_ARGUMENT naming the field when a prompt is malformed (as PromptIds), a
// continuation is chat, empty or keeps no token of its own, or a context + continuation does
// not fit max_model_len. `model` must be ready. Does not check the number of continuations.
absl::StatusOr<ScoreIds> ScoreTokenIds(const v1::ScoreRequest& request, const ServedModel& model);

// For a chat prompt: the template family's end-of-turn token stops generation (as a stop
// token id when the tokenizer has it, else as a stop string), unless ignore_eos is set.
void AddChatStop(const v1::Prompt& prompt, const ServedModel& model,
                 engine::SamplingParams* sampling);

// INVALID_ARGUMENT naming `field` when `num_tokens` (+ 1 when the request `generates` a token)
// does not fit the context.
absl::Status CheckPromptLength(int64_t num_tokens, int32_t max_model_len, absl::string_view field,
                               bool generates);

// Proto defaults are the engine's defaults; validated with the engine's own checks, the
// message prefixed with "sampling.". max_tokens must be >= `min_max_tokens`: 1 for
// Generate; 0 where a front asks for the prompt's logprobs alone (OpenAI's `echo`).
absl::StatusOr<engine::SamplingParams> ToSamplingParams(const v1::SamplingParams& proto,
                                                        int32_t vocab_size,
                                                        int32_t min_max_tokens = 1);

// The one path from a generate request to the engine, for every front (gRPC's Generate,
// the HTTP front's completions): the prompt's ids (PromptIds), their length checked, the
// sampling converted and validated, the chat stop added, the priority. The caller sets the
// deadline and how outputs are delivered. `model` must be ready.
absl::StatusOr<engine::Request> ToEngineRequest(const v1::GenerateRequest& proto,
                                                const ServedModel& model,
                                                int32_t min_max_tokens = 1);

// The call's deadline on the engine's clock; unset when the client gave none.
std::optional<engine::Clock::time_point> EngineDeadline(const grpc::ServerContextBase& context);

// Appends one engine output (not its `final`) to `chunk`: ids, text delta, logprobs (with
// each alternative's text when `tokenizer` is not null).
void AppendOutput(const engine::RequestOutput& output, const tokenizer::Tokenizer* tokenizer,
                  v1::GenerateChunk* chunk);
void ToFinalInfo(const engine::FinalInfo& final, v1::FinalInfo* proto);

// OK for stop and length; otherwise the status the call ends with (CANCELLED,
// DEADLINE_EXCEEDED, the engine's error).
absl::Status FinishStatus(const engine::FinalInfo& final);

}  // namespace spanserve::server
