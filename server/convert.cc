#include "server/convert.h"

#include <algorithm>
#include <chrono>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace spanserve::server {

namespace {

// A prompt's text longer than max_model_len × this many bytes cannot fit the context (real
// text averages 3-5 bytes a token; no tokenizer's tokens average 64). Texts up to the
// floor below are always tokenized, whatever the context.
constexpr int64_t kMaxPromptBytesPerToken = 64;
constexpr int64_t kMinPromptTextBytes = 64 << 10;

std::string FieldName(absl::string_view prefix, absl::string_view name) {
  return prefix.empty() ? std::string(name) : absl::StrCat(prefix, ".", name);
}

absl::StatusOr<std::vector<int32_t>> ChatPromptIds(const v1::Chat& chat, absl::string_view field,
                                                   const ServedModel& model) {
  const std::string messages_field = FieldName(field, "chat.messages");
  if (!model.chat_template().ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldName(field, "chat"), ": model '", model.name(),
                     "': ", model.chat_template().status().message()));
  }
  const tokenizer::Tokenizer* tokenizer = model.tokenizer();
  if (tokenizer == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldName(field, "chat"), ": model '", model.name(), "' has no tokenizer"));
  }
  std::vector<chat::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (const v1::ChatMessage& m : chat.messages()) messages.push_back({m.role(), m.content()});
  const bool generation_prompt = !chat.has_add_generation_prompt() || chat.add_generation_prompt();
  ASSIGN_OR_RETURN(std::string text,
                   model.chat_template()->Apply(messages, generation_prompt, messages_field));
  // The template writes BOS and the turn markers itself; the tokenizer recognises them.
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text, /*add_special_tokens=*/false);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(),
                        absl::StrCat(messages_field, ": ", ids.status().message()));
  }
  return ids;
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::Prompt& prompt, absl::string_view field,
                                               const ServedModel& model) {
  const tokenizer::Tokenizer* tokenizer = model.tokenizer();
  const int32_t vocab_size = model.engine().info().vocab_size;
  switch (prompt.input_case()) {
    case v1::Prompt::kText: {
      if (prompt.text().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".text: must not be empty"));
      }
      if (tokenizer == nullptr) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".text: the served model has no tokenizer.json; send ", field, ".token_ids"));
      }
      // Text that cannot fit the context is refused before it is tokenized: tokenizing
      // megabytes only to refuse the count would hold a gRPC thread for a second.
      const int64_t max_bytes = std::max<int64_t>(
          kMinPromptTextBytes,
          static_cast<int64_t>(model.engine().info().max_model_len) * kMaxPromptBytesPerToken);
      if (static_cast<int64_t>(prompt.text().size()) > max_bytes) {
        return absl::InvalidArgumentError(absl::StrCat(
            field, ".text: ", prompt.text().size(), " bytes cannot fit the context of ",
            model.engine().info().max_model_len, " tokens (at most ", max_bytes, " bytes)"));
      }
      const bool special = !prompt.has_add_special_tokens() || prompt.add_special_tokens();
      absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(prompt.text(), special);
      if (!ids.ok()) {
        return absl::Status(ids.status().code(),
                            absl::StrCat(field, ".text: ", ids.status().message()));
      }
      if (ids->empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".text: encodes to no tokens"));
      }
      return ids;
    }
    case v1::Prompt::kTokenIds: {
      const auto& ids = prompt.token_ids().ids();
      if (ids.empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".token_ids: must not be empty"));
      }
      for (int i = 0; i < ids.size(); ++i) {
        if (ids[i] < 0 || ids[i] >= vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat(field, ".token_ids[", i, "]: ", ids[i],
                                                         " is outside the vocabulary [0, ",
                                                         vocab_size, ")"));
        }
      }
      return std::vector<int32_t>(ids.begin(), ids.end());
    }
    case v1::Prompt::kChat:
      return ChatPromptIds(prompt.chat(), field, model);
    case v1::Prompt::INPUT_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": must set text, token_ids or chat (got none)"));
  }
  return absl::InvalidArgumentError(absl::StrCat(field, ": unknown input kind"));
}

void AddChatStop(const v1::Prompt& prompt, const ServedModel& model,
                 engine::SamplingParams* sampling) {
  if (prompt.input_case() != v1::Prompt::kChat || sampling->ignore_eos ||
      !model.chat_template().ok() || model.tokenizer() == nullptr) {
    return;
  }
  const std::string end_of_turn(model.chat_template()->end_of_turn());
  if (std::optional<int32_t> id = model.tokenizer()->TokenToId(end_of_turn)) {
    sampling->stop_token_ids.push_back(*id);
  } else {
    sampling->stop.push_back(end_of_turn);
  }
}

absl::Status CheckPromptLength(int64_t num_tokens, int32_t max_model_len, absl::string_view field) {
  if (num_tokens + 1 > max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", num_tokens, " tokens is too long; the context holds ",
                     max_model_len, " tokens including at least one generated token"));
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::SamplingParams> ToSamplingParams(const v1::SamplingParams& proto,
                                                        int32_t vocab_size) {
  engine::SamplingParams p;
  if (proto.has_temperature()) p.temperature = proto.temperature();
  if (proto.has_top_k()) p.top_k = proto.top_k();
  if (proto.has_top_p()) p.top_p = proto.top_p();
  if (proto.has_min_p()) p.min_p = proto.min_p();
  if (proto.has_repetition_penalty()) p.repetition_penalty = proto.repetition_penalty();
  if (proto.has_presence_penalty()) p.presence_penalty = proto.presence_penalty();
  if (proto.has_frequency_penalty()) p.frequency_penalty = proto.frequency_penalty();
  if (proto.has_seed()) p.seed = proto.seed();
  if (proto.has_max_tokens()) p.max_tokens = proto.max_tokens();
  if (proto.has_min_tokens()) p.min_tokens = proto.min_tokens();
  if (proto.has_ignore_eos()) p.ignore_eos = proto.ignore_eos();
  p.stop_token_ids.assign(proto.stop_token_ids().begin(), proto.stop_token_ids().end());
  p.stop.assign(proto.stop().begin(), proto.stop().end());
  if (proto.has_logprobs()) p.logprobs = proto.logprobs();
  // The engine accepts 0 (prompt scoring only); over this API that is Score's job, and a
  // Generate that generates nothing is a client bug.
  if (p.max_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_tokens must be >= 1, got ", p.max_tokens));
  }
  if (absl::Status s = engine::ValidateSamplingParams(p, vocab_size); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("sampling.", s.message()));
  }
  return p;
}

std::optional<engine::Clock::time_point> EngineDeadline(const grpc::ServerContextBase& context) {
  const auto deadline = context.deadline();
  // gRPC reports "no deadline" as the far future.
  if (deadline >= std::chrono::system_clock::time_point::max() - std::chrono::hours(24 * 365)) {
    return std::nullopt;
  }
  const auto remaining = deadline - std::chrono::system_clock::now();
  return engine::Clock::now() + std::chrono::duration_cast<engine::Clock::duration>(remaining);
}

namespace {

void ToPositionLogprobs(const engine::PositionLogprobs& in, const tokenizer::Tokenizer* tokenizer,
                        v1::PositionLogprobs* out) {
  out->set_token_id(in.token);
  out->set_logprob(in.logprob);
  for (const engine::TokenLogprob& alt : in.top) {
    v1::TokenLogprob* t = out->add_top();
    t->set_token_id(alt.token);
    t->set_logprob(alt.logprob);
    if (tokenizer != nullptr) {
      const int32_t id = alt.token;
      t->set_text(
          tokenizer->Decode(std::span<const int32_t>(&id, 1), /*skip_special_tokens=*/false));
    }
  }
}

}  // namespace

void AppendOutput(const engine::RequestOutput& output, const tokenizer::Tokenizer* tokenizer,
                  v1::GenerateChunk* chunk) {
  chunk->set_request_id(output.id);
  chunk->mutable_token_ids()->Add(output.token_ids.begin(), output.token_ids.end());
  chunk->mutable_text()->append(output.text);
  for (const engine::PositionLogprobs& lp : output.logprobs) {
    ToPositionLogprobs(lp, tokenizer, chunk->add_logprobs());
  }
}

void ToFinalInfo(const engine::FinalInfo& final, v1::FinalInfo* proto) {
  switch (final.reason) {
    case engine::FinishReason::kStop:
      proto->set_finish_reason(v1::FINISH_REASON_STOP);
      break;
    case engine::FinishReason::kLength:
      proto->set_finish_reason(v1::FINISH_REASON_LENGTH);
      break;
    case engine::FinishReason::kCancelled:
    case engine::FinishReason::kDeadline:
    case engine::FinishReason::kError:
      // These end the call with a non-OK status instead of a final chunk.
      proto->set_finish_reason(v1::FINISH_REASON_UNSPECIFIED);
      break;
  }
  if (final.stop_token) proto->set_stop_token_id(*final.stop_token);
  if (final.stop_string) proto->set_stop_string(*final.stop_string);
  proto->set_prompt_tokens(final.prompt_tokens);
  proto->set_generated_tokens(final.generated_tokens);
  proto->set_cached_prompt_tokens(final.cached_prompt_tokens);
  proto->set_num_preemptions(final.num_preemptions);
  v1::Timings* t = proto->mutable_timings();
  t->set_queue_s(final.timings.queue_s);
  t->set_ttft_s(final.timings.ttft_s);
  t->set_prefill_s(final.timings.prefill_s);
  t->set_decode_s(final.timings.decode_s);
  t->set_e2e_s(final.timings.e2e_s);
}

absl::Status FinishStatus(const engine::FinalInfo& final) {
  switch (final.reason) {
    case engine::FinishReason::kStop:
    case engine::FinishReason::kLength:
      return absl::OkStatus();
    case engine::FinishReason::kCancelled:
      return absl::CancelledError(
          absl::StrCat("request cancelled after ", final.generated_tokens, " tokens"));
    case engine::FinishReason::kDeadline:
      return absl::DeadlineExceededError(absl::StrCat("the call's deadline passed after ",
                                                      final.generated_tokens, " generated tokens"));
    case engine::FinishReason::kError:
      return final.error.ok() ? absl::InternalError("the model failed") : final.error;
  }
  return absl::InternalError("unknown finish reason");
}

}  // namespace spanserve::server
