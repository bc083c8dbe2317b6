// OpenAI-compatible request bodies (POST /v1/completions, /v1/chat/completions) turned into
// the service's own requests at the edge, as server/convert does for proto: each prompt
// becomes a v1::GenerateRequest, which then takes the one path to the engine that gRPC's
// Generate takes (ToEngineRequest). Nothing here touches the engine or the network.
//
// Fields follow OpenAI's API with vLLM's extensions (extra body fields top_k, min_p,
// repetition_penalty, min_tokens, ignore_eos, stop_token_ids, priority, add_special_tokens,
// add_generation_prompt, continue_final_message, include_stop_str_in_output,
// skip_special_tokens, allowed_token_ids, bad_words, truncate_prompt_tokens,
// return_tokens_as_token_ids, guided_*); docs/API.md maps every field. Unknown fields
// are ignored, as OpenAI's and vLLM's servers do; a known field of the wrong type, or a
// feature that is not served (tools, suffix, best_of > n), is INVALID_ARGUMENT
// naming it (OpenAIParam below).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_template.h"
#include "runtime/engine/grammar.h"
#include "runtime/engine/json_schema.h"
#include "runtime/engine/regex.h"
#include "spanserve/v1/spanserve.pb.h"

namespace spanserve::server {

// The most prompts × n one request may ask for (each is one engine request).
inline constexpr int32_t kMaxOpenAIChoices = 256;
// The most tools one chat request may give.
inline constexpr size_t kMaxTools = 128;
// The most logprob entries (a token's logprob, or one of its alternatives) one response that
// is not streamed may hold by default (--max_response_logprobs): the front keeps them all
// until it answers, at about 60 bytes each on the way out (kept, written, sent), so this
// bounds that at about 120 MB. 256 prompts of 8,192 tokens echoed with logprobs 20 would be
// 44 million entries; streamed, each event holds only its own. lm-evaluation-harness asks
// for 2 per token (logprobs 1): a batch of 128 prompts of 8,192 tokens is within it.
inline constexpr int64_t kDefaultMaxResponseLogprobs = int64_t{1} << 21;
// Bodies nested deeper than this are refused before they are parsed.
inline constexpr int kMaxJsonDepth = 64;

enum class OpenAIEndpoint { kCompletions, kChatCompletions };

struct OpenAIRequest {
  OpenAIEndpoint endpoint = OpenAIEndpoint::kCompletions;
  std::string model;  // empty: the default model
  // One per prompt (completions may carry several; chat has one), with model, prompt,
  // sampling and priority set. max_tokens is set: completions default to 16 as OpenAI's;
  // chat to the whole context (generation then stops at EOS, end of turn or a full context).
  std::vector<v1::GenerateRequest> prompts;
  // Structured outputs (response_format json_schema, guided_json): the schema, compiled
  // once for every prompt and choice; the prompts' sampling then leaves response_format
  // unset, and the caller sets both on each engine request.
  std::shared_ptr<const engine::JsonSchema> json_schema;
  // guided_regex (structured_outputs {"regex"}): the pattern, compiled once likewise.
  std::shared_ptr<const engine::RegexDfa> regex;
  // guided_grammar (structured_outputs {"grammar"}, llama.cpp's `grammar`): the GBNF grammar,
  // compiled once likewise.
  std::shared_ptr<const engine::Grammar> grammar;
  // Chat tool calling (OpenAI `tools`, `tool_choice`, `parallel_tool_calls`). The tools go
  // to the chat template (prompt.chat.tools). kNamed constrains the output to the named
  // function's arguments and kRequired to a JSON array of {"name", "arguments"} calls
  // (json_schema above); kAuto reads calls out of free text in the template's tool-call
  // format (chat::ToolCallFormat), if it has one.
  enum class ToolChoice { kNone, kAuto, kRequired, kNamed };
  ToolChoice tool_choice = ToolChoice::kNone;
  std::string tool_function;            // kNamed
  std::vector<std::string> tool_names;  // the tools' function names, in the request's order
  bool tool_parallel = true;            // parallel_tool_calls: kRequired may make several calls
  int32_t n = 1;                        // choices per prompt
  // Completions: the prompt's text (and, with logprobs, its tokens' logprobs) come first in
  // each choice; max_tokens may then be 0.
  bool echo = false;
  // Completions `logprobs` (alternatives per position, 0..20); chat `top_logprobs` when
  // `logprobs` is true. Unset: none.
  std::optional<int32_t> logprobs;
  // vLLM's return_tokens_as_token_ids: logprobs name tokens "token_id:<id>", not by text.
  bool tokens_as_ids = false;
  // vLLM's prompt_logprobs (0..20): each prompt token's logprob, rank and that many
  // alternatives, in the response (not with stream). Unset: none.
  std::optional<int32_t> prompt_logprobs;
  // vLLM's return_token_ids: the prompt's and each choice's token ids in the response.
  bool return_token_ids = false;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  // Chat: the generation prompt (vLLM's add_generation_prompt, default true).
};

// `j` as JSON text, as the front sends it: token strings may hold part of a UTF-8 sequence,
// which is replaced (U+FFFD), never a throw.
std::string DumpJson(const nlohmann::json& j);

// A request body's text as JSON: INVALID_ARGUMENT for bodies nested deeper than
// kMaxJsonDepth (checked before parsing), text that is not JSON in UTF-8, or JSON that is not
// an object. Never throws.
absl::StatusOr<nlohmann::json> ParseOpenAIBody(std::string_view text);

// INVALID_ARGUMENT naming the field; the body must be a JSON object. raw_body, the text
// `body` was parsed from, gives a structured-outputs schema its properties' order (the
// parsed body holds keys sorted); without it the schema's keys go in sorted order.
absl::StatusOr<OpenAIRequest> ParseOpenAIRequest(const nlohmann::json& body,
                                                 OpenAIEndpoint endpoint,
                                                 std::string_view raw_body = {});

// The deepest nesting of arrays and objects in `text` (JSON strings skipped), counted up to
// `limit` + 1: a cheap check before parsing untrusted bodies.
int JsonDepth(absl::string_view text, int limit);

// An INVALID_ARGUMENT error about `param`, which OpenAIParam reads back.
absl::Status ParamError(absl::string_view param, absl::string_view message);
// The request field an error is about: the one ParamError recorded, else the field the
// message starts with ("sampling.top_p must ..." → "top_p", "prompt.text: ..." → "prompt");
// empty when none.
std::string OpenAIParam(const absl::Status& status);

// The HTTP status for a status code: INVALID_ARGUMENT 400, UNAUTHENTICATED 401, NOT_FOUND
// 404, RESOURCE_EXHAUSTED 429, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, ...
int HttpStatusFor(absl::StatusCode code);
// {"error": {"message", "type", "param", "code"}} as OpenAI answers errors.
nlohmann::json OpenAIError(const absl::Status& status);

// A chat choice's output read for tool calls (OpenAIRequest::tool_choice; for kAuto in the
// model's template `format`): the calls (function name, arguments as JSON text) and the
// text outside them (none for kNamed / kRequired and when only calls were written). Output
// that does not read as calls (cut short, malformed) is all content, no calls.
struct ToolCallOutput {
  std::optional<std::string> content;
  std::vector<std::pair<std::string, std::string>> calls;
};
ToolCallOutput ParseToolCalls(std::string_view text, const OpenAIRequest& request,
                              chat::ToolCallFormat format);
// Whether ParseToolCalls reads anything out of this request's output in `format`.
bool ReadsToolCalls(const OpenAIRequest& request, chat::ToolCallFormat format);
// Streaming: how much of `text` (all of the output so far) can go out as content now —
// up to a tool call's start, or the whole of it when none can begin. `sent`: what went out
// before (no call begins inside it), so each call looks at the new text only.
size_t StreamableToolText(std::string_view text, size_t sent, const OpenAIRequest& request,
                          chat::ToolCallFormat format);

// Reasoning models (Qwen3, QwQ, DeepSeek-R1 and its distills) think between <think> and
// </think> before they answer. Where the server splits reasoning (--reasoning_parser), a
// chat choice's output is cut there, as vLLM's reasoning parsers cut it: the thinking goes
// to `reasoning_content`, the rest to `content`. Output that does not start with <think>
// (after whitespace) is all content, unless the prompt ended inside an open <think>
// (DeepSeek-R1's generation prompt), when the output starts in the thinking. A </think>
// that never comes leaves everything after <think> as reasoning (cut short by max_tokens);
// the newlines between </think> and the answer are dropped.
class ReasoningSplitter {
 public:
  explicit ReasoningSplitter(bool starts_in_reasoning)
      : starts_in_reasoning_(starts_in_reasoning) {}
  // The next piece of output: appends to *reasoning and *content what can go out now. The
  // start of a tag cut between pieces is held back until the next piece or Finish.
  void Feed(std::string_view text, std::string* reasoning, std::string* content);
  // The end of the output: what was held back goes out.
  void Finish(std::string* reasoning, std::string* content);

 private:
  enum class State { kStart, kReasoning, kAfterReasoning, kContent };
  const bool starts_in_reasoning_;
  State state_ = State::kStart;
  std::string held_;
};

// Whether a prompt ends inside an open <think>: its last <think> comes after its last
// </think>. `tail` is the prompt's end (a few tokens' text are enough).
bool PromptEndsInReasoning(std::string_view tail);

}  // namespace spanserve::server
