#include "runtime/chat/chat_template.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/text.h"

namespace spanserve::chat {
namespace {

constexpr absl::string_view kImStart = "<|im_start|>";
constexpr absl::string_view kImEnd = "<|im_end|>";
constexpr absl::string_view kStartHeader = "<|start_header_id|>";
constexpr absl::string_view kEndHeader = "<|end_header_id|>";
constexpr absl::string_view kEotId = "<|eot_id|>";
constexpr absl::string_view kLlama3Bos = "<|begin_of_text|>";

// Template features whose output this formatter does not reproduce, and what they are.
constexpr std::pair<absl::string_view, absl::string_view> kUnsupportedFeatures[] = {
    {"date_string", "a dated system prompt (Llama 3.1 style)"},
    {"Cutting Knowledge", "a dated system prompt (Llama 3.1 style)"},
    {"ipython", "tool-calling prompts"},
    {"custom_tools", "tool-calling prompts"},
    {"<think>", "reasoning blocks"},
    {"reasoning_content", "reasoning blocks"},
    {"enable_thinking", "reasoning blocks"},
    {"eos_token", "eos_token inside the conversation"},
};

absl::Status Unsupported(absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat(why, "; supported chat template families: ", SupportedFamilies()));
}

// Reads the Jinja string literal starting at src[*i] (a quote); leaves *i past its end.
std::string ReadStringLiteral(absl::string_view src, size_t* i) {
  const char quote = src[*i];
  std::string out;
  size_t j = *i + 1;
  for (; j < src.size() && src[j] != quote; ++j) {
    if (src[j] == '\\' && j + 1 < src.size()) {
      ++j;
      switch (src[j]) {
        case 'n':
          out += '\n';
          break;
        case 't':
          out += '\t';
          break;
        case 'r':
          out += '\r';
          break;
        default:
          out += src[j];
          break;  // \\, \', \" and the rest stand for themselves
      }
    } else {
      out += src[j];
    }
  }
  *i = j + 1;
  return out;
}

// What the template can output literally: the raw text between tags and every string
// literal inside {{ }} / {% %} (unescaped). Comments are skipped.
std::vector<std::string> LiteralPieces(absl::string_view src) {
  std::vector<std::string> pieces;
  size_t i = 0;
  while (i < src.size()) {
    size_t open = i;
    while (open + 1 < src.size() &&
           !(src[open] == '{' &&
             (src[open + 1] == '{' || src[open + 1] == '%' || src[open + 1] == '#'))) {
      ++open;
    }
    if (open + 1 >= src.size()) open = src.size();
    if (open > i) pieces.emplace_back(src.substr(i, open - i));
    if (open >= src.size()) break;
    const char kind = src[open + 1];
    if (kind == '#') {
      const size_t end = src.find("#}", open + 2);
      i = end == absl::string_view::npos ? src.size() : end + 2;
      continue;
    }
    const char close = kind == '{' ? '}' : '%';
    size_t j = open + 2;
    while (j < src.size()) {
      if (src[j] == '\'' || src[j] == '"') {
        pieces.push_back(ReadStringLiteral(src, &j));
      } else if (src[j] == close && j + 1 < src.size() && src[j + 1] == '}') {
        j += 2;
        break;
      } else {
        ++j;
      }
    }
    i = j;
  }
  return pieces;
}

bool AnyPieceContains(const std::vector<std::string>& pieces, absl::string_view needle) {
  for (const std::string& p : pieces) {
    if (absl::StrContains(p, needle)) return true;
  }
  return false;
}

// Whether the template's first output is bos_token: `{{ bos_token }}` (any spacing and
// whitespace control) before anything else.
bool StartsWithBos(absl::string_view src) {
  absl::string_view s = absl::StripLeadingAsciiWhitespace(src);
  if (!absl::ConsumePrefix(&s, "{{")) return false;
  absl::ConsumePrefix(&s, "-");
  s = absl::StripLeadingAsciiWhitespace(s);
  if (!absl::ConsumePrefix(&s, "bos_token")) return false;
  s = absl::StripLeadingAsciiWhitespace(s);
  absl::ConsumePrefix(&s, "-");
  return absl::StartsWith(s, "}}");
}

bool ValidRole(absl::string_view role) {
  return role == "system" || role == "user" || role == "assistant";
}

}  // namespace

absl::string_view FamilyName(TemplateFamily family) {
  switch (family) {
    case TemplateFamily::kChatMl:
      return "chatml";
    case TemplateFamily::kLlama3:
      return "llama3";
  }
  return "?";
}

absl::string_view SupportedFamilies() { return "chatml, llama3"; }

absl::StatusOr<ChatTemplate> ChatTemplate::Parse(absl::string_view source, std::string bos_token) {
  if (absl::StripAsciiWhitespace(source).empty()) return Unsupported("no chat template");
  const bool chatml = absl::StrContains(source, kImStart) && absl::StrContains(source, kImEnd);
  const bool llama3 = absl::StrContains(source, kStartHeader) &&
                      absl::StrContains(source, kEndHeader) && absl::StrContains(source, kEotId);
  if (chatml == llama3) {
    return Unsupported(chatml ? "the chat template mixes ChatML and Llama-3 markers"
                              : "the chat template is of no supported family");
  }
  for (const auto& [marker, what] : kUnsupportedFeatures) {
    if (absl::StrContains(source, marker)) {
      return Unsupported(absl::StrCat("the ", chatml ? "ChatML" : "Llama-3", " chat template uses ",
                                      what, " ('", marker, "'), which is not supported"));
    }
  }
  const std::vector<std::string> pieces = LiteralPieces(source);
  ChatTemplate t;
  if (chatml) {
    t.family_ = TemplateFamily::kChatMl;
    if (!AnyPieceContains(pieces, absl::StrCat(kImStart, "assistant\n"))) {
      return Unsupported(
          "the ChatML chat template has no '<|im_start|>assistant\\n' generation "
          "prompt");
    }
    if (absl::StrContains(source, "trim")) {
      return Unsupported("the ChatML chat template trims message content, which is not supported");
    }
    if (absl::StrContains(source, "bos_token")) {
      if (!StartsWithBos(source)) {
        return Unsupported("the ChatML chat template emits bos_token other than at its start");
      }
      t.bos_ = std::move(bos_token);
    }
    // The default system turn: a literal "<|im_start|>system\n<text><|im_end|>".
    const std::string system_open = absl::StrCat(kImStart, "system\n");
    for (const std::string& p : pieces) {
      if (!absl::StartsWith(p, system_open)) continue;
      const size_t end = p.find(std::string(kImEnd), system_open.size());
      if (end == std::string::npos || end == system_open.size()) continue;
      t.default_system_ = p.substr(system_open.size(), end - system_open.size());
      break;
    }
  } else {
    t.family_ = TemplateFamily::kLlama3;
    if (!AnyPieceContains(pieces, absl::StrCat(kStartHeader, "assistant", kEndHeader, "\n\n"))) {
      return Unsupported("the Llama-3 chat template has no assistant generation prompt");
    }
    if (absl::StrContains(source, "bos_token")) {
      t.bos_ = bos_token.empty() ? std::string(kLlama3Bos) : std::move(bos_token);
    }
    t.trim_content_ = absl::StrContains(source, "trim");
  }
  return t;
}

absl::string_view ChatTemplate::end_of_turn() const {
  switch (family_) {
    case TemplateFamily::kChatMl:
      return kImEnd;
    case TemplateFamily::kLlama3:
      return kEotId;
  }
  return kImEnd;
}

absl::StatusOr<std::string> ChatTemplate::Apply(std::span<const ChatMessage> messages,
                                                bool add_generation_prompt,
                                                absl::string_view field) const {
  if (messages.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": must hold at least one message"));
  }
  for (size_t i = 0; i < messages.size(); ++i) {
    if (!ValidRole(messages[i].role)) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "].role: '",
                                                     EchoValue(messages[i].role),
                                                     "' is not one of system, user, assistant"));
    }
  }
  std::string out = bos_;
  switch (family_) {
    case TemplateFamily::kChatMl:
      if (messages[0].role != "system" && !default_system_.empty()) {
        absl::StrAppend(&out, kImStart, "system\n", default_system_, kImEnd, "\n");
      }
      for (const ChatMessage& m : messages) {
        absl::StrAppend(&out, kImStart, m.role, "\n", m.content, kImEnd, "\n");
      }
      if (add_generation_prompt) absl::StrAppend(&out, kImStart, "assistant\n");
      break;
    case TemplateFamily::kLlama3:
      for (const ChatMessage& m : messages) {
        const absl::string_view content =
            trim_content_ ? absl::StripAsciiWhitespace(m.content) : absl::string_view(m.content);
        absl::StrAppend(&out, kStartHeader, m.role, kEndHeader, "\n\n", content, kEotId);
      }
      if (add_generation_prompt)
        absl::StrAppend(&out, kStartHeader, "assistant", kEndHeader, "\n\n");
      break;
  }
  return out;
}

}  // namespace spanserve::chat
