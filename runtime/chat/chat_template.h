// Chat prompts: a model's chat template (Jinja source, as tokenizer_config.json or GGUF
// metadata give it) recognised as one of the families below and applied in C++ — there is
// no Jinja engine here. A template outside these families, or one using features whose
// output this formatter does not reproduce (tool prompts, dated system prompts, reasoning
// blocks), is rejected rather than approximated: a wrong prompt degrades a model silently.
//
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n ... then <|im_start|>assistant\n;
//           a default system turn that the template injects when the conversation does
//           not start with one is read from the template text.
//   llama3  <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//           ... then <|start_header_id|>assistant<|end_header_id|>\n\n (content trimmed
//           when the template trims it, as Meta's does).
//
// Thread-safety: a ChatTemplate is immutable; Apply may be called from any thread.
#pragma once

#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace spanserve::chat {

enum class TemplateFamily { kChatMl, kLlama3 };

// "chatml", "llama3".
absl::string_view FamilyName(TemplateFamily family);
// "chatml, llama3": for error messages.
absl::string_view SupportedFamilies();

struct ChatMessage {
  std::string role;  // "system", "user" or "assistant"
  std::string content;
};

class ChatTemplate {
 public:
  // Recognises `source`. `bos_token` is the tokenizer's BOS text, used where the template
  // emits bos_token. INVALID_ARGUMENT saying why (no template, unsupported family or
  // feature) and naming the supported families.
  [[nodiscard]] static absl::StatusOr<ChatTemplate> Parse(absl::string_view source,
                                                          std::string bos_token);

  // The prompt text for `messages`, special tokens written as text (encode it with the
  // tokenizer's added-token matching and without adding special tokens again).
  // INVALID_ARGUMENT naming `<field>` ("messages: ..." / "messages[2].role: ...") for an
  // empty list or a role other than system, user, assistant.
  [[nodiscard]] absl::StatusOr<std::string> Apply(std::span<const ChatMessage> messages,
                                                  bool add_generation_prompt,
                                                  absl::string_view field = "messages") const;

  TemplateFamily family() const { return family_; }
  // The token that ends a turn: "<|im_end|>" or "<|eot_id|>". Generation should stop there.
  absl::string_view end_of_turn() const;
  // ChatML only: the system message the template injects when there is none; may be empty.
  const std::string& default_system() const { return default_system_; }

 private:
  ChatTemplate() = default;

  TemplateFamily family_ = TemplateFamily::kChatMl;
  std::string bos_;  // emitted before the first turn; empty when the template emits none
  std::string default_system_;
  bool trim_content_ = false;
};

}  // namespace spanserve::chat
