#include "server/responses_api.h"

#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/openai_api.h"

namespace spanserve::server {
namespace {

using json = nlohmann::json;
using ordered_json = nlohmann::ordered_json;

// The text of an input item's content: a string, or text parts (input_text, output_text).
absl::StatusOr<std::string> ContentText(const ordered_json& content, const std::string& where) {
  if (content.is_string()) return content.get<std::string>();
  if (content.is_null()) return std::string();
  if (!content.is_array()) return ParamError("input", where + ".content must be a string or parts");
  std::string text;
  for (size_t j = 0; j < content.size(); ++j) {
    const ordered_json& part = content[j];
    const std::string at = absl::StrCat(where, ".content[", j, "]");
    if (!part.is_object() || !part.contains("type") || !part["type"].is_string()) {
      return ParamError("input", at + " must be an object with a type");
    }
    const std::string type = part["type"].get<std::string>();
    if (type != "input_text" && type != "output_text" && type != "text") {
      return ParamError("input",
                        absl::StrCat(at, ": type '", type, "' is not supported (text parts only)"));
    }
    if (!part.contains("text") || !part["text"].is_string()) {
      return ParamError("input", at + ".text must be a string");
    }
    text += part["text"].get<std::string>();
  }
  return text;
}

absl::StatusOr<ordered_json> Messages(const ordered_json& input) {
  ordered_json messages = ordered_json::array();
  if (input.is_string()) {
    messages.push_back({{"role", "user"}, {"content", input}});
    return messages;
  }
  if (!input.is_array()) return ParamError("input", "must be a string or a list of items");
  for (size_t i = 0; i < input.size(); ++i) {
    const ordered_json& item = input[i];
    const std::string where = absl::StrCat("input[", i, "]");
    if (!item.is_object()) return ParamError("input", where + " must be an object");
    std::string type = "message";
    if (item.contains("type")) {
      if (!item["type"].is_string()) return ParamError("input", where + ".type must be a string");
      type = item["type"].get<std::string>();
    }
    const auto str = [&](const char* key) -> absl::StatusOr<std::string> {
      if (!item.contains(key) || !item[key].is_string()) {
        return ParamError("input", absl::StrCat(where, ".", key, " must be a string"));
      }
      return item[key].get<std::string>();
    };
    if (type == "message") {
      absl::StatusOr<std::string> role = str("role");
      if (!role.ok()) return role.status();
      absl::StatusOr<std::string> text =
          ContentText(item.contains("content") ? item["content"] : ordered_json(), where);
      if (!text.ok()) return text.status();
      messages.push_back({{"role", *role}, {"content", *text}});
    } else if (type == "function_call") {
      absl::StatusOr<std::string> call_id = str("call_id");
      absl::StatusOr<std::string> name = str("name");
      absl::StatusOr<std::string> arguments = str("arguments");
      for (const auto* s : {&call_id, &name, &arguments}) {
        if (!s->ok()) return s->status();
      }
      // Calls in a row are one assistant turn, as chat has them.
      if (messages.empty() || messages.back()["role"] != "assistant" ||
          !messages.back().contains("tool_calls")) {
        messages.push_back(
            {{"role", "assistant"}, {"content", nullptr}, {"tool_calls", ordered_json::array()}});
      }
      messages.back()["tool_calls"].push_back(
          {{"id", *call_id},
           {"type", "function"},
           {"function", {{"name", *name}, {"arguments", *arguments}}}});
    } else if (type == "function_call_output") {
      absl::StatusOr<std::string> call_id = str("call_id");
      if (!call_id.ok()) return call_id.status();
      absl::StatusOr<std::string> output =
          ContentText(item.contains("output") ? item["output"] : ordered_json(), where);
      if (!output.ok()) return output.status();
      messages.push_back({{"role", "tool"}, {"tool_call_id", *call_id}, {"content", *output}});
    } else if (type == "reasoning") {
      continue;  // an earlier turn's thinking: templates leave it out of the prompt
    } else {
      return ParamError("input", absl::StrCat(where, ": type '", type,
                                              "' is not supported (message, function_call, "
                                              "function_call_output, reasoning)"));
    }
  }
  return messages;
}

bool Given(const ordered_json& b, const char* key) { return b.contains(key) && !b[key].is_null(); }

}  // namespace

absl::StatusOr<ResponsesRequest> ParseResponsesRequest(std::string_view body) {
  // The nesting limit, UTF-8 and the object checked as for every body.
  absl::StatusOr<json> checked = ParseOpenAIBody(body);
  if (!checked.ok()) return checked.status();
  const ordered_json b = ordered_json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (b.is_discarded() || !b.is_object()) {
    return absl::InvalidArgumentError("the request body must be a JSON object");
  }
  for (const char* stored : {"previous_response_id", "conversation"}) {
    if (Given(b, stored)) {
      return ParamError(stored,
                        "responses are not stored here: send the whole conversation in input");
    }
  }
  if (Given(b, "background") && b["background"] != false) {
    return ParamError("background", "background responses are not served");
  }
  ResponsesRequest r;
  ordered_json chat = ordered_json::object();
  if (b.contains("model")) chat["model"] = b["model"];
  if (!Given(b, "input")) return ParamError("input", "is required");
  absl::StatusOr<ordered_json> messages = Messages(b["input"]);
  if (!messages.ok()) return messages.status();
  r.instructions = nullptr;
  if (Given(b, "instructions")) {
    if (!b["instructions"].is_string()) return ParamError("instructions", "must be a string");
    r.instructions = b["instructions"].get<std::string>();
    const ordered_json system = {{"role", "system"}, {"content", b["instructions"]}};
    messages->insert(messages->begin(), system);
  }
  chat["messages"] = *std::move(messages);

  // Sampling: the Responses fields, and vLLM's extra ones as chat takes them.
  for (const char* key :
       {"temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
        "frequency_penalty", "seed", "stop", "ignore_eos", "min_tokens", "stop_token_ids",
        "logit_bias", "priority", "chat_template_kwargs", "parallel_tool_calls"}) {
    if (b.contains(key)) chat[key] = b[key];
  }
  if (b.contains("max_output_tokens")) chat["max_completion_tokens"] = b["max_output_tokens"];
  r.max_output_tokens =
      Given(b, "max_output_tokens") ? json(b["max_output_tokens"]) : json(nullptr);
  r.temperature = Given(b, "temperature") ? json(b["temperature"]) : json(nullptr);
  r.top_p = Given(b, "top_p") ? json(b["top_p"]) : json(nullptr);

  // Logprobs: top_logprobs, or include's message.output_text.logprobs.
  bool logprobs = Given(b, "top_logprobs");
  if (Given(b, "include")) {
    if (!b["include"].is_array()) return ParamError("include", "must be a list of strings");
    for (const ordered_json& inc : b["include"]) {
      if (!inc.is_string()) return ParamError("include", "must be a list of strings");
      if (inc == "message.output_text.logprobs") logprobs = true;
    }
  }
  r.top_logprobs = nullptr;
  if (logprobs) {
    chat["logprobs"] = true;
    chat["top_logprobs"] = Given(b, "top_logprobs") ? b["top_logprobs"] : ordered_json(0);
    r.top_logprobs = json(chat["top_logprobs"]);
  }

  // text.format → response_format.
  r.text_format = {{"type", "text"}};
  if (Given(b, "text")) {
    const ordered_json& text = b["text"];
    if (!text.is_object()) return ParamError("text", "must be an object");
    if (Given(text, "format")) {
      const ordered_json& format = text["format"];
      if (!format.is_object() || !format.contains("type") || !format["type"].is_string()) {
        return ParamError("text.format", "must be an object with a type");
      }
      const std::string type = format["type"].get<std::string>();
      if (type == "json_object") {
        chat["response_format"] = {{"type", "json_object"}};
      } else if (type == "json_schema") {
        ordered_json schema = ordered_json::object();
        for (const char* key : {"name", "description", "schema", "strict"}) {
          if (format.contains(key)) schema[key] = format[key];
        }
        chat["response_format"] = {{"type", "json_schema"}, {"json_schema", std::move(schema)}};
      } else if (type != "text") {
        return ParamError(
            "text.format",
            absl::StrCat("type '", type, "' is not supported (text, json_object, json_schema)"));
      }
      r.text_format = json(format);
    }
  }

  // Flat function tools → chat's nested ones.
  r.tools = json::array();
  if (Given(b, "tools")) {
    if (!b["tools"].is_array()) return ParamError("tools", "must be a list");
    ordered_json tools = ordered_json::array();
    for (size_t i = 0; i < b["tools"].size(); ++i) {
      const ordered_json& tool = b["tools"][i];
      if (!tool.is_object() || !tool.contains("type") || tool["type"] != "function") {
        const std::string type =
            tool.is_object() && tool.contains("type") && tool["type"].is_string()
                ? tool["type"].get<std::string>()
                : std::string("?");
        return ParamError("tools", absl::StrCat("tools[", i, "]: type '", type,
                                                "' is not supported (function tools only)"));
      }
      ordered_json function = ordered_json::object();
      for (const char* key : {"name", "description", "parameters", "strict"}) {
        if (tool.contains(key)) function[key] = tool[key];
      }
      tools.push_back({{"type", "function"}, {"function", std::move(function)}});
    }
    chat["tools"] = std::move(tools);
    r.tools = json(b["tools"]);
  }
  r.tool_choice = "auto";
  if (Given(b, "tool_choice")) {
    const ordered_json& choice = b["tool_choice"];
    if (choice.is_string()) {
      chat["tool_choice"] = choice;
    } else if (choice.is_object() && choice.contains("type") && choice["type"] == "function" &&
               choice.contains("name")) {
      chat["tool_choice"] = {{"type", "function"}, {"function", {{"name", choice["name"]}}}};
    } else {
      return ParamError("tool_choice",
                        "must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", "
                        "\"name\": ...}");
    }
    r.tool_choice = json(choice);
  }
  if (b.contains("parallel_tool_calls") && b["parallel_tool_calls"].is_boolean()) {
    r.parallel_tool_calls = b["parallel_tool_calls"].get<bool>();
  }
  if (Given(b, "truncation") && b["truncation"] != "disabled" && b["truncation"] != "auto") {
    return ParamError("truncation", "must be \"disabled\" or \"auto\"");
  }
  r.metadata = nullptr;
  if (Given(b, "metadata")) {
    if (!b["metadata"].is_object()) return ParamError("metadata", "must be an object");
    r.metadata = json(b["metadata"]);
  }
  if (b.contains("stream")) {
    if (!b["stream"].is_boolean()) return ParamError("stream", "must be true or false");
    const bool stream = b["stream"].get<bool>();
    chat["stream"] = stream;
    if (stream) chat["stream_options"] = {{"include_usage", true}};
  }
  r.chat_body = chat.dump(-1, ' ', false, ordered_json::error_handler_t::replace);
  return r;
}

absl::Status ResponsesError(const absl::Status& chat_error) {
  const std::string param = OpenAIParam(chat_error);
  std::string mapped;
  // messages[i] is input[i] when there are no instructions, else input[i - 1]: named as
  // the field.
  if (absl::StartsWith(param, "messages")) mapped = "input";
  if (param == "max_completion_tokens" || param == "max_tokens") mapped = "max_output_tokens";
  if (param == "response_format") mapped = "text.format";
  if (mapped.empty() || chat_error.code() != absl::StatusCode::kInvalidArgument) {
    return chat_error;
  }
  absl::string_view message = chat_error.message();
  if (absl::StartsWith(message, param + ": ")) message.remove_prefix(param.size() + 2);
  return ParamError(mapped, message);
}

namespace {

// The Response object's fields that repeat the request, and the usage.
json ResponseShell(const ResponsesRequest& r, std::string id, int64_t created, json model,
                   std::string_view status) {
  return {{"id", std::move(id)},
          {"object", "response"},
          {"created_at", created},
          {"status", status},
          {"error", nullptr},
          {"incomplete_details", nullptr},
          {"instructions", r.instructions},
          {"max_output_tokens", r.max_output_tokens},
          {"model", std::move(model)},
          {"output", json::array()},
          {"parallel_tool_calls", r.parallel_tool_calls},
          {"previous_response_id", nullptr},
          {"reasoning", {{"effort", nullptr}, {"summary", nullptr}}},
          {"store", false},
          {"temperature", r.temperature},
          {"text", {{"format", r.text_format}}},
          {"tool_choice", r.tool_choice},
          {"tools", r.tools},
          {"top_logprobs", r.top_logprobs},
          {"top_p", r.top_p},
          {"truncation", "disabled"},
          {"usage", nullptr},
          {"user", nullptr},
          {"metadata", r.metadata.is_null() ? json::object() : r.metadata}};
}

json Usage(const json& chat_usage) {
  if (!chat_usage.is_object()) return nullptr;
  const int64_t input = chat_usage.value("prompt_tokens", int64_t{0});
  const int64_t output = chat_usage.value("completion_tokens", int64_t{0});
  int64_t cached = 0;
  if (chat_usage.contains("prompt_tokens_details")) {
    cached = chat_usage["prompt_tokens_details"].value("cached_tokens", int64_t{0});
  }
  return {{"input_tokens", input},
          {"input_tokens_details", {{"cached_tokens", cached}}},
          {"output_tokens", output},
          {"output_tokens_details", {{"reasoning_tokens", 0}}},
          {"total_tokens", input + output}};
}

// "chatcmpl-<hex>" → "<prefix>_<hex>".
std::string ItemId(std::string_view chat_id, std::string_view prefix) {
  const size_t dash = chat_id.find('-');
  const std::string_view hex = dash == std::string_view::npos ? chat_id : chat_id.substr(dash + 1);
  return std::string(prefix) + "_" + std::string(hex);
}

json MessageItem(std::string id, std::string text, json logprobs, std::string_view status) {
  return {{"type", "message"},
          {"id", std::move(id)},
          {"status", status},
          {"role", "assistant"},
          {"content", json::array({{{"type", "output_text"},
                                    {"text", std::move(text)},
                                    {"annotations", json::array()},
                                    {"logprobs", std::move(logprobs)}}})}};
}

json ReasoningItem(std::string id, std::string text) {
  return {{"type", "reasoning"},
          {"id", std::move(id)},
          {"summary", json::array()},
          {"content", json::array({{{"type", "reasoning_text"}, {"text", std::move(text)}}})}};
}

json FunctionCallItem(std::string id, const json& call, std::string_view status) {
  return {{"type", "function_call"},
          {"id", std::move(id)},
          {"call_id", call["id"]},
          {"name", call["function"]["name"]},
          {"arguments", call["function"]["arguments"]},
          {"status", status}};
}

// Status and incomplete_details of a finish reason.
void Finish(std::string_view finish_reason, json* response) {
  if (finish_reason == "length") {
    (*response)["status"] = "incomplete";
    (*response)["incomplete_details"] = {{"reason", "max_output_tokens"}};
  } else {
    (*response)["status"] = "completed";
  }
}

}  // namespace

json ResponseFromChat(const json& chat, const ResponsesRequest& request) {
  const std::string chat_id = chat.value("id", std::string());
  json response = ResponseShell(request, ItemId(chat_id, "resp"), chat.value("created", 0),
                                chat.value("model", json()), "completed");
  const json& choice = chat["choices"][0];
  const json& message = choice["message"];
  const std::string finish = choice.value("finish_reason", std::string());
  const std::string_view item_status = finish == "length" ? "incomplete" : "completed";
  json& output = response["output"];
  if (message.contains("reasoning_content") && message["reasoning_content"].is_string()) {
    output.push_back(ReasoningItem(absl::StrCat(ItemId(chat_id, "rs"), "_", output.size()),
                                   message["reasoning_content"].get<std::string>()));
  }
  const bool calls = message.contains("tool_calls") && !message["tool_calls"].empty();
  if (!calls ||
      (message["content"].is_string() && !message["content"].get<std::string>().empty())) {
    json logprobs = json::array();
    if (choice["logprobs"].is_object()) logprobs = choice["logprobs"]["content"];
    output.push_back(MessageItem(
        absl::StrCat(ItemId(chat_id, "msg"), "_", output.size()),
        message["content"].is_string() ? message["content"].get<std::string>() : std::string(),
        std::move(logprobs), item_status));
  }
  if (calls) {
    for (size_t k = 0; k < message["tool_calls"].size(); ++k) {
      output.push_back(FunctionCallItem(absl::StrCat(ItemId(chat_id, "fc"), "_", output.size()),
                                        message["tool_calls"][k], "completed"));
    }
  }
  Finish(finish, &response);
  response["usage"] = Usage(chat["usage"]);
  return response;
}

std::string ResponsesStream::Event(json event) {
  event["sequence_number"] = sequence_++;
  const std::string type = event["type"];
  return absl::StrCat("event: ", type, "\ndata: ", DumpJson(event), "\n\n");
}

json ResponsesStream::Snapshot(std::string_view status) const {
  json response = ResponseShell(request_, id_, created_, model_, status);
  response["output"] = output_;
  return response;
}

std::string ResponsesStream::Open(Item kind) {
  std::string sse;
  if (open_ == kind) return sse;
  sse += CloseItem();
  open_ = kind;
  const int64_t index = static_cast<int64_t>(output_.size());
  item_id_ = absl::StrCat(ItemId(chat_id_, kind == Item::kReasoning ? "rs" : "msg"), "_", index);
  text_.clear();
  logprobs_ = json::array();
  json item = kind == Item::kReasoning ? ReasoningItem(item_id_, "")
                                       : MessageItem(item_id_, "", json::array(), "in_progress");
  item["content"] = json::array();
  sse += Event({{"type", "response.output_item.added"}, {"output_index", index}, {"item", item}});
  if (kind == Item::kMessage) {
    sse += Event({{"type", "response.content_part.added"},
                  {"item_id", item_id_},
                  {"output_index", index},
                  {"content_index", 0},
                  {"part",
                   {{"type", "output_text"},
                    {"text", ""},
                    {"annotations", json::array()},
                    {"logprobs", json::array()}}}});
  }
  return sse;
}

std::string ResponsesStream::CloseItem() {
  std::string sse;
  if (open_ == Item::kNone) return sse;
  const int64_t index = static_cast<int64_t>(output_.size());
  json item;
  if (open_ == Item::kReasoning) {
    sse += Event({{"type", "response.reasoning_text.done"},
                  {"item_id", item_id_},
                  {"output_index", index},
                  {"content_index", 0},
                  {"text", text_}});
    item = ReasoningItem(item_id_, text_);
  } else {
    const std::string_view status = finish_reason_ == "length" ? "incomplete" : "completed";
    item = MessageItem(item_id_, text_, logprobs_, status);
    sse += Event({{"type", "response.output_text.done"},
                  {"item_id", item_id_},
                  {"output_index", index},
                  {"content_index", 0},
                  {"text", text_},
                  {"logprobs", logprobs_}});
    sse += Event({{"type", "response.content_part.done"},
                  {"item_id", item_id_},
                  {"output_index", index},
                  {"content_index", 0},
                  {"part", item["content"][0]}});
  }
  sse += Event({{"type", "response.output_item.done"}, {"output_index", index}, {"item", item}});
  output_.push_back(std::move(item));
  open_ = Item::kNone;
  return sse;
}

std::string ResponsesStream::Start(std::string_view chat_id, int64_t created,
                                   std::string_view model) {
  if (started_) return std::string();
  started_ = true;
  chat_id_ = std::string(chat_id);
  id_ = ItemId(chat_id_, "resp");
  created_ = created;
  model_ = std::string(model);
  std::string sse = Event({{"type", "response.created"}, {"response", Snapshot("in_progress")}});
  sse += Event({{"type", "response.in_progress"}, {"response", Snapshot("in_progress")}});
  return sse;
}

std::string ResponsesStream::Translate(std::string_view chat_sse) {
  std::string sse;
  size_t pos = 0;
  while (!ended_ && (pos = chat_sse.find("data: ", pos)) != std::string_view::npos) {
    size_t end = chat_sse.find("\n\n", pos);
    if (end == std::string_view::npos) end = chat_sse.size();
    const std::string_view data = chat_sse.substr(pos + 6, end - pos - 6);
    pos = end;
    if (data == "[DONE]") continue;
    const json chunk = json::parse(data, nullptr, /*allow_exceptions=*/false);
    if (!chunk.is_object()) continue;
    if (chunk.contains("error")) {
      const json& e = chunk["error"];
      sse += Event({{"type", "error"},
                    {"code", e.value("code", json())},
                    {"message", e.value("message", json())},
                    {"param", e.value("param", json())}});
      ended_ = true;
      break;
    }
    if (!started_) {
      sse += Start(chunk.value("id", std::string()), chunk.value("created", int64_t{0}),
                   chunk.value("model", std::string()));
    }
    if (chunk.contains("usage") && chunk["usage"].is_object()) {
      usage_ = Usage(chunk["usage"]);
    }
    if (!chunk.contains("choices") || chunk["choices"].empty()) continue;
    const json& choice = chunk["choices"][0];
    const json& delta = choice.contains("delta") ? choice["delta"] : json::object();
    if (delta.contains("reasoning_content") && delta["reasoning_content"].is_string()) {
      sse += Open(Item::kReasoning);
      const std::string piece = delta["reasoning_content"];
      text_ += piece;
      sse += Event({{"type", "response.reasoning_text.delta"},
                    {"item_id", item_id_},
                    {"output_index", output_.size()},
                    {"content_index", 0},
                    {"delta", piece}});
    }
    json piece_logprobs = json::array();
    if (choice.contains("logprobs") && choice["logprobs"].is_object()) {
      piece_logprobs = choice["logprobs"]["content"];
    }
    if ((delta.contains("content") && delta["content"].is_string() &&
         !delta["content"].get<std::string>().empty()) ||
        !piece_logprobs.empty()) {
      sse += Open(Item::kMessage);
      const std::string piece = delta.value("content", std::string());
      text_ += piece;
      for (json& lp : piece_logprobs) logprobs_.push_back(lp);
      sse += Event({{"type", "response.output_text.delta"},
                    {"item_id", item_id_},
                    {"output_index", output_.size()},
                    {"content_index", 0},
                    {"delta", piece},
                    {"logprobs", piece_logprobs}});
    }
    if (choice.contains("finish_reason") && choice["finish_reason"].is_string()) {
      finish_reason_ = choice["finish_reason"];
    }
    if (delta.contains("tool_calls") && delta["tool_calls"].is_array()) {
      sse += CloseItem();
      for (const json& call : delta["tool_calls"]) {
        const int64_t index = static_cast<int64_t>(output_.size());
        const std::string id = absl::StrCat(ItemId(chat_id_, "fc"), "_", index);
        json item = FunctionCallItem(id, call, "in_progress");
        item["arguments"] = "";
        sse += Event(
            {{"type", "response.output_item.added"}, {"output_index", index}, {"item", item}});
        const json& arguments = call["function"]["arguments"];
        sse += Event({{"type", "response.function_call_arguments.delta"},
                      {"item_id", id},
                      {"output_index", index},
                      {"delta", arguments}});
        sse += Event({{"type", "response.function_call_arguments.done"},
                      {"item_id", id},
                      {"output_index", index},
                      {"name", call["function"]["name"]},
                      {"arguments", arguments}});
        item = FunctionCallItem(id, call, "completed");
        sse +=
            Event({{"type", "response.output_item.done"}, {"output_index", index}, {"item", item}});
        output_.push_back(std::move(item));
      }
    }
  }
  // The end: the chat stream's [DONE] came (after the usage chunk).
  if (!ended_ && started_ && chat_sse.find("data: [DONE]") != std::string_view::npos) {
    sse += CloseItem();
    // An answer with no text still has its (empty) message, unless it made calls (as the
    // whole response has it).
    bool answered = false;
    for (const json& item : output_) answered = answered || item["type"] != "reasoning";
    if (!answered) {
      sse += Open(Item::kMessage);
      sse += CloseItem();
    }
    json response = Snapshot("completed");
    Finish(finish_reason_, &response);
    response["usage"] = usage_;
    const std::string type =
        response["status"] == "incomplete" ? "response.incomplete" : "response.completed";
    sse += Event({{"type", type}, {"response", std::move(response)}});
    ended_ = true;
  }
  return sse;
}

}  // namespace spanserve::server
