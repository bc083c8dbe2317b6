// Fuzzes the OpenAI-compatible HTTP front's request path (server/http_front.cc) short of the
// network: a body's text through ParseOpenAIBody (the nesting limit, then nlohmann's parser)
// and ParseOpenAIRequest for /v1/completions or /v1/chat/completions, every error turned into
// the answer the front sends (OpenAIError, OpenAIParam, HttpStatusFor); then each prompt's
// engine request as the front submits it (OpenAIEngineRequest: the chat template, token ids,
// sampling, structured outputs) and the engine's own check of it (EngineCore::ValidateRequest).
// Whatever the front accepts, the engine must accept too; whatever it refuses is a client
// error (4xx) with a message, never a throw or a crash.
//
// The model's output side is fuzzed on the accepted request too: a text read for tool calls
// in every format (ParseToolCalls; StreamableToolText fed growing prefixes never goes back
// nor past the text) and split into reasoning and content (ReasoningSplitter fed in pieces
// gives what it gives fed whole).
//
// With bit 5 of byte 0 the body is a Responses API body (/v1/responses): ParseResponsesRequest
// turns it into a chat body (or refuses it, a 4xx), which then takes the chat path above, its
// refusals told in the Responses fields' names (ResponsesError).
//
// Input: byte 0: bit 0 the endpoint (0 completions, 1 chat), bit 1 the chat template (0
// ChatML, 1 Llama-3), bits 2-4 the piece length (1-8 bytes) the output is fed in, bit 5 a
// Responses body; then the body's text; optionally a NUL byte and the output text.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_template.h"
#include "served_world.h"
#include "server/http_front.h"
#include "server/openai_api.h"
#include "server/responses_api.h"
#include "server/served_model.h"

namespace {

namespace server = spanserve::server;
namespace chat = spanserve::chat;
using spanserve::fuzz::CheckEngineAccepts;
using spanserve::fuzz::MakeWorld;
using spanserve::fuzz::World;

[[noreturn]] void Fail(const char* what, std::string_view detail = {}) {
  std::fprintf(stderr, "%s %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

// What the front sends for a refused request: a client error with a message and the JSON
// error body, written as the front writes it (invalid UTF-8 in echoed values replaced).
void CheckRefusal(const absl::Status& status) {
  if (status.ok()) Fail("an error status that is OK");
  const int http = server::HttpStatusFor(status.code());
  if (http < 400 || http >= 500)
    Fail("a refused request answers a non-4xx status:", status.ToString());
  if (status.message().empty()) Fail("a refusal without a message");
  const nlohmann::json error = server::OpenAIError(status);
  if (!error.contains("error") || !error["error"].contains("message")) Fail("no error.message");
  const std::string text = server::DumpJson(error);
  if (nlohmann::json::parse(text, nullptr, false).is_discarded())
    Fail("the error body is not JSON");
  (void)server::OpenAIParam(status);
}

void FuzzOutput(const server::OpenAIRequest& request, std::string_view output, size_t piece) {
  for (const chat::ToolCallFormat format :
       {chat::ToolCallFormat::kNone, chat::ToolCallFormat::kHermes,
        chat::ToolCallFormat::kLlama3Json, chat::ToolCallFormat::kMistral}) {
    if (!server::ReadsToolCalls(request, format)) continue;
    const server::ToolCallOutput calls = server::ParseToolCalls(output, request, format);
    if (!calls.content && calls.calls.empty()) Fail("tool calls: neither content nor calls");
    for (const auto& [name, arguments] : calls.calls) {
      if (request.tool_choice == server::OpenAIRequest::ToolChoice::kNamed) continue;
      // Read out of parsed JSON: the arguments are JSON text again.
      if (nlohmann::json::parse(arguments, nullptr, false).is_discarded()) {
        Fail("tool call arguments that are not JSON:", arguments);
      }
      (void)name;
    }
    size_t sent = 0;
    for (size_t end = std::min(piece, output.size());; end = std::min(end + piece, output.size())) {
      const size_t next = server::StreamableToolText(output.substr(0, end), sent, request, format);
      if (next < sent || next > end) {
        Fail("StreamableToolText went back or past the text:",
             absl::StrCat("format ", static_cast<int>(format), " prefix ", end, " sent ", sent,
                          " now ", next, " of: ", std::string(output.substr(0, end))));
      }
      sent = next;
      if (end == output.size()) break;
    }
  }
  for (const bool starts_in_reasoning : {false, true}) {
    std::string whole_reasoning, whole_content;
    server::ReasoningSplitter whole(starts_in_reasoning);
    whole.Feed(output, &whole_reasoning, &whole_content);
    whole.Finish(&whole_reasoning, &whole_content);
    std::string reasoning, content;
    server::ReasoningSplitter pieces(starts_in_reasoning);
    for (size_t at = 0; at < output.size(); at += piece) {
      pieces.Feed(output.substr(at, piece), &reasoning, &content);
    }
    pieces.Finish(&reasoning, &content);
    if (reasoning != whole_reasoning || content != whole_content) {
      Fail("the reasoning split fed in pieces differs from it fed whole");
    }
    if (reasoning.size() + content.size() > output.size()) Fail("the split added text");
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const World* const world = MakeWorld();
  if (size < 1) return 0;
  auto endpoint = (data[0] & 1) ? server::OpenAIEndpoint::kChatCompletions
                                : server::OpenAIEndpoint::kCompletions;
  const server::ServedModel& model = *world->served[(data[0] >> 1) & 1];
  const size_t piece = ((data[0] >> 2) & 7) + 1;
  std::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string_view body_text = rest;
  std::string_view output;
  if (const size_t nul = rest.find('\0'); nul != std::string_view::npos) {
    body_text = rest.substr(0, nul);
    output = rest.substr(nul + 1);
  }

  const bool responses_api = (data[0] >> 5) & 1;
  absl::StatusOr<server::ResponsesRequest> responses;
  if (responses_api) {
    responses = server::ParseResponsesRequest(body_text);
    if (!responses.ok()) return CheckRefusal(responses.status()), 0;
    body_text = responses->chat_body;
    endpoint = server::OpenAIEndpoint::kChatCompletions;
  }
  absl::StatusOr<nlohmann::json> body = server::ParseOpenAIBody(body_text);
  // (A Responses body within the nesting limit may become a chat body past it: tools nest
  // one level deeper there.)
  if (!body.ok()) return CheckRefusal(body.status()), 0;
  absl::StatusOr<server::OpenAIRequest> request =
      server::ParseOpenAIRequest(*body, endpoint, body_text);
  if (!request.ok()) {
    return CheckRefusal(responses_api ? server::ResponsesError(request.status())
                                      : request.status()),
           0;
  }
  if (request->prompts.empty()) Fail("an accepted request without prompts");
  if (request->n < 1 ||
      static_cast<int64_t>(request->prompts.size()) * request->n > server::kMaxOpenAIChoices) {
    Fail("an accepted request over the choices limit");
  }
  for (size_t p = 0; p < request->prompts.size(); ++p) {
    absl::StatusOr<spanserve::engine::Request> r = server::OpenAIEngineRequest(*request, p, model);
    if (!r.ok()) {
      CheckRefusal(r.status());
      continue;
    }
    CheckEngineAccepts(*world, *r);
  }
  if (!output.empty()) FuzzOutput(*request, output, piece);
  return 0;
}
