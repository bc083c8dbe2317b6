// Fuzzes chat prompts (runtime/chat): messages rendered through two real templates (ChatML
// as SmolLM2 ships it, Llama-3 as Meta ships it), and the Jinja interpreter itself
// (arbitrary template source parsed and rendered: it must answer or refuse with
// INVALID_ARGUMENT, within its bounds, never crash or hang).
//
// Input: byte 0 holds flags: bit 0 add_generation_prompt; bit 1: the rest is a template
// source (parsed, and if recognised applied to a fixed conversation); otherwise the rest is
// a conversation: records separated by 0x1E, each record's first byte picking the role
// (0 system, 1 user, 2 assistant, 3: the role is the record's text up to 0x1F) and the
// remaining bytes its content.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <vector>
#include "absl/strings/string_view.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "fuzz_util.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/chat_template.h"
#include "runtime/chat/jinja.h"

namespace {

using spanserve::chat::ChatMessage;
using spanserve::chat::ChatTemplate;
using spanserve::chat::TemplateFamily;

using spanserve::fuzz::kChatMl;
using spanserve::fuzz::kLlama3;

bool ValidRole(absl::string_view role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

// An arbitrary template's rendering: text or INVALID_ARGUMENT, within small limits (the
// server's are the defaults; these keep the fuzzer fast).
void RenderAny(const spanserve::chat::jinja::Template& t, const std::vector<ChatMessage>& messages,
               bool gen_prompt) {
  nlohmann::ordered_json context = {{"messages", nlohmann::ordered_json::array()},
                                    {"add_generation_prompt", gen_prompt},
                                    {"bos_token", "<s>"},
                                    {"eos_token", "</s>"},
                                    {"tools", nullptr},
                                    {"documents", nullptr}};
  for (const ChatMessage& m : messages) {
    context["messages"].push_back({{"role", m.role}, {"content", m.content}});
  }
  spanserve::chat::jinja::RenderLimits limits;
  limits.max_steps = 20'000;
  limits.max_output_bytes = 1 << 20;
  limits.max_call_depth = 16;
  absl::StatusOr<std::string> text = t.Render(context, limits);
  SPANSERVE_CHECK(text.ok() || text.status().code() == absl::StatusCode::kInvalidArgument);
  if (text.ok()) SPANSERVE_CHECK_LE(text->size(), size_t{1} << 20);
}

// Whether `s` starts or ends with a byte that Python's str.strip() might treat as
// whitespace beyond ASCII's (\x1c-\x1f, or part of a non-ASCII character).
bool UnicodeEdges(absl::string_view s) {
  const auto odd = [](unsigned char c) { return c >= 0x80 || (c >= 0x1c && c <= 0x1f); };
  return !s.empty() &&
         (odd(static_cast<unsigned char>(s.front())) || odd(static_cast<unsigned char>(s.back())));
}

// Checks what holds for every rendering of the two real templates.
void Render(const ChatTemplate& t, const std::vector<ChatMessage>& messages, bool gen_prompt) {
  absl::StatusOr<std::string> text = t.Apply(messages, gen_prompt);
  bool should_work = !messages.empty();
  for (const ChatMessage& m : messages) should_work = should_work && ValidRole(m.role);
  SPANSERVE_CHECK_EQ(text.ok(), should_work);
  if (!text.ok()) {
    SPANSERVE_CHECK(text.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  size_t pos = 0;
  for (const ChatMessage& m : messages) {
    // In order, each turn's role and content (trimmed where the template trims).
    const bool trims = t.family() == TemplateFamily::kLlama3;
    const absl::string_view content =
        trims ? absl::StripAsciiWhitespace(m.content) : absl::string_view(m.content);
    const size_t role_at = text->find(m.role, pos);
    SPANSERVE_CHECK(role_at != std::string::npos);
    if (trims && UnicodeEdges(content)) {  // trimmed as Python trims: not checked here
      pos = role_at + m.role.size();
      continue;
    }
    const size_t content_at = text->find(content.data(), role_at + m.role.size(), content.size());
    SPANSERVE_CHECK(content_at != std::string::npos);
    pos = content_at + content.size();
  }
  if (gen_prompt) {
    SPANSERVE_CHECK(
        absl::EndsWith(*text, t.family() == TemplateFamily::kChatMl
                                  ? "<|im_start|>assistant\n"
                                  : "<|start_header_id|>assistant<|end_header_id|>\n\n"));
  } else {
    // The last turn's end: "<|im_end|>\n" or "<|eot_id|>".
    SPANSERVE_CHECK(absl::EndsWith(
        *text, t.family() == TemplateFamily::kChatMl ? "<|im_end|>\n" : "<|eot_id|>"));
  }
}

std::vector<ChatMessage> SplitMessages(absl::string_view rest) {
  std::vector<ChatMessage> messages;
  if (rest.empty()) return messages;
  size_t start = 0;
  while (true) {
    size_t end = rest.find('\x1e', start);
    if (end == absl::string_view::npos) end = rest.size();
    absl::string_view record = rest.substr(start, end - start);
    ChatMessage m;
    const uint8_t kind = record.empty() ? 1 : static_cast<uint8_t>(record[0]) % 4;
    if (!record.empty()) record.remove_prefix(1);
    static constexpr const char* kRoles[] = {"system", "user", "assistant"};
    if (kind < 3) {
      m.role = kRoles[kind];
    } else {
      const size_t sep = record.find('\x1f');
      m.role = std::string(record.substr(0, sep));
      record = sep == absl::string_view::npos ? absl::string_view() : record.substr(sep + 1);
    }
    m.content = std::string(record);
    messages.push_back(std::move(m));
    if (end == rest.size()) break;
    start = end + 1;
  }
  return messages;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const ChatTemplate* const chatml =
      new ChatTemplate(*ChatTemplate::Parse(kChatMl, "<|im_start|>"));
  static const ChatTemplate* const llama3 =
      new ChatTemplate(*ChatTemplate::Parse(kLlama3, "<|begin_of_text|>"));
  if (size < 1) return 0;
  const bool gen_prompt = (data[0] & 1) != 0;
  const absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);

  if (data[0] & 2) {
    absl::StatusOr<spanserve::chat::jinja::Template> t =
        spanserve::chat::jinja::Template::Parse(rest);
    if (!t.ok()) {
      SPANSERVE_CHECK(t.status().code() == absl::StatusCode::kInvalidArgument);
      return 0;
    }
    const std::vector<ChatMessage> conversation = {
        {"system", "Be brief."}, {"user", " Hi there \n"}, {"assistant", "Hello."}, {"user", "?"}};
    RenderAny(*t, conversation, gen_prompt);
    RenderAny(*t, {conversation.begin() + 1, conversation.end()}, gen_prompt);
    return 0;
  }
  const std::vector<ChatMessage> messages = SplitMessages(rest);
  Render(*chatml, messages, gen_prompt);
  Render(*llama3, messages, gen_prompt);
  return 0;
}
