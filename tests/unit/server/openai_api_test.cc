// ParseOpenAIRequest's structured outputs (the schema is compiled once for the request, from
// its text in the raw body so that its properties keep their order) and chat-template kwargs.
#include "server/openai_api.h"

#include <random>
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
          {"schema": {"type": "string", "pattern": "a\\1"}}}})",
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

// Integer fields: any JSON spelling of an integer in range is read exactly; past int64 (2^63
// and up arrive as unsigned, 2^64 and up as floats) the error says out of range, not "must be
// an integer".
TEST(OpenAIApiTest, IntegerFieldsSayWhenAValueIsOutOfRange) {
  const std::vector<std::pair<std::string, uint64_t>> ok = {
      {"7", 7},
      {"7.0", 7},
      {"-1", ~uint64_t{0}},
      {"9223372036854775807", 9223372036854775807ull},
  };
  for (const auto& [seed, want] : ok) {
    SCOPED_TRACE(seed);
    auto r = Parse(R"({"prompt": "p", "seed": )" + seed + "}");
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->prompts.at(0).sampling().seed(), want);
  }
  const std::vector<std::pair<std::string, std::string>> bad = {
      {"9223372036854775808", "seed: is out of range"},
      {"18446744073709551616", "seed: is out of range"},
      {"-9223372036854775809", "seed: is out of range"},
      {"1e300", "seed: is out of range"},
      {"7.5", "seed: must be an integer"},
      {"\"7\"", "seed: must be an integer"},
  };
  for (const auto& [seed, message] : bad) {
    SCOPED_TRACE(seed);
    auto r = Parse(R"({"prompt": "p", "seed": )" + seed + "}");
    ASSERT_FALSE(r.ok());
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(r.status().message(), message);
    EXPECT_EQ(OpenAIParam(r.status()), "seed");
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

OpenAIRequest ToolRequest(OpenAIRequest::ToolChoice choice, std::string function = "") {
  OpenAIRequest r;
  r.endpoint = OpenAIEndpoint::kChatCompletions;
  r.tool_choice = choice;
  r.tool_function = std::move(function);
  return r;
}

// Tool calls read out of outputs: constrained (named, required) and free (auto) in the
// Hermes and Llama 3 JSON formats; anything that does not read as calls is content.
TEST(OpenAIApiTest, ToolCallsAreReadOutOfTheOutput) {
  using chat::ToolCallFormat;
  using Calls = std::vector<std::pair<std::string, std::string>>;
  const OpenAIRequest named = ToolRequest(OpenAIRequest::ToolChoice::kNamed, "f");
  ToolCallOutput out = ParseToolCalls(" {\"a\": 1} ", named, ToolCallFormat::kNone);
  EXPECT_EQ(out.calls, (Calls{{"f", "{\"a\": 1}"}}));
  EXPECT_FALSE(out.content);

  const OpenAIRequest required = ToolRequest(OpenAIRequest::ToolChoice::kRequired);
  out = ParseToolCalls(
      R"([{"name": "f", "arguments": {"z": 1, "a": [2]}}, {"name": "g", "arguments": {}}])",
      required, ToolCallFormat::kNone);
  EXPECT_EQ(out.calls, (Calls{{"f", R"({"z":1,"a":[2]})"}, {"g", "{}"}}));
  const std::string deep = R"([{"name": "f", "arguments": {"a": )" + std::string(100000, '[') +
                           std::string(100000, ']') + "}}]";
  out = ParseToolCalls(deep, required, ToolCallFormat::kNone);  // deeper than a request may be
  EXPECT_TRUE(out.calls.empty());
  out = ParseToolCalls(R"([{"name": "f", "argu)", required, ToolCallFormat::kNone);  // cut short
  EXPECT_TRUE(out.calls.empty());
  EXPECT_EQ(out.content, R"([{"name": "f", "argu)");

  const OpenAIRequest automatic = ToolRequest(OpenAIRequest::ToolChoice::kAuto);
  out = ParseToolCalls(
      "Let me look.\n<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": \"y\"}}\n"
      "</tool_call>\n<tool_call>\n{\"name\": \"g\", \"arguments\": \"{}\"}\n</tool_call>",
      automatic, ToolCallFormat::kHermes);
  EXPECT_EQ(out.calls, (Calls{{"f", R"({"x":"y"})"}, {"g", "{}"}}));
  EXPECT_EQ(out.content, "Let me look.");
  out = ParseToolCalls("<tool_call>\n{\"name\": \"f\", \"arguments\": {}}", automatic,
                       ToolCallFormat::kHermes);  // the closing tag not written (EOS first)
  EXPECT_EQ(out.calls, (Calls{{"f", "{}"}}));
  EXPECT_FALSE(out.content);
  out = ParseToolCalls("Hi <tool_call>{oops}</tool_call>", automatic, ToolCallFormat::kHermes);
  EXPECT_TRUE(out.calls.empty());
  EXPECT_EQ(out.content, "Hi <tool_call>{oops}</tool_call>");
  out = ParseToolCalls(" {\"name\": \"f\", \"parameters\": {\"q\": 1}}", automatic,
                       ToolCallFormat::kLlama3Json);
  EXPECT_EQ(out.calls, (Calls{{"f", R"({"q":1})"}}));
  out = ParseToolCalls("The answer is {1}.", automatic, ToolCallFormat::kLlama3Json);
  EXPECT_TRUE(out.calls.empty());
  EXPECT_EQ(out.content, "The answer is {1}.");
  out =
      ParseToolCalls("<tool_call>{\"name\": \"f\"}</tool_call>", automatic, ToolCallFormat::kNone);
  EXPECT_TRUE(out.calls.empty());  // a template without a tool-call format: plain text
  EXPECT_FALSE(ReadsToolCalls(automatic, ToolCallFormat::kNone));
  EXPECT_TRUE(ReadsToolCalls(named, ToolCallFormat::kNone));

  // Streaming: content goes out up to where a call may begin.
  EXPECT_EQ(StreamableToolText("Sure. <tool_call>{", 0, automatic, ToolCallFormat::kHermes), 6u);
  EXPECT_EQ(StreamableToolText("Sure. <tool_c", 0, automatic, ToolCallFormat::kHermes), 6u);
  EXPECT_EQ(StreamableToolText("Sure. <b>", 0, automatic, ToolCallFormat::kHermes), 9u);
  // Once held at a call's start, the search starts there.
  EXPECT_EQ(StreamableToolText("Sure. <tool_call>{\"name\"", 6, automatic, ToolCallFormat::kHermes),
            6u);
  EXPECT_EQ(StreamableToolText("  {\"name", 0, automatic, ToolCallFormat::kLlama3Json), 0u);
  EXPECT_EQ(StreamableToolText("  Hello", 0, automatic, ToolCallFormat::kLlama3Json), 7u);
  // A "<" alone may begin <|python_tag|> (the fuzzer found it sent as content before the
  // "|" came).
  EXPECT_EQ(StreamableToolText(" <", 0, automatic, ToolCallFormat::kLlama3Json), 0u);
  EXPECT_EQ(StreamableToolText("<|python_tag|>{", 0, automatic, ToolCallFormat::kLlama3Json), 0u);
  EXPECT_EQ(StreamableToolText("<b>", 0, automatic, ToolCallFormat::kLlama3Json), 3u);
  EXPECT_EQ(StreamableToolText("{\"a\"", 0, named, ToolCallFormat::kNone), 0u);
}

// Mistral's two formats, with or without their control tokens in the text (a tokenizer that
// skips special tokens drops them): Nemo's JSON list and Small 3.2's name[ARGS]{...}.
TEST(OpenAIApiTest, MistralToolCallsAreReadInBothFormats) {
  using chat::ToolCallFormat;
  using Calls = std::vector<std::pair<std::string, std::string>>;
  OpenAIRequest automatic = ToolRequest(OpenAIRequest::ToolChoice::kAuto);
  automatic.tool_names = {"get", "get_weather", "get_time"};
  const auto calls = [&](std::string_view text) {
    return ParseToolCalls(text, automatic, ToolCallFormat::kMistral).calls;
  };
  const Calls weather = {{"get_weather", R"({"city":"Paris"})"}};
  EXPECT_EQ(calls(R"([TOOL_CALLS][{"name": "get_weather", "arguments": {"city": "Paris"}}])"),
            weather);
  EXPECT_EQ(calls(R"( [{"name": "get_weather", "arguments": {"city": "Paris"}}])"), weather);
  EXPECT_EQ(calls(R"([TOOL_CALLS]get_weather[ARGS]{"city": "Paris"})"), weather);
  EXPECT_EQ(calls(R"(get_weather{"city": "Paris"})"), weather);
  EXPECT_EQ(calls(R"([TOOL_CALLS]get_weather[CALL_ID]a1b2c3d4e[ARGS]{"city": "Paris"})"), weather);
  EXPECT_EQ(calls(R"([TOOL_CALLS]get_weather[ARGS]{"city": "}{\""}[TOOL_CALLS]get_time[ARGS]{})"),
            (Calls{{"get_weather", R"({"city":"}{\""})"}, {"get_time", "{}"}}));
  EXPECT_EQ(calls(R"(get{"q": 1}get_time{})"), (Calls{{"get", R"({"q":1})"}, {"get_time", "{}"}}));
  // Not calls: all content.
  for (std::string_view text :
       {R"(get_forecast{"city": "Paris"})", R"(get_weather{"city": "Par)", R"([link](x))",
        R"(get_weather is a tool.)", R"([TOOL_CALLS]get_weather[ARGS]["a"])", "Hello", ""}) {
    const ToolCallOutput out = ParseToolCalls(text, automatic, ToolCallFormat::kMistral);
    EXPECT_TRUE(out.calls.empty()) << text;
    EXPECT_EQ(out.content, std::string(text));
  }
  // Streaming: held while the output may still be calls.
  const auto streamable = [&](std::string_view text) {
    return StreamableToolText(text, 0, automatic, ToolCallFormat::kMistral);
  };
  EXPECT_EQ(streamable("[TOOL_C"), 0u);
  EXPECT_EQ(streamable(" ge"), 0u);
  EXPECT_EQ(streamable("get_weather{\"ci"), 0u);
  EXPECT_EQ(streamable("Getting"), 7u);
  EXPECT_EQ(streamable("The weather"), 11u);
}

// tools reach the chat prompt in the client's key order; tool_choice picks the mode and a
// named or required one compiles the constraint; messages carry their calls and results.
TEST(OpenAIApiTest, ToolsAndToolChoiceAreParsed) {
  const std::string raw = R"({"messages": [{"role": "user", "content": "Hi"},
      {"role": "assistant", "content": null, "tool_calls": [{"id": "c1", "type": "function",
       "function": {"name": "f", "arguments": "{\"z\": 1}"}}]},
      {"role": "tool", "tool_call_id": "c1", "name": "f", "content": "2"}],
      "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object",
       "properties": {"z": {"type": "integer"}, "a": {"type": "string"}}}}}],
      "tool_choice": {"type": "function", "function": {"name": "f"}}})";
  auto r = ParseOpenAIRequest(json::parse(raw), OpenAIEndpoint::kChatCompletions, raw);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tool_choice, OpenAIRequest::ToolChoice::kNamed);
  EXPECT_EQ(r->tool_function, "f");
  ASSERT_NE(r->json_schema, nullptr);
  EXPECT_EQ(r->json_schema->max_whitespace(), 1);
  const v1::Chat& chat = r->prompts[0].prompt().chat();
  EXPECT_LT(chat.tools().find("\"z\""), chat.tools().find("\"a\"")) << chat.tools();
  ASSERT_EQ(chat.messages_size(), 3);
  EXPECT_EQ(chat.messages(1).content(), "");
  EXPECT_NE(chat.messages(1).tool_calls().find("\"c1\""), std::string::npos);
  EXPECT_EQ(chat.messages(2).role(), "tool");
  EXPECT_EQ(chat.messages(2).tool_call_id(), "c1");
  EXPECT_EQ(chat.messages(2).name(), "f");

  const auto mode = [](const std::string& extra) {
    const std::string body = R"({"messages": [{"role": "user", "content": "Hi"}])" + extra + "}";
    return ParseOpenAIRequest(json::parse(body), OpenAIEndpoint::kChatCompletions, body);
  };
  const std::string tools = R"(, "tools": [{"type": "function", "function": {"name": "f"}}])";
  EXPECT_EQ(mode(tools)->tool_choice, OpenAIRequest::ToolChoice::kAuto);
  EXPECT_EQ(mode(tools)->json_schema, nullptr);
  EXPECT_EQ(mode(tools + R"(, "tool_choice": "none")")->tool_choice,
            OpenAIRequest::ToolChoice::kNone);
  EXPECT_EQ(mode(tools + R"(, "tool_choice": "required")")->tool_choice,
            OpenAIRequest::ToolChoice::kRequired);
  EXPECT_EQ(mode("")->tool_choice, OpenAIRequest::ToolChoice::kNone);
  EXPECT_FALSE(mode(R"(, "tool_choice": "required")").ok());  // no tools
  auto twice = mode(R"(, "tools": [{"type": "function", "function": {"name": "f"}},
      {"type": "function", "function": {"name": "f"}}])");
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("'f' is given twice"), std::string::npos)
      << twice.status();
  // A parameters schema the constraint cannot enforce leaves the arguments a free object.
  auto loose = mode(R"(, "tools": [{"type": "function", "function": {"name": "f", "parameters":
      {"type": "object", "properties": {"n": {"type": "integer", "minimum": 1}}}}}],
      "tool_choice": "required")");
  ASSERT_TRUE(loose.ok()) << loose.status();
  EXPECT_NE(loose->json_schema, nullptr);
  // Completions take no tools.
  auto completions = ParseOpenAIRequest(
      json::parse(R"({"prompt": "p", "tools": [{"type": "function", "function": {"name": "f"}}]})"),
      OpenAIEndpoint::kCompletions, std::string_view());
  EXPECT_FALSE(completions.ok());
}

// The output split at <think> / </think>: fed whole, byte by byte, or in any two pieces, the
// same reasoning and content come out, and nothing is held back at the end.
TEST(OpenAIApiTest, ReasoningIsSplitAtTheThinkTagsHoweverTheOutputArrives) {
  struct Case {
    std::string output;
    bool starts_in_reasoning;
    std::string reasoning, content;
  };
  const Case cases[] = {
      {"<think>\nLet me see.\n</think>\n\nThe sky scatters blue.", false, "\nLet me see.\n",
       "The sky scatters blue."},
      {"  <think>a</think>b", false, "a", "b"},
      {"No thinking here.", false, "", "No thinking here."},
      {"\n\nNo thinking.", false, "", "\n\nNo thinking."},
      {"<thinking>is not the tag", false, "", "<thinking>is not the tag"},
      {"<thi", false, "", "<thi"},  // cut short in the tag: content
      {"<think>cut short by max_tokens </thi", false, "cut short by max_tokens </thi", ""},
      {"<think>a </ b</think>", false, "a </ b", ""},  // nothing after
      {"<think></think>\n\n", false, "", ""},
      {"R1 thinks first.\n</think>\n\nThen answers.", true, "R1 thinks first.\n", "Then answers."},
      {"<think>\nR1, tagged anyway</think>x", true, "\nR1, tagged anyway", "x"},
      {"never closed", true, "never closed", ""},
      {"a</think>b</think>c", true, "a", "b</think>c"},  // only the first closes
      {"", false, "", ""},
      {"  ", true, "  ", ""},
  };
  for (const Case& c : cases) {
    const auto split = [&](const std::vector<std::string_view>& pieces) {
      ReasoningSplitter splitter(c.starts_in_reasoning);
      std::string reasoning, content;
      for (std::string_view piece : pieces) splitter.Feed(piece, &reasoning, &content);
      splitter.Finish(&reasoning, &content);
      return std::make_pair(reasoning, content);
    };
    const auto want = std::make_pair(c.reasoning, c.content);
    EXPECT_EQ(split({c.output}), want) << c.output;
    std::vector<std::string_view> bytes;
    for (size_t i = 0; i < c.output.size(); ++i)
      bytes.push_back(std::string_view(c.output).substr(i, 1));
    EXPECT_EQ(split(bytes), want) << c.output;
    for (size_t cut = 0; cut <= c.output.size(); ++cut) {
      const std::string_view o = c.output;
      EXPECT_EQ(split({o.substr(0, cut), o.substr(cut)}), want) << c.output << " cut at " << cut;
    }
  }
  // What goes out before the end: content as it comes, a possible tag's start held back.
  ReasoningSplitter splitter(false);
  std::string reasoning, content;
  splitter.Feed("<think>abc</th", &reasoning, &content);
  EXPECT_EQ(reasoning, "abc");
  EXPECT_EQ(content, "");
  splitter.Feed("ink>\n\nAnswer", &reasoning, &content);
  EXPECT_EQ(reasoning, "abc");
  EXPECT_EQ(content, "Answer");
}

// Random outputs made of tag fragments: the split never depends on how the output is cut into
// pieces, loses or adds no byte but the tags and the newlines after </think>, and the tool-call
// readers take any of them (ASan and UBSan watch) with streaming never passing a call's start.
TEST(OpenAIApiTest, RandomOutputsSplitTheSameHoweverTheyArrive) {
  const std::string_view fragments[] = {
      "<think>", "</think>",     "<th",    "ink>",     "</", "\n", " ",
      "a",       "[TOOL_CALLS]", "[ARGS]", "[",        "]",  "{",  "}",
      "\"",      "\\",           "get",    "get_time", ":",  "1"};
  std::mt19937 rng(7);
  OpenAIRequest automatic = ToolRequest(OpenAIRequest::ToolChoice::kAuto);
  automatic.tool_names = {"get", "get_time"};
  for (int round = 0; round < 3000; ++round) {
    std::string output;
    const int n = static_cast<int>(rng() % 12);
    for (int i = 0; i < n; ++i) output += fragments[rng() % std::size(fragments)];
    const bool starts_in_reasoning = rng() % 2 == 0;
    std::string whole_r, whole_c;
    {
      ReasoningSplitter splitter(starts_in_reasoning);
      splitter.Feed(output, &whole_r, &whole_c);
      splitter.Finish(&whole_r, &whole_c);
    }
    EXPECT_LE(whole_r.size() + whole_c.size(), output.size()) << output;
    ReasoningSplitter splitter(starts_in_reasoning);
    std::string r, c;
    for (size_t at = 0; at < output.size();) {
      const size_t piece = 1 + rng() % 4;
      splitter.Feed(std::string_view(output).substr(at, piece), &r, &c);
      at += piece;
    }
    splitter.Finish(&r, &c);
    EXPECT_EQ(r, whole_r) << output;
    EXPECT_EQ(c, whole_c) << output;
    for (chat::ToolCallFormat format :
         {chat::ToolCallFormat::kHermes, chat::ToolCallFormat::kLlama3Json,
          chat::ToolCallFormat::kMistral}) {
      const ToolCallOutput out = ParseToolCalls(output, automatic, format);
      if (out.calls.empty()) {
        EXPECT_EQ(out.content, output);
      }
      for (size_t cut = 0; cut <= output.size(); ++cut) {
        const size_t streamable =
            StreamableToolText(std::string_view(output).substr(0, cut), 0, automatic, format);
        EXPECT_LE(streamable, cut);
        // Mistral's calls are the whole output: none of it went out as content.
        if (format == chat::ToolCallFormat::kMistral && !out.calls.empty()) {
          EXPECT_EQ(streamable, 0u) << output;
        }
      }
    }
  }
}

TEST(OpenAIApiTest, APromptEndsInReasoningWhenItsLastThinkIsOpen) {
  EXPECT_TRUE(PromptEndsInReasoning("<｜Assistant｜><think>\n"));
  EXPECT_TRUE(PromptEndsInReasoning("</think>x<think>"));
  EXPECT_FALSE(PromptEndsInReasoning("<|im_start|>assistant\n<think>\n\n</think>\n\n"));
  EXPECT_FALSE(PromptEndsInReasoning("<|im_start|>assistant\n"));
  EXPECT_FALSE(PromptEndsInReasoning(""));
}

}  // namespace
}  // namespace spanserve::server
