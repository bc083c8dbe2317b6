// OpenAI's Responses API (POST /v1/responses, as vLLM serves it) on the chat path: a request
// body becomes a chat completions body (input items as messages, instructions as the system
// message, text.format as response_format, flat function tools as chat tools), which then
// takes the one chat path to the engine (openai_api.h, http_front.cc); the chat answer, whole
// or streamed, becomes a Response object or the Responses stream's typed events. Responses
// are not stored: previous_response_id, conversation and background are refused, and a
// conversation is sent whole in `input`. docs/API.md maps every field.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace spanserve::server {

struct ResponsesRequest {
  std::string chat_body;  // the chat completions body's text (a schema's keys in order)
  // What the Response object repeats of the request.
  nlohmann::json instructions;       // string or null
  nlohmann::json max_output_tokens;  // integer or null
  nlohmann::json temperature;        // number or null
  nlohmann::json top_p;              // number or null
  nlohmann::json tools;              // the request's own (flat) tools
  nlohmann::json tool_choice;        // "auto" unless given
  bool parallel_tool_calls = true;
  nlohmann::json text_format;   // {"type": "text"} unless given
  nlohmann::json metadata;      // object or null
  nlohmann::json top_logprobs;  // integer or null
};

// INVALID_ARGUMENT naming the Responses field (ParamError) for a body that is not a JSON
// object, a field of the wrong type, and what is not served (non-text input parts, tools
// other than functions, stored responses, background).
absl::StatusOr<ResponsesRequest> ParseResponsesRequest(std::string_view body);

// A chat path error about a chat field, told in the Responses fields' names (messages →
// input, max_completion_tokens → max_output_tokens, response_format → text.format).
absl::Status ResponsesError(const absl::Status& chat_error);

// The Response object for a chat completion (the front's non-streamed answer to the chat
// body): the reasoning, message and function_call output items, status (incomplete at
// max_output_tokens), usage as input / output tokens.
nlohmann::json ResponseFromChat(const nlohmann::json& chat, const ResponsesRequest& request);

// A streamed chat completion's server-sent events (with include_usage), as they come, become
// the Responses stream's: response.created and .in_progress, then for each output item
// output_item.added, its deltas (output_text / reasoning_text / function_call_arguments),
// their .done events and output_item.done, then response.completed (or .incomplete), each
// with its sequence_number; an error event for a chat error. No [DONE].
class ResponsesStream {
 public:
  explicit ResponsesStream(ResponsesRequest request) : request_(std::move(request)) {}
  // The opening events (response.created, response.in_progress) of the chat completion
  // `chat_id` ("chatcmpl-<hex>"), sent before its first token. Translate sends them itself
  // before its first event if Start was not called.
  std::string Start(std::string_view chat_id, int64_t created, std::string_view model);
  bool started() const { return started_; }
  std::string Translate(std::string_view chat_sse);

 private:
  enum class Item { kNone, kReasoning, kMessage };
  std::string Event(nlohmann::json event);
  std::string Open(Item kind);
  std::string CloseItem();
  nlohmann::json Snapshot(std::string_view status) const;

  const ResponsesRequest request_;
  bool started_ = false;
  int64_t sequence_ = 0;
  std::string chat_id_;  // "chatcmpl-<hex>": the response and its items are named by <hex>
  std::string id_;
  int64_t created_ = 0;
  std::string model_;
  Item open_ = Item::kNone;
  std::string item_id_;
  std::string text_;
  nlohmann::json logprobs_ = nlohmann::json::array();
  nlohmann::json output_ = nlohmann::json::array();  // the finished items
  std::string finish_reason_;
  nlohmann::json usage_;
  bool ended_ = false;
};

}  // namespace spanserve::server
