// Chat prompts against prompts rendered by transformers' own Jinja machinery: a few cases
// written here, and tests/data/chat/goldens.json (jinja_test.cc has the real-world
// templates).
#include "runtime/chat/chat_template.h"

#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "nlohmann/json.hpp"

namespace spanserve::chat {
namespace {

// SmolLM2-135M-Instruct's template (GGUF tokenizer.chat_template).
constexpr char kSmolLm2[] =
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ "
    "'<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|im_start|>assistant\n' }}{% endif %}";
// Meta-Llama-3-8B-Instruct's template (tokenizer_config.json), escapes as in the JSON.
constexpr char kLlama3[] =
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | "
    "trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% "
    "endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ "
    "'<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";
constexpr char kSmolSystem[] =
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
    "Face<|im_end|>\n";

std::string Format(const char* source, const std::vector<ChatMessage>& messages, bool gen) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source, "<|begin_of_text|>");
  EXPECT_TRUE(t.ok()) << t.status();
  if (!t.ok()) return "";
  absl::StatusOr<std::string> text = t->Apply(messages, gen);
  EXPECT_TRUE(text.ok()) << text.status();
  return text.ok() ? *text : "";
}

TEST(ChatTemplateTest, ChatMlInjectsTheTemplatesDefaultSystemTurn) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(kSmolLm2, "");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), TemplateFamily::kChatMl);
  EXPECT_EQ(t->end_of_turn(), "<|im_end|>");
  EXPECT_EQ(Format(kSmolLm2, {{"user", "Hi"}}, true),
            std::string(kSmolSystem) + "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n");
  EXPECT_EQ(Format(kSmolLm2, {{"user", "Hi"}, {"assistant", "Hello!"}}, false),
            std::string(kSmolSystem) +
                "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n");
}

TEST(ChatTemplateTest, ChatMlWithASystemMessageHasNoDefault) {
  EXPECT_EQ(Format(kSmolLm2,
                   {{"system", "Be brief."},
                    {"user", "What is 2+2?"},
                    {"assistant", "4"},
                    {"user", "And 3+3?"}},
                   true),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is "
            "2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nAnd "
            "3+3?<|im_end|>\n<|im_start|>assistant\n");
}

TEST(ChatTemplateTest, Llama3TrimsContentAndStartsWithBos) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(kLlama3, "<|begin_of_text|>");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->family(), TemplateFamily::kLlama3);
  EXPECT_EQ(t->end_of_turn(), "<|eot_id|>");
  EXPECT_EQ(Format(kLlama3, {{"system", " Be brief. "}, {"user", "Hi\n"}}, true),
            "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nBe "
            "brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_"
            "header_id|>assistant<|end_header_id|>\n\n");
  // Bytes that are not UTF-8 stay as they are; trim takes only whitespace.
  EXPECT_EQ(Format(kLlama3, {{"user", "\x81 ok \xe2"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n\x81 ok \xe2<|eot_id|>");
  EXPECT_EQ(Format(kLlama3, {{"user", "Hi"}, {"assistant", "Hello!"}}, false),
            "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_"
            "header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>");
}

// Templates of other families render through the Jinja interpreter, each turn ending
// where the template ends it; a template that does not parse names its line.
TEST(ChatTemplateTest, OtherFamiliesRenderAndFindTheirEndOfTurn) {
  struct Case {
    std::string source, want, end_of_turn;
    TemplateFamily family;
  };
  const std::vector<Case> cases = {
      // Llama-2 / Mistral [INST].
      {"{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}{{ '[INST] ' "
       "+ message['content'] + ' [/INST]' }}{% else %}{{ message['content'] + eos_token }}{% endif "
       "%}{% endfor %}",
       "<s>[INST] Hi [/INST]Hello</s>", "</s>", TemplateFamily::kJinja},
      // Gemma.
      {"{{ bos_token }}{% for message in messages %}{{ '<start_of_turn>' + message['role'] + '\n' "
       "+ message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}",
       "<s><start_of_turn>user\nHi<end_of_turn>\n<start_of_turn>assistant\nHello<end_of_turn>\n",
       "<end_of_turn>", TemplateFamily::kJinja},
      // Llama 3.1: a dated system prompt.
      {"{{- bos_token }}{%- if not date_string is defined %}{%- set date_string = \"26 Jul 2024\" "
       "%}{%- endif %}{{- \"<|start_header_id|>system<|end_header_id|>\\n\\n\" }}{{- \"Today "
       "Date: \" + date_string }}{{- \"<|eot_id|>\" }}{%- for m in messages %}{{- "
       "'<|start_header_id|>' + m.role + '<|end_header_id|>\\n\\n' + m.content + '<|eot_id|>' }}"
       "{%- endfor %}",
       "<s><|start_header_id|>system<|end_header_id|>\n\nToday Date: 26 Jul "
       "2024<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|><|start_header_id|>"
       "assistant<|end_header_id|>\n\nHello<|eot_id|>",
       "<|eot_id|>", TemplateFamily::kLlama3},
      // ChatML ending the conversation with eos_token.
      {"{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + "
       "message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{{ eos_token }}",
       "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n</s>", "<|im_end|>",
       TemplateFamily::kChatMl},
  };
  const std::vector<ChatMessage> chat = {{"user", "Hi"}, {"assistant", "Hello"}};
  for (const Case& c : cases) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(c.source, "<s>", "</s>");
    ASSERT_TRUE(t.ok()) << t.status() << "\n" << c.source;
    EXPECT_EQ(t->family(), c.family) << c.source;
    EXPECT_EQ(t->end_of_turn(), c.end_of_turn) << c.source;
    absl::StatusOr<std::string> text = t->Apply(chat, false);
    ASSERT_TRUE(text.ok()) << text.status();
    EXPECT_EQ(*text, c.want);
  }
  absl::StatusOr<ChatTemplate> none = ChatTemplate::Parse("  \n", "<s>");
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(none.status().message().find("no chat template"), std::string::npos) << none.status();
  absl::StatusOr<ChatTemplate> broken =
      ChatTemplate::Parse("{% for m in messages %}\n{{ m.content }}\n", "<s>");
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(broken.status().message().find("cannot be parsed: chat template line 1"),
            std::string::npos)
      << broken.status();
}

// chat_template_kwargs reach the template; the names it is given itself cannot be replaced.
// A raise_exception in the template answers with its message.
TEST(ChatTemplateTest, KwargsReachTheTemplateAndRaiseExceptionNamesTheField) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(
      "{% if messages[0].role == 'system' %}{{ raise_exception('System role not supported') }}"
      "{% endif %}{{ messages[0].content }}{% if enable_thinking is false %} /no_think{% endif %}",
      "<s>");
  ASSERT_TRUE(t.ok()) << t.status();
  const std::vector<ChatMessage> chat = {{"user", "Hi"}};
  EXPECT_EQ(*t->Apply(chat, true), "Hi");
  EXPECT_EQ(*t->Apply(chat, true, "messages", {{"enable_thinking", false}}), "Hi /no_think");
  absl::StatusOr<std::string> reserved = t->Apply(chat, true, "messages", {{"messages", 1}});
  EXPECT_EQ(reserved.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(reserved.status().message().find("chat_template_kwargs: 'messages'"),
            std::string::npos);
  absl::StatusOr<std::string> raised = t->Apply({{{"system", "x"}}}, true, "prompt.chat.messages");
  EXPECT_EQ(raised.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(raised.status().message(), "prompt.chat.messages: System role not supported");
}

TEST(ChatTemplateTest, BadMessagesNameTheField) {
  absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(kSmolLm2, "");
  ASSERT_TRUE(t.ok());
  absl::StatusOr<std::string> empty = t->Apply({}, true, "prompt.chat.messages");
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(empty.status().message().find("prompt.chat.messages"), std::string::npos);
  const std::vector<ChatMessage> bad = {{"user", "Hi"}, {"robot", "42"}};
  absl::StatusOr<std::string> role = t->Apply(bad, true, "messages");
  EXPECT_EQ(role.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(role.status().message().find("messages[1].role"), std::string::npos) << role.status();
}

// tests/data/chat/goldens.json: templates and prompts rendered by transformers.
TEST(ChatTemplateTest, MatchesTransformersGoldens) {
  std::ifstream in(std::string(SPANSERVE_TEST_DATA) + "/chat/goldens.json");
  if (!in) GTEST_SKIP() << "tests/data/chat/goldens.json is absent";
  std::stringstream text;
  text << in.rdbuf();
  const nlohmann::json goldens = nlohmann::json::parse(text.str());
  int checked = 0;
  for (const nlohmann::json& family : goldens.at("families")) {
    const std::string name = family.at("family").get<std::string>();
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(family.at("template").get<std::string>(),
                                                         family.value("bos_token", std::string()));
    ASSERT_TRUE(t.ok()) << name << ": " << t.status();
    EXPECT_EQ(FamilyName(t->family()), name);
    for (const nlohmann::json& c : family.at("cases")) {
      std::vector<ChatMessage> messages;
      for (const nlohmann::json& m : c.at("messages")) {
        messages.push_back({m.at("role").get<std::string>(), m.at("content").get<std::string>()});
      }
      absl::StatusOr<std::string> out = t->Apply(messages, c.value("add_generation_prompt", true));
      ASSERT_TRUE(out.ok()) << out.status();
      EXPECT_EQ(*out, c.at("text").get<std::string>()) << name << " case " << c.dump();
      ++checked;
    }
  }
  // Templates of other families, which the formatter once refused, now parse and render.
  for (const nlohmann::json& source : goldens.value("unsupported", nlohmann::json::array())) {
    absl::StatusOr<ChatTemplate> t = ChatTemplate::Parse(source.get<std::string>(), "<s>", "</s>");
    ASSERT_TRUE(t.ok()) << t.status() << source.dump();
    EXPECT_TRUE(t->Apply({{{"user", "Hi"}, {"assistant", "Hello"}, {"user", "Bye"}}}, true).ok());
  }
  EXPECT_GT(checked, 0);
}

}  // namespace
}  // namespace spanserve::chat
