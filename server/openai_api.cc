#include "server/openai_api.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <string_view>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/status.h"
#include "common/text.h"
#include "runtime/engine/json_schema.h"
#include "runtime/engine/regex.h"
#include "runtime/engine/sampling_params.h"

namespace spanserve::server {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

constexpr char kParamPayload[] = "spanserve.dev/openai-param";

// Calls on_bracket(index, opening) for each [ ] { } of `text` outside JSON strings (their
// escapes skipped), until it returns true.
template <typename OnBracket>
void ScanJsonBrackets(std::string_view text, OnBracket on_bracket) {
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if ((c == '[' || c == '{' || c == ']' || c == '}') &&
               on_bracket(i, c == '[' || c == '{')) {
      return;
    }
  }
}

// Reads body[key] when present and not null.
const json* Field(const json& body, absl::string_view key) {
  auto it = body.find(std::string(key));
  if (it == body.end() || it->is_null()) return nullptr;
  return &*it;
}

absl::StatusOr<std::optional<double>> Number(const json& body, absl::string_view key) {
  const json* v = Field(body, key);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return ParamError(key, "must be a number");
  return std::optional<double>(v->get<double>());
}

absl::StatusOr<std::optional<int64_t>> Integer(const json& body, absl::string_view key) {
  const json* v = Field(body, key);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_unsigned()) {
    if (v->get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return ParamError(key, "is out of range");
    }
    return std::optional<int64_t>(static_cast<int64_t>(v->get<uint64_t>()));
  }
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  // 16.0 is an integer too (some clients send every number as a float).
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::isfinite(d) && d == std::floor(d)) {
      // Past 2^53 a float no longer holds every integer; 2^64 and up arrive here as floats.
      if (std::fabs(d) >= 9.0e15) return ParamError(key, "is out of range");
      return std::optional<int64_t>(static_cast<int64_t>(d));
    }
  }
  return ParamError(key, "must be an integer");
}

// An integer that must fit int32 and lie in [lo, hi].
absl::StatusOr<std::optional<int32_t>> Int32In(const json& body, absl::string_view key, int64_t lo,
                                               int64_t hi) {
  ASSIGN_OR_RETURN(std::optional<int64_t> v, Integer(body, key));
  if (!v) return std::optional<int32_t>();
  if (*v < lo || *v > hi) {
    return ParamError(key, absl::StrCat("must be in [", lo, ", ", hi, "], got ", *v));
  }
  return std::optional<int32_t>(static_cast<int32_t>(*v));
}

absl::StatusOr<std::optional<bool>> Bool(const json& body, absl::string_view key) {
  const json* v = Field(body, key);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return ParamError(key, "must be true or false");
  return std::optional<bool>(v->get<bool>());
}

absl::StatusOr<std::string> String(const json& body, absl::string_view key) {
  const json* v = Field(body, key);
  if (v == nullptr) return std::string();
  if (!v->is_string()) return ParamError(key, "must be a string");
  return v->get<std::string>();
}

// A float sampling field: finite and representable as float (the engine checks ranges).
absl::Status SetFloat(const json& body, absl::string_view key,
                      void (v1::SamplingParams::*setter)(float), v1::SamplingParams* s) {
  ASSIGN_OR_RETURN(std::optional<double> v, Number(body, key));
  if (!v) return absl::OkStatus();
  if (!std::isfinite(*v) || std::fabs(*v) > std::numeric_limits<float>::max()) {
    return ParamError(key, "must be a finite number");
  }
  (s->*setter)(static_cast<float>(*v));
  return absl::OkStatus();
}

// `stop`: a string or a list of strings; empty strings are dropped as OpenAI does.
absl::Status SetStop(const json& body, v1::SamplingParams* s) {
  const json* v = Field(body, "stop");
  if (v == nullptr) return absl::OkStatus();
  if (v->is_string()) {
    if (!v->get<std::string>().empty()) s->add_stop(v->get<std::string>());
    return absl::OkStatus();
  }
  if (!v->is_array()) return ParamError("stop", "must be a string or a list of strings");
  for (const json& e : *v) {
    if (!e.is_string()) return ParamError("stop", "must be a string or a list of strings");
    if (!e.get<std::string>().empty()) s->add_stop(e.get<std::string>());
  }
  return absl::OkStatus();
}

// A list of token ids (stop_token_ids, allowed_token_ids); the engine checks them against the
// vocabulary. Null or absent: nothing is added.
absl::Status AddTokenIds(const json& body, absl::string_view key,
                         google::protobuf::RepeatedField<int32_t>* ids) {
  const json* v = Field(body, key);
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_array()) return ParamError(key, "must be a list of token ids");
  for (const json& e : *v) {
    if (!e.is_number_integer() || e.get<int64_t>() < 0 ||
        e.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
      return ParamError(key, "must be a list of token ids");
    }
    ids->Add(static_cast<int32_t>(e.get<int64_t>()));
  }
  return absl::OkStatus();
}

// vLLM's allowed_token_ids: an empty list would allow nothing, and is refused as vLLM does.
absl::Status SetAllowedTokenIds(const json& body, v1::SamplingParams* s) {
  const json* v = Field(body, "allowed_token_ids");
  if (v == nullptr) return absl::OkStatus();
  if (v->is_array() && v->empty()) {
    return ParamError("allowed_token_ids", "must not be empty: it would allow no token");
  }
  return AddTokenIds(body, "allowed_token_ids", s->mutable_allowed_token_ids());
}

// vLLM's bad_words: a list of words (a single string is taken as one).
absl::Status SetBadWords(const json& body, v1::SamplingParams* s) {
  const json* v = Field(body, "bad_words");
  if (v == nullptr) return absl::OkStatus();
  if (v->is_string()) {
    s->add_bad_words(v->get<std::string>());
    return absl::OkStatus();
  }
  if (!v->is_array()) return ParamError("bad_words", "must be a list of strings");
  for (const json& e : *v) {
    if (!e.is_string()) return ParamError("bad_words", "must be a list of strings");
    s->add_bad_words(e.get<std::string>());
  }
  return absl::OkStatus();
}

// `logit_bias`: OpenAI's {"token id": bias}. Each bias is clamped to [-100, 100], as vLLM
// does (a client's -1e9 "never" is -100); the engine checks the ids against the vocabulary.
absl::Status SetLogitBias(const json& body, v1::SamplingParams* s) {
  const json* v = Field(body, "logit_bias");
  if (v == nullptr) return absl::OkStatus();
  if (!v->is_object()) return ParamError("logit_bias", "must be an object of token ids to biases");
  if (v->size() > static_cast<size_t>(engine::kMaxLogitBias)) {
    return ParamError("logit_bias", absl::StrCat("at most ", engine::kMaxLogitBias, " token ids"));
  }
  for (const auto& [key, value] : v->items()) {
    int64_t id = -1;
    if (!absl::SimpleAtoi(key, &id) || id < 0 || id > std::numeric_limits<int32_t>::max()) {
      return ParamError("logit_bias",
                        absl::StrCat("keys must be token ids, got '", EchoValue(key), "'"));
    }
    if (!value.is_number()) return ParamError("logit_bias", "values must be numbers");
    const double bias = std::clamp(value.get<double>(), -100.0, 100.0);
    (*s->mutable_logit_bias())[static_cast<int32_t>(id)] = static_cast<float>(bias);
  }
  return absl::OkStatus();
}

// What both endpoints share: the sampling fields, OpenAI's and vLLM's extra ones.
absl::StatusOr<v1::SamplingParams> ParseSampling(const json& body, OpenAIEndpoint endpoint) {
  v1::SamplingParams s;
  RETURN_IF_ERROR(SetFloat(body, "temperature", &v1::SamplingParams::set_temperature, &s));
  RETURN_IF_ERROR(SetFloat(body, "top_p", &v1::SamplingParams::set_top_p, &s));
  RETURN_IF_ERROR(SetFloat(body, "min_p", &v1::SamplingParams::set_min_p, &s));
  RETURN_IF_ERROR(
      SetFloat(body, "repetition_penalty", &v1::SamplingParams::set_repetition_penalty, &s));
  RETURN_IF_ERROR(
      SetFloat(body, "presence_penalty", &v1::SamplingParams::set_presence_penalty, &s));
  RETURN_IF_ERROR(
      SetFloat(body, "frequency_penalty", &v1::SamplingParams::set_frequency_penalty, &s));
  constexpr int64_t kInt32Max = std::numeric_limits<int32_t>::max();
  // top_k: -1 means off, as in vLLM.
  ASSIGN_OR_RETURN(std::optional<int32_t> top_k, Int32In(body, "top_k", -1, kInt32Max));
  if (top_k) s.set_top_k(*top_k < 0 ? 0 : *top_k);
  ASSIGN_OR_RETURN(std::optional<int64_t> seed, Integer(body, "seed"));
  if (seed) s.set_seed(static_cast<uint64_t>(*seed));
  // Chat's newer name wins over max_tokens.
  std::optional<int32_t> max_tokens;
  if (endpoint == OpenAIEndpoint::kChatCompletions) {
    ASSIGN_OR_RETURN(max_tokens, Int32In(body, "max_completion_tokens", 0, kInt32Max));
  }
  if (!max_tokens) {
    ASSIGN_OR_RETURN(max_tokens, Int32In(body, "max_tokens", 0, kInt32Max));
  }
  if (max_tokens) s.set_max_tokens(*max_tokens);
  ASSIGN_OR_RETURN(std::optional<int32_t> min_tokens, Int32In(body, "min_tokens", 0, kInt32Max));
  if (min_tokens) s.set_min_tokens(*min_tokens);
  ASSIGN_OR_RETURN(std::optional<bool> ignore_eos, Bool(body, "ignore_eos"));
  if (ignore_eos) s.set_ignore_eos(*ignore_eos);
  RETURN_IF_ERROR(SetStop(body, &s));
  RETURN_IF_ERROR(AddTokenIds(body, "stop_token_ids", s.mutable_stop_token_ids()));
  RETURN_IF_ERROR(SetLogitBias(body, &s));
  // vLLM's output and token-set extras.
  ASSIGN_OR_RETURN(std::optional<bool> include_stop, Bool(body, "include_stop_str_in_output"));
  if (include_stop) s.set_include_stop_str_in_output(*include_stop);
  ASSIGN_OR_RETURN(std::optional<bool> skip_special, Bool(body, "skip_special_tokens"));
  if (skip_special) s.set_skip_special_tokens(*skip_special);
  RETURN_IF_ERROR(SetAllowedTokenIds(body, &s));
  RETURN_IF_ERROR(SetBadWords(body, &s));
  ASSIGN_OR_RETURN(std::optional<int32_t> truncate,
                   Int32In(body, "truncate_prompt_tokens", -1, kInt32Max));
  if (truncate) s.set_truncate_prompt_tokens(*truncate);
  return s;
}

absl::Status Unsupported(const json& body, absl::string_view key, absl::string_view why) {
  const json* v = Field(body, key);
  if (v == nullptr) return absl::OkStatus();
  // Empty lists / objects / strings ask for nothing.
  if ((v->is_array() || v->is_object() || v->is_string()) && v->empty()) return absl::OkStatus();
  if (v->is_string() && v->get<std::string>().empty()) return absl::OkStatus();
  return ParamError(key, why);
}

// One completions prompt: a string, or a list of token ids.
absl::StatusOr<v1::Prompt> ToPrompt(const json& v, absl::string_view param) {
  v1::Prompt prompt;
  if (v.is_string()) {
    prompt.set_text(v.get<std::string>());
    return prompt;
  }
  if (v.is_array()) {
    for (const json& e : v) {
      if (!e.is_number_integer() || e.get<int64_t>() < 0 ||
          e.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        return ParamError(param, "a token-id prompt must be a list of non-negative integers");
      }
      prompt.mutable_token_ids()->add_ids(static_cast<int32_t>(e.get<int64_t>()));
    }
    return prompt;
  }
  return ParamError(param, "must be a string, a list of strings, or token ids");
}

absl::StatusOr<std::vector<v1::Prompt>> CompletionPrompts(const json& body) {
  const json* v = Field(body, "prompt");
  if (v == nullptr) return ParamError("prompt", "is required");
  std::vector<v1::Prompt> prompts;
  if (v->is_string()) {
    ASSIGN_OR_RETURN(prompts.emplace_back(), ToPrompt(*v, "prompt"));
    return prompts;
  }
  if (!v->is_array())
    return ParamError("prompt", "must be a string, a list of strings, or token ids");
  if (v->empty()) return ParamError("prompt", "must not be empty");
  // A list of integers is one prompt; a list of strings or of lists is a batch.
  if (v->front().is_number()) {
    ASSIGN_OR_RETURN(prompts.emplace_back(), ToPrompt(*v, "prompt"));
    return prompts;
  }
  if (v->size() > static_cast<size_t>(kMaxOpenAIChoices)) {
    return ParamError("prompt", absl::StrCat("at most ", kMaxOpenAIChoices, " prompts a request"));
  }
  for (const json& e : *v) {
    if (!e.is_string() && !e.is_array()) {
      return ParamError("prompt", "must be a string, a list of strings, or token ids");
    }
    ASSIGN_OR_RETURN(prompts.emplace_back(), ToPrompt(e, "prompt"));
  }
  return prompts;
}

// Chat content: a string, or a list of parts of which only {"type": "text"} is served.
absl::StatusOr<std::string> MessageContent(const json& message, size_t index) {
  const std::string param = absl::StrCat("messages[", index, "].content");
  const json* content = Field(message, "content");
  if (content == nullptr || content->is_null()) return std::string();
  if (content->is_string()) return content->get<std::string>();
  if (!content->is_array()) return ParamError(param, "must be a string or a list of parts");
  std::string text;
  for (const json& part : *content) {
    if (!part.is_object()) return ParamError(param, "each part must be an object");
    ASSIGN_OR_RETURN(std::string type, String(part, "type"));
    if (type != "text") {
      return ParamError(
          param, absl::StrCat("part type '", EchoValue(type), "' is not served (only \"text\")"));
    }
    ASSIGN_OR_RETURN(std::string part_text, String(part, "text"));
    text += part_text;
  }
  return text;
}

absl::StatusOr<v1::Prompt> ChatPrompt(const json& body) {
  const json* messages = Field(body, "messages");
  if (messages == nullptr) return ParamError("messages", "is required");
  if (!messages->is_array() || messages->empty()) {
    return ParamError("messages", "must be a non-empty list of messages");
  }
  v1::Prompt prompt;
  v1::Chat* chat = prompt.mutable_chat();
  for (size_t i = 0; i < messages->size(); ++i) {
    const json& m = (*messages)[i];
    if (!m.is_object()) return ParamError(absl::StrCat("messages[", i, "]"), "must be an object");
    const json* role = Field(m, "role");
    if (role == nullptr || !role->is_string()) {
      return ParamError(absl::StrCat("messages[", i, "].role"), "must be a string");
    }
    ASSIGN_OR_RETURN(std::string content, MessageContent(m, i));
    v1::ChatMessage* out = chat->add_messages();
    // OpenAI's newer name for the system role.
    out->set_role(role->get<std::string>() == "developer" ? "system" : role->get<std::string>());
    out->set_content(std::move(content));
    if (const json* calls = Field(m, "tool_calls"); calls != nullptr && !calls->is_null()) {
      const std::string param = absl::StrCat("messages[", i, "].tool_calls");
      if (!calls->is_array()) return ParamError(param, "must be a list of tool calls");
      for (const json& call : *calls) {
        const json* function = call.is_object() ? Field(call, "function") : nullptr;
        const json* name =
            function != nullptr && function->is_object() ? Field(*function, "name") : nullptr;
        if (name == nullptr || !name->is_string()) {
          return ParamError(param,
                            "each must be {\"id\", \"type\": \"function\", "
                            "\"function\": {\"name\", \"arguments\"}}");
        }
      }
      out->set_tool_calls(calls->dump());
    }
    for (const char* key : {"tool_call_id", "name"}) {
      if (const json* v = Field(m, key); v != nullptr && !v->is_null()) {
        if (!v->is_string())
          return ParamError(absl::StrCat("messages[", i, "].", key), "must be a string");
        if (std::string_view(key) == "name") {
          out->set_name(v->get<std::string>());
        } else {
          out->set_tool_call_id(v->get<std::string>());
        }
      }
    }
  }
  ASSIGN_OR_RETURN(std::optional<bool> add_generation_prompt, Bool(body, "add_generation_prompt"));
  // vLLM's continue_final_message: the last message is left open for the model to go on
  // with. It takes no generation prompt; vLLM refuses both set, where add_generation_prompt
  // defaults to true, so a client must send false: here leaving it out is enough.
  ASSIGN_OR_RETURN(std::optional<bool> continue_final, Bool(body, "continue_final_message"));
  if (continue_final.value_or(false)) {
    if (add_generation_prompt.value_or(false)) {
      return ParamError("continue_final_message",
                        "cannot be true with add_generation_prompt true: the last message is "
                        "continued, so no new turn is opened");
    }
    add_generation_prompt = false;
    chat->set_continue_final_message(true);
  }
  chat->set_add_generation_prompt(add_generation_prompt.value_or(true));
  // vLLM's extra chat-template variables, e.g. {"enable_thinking": false}.
  if (const json* kwargs = Field(body, "chat_template_kwargs"); kwargs != nullptr) {
    if (!kwargs->is_object()) return ParamError("chat_template_kwargs", "must be an object");
    chat->set_chat_template_kwargs(kwargs->dump());
  }
  return prompt;
}

std::string_view ErrorType(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnauthenticated:
      return "authentication_error";
    case absl::StatusCode::kPermissionDenied:
      return "permission_error";
    case absl::StatusCode::kNotFound:
      return "not_found_error";
    case absl::StatusCode::kResourceExhausted:
      return "rate_limit_error";
    case absl::StatusCode::kUnavailable:
      return "service_unavailable_error";
    case absl::StatusCode::kDeadlineExceeded:
      return "timeout_error";
    case absl::StatusCode::kInternal:
    case absl::StatusCode::kUnknown:
    case absl::StatusCode::kDataLoss:
      return "server_error";
    default:
      return "invalid_request_error";
  }
}

}  // namespace

absl::Status ParamError(absl::string_view param, absl::string_view message) {
  absl::Status status = absl::InvalidArgumentError(absl::StrCat(param, ": ", message));
  status.SetPayload(kParamPayload, absl::Cord(param));
  return status;
}

std::string OpenAIParam(const absl::Status& status) {
  if (auto p = status.GetPayload(kParamPayload); p.has_value()) return std::string(*p);
  if (status.code() != absl::StatusCode::kInvalidArgument &&
      status.code() != absl::StatusCode::kNotFound) {
    return "";
  }
  absl::string_view m = status.message();
  // A chat prompt is the request's messages.
  if (absl::StartsWith(m, "prompt.chat.continue_final_message")) return "continue_final_message";
  if (absl::StartsWith(m, "prompt.chat")) return "messages";
  if (absl::ConsumePrefix(&m, "sampling.")) {
    size_t end = 0;
    while (end < m.size() && (absl::ascii_isalnum(m[end]) || m[end] == '_')) ++end;
    return std::string(m.substr(0, end));
  }
  for (absl::string_view field : {"prompt", "messages", "model"}) {
    if (absl::StartsWith(m, field)) return std::string(field);
  }
  return "";
}

int HttpStatusFor(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kOutOfRange:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kAlreadyExists:
      return 409;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
      return 499;
    case absl::StatusCode::kUnimplemented:
      return 501;
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

json OpenAIError(const absl::Status& status) {
  const std::string param = OpenAIParam(status);
  json error = {
      {"message", std::string(status.message())},
      {"type", std::string(ErrorType(status.code()))},
      {"param", param.empty() ? json(nullptr) : json(param)},
      {"code", status.code() == absl::StatusCode::kNotFound ? json("model_not_found")
                                                            : json(HttpStatusFor(status.code()))},
  };
  return json{{"error", std::move(error)}};
}

int JsonDepth(absl::string_view text, int limit) {
  int depth = 0;
  int deepest = 0;
  ScanJsonBrackets(std::string_view(text.data(), text.size()), [&](size_t, bool open) {
    if (!open) {
      --depth;
      return false;
    }
    if (++depth > deepest) deepest = depth;
    return deepest > limit;
  });
  return deepest;
}

std::string DumpJson(const nlohmann::json& j) {
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

absl::StatusOr<nlohmann::json> ParseOpenAIBody(std::string_view text) {
  if (JsonDepth(absl::string_view(text.data(), text.size()), kMaxJsonDepth) > kMaxJsonDepth) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request body nests deeper than ", kMaxJsonDepth, " levels"));
  }
  nlohmann::json body = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (body.is_discarded()) {
    return absl::InvalidArgumentError("the request body is not valid JSON (UTF-8)");
  }
  if (!body.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  return body;
}

namespace {

// The text of the value at `path` (a chain of object keys) in the JSON document `doc`, or
// empty if there is none; where a key repeats, its last value (as the parsed body has it).
// A schema keeps its properties' order this way, which the parsed body (keys sorted) lost.
std::string_view RawJsonValue(std::string_view doc, std::span<const std::string_view> path) {
  size_t i = 0;
  const auto ws = [&] {
    while (i < doc.size() &&
           (doc[i] == ' ' || doc[i] == '\t' || doc[i] == '\n' || doc[i] == '\r')) {
      ++i;
    }
  };
  const auto skip_string = [&] {  // at '"'
    for (++i; i < doc.size() && doc[i] != '"'; ++i) {
      if (doc[i] == '\\') ++i;
    }
    ++i;
  };
  const auto skip_value = [&] {
    ws();
    int depth = 0;
    while (i < doc.size()) {
      const char c = doc[i];
      if (c == '"') {
        skip_string();
      } else if (c == '{' || c == '[') {
        ++depth;
        ++i;
      } else if (c == '}' || c == ']') {
        if (depth == 0) return;
        --depth;
        ++i;
      } else if (depth == 0 && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
        return;
      } else {
        ++i;
      }
      if (depth == 0 && (c == '"' || c == '}' || c == ']')) return;
    }
  };
  for (const std::string_view want : path) {
    ws();
    if (i >= doc.size() || doc[i] != '{') return {};
    ++i;
    size_t found = std::string_view::npos;
    while (true) {
      ws();
      if (i >= doc.size() || doc[i] != '"') break;
      const size_t k0 = i;
      skip_string();
      const std::string_view key = doc.substr(k0, std::min(i, doc.size()) - k0);
      bool match = key.size() == want.size() + 2 && key.substr(1, want.size()) == want;
      if (!match && key.find('\\') != std::string_view::npos) {
        const json decoded = json::parse(key, nullptr, /*allow_exceptions=*/false);
        match = decoded.is_string() && decoded.get_ref<const std::string&>() == want;
      }
      ws();
      if (i >= doc.size() || doc[i] != ':') return {};
      ++i;
      ws();
      if (match) found = i;
      skip_value();
      ws();
      if (i < doc.size() && doc[i] == ',') ++i;
    }
    if (found == std::string_view::npos) return {};
    i = found;
  }
  ws();
  const size_t start = i;
  skip_value();
  return doc.substr(start, std::min(i, doc.size()) - start);
}

// A structured-outputs schema's text: `value` itself if it is a string, else its text in the
// raw body (property order kept) when that reads back as the same value, else its dump.
std::string SchemaText(const json& value, std::string_view raw,
                       std::span<const std::string_view> path) {
  if (value.is_string()) return value.get<std::string>();
  const std::string_view text = RawJsonValue(raw, path);
  if (!text.empty()) {
    const json again = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (!again.is_discarded() && again == value) return std::string(text);
  }
  return value.dump();
}

// OpenAI tools: `tools` (its text, property order kept), `tool_choice` and
// `parallel_tool_calls` into *request; returns the tools' text (empty: none).
absl::StatusOr<std::string> ParseTools(const json& body, std::string_view raw_body,
                                       OpenAIRequest* request) {
  const json* tools = Field(body, "tools");
  const json* choice = Field(body, "tool_choice");
  const bool have_tools =
      tools != nullptr && !tools->is_null() && !(tools->is_array() && tools->empty());
  ASSIGN_OR_RETURN(std::optional<bool> parallel, Bool(body, "parallel_tool_calls"));
  request->tool_parallel = parallel.value_or(true);
  std::vector<std::string> names;
  std::string text;
  constexpr char kToolChoiceForms[] =
      "must be \"none\", \"auto\", \"required\" or "
      "{\"type\": \"function\", \"function\": {\"name\"}}";
  if (have_tools) {
    if (!tools->is_array()) return ParamError("tools", "must be a list of tools");
    if (tools->size() > kMaxTools) {
      return ParamError("tools", absl::StrCat("at most ", kMaxTools, " tools"));
    }
    for (size_t i = 0; i < tools->size(); ++i) {
      const json& tool = (*tools)[i];
      const std::string param = absl::StrCat("tools[", i, "]");
      const json* type = tool.is_object() ? Field(tool, "type") : nullptr;
      if (type == nullptr || *type != "function") {
        return ParamError(param, "must be {\"type\": \"function\", \"function\": {...}}");
      }
      const json* function = Field(tool, "function");
      const json* name =
          function != nullptr && function->is_object() ? Field(*function, "name") : nullptr;
      if (name == nullptr || !name->is_string() || name->get_ref<const std::string&>().empty()) {
        return ParamError(absl::StrCat(param, ".function.name"), "must be a non-empty string");
      }
      const json* parameters = Field(*function, "parameters");
      if (parameters != nullptr && !parameters->is_null() && !parameters->is_object()) {
        return ParamError(absl::StrCat(param, ".function.parameters"),
                          "must be a JSON Schema object");
      }
      if (std::find(names.begin(), names.end(), name->get<std::string>()) != names.end()) {
        return ParamError(
            absl::StrCat(param, ".function.name"),
            absl::StrCat("'", EchoValue(name->get<std::string>()), "' is given twice"));
      }
      names.push_back(name->get<std::string>());
    }
    constexpr std::string_view kPath[] = {"tools"};
    text = SchemaText(*tools, raw_body, kPath);
    request->tool_names = names;
  }
  request->tool_choice =
      have_tools ? OpenAIRequest::ToolChoice::kAuto : OpenAIRequest::ToolChoice::kNone;
  if (choice != nullptr && !choice->is_null()) {
    if (choice->is_string()) {
      const std::string& c = choice->get_ref<const std::string&>();
      if (c == "none") {
        request->tool_choice = OpenAIRequest::ToolChoice::kNone;
      } else if (c == "auto" || c == "required") {
        if (!have_tools) return ParamError("tool_choice", absl::StrCat("\"", c, "\" needs tools"));
        request->tool_choice =
            c == "auto" ? OpenAIRequest::ToolChoice::kAuto : OpenAIRequest::ToolChoice::kRequired;
      } else {
        return ParamError("tool_choice", kToolChoiceForms);
      }
    } else {
      const json* function = choice->is_object() ? Field(*choice, "function") : nullptr;
      const json* name =
          function != nullptr && function->is_object() ? Field(*function, "name") : nullptr;
      if (name == nullptr || !name->is_string()) {
        return ParamError("tool_choice", kToolChoiceForms);
      }
      if (std::find(names.begin(), names.end(), name->get<std::string>()) == names.end()) {
        return ParamError("tool_choice",
                          absl::StrCat("function '", EchoValue(name->get<std::string>()),
                                       "' is not among the tools"));
      }
      request->tool_choice = OpenAIRequest::ToolChoice::kNamed;
      request->tool_function = name->get<std::string>();
    }
  }
  return text;
}

// The schema a named or required tool_choice constrains the output to: the function's
// parameters, or a list of {"name", "arguments"} calls. A parameters schema with keywords the
// constraint does not support (numeric bounds, pattern, ...) leaves that function's
// arguments a free JSON object.
absl::StatusOr<std::shared_ptr<const engine::JsonSchema>> ToolCallSchema(
    const OpenAIRequest& request, const std::string& tools_text) {
  const ordered_json tools = ordered_json::parse(tools_text, nullptr, /*allow_exceptions=*/false);
  const ordered_json free_object = {{"type", "object"}};
  const auto parameters = [&](const ordered_json& tool) {
    const ordered_json& function = tool.at("function");
    if (!function.contains("parameters") || !function.at("parameters").is_object()) {
      return free_object;
    }
    const ordered_json& p = function.at("parameters");
    return engine::JsonSchema::Compile(p.dump()).ok() ? p : free_object;
  };
  ordered_json schema;
  if (request.tool_choice == OpenAIRequest::ToolChoice::kNamed) {
    for (const ordered_json& tool : tools) {
      if (tool.at("function").at("name") == request.tool_function) schema = parameters(tool);
    }
  } else {
    ordered_json calls = ordered_json::array();
    for (const ordered_json& tool : tools) {
      calls.push_back({{"type", "object"},
                       {"properties",
                        {{"name", {{"const", tool.at("function").at("name")}}},
                         {"arguments", parameters(tool)}}},
                       {"required", {"name", "arguments"}},
                       {"additionalProperties", false}});
    }
    schema = {{"type", "array"}, {"items", {{"anyOf", std::move(calls)}}}, {"minItems", 1}};
    if (!request.tool_parallel) schema["maxItems"] = 1;
  }
  // At most a space between tokens: a small model may otherwise pad with whitespace.
  auto compiled = engine::JsonSchema::Compile(schema.dump(), /*max_whitespace=*/1);
  if (!compiled.ok()) return ParamError("tools", compiled.status().message());
  return *std::move(compiled);
}

}  // namespace

absl::StatusOr<OpenAIRequest> ParseOpenAIRequest(const json& body, OpenAIEndpoint endpoint,
                                                 std::string_view raw_body) {
  if (!body.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  const bool chat = endpoint == OpenAIEndpoint::kChatCompletions;
  OpenAIRequest request;
  request.endpoint = endpoint;
  ASSIGN_OR_RETURN(request.model, String(body, "model"));
  RETURN_IF_ERROR(Unsupported(body, "suffix", "is not supported"));
  RETURN_IF_ERROR(Unsupported(body, "functions", "is deprecated; send tools"));
  RETURN_IF_ERROR(Unsupported(body, "function_call", "is deprecated; send tool_choice"));
  if (!chat) RETURN_IF_ERROR(Unsupported(body, "tools", "is only for chat completions"));
  // OpenAI's JSON mode and structured outputs (and vLLM's guided_json).
  v1::ResponseFormat response_format = v1::RESPONSE_FORMAT_TEXT;
  std::string schema_text;
  const char* schema_param = "response_format";
  if (const json* format = Field(body, "response_format"); format != nullptr) {
    const json* type = format->is_object() ? Field(*format, "type") : nullptr;
    if (type == nullptr || !type->is_string()) {
      return ParamError("response_format", "must be an object with a string \"type\"");
    }
    const std::string& t = type->get_ref<const std::string&>();
    if (t == "json_object") {
      response_format = v1::RESPONSE_FORMAT_JSON_OBJECT;
    } else if (t == "json_schema") {
      const json* spec = Field(*format, "json_schema");
      const json* schema = spec != nullptr && spec->is_object() ? Field(*spec, "schema") : nullptr;
      if (schema == nullptr || !(schema->is_object() || schema->is_boolean())) {
        return ParamError("response_format",
                          "json_schema must be an object whose \"schema\" is a JSON Schema");
      }
      constexpr std::string_view kPath[] = {"response_format", "json_schema", "schema"};
      schema_text = SchemaText(*schema, raw_body, kPath);
      response_format = v1::RESPONSE_FORMAT_JSON_SCHEMA;
    } else if (t != "text") {
      return ParamError("response_format",
                        "type must be \"text\", \"json_object\" or \"json_schema\"");
    }
  }
  if (const json* guided = Field(body, "guided_json"); guided != nullptr) {
    if (response_format != v1::RESPONSE_FORMAT_TEXT) {
      return ParamError("guided_json", "is not allowed beside a response_format");
    }
    if (!(guided->is_object() || guided->is_string() || guided->is_boolean())) {
      return ParamError("guided_json", "must be a JSON Schema (an object or its text)");
    }
    constexpr std::string_view kPath[] = {"guided_json"};
    schema_text = SchemaText(*guided, raw_body, kPath);
    response_format = v1::RESPONSE_FORMAT_JSON_SCHEMA;
    schema_param = "guided_json";
  }
  // vLLM's guided_choice, and its later structured_outputs {"choice": [...]} (or {"json":
  // schema}, as guided_json): the output is one of the strings.
  // vLLM's guided_regex (structured_outputs {"regex": ...}): the output matches it.
  const json* choice_list = Field(body, "guided_choice");
  const char* choice_param = "guided_choice";
  const json* regex = Field(body, "guided_regex");
  const char* regex_param = "guided_regex";
  // vLLM's guided_grammar (structured_outputs {"grammar": ...}) and llama.cpp's `grammar`:
  // the output is a sentence of the GBNF grammar.
  const json* grammar = Field(body, "guided_grammar");
  const char* grammar_param = "guided_grammar";
  if (const json* gbnf = Field(body, "grammar"); gbnf != nullptr) {
    if (grammar != nullptr) return ParamError("grammar", "is not allowed beside guided_grammar");
    grammar = gbnf;
    grammar_param = "grammar";
  }
  if (const json* outputs = Field(body, "structured_outputs"); outputs != nullptr) {
    if (!outputs->is_object() || outputs->size() != 1 ||
        !(outputs->contains("choice") || outputs->contains("json") || outputs->contains("regex") ||
          outputs->contains("grammar"))) {
      return ParamError("structured_outputs",
                        "must be an object with one of \"choice\" (a list of strings), "
                        "\"regex\" (a regular expression), \"grammar\" (a GBNF grammar) or "
                        "\"json\" (a JSON Schema); structural_tag is not served");
    }
    if (response_format != v1::RESPONSE_FORMAT_TEXT || choice_list != nullptr || regex != nullptr ||
        grammar != nullptr) {
      return ParamError("structured_outputs",
                        "is not allowed beside response_format, guided_json, guided_choice, "
                        "guided_regex or guided_grammar");
    }
    if (outputs->contains("regex")) {
      regex = &(*outputs)["regex"];
      regex_param = "structured_outputs";
    }
    if (outputs->contains("grammar")) {
      grammar = &(*outputs)["grammar"];
      grammar_param = "structured_outputs";
    }
    if (const json* schema = Field(*outputs, "json"); schema != nullptr) {
      if (!(schema->is_object() || schema->is_string() || schema->is_boolean())) {
        return ParamError("structured_outputs",
                          "json must be a JSON Schema (an object or its text)");
      }
      constexpr std::string_view kPath[] = {"structured_outputs", "json"};
      schema_text = SchemaText(*schema, raw_body, kPath);
      response_format = v1::RESPONSE_FORMAT_JSON_SCHEMA;
      schema_param = "structured_outputs";
    } else if (regex == nullptr && grammar == nullptr) {
      choice_list = Field(*outputs, "choice");
      choice_param = "structured_outputs";
    }
  }
  std::vector<std::string> choices;
  if (choice_list != nullptr) {
    if (response_format != v1::RESPONSE_FORMAT_TEXT) {
      return ParamError(choice_param, "is not allowed beside a response_format or guided_json");
    }
    if (!choice_list->is_array() || choice_list->empty() ||
        choice_list->size() > static_cast<size_t>(engine::kMaxChoices)) {
      return ParamError(choice_param, absl::StrCat("choices must be a list of 1 to ",
                                                   engine::kMaxChoices, " strings"));
    }
    for (const json& c : *choice_list) {
      if (!c.is_string() || c.get_ref<const std::string&>().empty() ||
          c.get_ref<const std::string&>().size() > static_cast<size_t>(engine::kMaxChoiceBytes)) {
        return ParamError(choice_param, absl::StrCat("each choice must be a string of 1 to ",
                                                     engine::kMaxChoiceBytes, " bytes"));
      }
      choices.push_back(c.get<std::string>());
    }
  }
  if (regex != nullptr) {
    if (response_format != v1::RESPONSE_FORMAT_TEXT || choice_list != nullptr) {
      return ParamError(regex_param,
                        "is not allowed beside a response_format, guided_json or guided_choice");
    }
    if (!regex->is_string()) {
      return ParamError(regex_param, "the regex must be a string (a regular expression)");
    }
    auto compiled = engine::RegexDfa::Compile(regex->get_ref<const std::string&>());
    if (!compiled.ok()) {
      return ParamError(regex_param, absl::StrCat("regex ", compiled.status().message()));
    }
    request.regex = *std::move(compiled);
  }
  if (grammar != nullptr) {
    if (response_format != v1::RESPONSE_FORMAT_TEXT || choice_list != nullptr || regex != nullptr) {
      return ParamError(grammar_param,
                        "is not allowed beside a response_format, guided_json, guided_choice or "
                        "guided_regex");
    }
    if (!grammar->is_string()) {
      return ParamError(grammar_param, "the grammar must be a string (GBNF)");
    }
    auto compiled = engine::Grammar::Compile(grammar->get_ref<const std::string&>());
    if (!compiled.ok()) {
      return ParamError(grammar_param, absl::StrCat("grammar ", compiled.status().message()));
    }
    request.grammar = *std::move(compiled);
  }
  std::string tools_text;
  if (chat) {
    ASSIGN_OR_RETURN(tools_text, ParseTools(body, raw_body, &request));
    if (request.tool_choice == OpenAIRequest::ToolChoice::kNamed ||
        request.tool_choice == OpenAIRequest::ToolChoice::kRequired) {
      if (response_format != v1::RESPONSE_FORMAT_TEXT || !choices.empty() ||
          request.regex != nullptr || request.grammar != nullptr) {
        return ParamError("tool_choice",
                          "a required or named tool_choice cannot be combined with "
                          "response_format, guided_json, guided_choice, guided_regex or "
                          "guided_grammar");
      }
      ASSIGN_OR_RETURN(request.json_schema, ToolCallSchema(request, tools_text));
    }
  }
  if (response_format == v1::RESPONSE_FORMAT_JSON_SCHEMA) {
    auto compiled = engine::JsonSchema::Compile(schema_text);
    if (!compiled.ok()) return ParamError(schema_param, compiled.status().message());
    request.json_schema = *std::move(compiled);
    response_format = v1::RESPONSE_FORMAT_TEXT;  // set on each engine request from json_schema
  }
  ASSIGN_OR_RETURN(std::optional<int32_t> n, Int32In(body, "n", 1, kMaxOpenAIChoices));
  request.n = n.value_or(1);
  ASSIGN_OR_RETURN(std::optional<int32_t> best_of, Int32In(body, "best_of", 1, kMaxOpenAIChoices));
  if (best_of && *best_of != request.n) {
    return ParamError("best_of", "is not supported (other than best_of = n)");
  }
  ASSIGN_OR_RETURN(std::optional<bool> stream, Bool(body, "stream"));
  request.stream = stream.value_or(false);
  if (const json* options = Field(body, "stream_options"); options != nullptr) {
    if (!options->is_object()) return ParamError("stream_options", "must be an object");
    if (!request.stream) return ParamError("stream_options", "is only allowed with stream: true");
    ASSIGN_OR_RETURN(std::optional<bool> usage, Bool(*options, "include_usage"));
    request.include_usage = usage.value_or(false);
  }
  if (chat) {
    ASSIGN_OR_RETURN(std::optional<bool> logprobs, Bool(body, "logprobs"));
    ASSIGN_OR_RETURN(std::optional<int32_t> top, Int32In(body, "top_logprobs", 0, 20));
    if (top && !logprobs.value_or(false)) {
      return ParamError("top_logprobs", "requires logprobs: true");
    }
    if (logprobs.value_or(false)) request.logprobs = top.value_or(0);
  } else {
    // Completions' logprobs is a count (OpenAI allows 5; as vLLM, up to 20).
    ASSIGN_OR_RETURN(request.logprobs, Int32In(body, "logprobs", 0, 20));
    ASSIGN_OR_RETURN(std::optional<bool> echo, Bool(body, "echo"));
    request.echo = echo.value_or(false);
  }
  ASSIGN_OR_RETURN(std::optional<bool> as_ids, Bool(body, "return_tokens_as_token_ids"));
  request.tokens_as_ids = as_ids.value_or(false);
  ASSIGN_OR_RETURN(request.prompt_logprobs, Int32In(body, "prompt_logprobs", 0, 20));
  if (request.prompt_logprobs && request.stream) {
    return ParamError("prompt_logprobs", "is not available with stream: true, as in vLLM");
  }
  ASSIGN_OR_RETURN(std::optional<bool> token_ids, Bool(body, "return_token_ids"));
  request.return_token_ids = token_ids.value_or(false);
  ASSIGN_OR_RETURN(v1::SamplingParams sampling, ParseSampling(body, endpoint));
  sampling.set_response_format(response_format);
  for (std::string& c : choices) sampling.add_guided_choice(std::move(c));
  if (!sampling.has_max_tokens()) {
    // OpenAI's defaults: 16 for completions; chat runs to the end of the turn or the
    // context (ToEngineRequest's length check leaves room for one token; the engine stops
    // a request whose context is full with finish_reason "length").
    sampling.set_max_tokens(chat ? std::numeric_limits<int32_t>::max() : 16);
  }
  if (sampling.max_tokens() == 0 && !request.echo) {
    return ParamError("max_tokens", "must be >= 1 (0 only with echo, to score the prompt)");
  }
  if (request.logprobs) sampling.set_logprobs(*request.logprobs);
  ASSIGN_OR_RETURN(std::optional<int32_t> priority,
                   Int32In(body, "priority", std::numeric_limits<int32_t>::min(),
                           std::numeric_limits<int32_t>::max()));
  std::vector<v1::Prompt> prompts;
  if (chat) {
    ASSIGN_OR_RETURN(prompts.emplace_back(), ChatPrompt(body));
    if (!tools_text.empty()) prompts.back().mutable_chat()->set_tools(tools_text);
  } else {
    ASSIGN_OR_RETURN(prompts, CompletionPrompts(body));
  }
  ASSIGN_OR_RETURN(std::optional<bool> add_special, Bool(body, "add_special_tokens"));
  if (static_cast<int64_t>(prompts.size()) * request.n > kMaxOpenAIChoices) {
    return ParamError("n", absl::StrCat("prompts x n is ", prompts.size() * request.n, "; at most ",
                                        kMaxOpenAIChoices, " a request"));
  }
  for (v1::Prompt& prompt : prompts) {
    v1::GenerateRequest& g = request.prompts.emplace_back();
    g.set_model(request.model);
    if (add_special && !prompt.has_chat()) prompt.set_add_special_tokens(*add_special);
    *g.mutable_prompt() = std::move(prompt);
    *g.mutable_sampling() = sampling;
    g.set_priority(priority.value_or(0));
  }
  return request;
}

bool ReadsToolCalls(const OpenAIRequest& request, chat::ToolCallFormat format) {
  switch (request.tool_choice) {
    case OpenAIRequest::ToolChoice::kNone:
      return false;
    case OpenAIRequest::ToolChoice::kAuto:
      return format != chat::ToolCallFormat::kNone;
    default:
      return true;
  }
}

namespace {

constexpr std::string_view kToolCallOpen = "<tool_call>";
constexpr std::string_view kToolCallClose = "</tool_call>";
constexpr std::string_view kThinkOpen = "<think>";
constexpr std::string_view kThinkClose = "</think>";

constexpr std::string_view kSpaces = " \t\r\n";

// The length of the whitespace that starts `s`.
size_t LeadingSpaces(std::string_view s) {
  return std::min(s.find_first_not_of(kSpaces), s.size());
}

// The length of the longest end of `text` that is a proper beginning of `tag` (text to hold
// back while it may still grow into the tag).
size_t TagStartAtEnd(std::string_view text, std::string_view tag) {
  for (size_t keep = std::min(text.size(), tag.size() - 1); keep > 0; --keep) {
    if (text.substr(text.size() - keep) == tag.substr(0, keep)) return keep;
  }
  return 0;
}

std::string_view Trim(std::string_view s) {
  const size_t b = s.find_first_not_of(kSpaces);
  if (b == std::string_view::npos) return {};
  const size_t e = s.find_last_not_of(kSpaces);
  return s.substr(b, e - b + 1);
}

// The output's JSON, unless it nests deeper than a request may (then it is no call).
ordered_json ParseOutputJson(std::string_view text) {
  if (JsonDepth(absl::string_view(text.data(), text.size()), kMaxJsonDepth) > kMaxJsonDepth)
    return ordered_json(ordered_json::value_t::discarded);
  return ordered_json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// {"name", "arguments" | "parameters"} into (name, arguments' JSON text).
bool ReadCall(const ordered_json& call, std::vector<std::pair<std::string, std::string>>* out) {
  if (!call.is_object() || !call.contains("name") || !call.at("name").is_string()) return false;
  const char* key = call.contains("arguments") ? "arguments" : "parameters";
  std::string arguments = "{}";
  if (call.contains(key)) {
    const ordered_json& a = call.at(key);
    arguments = a.is_string() ? a.get<std::string>() : a.dump();
  }
  out->emplace_back(call.at("name").get<std::string>(), std::move(arguments));
  return true;
}

constexpr std::string_view kMistralCalls = "[TOOL_CALLS]";
constexpr std::string_view kMistralArgs = "[ARGS]";
constexpr std::string_view kMistralCallId = "[CALL_ID]";

// The length of the JSON object or array that starts `text` (strings and their escapes
// skipped), or 0 when it does not close.
size_t JsonValueLength(std::string_view text) {
  int depth = 0;
  size_t length = 0;
  ScanJsonBrackets(text, [&](size_t at, bool open) {
    if (open) {
      ++depth;
      return false;
    }
    if (--depth != 0) return false;
    length = at + 1;
    return true;
  });
  return length;
}

// The tool whose name `text` starts with, longest first ("" when none).
std::string_view ToolNameAtStart(std::string_view text, const std::vector<std::string>& names) {
  std::string_view best;
  for (const std::string& name : names) {
    if (name.size() > best.size() && text.substr(0, name.size()) == name) best = name;
  }
  return best;
}

// A Mistral model's calls: `[TOOL_CALLS]` (absent when the tokenizer drops its control
// tokens from the text) then either a JSON list of {"name", "arguments"} (Mistral Nemo's
// format) or one or more `name[CALL_ID]id[ARGS]{...}` (Small 3.2 / Devstral; the tags
// likewise optional), each name one of the tools. nullopt when the output is not all calls.
std::optional<std::vector<std::pair<std::string, std::string>>> MistralCalls(
    std::string_view text, const std::vector<std::string>& names) {
  std::vector<std::pair<std::string, std::string>> calls;
  std::string_view rest = Trim(text);
  const auto skip = [&rest](std::string_view tag) {
    if (rest.substr(0, tag.size()) != tag) return false;
    rest = Trim(rest.substr(tag.size()));
    return true;
  };
  skip(kMistralCalls);
  if (!rest.empty() && rest[0] == '[') {
    const ordered_json list = ParseOutputJson(rest);
    if (!list.is_array()) return std::nullopt;
    for (const ordered_json& call : list) {
      if (!ReadCall(call, &calls)) return std::nullopt;
    }
    return calls;
  }
  while (!rest.empty()) {
    const std::string_view name = ToolNameAtStart(rest, names);
    if (name.empty()) return std::nullopt;
    rest = Trim(rest.substr(name.size()));
    if (skip(kMistralCallId)) {
      const size_t id_end = rest.find('[');
      if (id_end == std::string_view::npos) return std::nullopt;
      rest = rest.substr(id_end);
    }
    skip(kMistralArgs);
    const size_t length = JsonValueLength(rest);
    if (length == 0 || rest[0] != '{') return std::nullopt;
    const ordered_json arguments = ParseOutputJson(rest.substr(0, length));
    if (!arguments.is_object()) return std::nullopt;
    calls.emplace_back(std::string(name), arguments.dump());
    rest = Trim(rest.substr(length));
    skip(kMistralCalls);
  }
  return calls;
}

// Streaming: whether a Mistral output so far may be the start of calls (then it is held).
bool MistralMayCall(std::string_view text, const std::vector<std::string>& names) {
  const std::string_view t = Trim(text);
  if (t.empty() || t[0] == '[') return true;  // [TOOL_CALLS], or Nemo's bare list
  for (const std::string& name : names) {
    const size_t n = std::min(name.size(), t.size());
    if (t.substr(0, n) == std::string_view(name).substr(0, n)) return true;
  }
  return false;
}

}  // namespace

ToolCallOutput ParseToolCalls(std::string_view text, const OpenAIRequest& request,
                              chat::ToolCallFormat format) {
  ToolCallOutput out;
  const auto as_content = [&] {
    ToolCallOutput plain;
    plain.content = std::string(text);
    return plain;
  };
  switch (request.tool_choice) {
    case OpenAIRequest::ToolChoice::kNone:
      return as_content();
    case OpenAIRequest::ToolChoice::kNamed:
      out.calls.emplace_back(request.tool_function, std::string(Trim(text)));
      return out;
    case OpenAIRequest::ToolChoice::kRequired: {
      const ordered_json calls = ParseOutputJson(text);
      if (!calls.is_array()) return as_content();
      for (const ordered_json& call : calls) {
        if (!ReadCall(call, &out.calls)) return as_content();
      }
      return out;
    }
    case OpenAIRequest::ToolChoice::kAuto:
      break;
  }
  if (format == chat::ToolCallFormat::kHermes) {
    size_t at = text.find(kToolCallOpen);
    if (at == std::string_view::npos) return as_content();
    const std::string_view before = Trim(text.substr(0, at));
    if (!before.empty()) out.content = std::string(before);
    while (at != std::string_view::npos) {
      const size_t body = at + kToolCallOpen.size();
      size_t end = text.find(kToolCallClose, body);
      const std::string_view inner =
          text.substr(body, end == std::string_view::npos ? std::string_view::npos : end - body);
      const ordered_json call = ParseOutputJson(Trim(inner));
      if (!ReadCall(call, &out.calls)) return as_content();
      if (end == std::string_view::npos) break;
      at = text.find(kToolCallOpen, end + kToolCallClose.size());
    }
    return out;
  }
  if (format == chat::ToolCallFormat::kMistral) {
    std::optional<std::vector<std::pair<std::string, std::string>>> calls =
        MistralCalls(text, request.tool_names);
    if (!calls || calls->empty()) return as_content();
    out.calls = *std::move(calls);
    return out;
  }
  if (format == chat::ToolCallFormat::kLlama3Json) {
    std::string_view body = Trim(text);
    if (body.substr(0, 14) == "<|python_tag|>") body = Trim(body.substr(14));
    if (body.empty() || (body[0] != '{' && body[0] != '[')) return as_content();
    const ordered_json parsed = ParseOutputJson(body);
    if (parsed.is_array()) {
      for (const ordered_json& call : parsed) {
        if (!ReadCall(call, &out.calls)) return as_content();
      }
      return out.calls.empty() ? as_content() : out;
    }
    if (!ReadCall(parsed, &out.calls)) return as_content();
    return out;
  }
  return as_content();
}

size_t StreamableToolText(std::string_view text, size_t sent, const OpenAIRequest& request,
                          chat::ToolCallFormat format) {
  if (!ReadsToolCalls(request, format)) return text.size();
  if (request.tool_choice != OpenAIRequest::ToolChoice::kAuto) return 0;
  if (format == chat::ToolCallFormat::kHermes) {
    const size_t at = text.find(kToolCallOpen, std::min(sent, text.size()));
    if (at != std::string_view::npos) return at;
    return text.size() - TagStartAtEnd(text, kToolCallOpen);
  }
  if (format == chat::ToolCallFormat::kMistral) {
    return MistralMayCall(text, request.tool_names) ? 0 : text.size();
  }
  // Llama 3 JSON: a call is the whole output; text that starts otherwise is content.
  const size_t first = text.find_first_not_of(kSpaces);
  if (first == std::string_view::npos) return 0;
  // "<" may be the start of <|python_tag|>: held until the next byte says.
  const std::string_view rest = text.substr(first);
  return rest[0] == '{' || rest[0] == '[' || rest == "<" || rest.substr(0, 2) == "<|" ? 0
                                                                                      : text.size();
}

void ReasoningSplitter::Feed(std::string_view text, std::string* reasoning, std::string* content) {
  held_.append(text);
  std::string_view rest = held_;
  for (;;) {
    switch (state_) {
      case State::kStart: {
        const std::string_view after = rest.substr(LeadingSpaces(rest));
        if (after.size() < kThinkOpen.size() && kThinkOpen.substr(0, after.size()) == after) {
          held_ = std::string(rest);  // whitespace, or the tag's beginning: wait
          return;
        }
        if (after.substr(0, kThinkOpen.size()) == kThinkOpen) {
          rest = after.substr(kThinkOpen.size());
          state_ = State::kReasoning;
        } else {
          state_ = starts_in_reasoning_ ? State::kReasoning : State::kContent;
        }
        continue;
      }
      case State::kReasoning: {
        const size_t at = rest.find(kThinkClose);
        if (at == std::string_view::npos) {
          const size_t keep = TagStartAtEnd(rest, kThinkClose);
          reasoning->append(rest.substr(0, rest.size() - keep));
          held_ = std::string(rest.substr(rest.size() - keep));
          return;
        }
        reasoning->append(rest.substr(0, at));
        rest = rest.substr(at + kThinkClose.size());
        state_ = State::kAfterReasoning;
        continue;
      }
      case State::kAfterReasoning: {
        rest = rest.substr(LeadingSpaces(rest));
        if (rest.empty()) {
          held_.clear();
          return;
        }
        state_ = State::kContent;
        continue;
      }
      case State::kContent:
        content->append(rest);
        held_.clear();
        return;
    }
  }
}

void ReasoningSplitter::Finish(std::string* reasoning, std::string* content) {
  if (state_ == State::kReasoning) {
    reasoning->append(held_);
  } else if (state_ == State::kStart) {
    // Whitespace, or a beginning of <think> that never grew into it.
    (starts_in_reasoning_ ? reasoning : content)->append(held_);
  }
  held_.clear();
}

bool PromptEndsInReasoning(std::string_view tail) {
  const size_t open = tail.rfind(kThinkOpen);
  if (open == std::string_view::npos) return false;
  const size_t close = tail.rfind(kThinkClose);
  return close == std::string_view::npos || close < open;
}

}  // namespace spanserve::server
