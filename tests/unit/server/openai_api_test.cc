// ParseOpenAIRequest's structured outputs (the schema is compiled once for the request, from
// its text in the raw body so that its properties keep their order) and chat-template kwargs.
#include "server/openai_api.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::server {
namespace {

using json = nlohmann::json;

// The top-level properties' keys of the request's compiled schema, in the order it takes them.
std::vector<std::string> Keys(const OpenAIRequest& r) {
  std::vector<std::string> keys;
  if (r.json_schema == nullptr) return keys;
  for (const auto& p : r.json_schema->node(r.json_schema->root()).properties) keys.push_back(p.key);
  return keys;
}

absl::StatusOr<OpenAIRequest> Parse(const std::string& raw, bool with_raw = true) {
  return ParseOpenAIRequest(json::parse(raw), OpenAIEndpoint::kCompletions,
                            with_raw ? raw : std::string_view());
}

TEST(OpenAIApiTest, StructuredOutputsKeepTheSchemasOrderFromTheRawBody) {
  const std::string schema = R"({"type": "object", "properties": {"zeta": {"type": "string"},
      "alpha": {"type": "object", "properties": {"y": {}, "x": {}}}, "mid": {"type": "integer"}}})";
  const std::vector<std::string> want = {"zeta", "alpha", "mid"};
  const std::vector<std::string> bodies = {
      R"({"prompt": "p", "response_format": {"type": "json_schema", "json_schema": {"name": "n",
          "schema": )" +
          schema + "}}}",
      // Keys before and after it, strings holding braces, an escaped key on the path.
      R"({"prompt": "{\"a\": [}", "stop": ["}"], "response_\u0066ormat": {"json_schema":
          {"strict": true, "schema": )" +
          schema + R"(, "name": "n"}, "type": "json_schema"},
          "max_tokens": 3})",
      R"({"prompt": "p", "guided_json": )" + schema + "}",
      // A key given twice: the parsed body keeps the last, and so does the raw text's search.
      R"({"prompt": "p", "guided_json": {"type": "object", "properties": {"b": {}, "a": {}}},
          "guided_json": )" +
          schema + "}",
  };
  for (const std::string& body : bodies) {
    SCOPED_TRACE(body);
    auto r = Parse(body);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(Keys(*r), want);
    // Compiled once, for every prompt; the prompts carry no copy of its text.
    ASSERT_EQ(r->prompts.size(), 1u);
    EXPECT_EQ(r->prompts[0].sampling().response_format(), v1::RESPONSE_FORMAT_TEXT);
    EXPECT_TRUE(r->prompts[0].sampling().json_schema().empty());
  }
  // The schema's text as a string keeps its order; without the raw body the parsed (sorted)
  // one is all there is.
  auto text = Parse(R"({"prompt": "p", "guided_json": )" + json(schema).dump() + "}");
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(Keys(*text), want);
  auto sorted = Parse(bodies[0], /*with_raw=*/false);
  ASSERT_TRUE(sorted.ok()) << sorted.status();
  EXPECT_EQ(Keys(*sorted), (std::vector<std::string>{"alpha", "mid", "zeta"}));
  // JSON mode compiles nothing.
  auto object = Parse(R"({"prompt": "p", "response_format": {"type": "json_object"}})");
  ASSERT_TRUE(object.ok());
  EXPECT_EQ(object->json_schema, nullptr);
  EXPECT_EQ(object->prompts[0].sampling().response_format(), v1::RESPONSE_FORMAT_JSON_OBJECT);
}

TEST(OpenAIApiTest, StructuredOutputsRefusalsNameTheField) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"prompt": "p", "response_format": {"type": "json_schema"}})", "response_format"},
      {R"({"prompt": "p", "response_format": {"type": "json_schema", "json_schema": {"schema": 3}}})",
       "response_format"},
      {R"({"prompt": "p", "response_format": {"type": "json_schema", "json_schema":
          {"schema": {"type": "string", "pattern": "x"}}}})",
       "response_format"},
      {R"({"prompt": "p", "guided_json": [1]})", "guided_json"},
      {R"({"prompt": "p", "guided_json": "{\"type\": \"integer\"}"})", "guided_json"},
      {R"({"prompt": "p", "guided_json": {}, "response_format": {"type": "json_object"}})",
       "guided_json"},
  };
  for (const auto& [body, param] : cases) {
    SCOPED_TRACE(body);
    auto r = Parse(body);
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(OpenAIParam(r.status()), param);
  }
}

// vLLM's chat_template_kwargs travel in the chat prompt as a JSON object's text.
TEST(OpenAIApiTest, ChatTemplateKwargsTravelAsJson) {
  auto r = ParseOpenAIRequest(json::parse(R"({"messages": [{"role": "user", "content": "Hi"}],
                      "chat_template_kwargs": {"enable_thinking": false}})"),
                              OpenAIEndpoint::kChatCompletions, std::string_view());
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->prompts.size(), 1u);
  EXPECT_EQ(r->prompts[0].prompt().chat().chat_template_kwargs(), R"({"enable_thinking":false})");
  auto bad = ParseOpenAIRequest(
      json::parse(
          R"({"messages": [{"role": "user", "content": "Hi"}], "chat_template_kwargs": 1})"),
      OpenAIEndpoint::kChatCompletions, std::string_view());
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad.status().message().find("chat_template_kwargs"), std::string::npos) << bad.status();
}

}  // namespace
}  // namespace spanserve::server
