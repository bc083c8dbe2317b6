#include "runtime/chat/chat_template.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/text.h"

namespace spanserve::chat {
namespace {

bool ValidRole(absl::string_view role) {
  return role == "system" || role == "user" || role == "assistant" || role == "tool";
}

// Names the template supplies itself; kwargs cannot replace them.
bool Reserved(absl::string_view name) {
  return name == "messages" || name == "add_generation_prompt" || name == "bos_token" ||
         name == "eos_token";
}

}  // namespace

absl::string_view FamilyName(TemplateFamily family) {
  switch (family) {
    case TemplateFamily::kChatMl:
      return "chatml";
    case TemplateFamily::kLlama3:
      return "llama3";
    case TemplateFamily::kJinja:
      return "jinja";
  }
  return "?";
}

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(absl::string_view source, std::string bos_token,
                                                 std::string eos_token) {
  if (absl::StripAsciiWhitespace(source).empty()) {
    return absl::InvalidArgumentError("the model has no chat template");
  }
  absl::StatusOr<jinja::Template> parsed = jinja::Template::Parse(source);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("the chat template cannot be parsed: ", parsed.status().message()));
  }
  ChatTemplate t;
  t.template_ = std::make_shared<const jinja::Template>(*std::move(parsed));
  t.bos_ = std::move(bos_token);
  t.eos_ = std::move(eos_token);
  if (absl::StrContains(source, "<|im_start|>") && absl::StrContains(source, "<|im_end|>")) {
    t.family_ = TemplateFamily::kChatMl;
  } else if (absl::StrContains(source, "<|start_header_id|>") &&
             absl::StrContains(source, "<|end_header_id|>") &&
             absl::StrContains(source, "<|eot_id|>")) {
    t.family_ = TemplateFamily::kLlama3;
  }
  if (absl::StrContains(source, "<tool_call>")) {
    t.tool_call_format_ = ToolCallFormat::kHermes;
  } else if (absl::StrContains(source, "[TOOL_CALLS]")) {
    t.tool_call_format_ = ToolCallFormat::kMistral;
  } else if (t.family_ == TemplateFamily::kLlama3 && absl::StrContains(source, "tools")) {
    t.tool_call_format_ = ToolCallFormat::kLlama3Json;
  }
  // The end of an assistant turn: what the template writes right after its content, up to
  // the first whitespace, in a user / assistant exchange.
  static constexpr char kProbe[] = "\x02probe\x03";
  const ChatMessage probe[] = {{"user", "Hi"}, {"assistant", kProbe}};
  if (absl::StatusOr<std::string> text = t.Apply(probe, false); text.ok()) {
    const size_t at = text->find(kProbe);
    if (at != std::string::npos) {
      const std::string after = text->substr(at + sizeof(kProbe) - 1);
      size_t end = 0;
      while (end < after.size() && !absl::ascii_isspace(static_cast<unsigned char>(after[end]))) {
        ++end;
      }
      t.end_of_turn_ = after.substr(0, end);
    }
  }
  return t;
}

absl::StatusOr<std::string> ChatTemplate::Apply(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt, absl::string_view field,
                                                const nlohmann::ordered_json& kwargs,
                                                const nlohmann::ordered_json& tools) const {
  if (messages.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must hold at least one message"));
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!ValidRole(messages[i].role)) {
      return absl::InvalidArgumentError(
          absl::StrCat(field, "[", i, "].role: '", EchoValue(messages[i].role),
                       "' is not one of system, user, assistant, tool"));
    }
  }
  nlohmann::ordered_json context = nlohmann::ordered_json::object();
  nlohmann::ordered_json& list = context["messages"] = nlohmann::ordered_json::array();
  for (const ChatMessage& m : messages) {
    nlohmann::ordered_json& out = list.emplace_back();
    out["role"] = m.role;
    out["content"] = m.content;
    if (m.tool_calls.is_array()) {
      nlohmann::ordered_json calls = m.tool_calls;
      for (nlohmann::ordered_json& call : calls) {
        // OpenAI sends arguments as JSON text; templates expect the object (as vLLM gives it).
        if (!call.is_object() || !call.contains("function")) continue;
        nlohmann::ordered_json& function = call["function"];
        if (!function.is_object() || !function.contains("arguments")) continue;
        nlohmann::ordered_json& arguments = function["arguments"];
        if (!arguments.is_string()) continue;
        nlohmann::ordered_json parsed = nlohmann::ordered_json::parse(
            arguments.get<std::string>(), nullptr, /*allow_exceptions=*/false);
        if (!parsed.is_discarded()) arguments = std::move(parsed);
      }
      out["tool_calls"] = std::move(calls);
    }
    if (!m.tool_call_id.empty()) out["tool_call_id"] = m.tool_call_id;
    if (!m.name.empty()) out["name"] = m.name;
  }
  context["add_generation_prompt"] = add_generation_prompt;
  context["bos_token"] = bos_;
  context["eos_token"] = eos_;
  context["tools"] = tools.is_array() ? tools : nlohmann::ordered_json();
  context["documents"] = nullptr;
  if (kwargs.is_object()) {
    for (const auto& [name, value] : kwargs.items()) {
      if (Reserved(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("chat_template_kwargs: '", EchoValue(name), "' cannot be set"));
      }
      context[name] = value;
    }
  }
  absl::StatusOr<std::string> text = template_->Render(context);
  if (!text.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", text.status().message()));
  }
  return text;
}

}  // namespace spanserve::chat
