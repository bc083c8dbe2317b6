// Chat prompts: a model's chat template (Jinja source, as tokenizer_config.json or GGUF
// metadata give it) rendered by the Jinja interpreter (jinja.h) in the environment
// transformers renders it in, so the prompt is the one the model was trained on: Llama 3.x
// (dated system prompts), Qwen2.5 / Qwen3, Gemma, Mistral, Phi-3, DeepSeek-R1, Granite and
// any other template the interpreter parses.
//
// The family is a label, read off the template's markers:
//   chatml  <|im_start|>{role}\n{content}<|im_end|>\n ... then <|im_start|>assistant\n
//   llama3  <|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//   jinja   any other template.
// end_of_turn() is the special text the template writes right after an assistant turn
// (found by rendering a probe conversation), where generation should stop.
//
// Thread-safety: a ChatTemplate is immutable; Apply may be called from any thread.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"
#include "runtime/chat/jinja.h"

namespace spanserve::chat {

enum class TemplateFamily { kChatMl, kLlama3, kJinja };

// "chatml", "llama3", "jinja".
absl::string_view FamilyName(TemplateFamily family);

struct ChatMessage {
  std::string role;  // "system", "user", "assistant" or "tool"
  std::string content;
  // assistant: the OpenAI tool calls it made (a JSON array; null: none). Arguments given as
  // JSON text are read into objects, as vLLM gives them to templates.
  nlohmann::ordered_json tool_calls = nullptr;
  std::string tool_call_id = {};  // tool: the call it answers
  std::string name = {};          // tool: the function's name
};

// How a template's model writes tool calls, read off the template: Hermes / Qwen
// `<tool_call>{"name", "arguments"}</tool_call>` blocks, Llama 3.1+'s bare JSON object
// {"name", "parameters"}, or Mistral's `[TOOL_CALLS]` followed by a JSON list of
// {"name", "arguments"} (Mistral Nemo) or by `name[ARGS]{...}` (Mistral Small 3.2, Devstral).
enum class ToolCallFormat { kNone, kHermes, kLlama3Json, kMistral };

class ChatTemplate {
 public:
  // Parses `source`. `bos_token` / `eos_token` are the tokenizer's BOS / EOS text, which
  // templates write as bos_token / eos_token. INVALID_ARGUMENT for no template or one the
  // interpreter cannot parse, naming the line.
  [[nodiscard]] static absl::StatusOr<ChatTemplate> Parse(absl::string_view source,
                                                          std::string bos_token,
                                                          std::string eos_token = "");

  // The prompt text for `messages`, special tokens written as text (encode it with the
  // tokenizer's added-token matching and without adding special tokens again). `kwargs`
  // (a JSON object, or null) adds template variables, such as enable_thinking, beside
  // messages, add_generation_prompt, bos_token, eos_token, tools (`tools`, a JSON array of
  // OpenAI tools, or None) and documents (None). INVALID_ARGUMENT naming `<field>`
  // ("messages: ..." / "messages[2].role: ...") for an empty list, a role other than system,
  // user, assistant, tool, or a conversation the template refuses (its raise_exception
  // message, e.g. roles that do not alternate).
  [[nodiscard]] absl::StatusOr<std::string> Apply(
      std::span<const ChatMessage> messages, bool add_generation_prompt,
      absl::string_view field = "messages",
      const nlohmann::ordered_json& kwargs = nlohmann::ordered_json(),
      const nlohmann::ordered_json& tools = nlohmann::ordered_json()) const;

  TemplateFamily family() const { return family_; }
  // The text that ends an assistant turn ("<|im_end|>", "<|eot_id|>", "<end_of_turn>",
  // "</s>", ...); empty when the template writes nothing special there.
  absl::string_view end_of_turn() const { return end_of_turn_; }
  ToolCallFormat tool_call_format() const { return tool_call_format_; }

 private:
  ChatTemplate() = default;

  std::shared_ptr<const jinja::Template> template_;
  TemplateFamily family_ = TemplateFamily::kJinja;
  std::string bos_;
  std::string eos_;
  std::string end_of_turn_;
  ToolCallFormat tool_call_format_ = ToolCallFormat::kNone;
};

}  // namespace spanserve::chat
