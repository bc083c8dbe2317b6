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

// For a chat prompt: the template family's end-of-turn token stops generation (as a stop
// token id when the tokenizer has it, else as a stop string), unless ignore_eos is set.
void AddChatStop(const v1::Prompt& prompt, const ServedModel& model,
                 engine::SamplingParams* sampling);

// INVALID_ARGUMENT naming `field` when `num_tokens` + 1 (one generated token) does not fit
// the context.
absl::Status CheckPromptLength(int64_t num_tokens, int32_t max_model_len, absl::string_view field);

// Proto defaults are the engine's defaults; validated with the engine's own checks, the
// message prefixed with "sampling.".
absl::StatusOr<engine::SamplingParams> ToSamplingParams(const v1::SamplingParams& proto,
                                                        int32_t vocab_size);

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
