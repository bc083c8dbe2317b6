#include "server/convert.h"

#include <algorithm>
#include <chrono>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/grammar.h"
#include "runtime/engine/json_schema.h"
#include "runtime/engine/regex.h"
#include "server/openai_api.h"

namespace spanserve::server {

namespace {

// A prompt's text longer than max_model_len × this many bytes cannot fit the context (real
// text averages 3-5 bytes a token; no tokenizer's tokens average 64). Texts up to the
// floor below are always tokenized, whatever the context.
constexpr int64_t kMaxPromptBytesPerToken = 64;
constexpr int64_t kMinPromptTextBytes = 64 << 10;
// vLLM's bad_words: the most words a request may give, and bytes each.
constexpr int kMaxBadWords = 256;
constexpr size_t kMaxBadWordBytes = 1024;

std::string FieldName(absl::string_view prefix, absl::string_view name) {
  return prefix.empty() ? std::string(name) : absl::StrCat(prefix, ".", name);
}

absl::StatusOr<std::vector<int32_t>> ChatPromptIds(const v1::Chat& chat, absl::string_view field,
                                                   const ServedModel& model) {
  ASSIGN_OR_RETURN(const std::string text, ChatPromptText(chat, field, model));
  // The template writes BOS and the turn markers itself; the tokenizer recognises them.
  absl::StatusOr<std::vector<int32_t>> ids =
      model.tokenizer()->Encode(text, /*add_special_tokens=*/false);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(), absl::StrCat(FieldName(field, "chat.messages"), ": ",
                                                          ids.status().message()));
  }
  return ids;
}

}  // namespace

absl::StatusOr<std::string> ChatPromptText(const v1::Chat& chat, absl::string_view field,
                                           const ServedModel& model) {
  const std::string messages_field = FieldName(field, "chat.messages");
  if (!model.chat_template().ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldName(field, "chat"), ": model '", model.name(),
                     "': ", model.chat_template().status().message()));
  }
  if (model.tokenizer() == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat(FieldName(field, "chat"), ": model '", model.name(), "' has no tokenizer"));
  }
  // A JSON field's value, which must be an object (or an array); null when the field is empty.
  const auto parse = [&](const std::string& text, absl::string_view name,
                         bool array) -> absl::StatusOr<nlohmann::ordered_json> {
    if (text.empty()) return nlohmann::ordered_json();
    // Deep documents are refused before they are parsed (copies of them recurse).
    if (JsonDepth(text, kMaxJsonDepth) > kMaxJsonDepth) {
      return absl::InvalidArgumentError(
          absl::StrCat(FieldName(field, name), ": nests deeper than ", kMaxJsonDepth, " levels"));
    }
    nlohmann::ordered_json value =
        nlohmann::ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (array ? !value.is_array() : !value.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(FieldName(field, name), ": must be a JSON ", array ? "array" : "object"));
    }
    return value;
  };
  std::vector<chat::ChatMessage> messages;
  messages.reserve(chat.messages_size());
  for (int i = 0; i < chat.messages_size(); ++i) {
    const v1::ChatMessage& m = chat.messages(i);
    chat::ChatMessage& out = messages.emplace_back();
    out.role = m.role();
    out.content = m.content();
    ASSIGN_OR_RETURN(
        out.tool_calls,
        parse(m.tool_calls(), absl::StrCat("chat.messages[", i, "].tool_calls"), true));
    out.tool_call_id = m.tool_call_id();
    out.name = m.name();
  }
  const bool generation_prompt = !chat.has_add_generation_prompt() || chat.add_generation_prompt();
  ASSIGN_OR_RETURN(const nlohmann::ordered_json kwargs,
                   parse(chat.chat_template_kwargs(), "chat.chat_template_kwargs", false));
  ASSIGN_OR_RETURN(const nlohmann::ordered_json tools, parse(chat.tools(), "chat.tools", true));
  if (!chat.continue_final_message()) {
    return model.chat_template()->Apply(messages, generation_prompt, messages_field, kwargs, tools);
  }
  // continue_final_message, as transformers' apply_chat_template: rendered without a
  // generation prompt, the text is cut after the last occurrence of the final message's
  // content (else of its whitespace-stripped content: some templates trim messages), so the
  // end-of-turn after it is gone and the model goes on with the message.
  const std::string continue_field = FieldName(field, "chat.continue_final_message");
  if (generation_prompt) {
    return absl::InvalidArgumentError(
        absl::StrCat(continue_field, ": cannot be true with add_generation_prompt true"));
  }
  // Rendered first: the template refuses a conversation without messages.
  ASSIGN_OR_RETURN(std::string text,
                   model.chat_template()->Apply(messages, false, messages_field, kwargs, tools));
  const std::string& last = messages.back().content;
  constexpr std::string_view kSpace = " \t\n\v\f\r";
  std::string_view stripped = last;
  stripped.remove_prefix(std::min(stripped.size(), stripped.find_first_not_of(kSpace)));
  stripped.remove_suffix(stripped.size() - (stripped.find_last_not_of(kSpace) + 1));
  if (stripped.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(continue_field, ": the last message has no content to continue"));
  }
  size_t at = text.rfind(last);
  size_t len = last.size();
  if (at == std::string::npos) {
    at = text.rfind(stripped);
    len = stripped.size();
  }
  if (at == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat(continue_field,
                     ": the chat template does not write the last message's content as given, "
                     "so it cannot be continued"));
  }
  text.resize(at + len);
  return text;
}

absl::StatusOr<std::vector<int32_t>> EncodeText(std::string_view text, bool add_special_tokens,
                                                absl::string_view field, const ServedModel& model) {
  const tokenizer::Tokenizer* tokenizer = model.tokenizer();
  if (tokenizer == nullptr) {
    const absl::string_view prompt_field =
        absl::EndsWith(field, ".text") ? field.substr(0, field.size() - 5) : field;
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": the served model has no tokenizer.json; send ", prompt_field, ".token_ids"));
  }
  // Text that cannot fit the context is refused before it is tokenized: tokenizing
  // megabytes only to refuse the count would hold a gRPC thread for a second.
  const int32_t max_model_len = model.engine().info().max_model_len;
  const int64_t max_bytes = std::max<int64_t>(
      kMinPromptTextBytes, static_cast<int64_t>(max_model_len) * kMaxPromptBytesPerToken);
  if (static_cast<int64_t>(text.size()) > max_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat(field, ": ", text.size(), " bytes cannot fit the context of ", max_model_len,
                     " tokens (at most ", max_bytes, " bytes)"));
  }
  absl::StatusOr<std::vector<int32_t>> ids = tokenizer->Encode(text, add_special_tokens);
  if (!ids.ok()) {
    return absl::Status(ids.status().code(), absl::StrCat(field, ": ", ids.status().message()));
  }
  return ids;
}

size_t PythonRstripLength(std::string_view text) {
  size_t end = text.size();
  while (end > 0) {
    // The last code point of text[0, end): its lead byte is the last byte that is not a
    // continuation byte (10xxxxxx).
    size_t start = end - 1;
    while (start > 0 && (static_cast<unsigned char>(text[start]) & 0xC0) == 0x80) --start;
    const auto b = [&](size_t i) {
      return static_cast<uint32_t>(static_cast<unsigned char>(text[i]));
    };
    uint32_t cp = 0;
    switch (end - start) {
      case 1:
        cp = b(start);
        break;
      case 2:
        cp = ((b(start) & 0x1F) << 6) | (b(start + 1) & 0x3F);
        break;
      case 3:
        cp = ((b(start) & 0x0F) << 12) | ((b(start + 1) & 0x3F) << 6) | (b(start + 2) & 0x3F);
        break;
      default:
        return end;  // 4-byte code points (and anything else) are never whitespace
    }
    const bool space = (cp >= 0x09 && cp <= 0x0D) || (cp >= 0x1C && cp <= 0x20) || cp == 0x85 ||
                       cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
                       cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    if (!space) return end;
    end = start;
  }
  return 0;
}

absl::StatusOr<std::vector<int32_t>> PromptIds(const v1::Prompt& prompt, absl::string_view field,
                                               const ServedModel& model) {
  const int32_t vocab_size = model.engine().info().vocab_size;
  switch (prompt.input_case()) {
    case v1::Prompt::kText: {
      if (prompt.text().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(field, ".text: must not be empty"));
      }
      const bool special = !prompt.has_add_special_tokens() || prompt.add_special_tokens();
      absl::StatusOr<std::vector<int32_t>> ids =
          EncodeText(prompt.text(), special, absl::StrCat(field, ".text"), model);
      if (!ids.ok()) return ids.status();
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

absl::StatusOr<int32_t> PrefixTokenId(const ServedModel& model) {
  if (const tokenizer::Tokenizer* tok = model.tokenizer(); tok != nullptr) {
    if (tok->bos_id()) return *tok->bos_id();
    if (tok->eos_id()) return *tok->eos_id();
  }
  const std::vector<int32_t>& eos = model.engine().info().eos_token_ids;
  if (!eos.empty()) return eos.front();
  return absl::InvalidArgumentError(
      absl::StrCat("context: empty, and model '", model.name(),
                   "' has no BOS or EOS token to score the continuations after; send a context"));
}

// Case by case as the proto's ScoreRequest comment lists them.
absl::StatusOr<ScoreIds> ScoreTokenIds(const v1::ScoreRequest& proto, const ServedModel& model) {
  ScoreIds out;
  const v1::Prompt& context = proto.context();
  const int num = proto.continuations().size();
  const int32_t max_model_len = model.engine().info().max_model_len;
  // The context's text (text and chat contexts; empty for an empty or unset context), or
  // its ids (a token-id context).
  std::optional<std::string> context_text;
  std::vector<int32_t> context_ids;
  switch (context.input_case()) {
    case v1::Prompt::kText:
      context_text = context.text();
      break;
    case v1::Prompt::kChat: {
      ASSIGN_OR_RETURN(context_text, ChatPromptText(context.chat(), "context", model));
      break;
    }
    case v1::Prompt::kTokenIds:
      if (context.token_ids().ids().empty()) {
        context_text.emplace();
      } else {
        ASSIGN_OR_RETURN(context_ids, PromptIds(context, "context", model));
      }
      break;
    case v1::Prompt::INPUT_NOT_SET:
      context_text.emplace();
      break;
  }
  const std::string context_field =
      context.input_case() == v1::Prompt::kChat ? "context.chat.messages" : "context.text";
  // HFLM's tok_encode: add_special_tokens=False unless add_bos_token (here: the text
  // context's add_special_tokens). Chat templates write their special tokens themselves.
  bool special = context.input_case() == v1::Prompt::kText && context.has_add_special_tokens() &&
                 context.add_special_tokens();
  if (const absl::StatusOr<int32_t> prefix = PrefixTokenId(model);
      special && prefix.ok() && model.tokenizer() != nullptr) {
    // ... and none for a text that already starts with the prefix token's text (rather
    // than a second BOS; 0.4.13's has_bos_prefix).
    const std::string prefix_text = model.tokenizer()->Decode(std::span<const int32_t>(&*prefix, 1),
                                                              /*skip_special_tokens=*/false);
    if (!prefix_text.empty() && absl::StartsWith(*context_text, prefix_text)) special = false;
  }
  // out.contexts[0] precedes the text continuations, out.contexts[1] (when it differs) the
  // token-id ones.
  bool any_text = false;
  bool any_ids = false;
  for (const v1::Prompt& cont : proto.continuations()) {
    (cont.input_case() == v1::Prompt::kText ? any_text : any_ids) = true;
  }
  // How many of a text continuation's joint ids belong to the context: they are dropped.
  size_t joint_context_len = 0;
  bool joint = false;  // text continuations are encoded together with the context's text
  if (!context_text.has_value()) {
    out.contexts.push_back(std::move(context_ids));
  } else if (context_text->empty()) {
    // An empty context: [prefix_token_id], the continuation encoded alone.
    ASSIGN_OR_RETURN(const int32_t prefix, PrefixTokenId(model));
    out.contexts.push_back({prefix});
  } else {
    // `_encode_pair`: trailing whitespace moves from the context to the continuation;
    // context_enc = tok_encode(context), continuation_enc =
    // tok_encode(context + continuation)[len(context_enc):].
    const size_t stripped = PythonRstripLength(*context_text);
    ASSIGN_OR_RETURN(std::vector<int32_t> pair_context,
                     EncodeText(std::string_view(*context_text).substr(0, stripped), special,
                                context_field, model));
    joint = true;
    joint_context_len = pair_context.size();
    std::vector<int32_t> plain_context;  // for token-id continuations: the text as given
    if (any_ids && stripped < context_text->size()) {
      ASSIGN_OR_RETURN(plain_context, EncodeText(*context_text, special, context_field, model));
    } else {
      plain_context = pair_context;
    }
    // A context that encodes to nothing is scored after the prefix token (the harness
    // would pass it on empty).
    for (std::vector<int32_t>* ids : {&pair_context, &plain_context}) {
      if (ids->empty()) {
        ASSIGN_OR_RETURN(const int32_t prefix, PrefixTokenId(model));
        *ids = {prefix};
      }
    }
    const bool differ = pair_context != plain_context;
    out.contexts.push_back(std::move(pair_context));
    if (differ) out.contexts.push_back(std::move(plain_context));
  }
  for (const std::vector<int32_t>& ids : out.contexts) {
    RETURN_IF_ERROR(CheckPromptLength(ids.size(), max_model_len, "context", false));
  }
  out.context_tokens = static_cast<int32_t>(
      (any_text || out.contexts.size() == 1 ? out.contexts.front() : out.contexts.back()).size());
  out.continuations.reserve(num);
  out.context_of.reserve(num);
  for (int i = 0; i < num; ++i) {
    const v1::Prompt& cont = proto.continuations(i);
    const std::string field = absl::StrCat("continuations[", i, "]");
    std::vector<int32_t> ids;
    uint8_t which = 0;
    switch (cont.input_case()) {
      case v1::Prompt::kChat:
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": must be text or token_ids (chat is for the context only)"));
      case v1::Prompt::kText: {
        if (cont.text().empty()) {
          return absl::InvalidArgumentError(absl::StrCat(field, ".text: must not be empty"));
        }
        if (joint) {
          ASSIGN_OR_RETURN(std::vector<int32_t> whole,
                           EncodeText(absl::StrCat(*context_text, cont.text()), special,
                                      absl::StrCat(field, ".text (after the context)"), model));
          if (whole.size() <= joint_context_len) {
            return absl::InvalidArgumentError(
                absl::StrCat(field, ".text: context + continuation encode to ", whole.size(),
                             " tokens, no more than the context's ", joint_context_len,
                             ": the continuation has no tokens of its own"));
          }
          ids.assign(whole.begin() + static_cast<std::ptrdiff_t>(joint_context_len), whole.end());
        } else {
          // Encoded alone: after an empty context without special tokens, after token ids
          // with its own add_special_tokens (default false).
          const bool cont_special = !context_text.has_value() && cont.has_add_special_tokens() &&
                                    cont.add_special_tokens();
          ASSIGN_OR_RETURN(
              ids, EncodeText(cont.text(), cont_special, absl::StrCat(field, ".text"), model));
          if (context_text.has_value() && !ids.empty() && ids.front() == out.contexts[0].front()) {
            // A continuation that starts with the prefix token has it as its context.
            ids.erase(ids.begin());
          }
          if (ids.empty()) {
            return absl::InvalidArgumentError(
                absl::StrCat(field, ".text: encodes to no tokens",
                             context_text.has_value() ? " after the prefix token" : ""));
          }
        }
        break;
      }
      default: {
        ASSIGN_OR_RETURN(ids, PromptIds(cont, field, model));
        which = static_cast<uint8_t>(out.contexts.size() - 1);
        break;
      }
    }
    RETURN_IF_ERROR(CheckPromptLength(out.contexts[which].size() + ids.size(), max_model_len,
                                      absl::StrCat("context + ", field), false));
    out.continuations.push_back(std::move(ids));
    out.context_of.push_back(which);
  }
  return out;
}

void AddChatStop(const v1::Prompt& prompt, const ServedModel& model,
                 engine::SamplingParams* sampling) {
  if (prompt.input_case() != v1::Prompt::kChat || sampling->ignore_eos ||
      !model.chat_template().ok() || model.tokenizer() == nullptr) {
    return;
  }
  const std::string end_of_turn(model.chat_template()->end_of_turn());
  if (end_of_turn.empty()) return;
  if (std::optional<int32_t> id = model.tokenizer()->TokenToId(end_of_turn)) {
    sampling->stop_token_ids.push_back(*id);
  } else {
    sampling->stop.push_back(end_of_turn);
  }
}

absl::Status CheckPromptLength(int64_t num_tokens, int32_t max_model_len, absl::string_view field,
                               bool generates) {
  if (num_tokens + (generates ? 1 : 0) > max_model_len) {
    return absl::InvalidArgumentError(absl::StrCat(
        field, ": ", num_tokens, " tokens is too long; the context holds ", max_model_len,
        generates ? " tokens including at least one generated token" : " tokens"));
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::SamplingParams> ToSamplingParams(const v1::SamplingParams& proto,
                                                        int32_t vocab_size,
                                                        int32_t min_max_tokens) {
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
  // A map has no order: by id, so that the same request always applies its biases alike.
  p.logit_bias.assign(proto.logit_bias().begin(), proto.logit_bias().end());
  std::sort(p.logit_bias.begin(), p.logit_bias.end());
  if (proto.has_include_stop_str_in_output()) {
    p.include_stop_str_in_output = proto.include_stop_str_in_output();
  }
  if (proto.has_skip_special_tokens()) p.skip_special_tokens = proto.skip_special_tokens();
  p.allowed_token_ids.assign(proto.allowed_token_ids().begin(), proto.allowed_token_ids().end());
  switch (proto.response_format()) {
    case v1::RESPONSE_FORMAT_TEXT:
      break;
    case v1::RESPONSE_FORMAT_JSON_OBJECT:
      p.response_format = engine::ResponseFormat::kJsonObject;
      break;
    case v1::RESPONSE_FORMAT_JSON_SCHEMA: {
      p.response_format = engine::ResponseFormat::kJsonSchema;
      auto schema = engine::JsonSchema::Compile(proto.json_schema());
      if (!schema.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sampling.json_schema: ", schema.status().message()));
      }
      p.json_schema = *std::move(schema);
      break;
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("sampling.response_format: unknown value ",
                                                     static_cast<int>(proto.response_format())));
  }
  if (!proto.json_schema().empty() && proto.response_format() != v1::RESPONSE_FORMAT_JSON_SCHEMA) {
    return absl::InvalidArgumentError(
        "sampling.json_schema is only taken with response_format RESPONSE_FORMAT_JSON_SCHEMA");
  }
  if (proto.guided_choice_size() > 0) {
    if (proto.response_format() != v1::RESPONSE_FORMAT_TEXT) {
      return absl::InvalidArgumentError(
          "sampling.guided_choice is only taken with response_format RESPONSE_FORMAT_TEXT");
    }
    p.response_format = engine::ResponseFormat::kChoice;
    p.choices = std::make_shared<const std::vector<std::string>>(proto.guided_choice().begin(),
                                                                 proto.guided_choice().end());
  }
  if (!proto.guided_regex().empty()) {
    if (p.response_format != engine::ResponseFormat::kText) {
      return absl::InvalidArgumentError(
          "sampling.guided_regex is only taken with response_format RESPONSE_FORMAT_TEXT and no "
          "guided_choice");
    }
    auto regex = engine::RegexDfa::Compile(proto.guided_regex());
    if (!regex.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.guided_regex: ", regex.status().message()));
    }
    p.response_format = engine::ResponseFormat::kRegex;
    p.regex = *std::move(regex);
  }
  if (!proto.guided_grammar().empty()) {
    if (p.response_format != engine::ResponseFormat::kText) {
      return absl::InvalidArgumentError(
          "sampling.guided_grammar is only taken with response_format RESPONSE_FORMAT_TEXT, no "
          "guided_choice and no guided_regex");
    }
    auto grammar = engine::Grammar::Compile(proto.guided_grammar());
    if (!grammar.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.guided_grammar: ", grammar.status().message()));
    }
    p.response_format = engine::ResponseFormat::kGrammar;
    p.grammar = *std::move(grammar);
  }
  // The engine accepts 0 (prompt scoring only); over gRPC that is Score's job, and a
  // Generate that generates nothing is a client bug.
  if (p.max_tokens < min_max_tokens) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.max_tokens must be >= ", min_max_tokens, ", got ", p.max_tokens));
  }
  if (absl::Status s = engine::ValidateSamplingParams(p, vocab_size); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("sampling.", s.message()));
  }
  return p;
}

namespace {

// vLLM's bad_words as the token sequences the engine bans (SamplingParams::bad_words).
absl::StatusOr<std::vector<std::vector<int32_t>>> BadWordIds(
    const google::protobuf::RepeatedPtrField<std::string>& words, const ServedModel& model) {
  std::vector<std::vector<int32_t>> out;
  if (words.empty()) return out;
  if (words.size() > kMaxBadWords) {
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.bad_words: at most ", kMaxBadWords, " words, got ", words.size()));
  }
  if (model.tokenizer() == nullptr) {
    return absl::InvalidArgumentError(
        "sampling.bad_words: the served model has no tokenizer.json to tokenize them");
  }
  for (int i = 0; i < words.size(); ++i) {
    const std::string field = absl::StrCat("sampling.bad_words[", i, "]");
    // As vLLM: the word without its leading whitespace, alone and after a space (the form
    // it takes inside text); the second only where it is a different token sequence of the
    // same length.
    std::string_view word = words[i];
    word.remove_prefix(std::min(word.size(), word.find_first_not_of(" \t\n\v\f\r")));
    if (word.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is blank"));
    if (word.size() > kMaxBadWordBytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": at most ", kMaxBadWordBytes, " bytes, got ", word.size()));
    }
    ASSIGN_OR_RETURN(std::vector<int32_t> alone, EncodeText(word, false, field, model));
    std::string after_space(1, ' ');
    after_space.append(word);
    ASSIGN_OR_RETURN(std::vector<int32_t> spaced, EncodeText(after_space, false, field, model));
    if (alone.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(field, " encodes to nothing"));
    }
    if (static_cast<int32_t>(alone.size()) > engine::kMaxBadWordTokens) {
      return absl::InvalidArgumentError(absl::StrCat(field, ": at most ", engine::kMaxBadWordTokens,
                                                     " tokens, got ", alone.size()));
    }
    const bool other = spaced.size() == alone.size() && spaced[0] != alone[0];
    out.push_back(std::move(alone));
    if (other) out.push_back(std::move(spaced));
  }
  return out;
}

}  // namespace

absl::StatusOr<engine::Request> ToEngineRequest(const v1::GenerateRequest& proto,
                                                const ServedModel& model, int32_t min_max_tokens) {
  const engine::EngineInfo& info = model.engine().info();
  engine::Request request;
  ASSIGN_OR_RETURN(request.prompt, PromptIds(proto.prompt(), "prompt", model));
  ASSIGN_OR_RETURN(request.sampling,
                   ToSamplingParams(proto.sampling(), info.vocab_size, min_max_tokens));
  ASSIGN_OR_RETURN(request.sampling.bad_words, BadWordIds(proto.sampling().bad_words(), model));
  if (proto.sampling().has_truncate_prompt_tokens()) {
    // vLLM's truncate_prompt_tokens: the prompt's last N tokens (-1: max_model_len of them).
    int32_t keep = proto.sampling().truncate_prompt_tokens();
    if (keep == -1) keep = info.max_model_len;
    if (keep < 1 || keep > info.max_model_len) {
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.truncate_prompt_tokens must be -1 or in [1, max_model_len = ",
                       info.max_model_len, "], got ", proto.sampling().truncate_prompt_tokens()));
    }
    if (static_cast<int64_t>(request.prompt.size()) > keep) {
      request.prompt.erase(request.prompt.begin(), request.prompt.end() - keep);
    }
  }
  // A request that generates nothing (max_tokens 0: the prompt's logprobs only) may fill the
  // whole context.
  RETURN_IF_ERROR(CheckPromptLength(request.prompt.size(), info.max_model_len, "prompt",
                                    request.sampling.max_tokens > 0));
  AddChatStop(proto.prompt(), model, &request.sampling);
  request.priority = proto.priority();
  return request;
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
