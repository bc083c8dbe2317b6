#include "runtime/engine/json_schema.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/json_grammar.h"

namespace spanserve::engine {
namespace {

using ojson = nlohmann::ordered_json;

std::shared_ptr<const JsonSchema> MustCompile(const std::string& text) {
  auto schema = JsonSchema::Compile(text);
  EXPECT_TRUE(schema.ok()) << schema.status();
  return schema.ok() ? *schema : nullptr;
}

// Whether the state accepts all of `text` and is then complete.
bool Complete(const JsonSchema* schema, std::string_view text) {
  JsonState s(schema);
  for (const char c : text) {
    if (!s.Feed(std::string_view(&c, 1))) return false;
  }
  return s.complete();
}

// Code points of a UTF-8 string.
size_t CodePoints(const std::string& s) {
  return static_cast<size_t>(std::count_if(
      s.begin(), s.end(), [](char c) { return (static_cast<uint8_t>(c) & 0xC0) != 0x80; }));
}

// A reference for the subset compiled, on the parsed document (written from the JSON Schema
// rules, not from the matcher): `closed` objects take only their properties, in order.
bool Valid(const ojson& v, const ojson& s, const ojson& root, int depth = 0) {
  if (depth > 40) return false;
  if (s.is_boolean()) return s.get<bool>();
  if (s.contains("$ref")) {
    const std::string ref = s["$ref"];
    if (ref == "#") return Valid(v, root, root, depth + 1);
    const size_t slash = ref.rfind('/');
    const std::string defs = ref.substr(2, slash - 2);
    return Valid(v, root[defs][ref.substr(slash + 1)], root, depth + 1);
  }
  if (s.contains("nullable") && s["nullable"].get<bool>() && v.is_null()) return true;
  for (const char* k : {"anyOf", "oneOf"}) {
    if (s.contains(k)) {
      for (const ojson& a : s[k]) {
        if (Valid(v, a, root, depth + 1)) return true;
      }
      return false;
    }
  }
  if (s.contains("allOf")) return Valid(v, s["allOf"][0], root, depth + 1);
  if (s.contains("enum") || s.contains("const")) {
    bool in = !s.contains("enum");
    if (s.contains("enum")) {
      for (const ojson& e : s["enum"]) in = in || e == v;
    }
    if (s.contains("const")) in = in && s["const"] == v;
    if (!in) return false;
  }
  if (s.contains("type")) {
    std::vector<std::string> types;
    if (s["type"].is_string()) {
      types.push_back(s["type"]);
    } else {
      for (const ojson& t : s["type"]) types.push_back(t);
    }
    bool any = false;
    for (const std::string& t : types) {
      any = any || (t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
            (t == "string" && v.is_string()) || (t == "number" && v.is_number()) ||
            (t == "integer" && v.is_number() && v.get<double>() == std::floor(v.get<double>())) ||
            (t == "boolean" && v.is_boolean()) || (t == "null" && v.is_null());
    }
    if (!any) return false;
  }
  if (v.is_object() && s.contains("properties")) {
    const ojson& props = s["properties"];
    // Keys in the schema's order, each declared.
    auto p = props.begin();
    for (auto it = v.begin(); it != v.end(); ++it) {
      while (p != props.end() && p.key() != it.key()) ++p;
      if (p == props.end()) return false;
      if (!Valid(it.value(), p.value(), root, depth + 1)) return false;
      ++p;
    }
    if (s.contains("required")) {
      for (const ojson& r : s["required"]) {
        if (!v.contains(r.get<std::string>())) return false;
      }
    }
  } else if (v.is_object() && s.contains("additionalProperties")) {
    for (auto it = v.begin(); it != v.end(); ++it) {
      if (!Valid(it.value(), s["additionalProperties"], root, depth + 1)) return false;
    }
  }
  if (v.is_array()) {
    if (s.contains("minItems") && v.size() < s["minItems"].get<size_t>()) return false;
    if (s.contains("maxItems") && v.size() > s["maxItems"].get<size_t>()) return false;
    if (s.contains("items")) {
      for (const ojson& e : v) {
        if (!Valid(e, s["items"], root, depth + 1)) return false;
      }
    }
  }
  if (v.is_string()) {
    const size_t n = CodePoints(v.get<std::string>());
    if (s.contains("minLength") && n < s["minLength"].get<size_t>()) return false;
    if (s.contains("maxLength") && n > s["maxLength"].get<size_t>()) return false;
  }
  return true;
}

const char* const kPerson = R"({
  "type": "object",
  "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 6},
    "age": {"type": "integer"},
    "height": {"type": "number"},
    "role": {"enum": ["admin", "user", 7, null]},
    "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1, "maxItems": 2},
    "pet": {"anyOf": [{"$ref": "#/$defs/cat"}, {"$ref": "#/$defs/dog"}, {"type": "null"}]},
    "ok": {"type": "boolean"}
  },
  "required": ["name", "age", "tags"],
  "$defs": {
    "cat": {"type": "object", "properties": {"kind": {"const": "cat"}, "lives": {"type": "integer"}},
            "required": ["kind", "lives"], "additionalProperties": false},
    "dog": {"type": "object", "properties": {"kind": {"const": "dog"}, "good": {"type": "boolean"}},
            "required": ["kind"]}
  }
})";

TEST(JsonSchemaTest, AcceptsWhatTheSchemaAcceptsInItsOrder) {
  const auto schema = MustCompile(kPerson);
  ASSERT_NE(schema, nullptr);
  for (const std::string doc : {
           R"({"name":"Ada","age":36,"tags":["x"]})",
           R"({ "name": "h\u00e9", "age": -3, "height": 1.5e3, "role": "user", "tags": ["a", "b"],
 "pet": {"kind": "cat", "lives": 9}, "ok": true})",
           R"({"name":"Z","age":0,"role":7,"tags":[""],"pet":{"kind":"dog"}})",
           R"({"name":"Z","age":0,"role":null,"tags":[""],"pet":null})",
           "{\"name\":\"\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\xC3\xA9\",\"age\":1,\"tags\":["
           "\"q\"]}",
       }) {
    SCOPED_TRACE(doc);
    EXPECT_TRUE(Complete(schema.get(), doc));
    EXPECT_TRUE(Valid(ojson::parse(doc), ojson::parse(kPerson), ojson::parse(kPerson)));
  }
  for (const std::string doc : {
           R"({"age":36,"name":"Ada","tags":["x"]})",             // out of order
           R"({"name":"Ada","tags":["x"]})",                      // a required key skipped
           R"({"name":"Ada","age":36})",                          // the last required missing
           R"({"name":"","age":1,"tags":["x"]})",                 // minLength
           R"({"name":"Abcdefg","age":1,"tags":["x"]})",          // maxLength
           R"({"name":"A","age":1.5,"tags":["x"]})",              // integer
           R"({"name":"A","age":1,"tags":[]})",                   // minItems
           R"({"name":"A","age":1,"tags":["a","b","c"]})",        // maxItems
           R"({"name":"A","age":1,"role":"root","tags":["x"]})",  // enum
           R"({"name":"A","age":1,"role":77,"tags":["x"]})",      // enum (a longer number)
           R"({"name":"A","age":1,"tags":["x"],"pet":{"kind":"cat"}})",   // cat needs lives
           R"({"name":"A","age":1,"tags":["x"],"pet":{"kind":"bird"}})",  // neither
           R"({"name":"A","age":1,"tags":["x"],"extra":1})",              // undeclared key
           R"(["name"])",                                                 // not an object
       }) {
    SCOPED_TRACE(doc);
    EXPECT_FALSE(Complete(schema.get(), doc));
    EXPECT_FALSE(Valid(ojson::parse(doc), ojson::parse(kPerson), ojson::parse(kPerson)));
  }
  // An integer is written without a fraction or an exponent (1e3 is one to JSON Schema).
  EXPECT_FALSE(Complete(schema.get(), R"({"name":"A","age":1e3,"tags":["x"]})"));
  EXPECT_FALSE(Complete(schema.get(), R"({"name":"A","age":1.0,"tags":["x"]})"));
  // A key twice (which a parser would fold into one).
  EXPECT_FALSE(Complete(schema.get(), R"({"name":"A","name":"B","age":1,"tags":["x"]})"));
}

TEST(JsonSchemaTest, TopLevelsRecursionAndFreeObjects) {
  // A recursive tree through "#".
  const auto tree = MustCompile(
      R"({"type": "object", "properties": {"v": {"type": "integer"},
          "kids": {"type": "array", "items": {"$ref": "#"}}}, "required": ["v"]})");
  EXPECT_TRUE(Complete(tree.get(), R"({"v":1,"kids":[{"v":2},{"v":3,"kids":[{"v":4}]}]})"));
  EXPECT_FALSE(Complete(tree.get(), R"({"v":1,"kids":[{"kids":[]}]})"));
  // Any top level: an object, as JSON mode.
  const auto any = MustCompile("{}");
  EXPECT_TRUE(Complete(any.get(), R"({"a": [1, {"b": null}]})"));
  EXPECT_FALSE(Complete(any.get(), R"("a")"));
  // Strings, arrays and enums as the top level.
  EXPECT_TRUE(Complete(MustCompile(R"({"type": "string"})").get(), R"("hi")"));
  EXPECT_TRUE(
      Complete(MustCompile(R"({"type": "array", "items": {"type": "number"}})").get(), "[1, 2.5]"));
  EXPECT_TRUE(Complete(MustCompile(R"({"enum": ["a", "ab"]})").get(), R"("ab")"));
  EXPECT_TRUE(Complete(MustCompile(R"({"type": ["boolean", "null"]})").get(), "null"));
  // A free object's values follow additionalProperties.
  const auto map =
      MustCompile(R"({"type": "object", "additionalProperties": {"type": "integer"}})");
  EXPECT_TRUE(Complete(map.get(), R"({"x": 1, "y z": 2})"));
  EXPECT_FALSE(Complete(map.get(), R"({"x": "1"})"));
  EXPECT_TRUE(
      Complete(MustCompile(R"({"type": "object", "additionalProperties": false})").get(), "{}"));
  EXPECT_FALSE(Complete(MustCompile(R"({"type": "object", "additionalProperties": false})").get(),
                        R"({"a":1})"));
  // A recursive object that may stop: near the depth bound its recursive key is not offered,
  // so the output can always be finished.
  const auto chain = MustCompile(
      R"({"type": "object", "properties": {"a": {"$ref": "#"}, "b": {"type": "integer"}}})");
  {
    JsonState st(chain.get());
    std::string deep;
    for (int i = 0; i < JsonMatcher::kMaxDepth - 1; ++i) deep += "{\"a\":";
    ASSERT_TRUE(st.Feed(deep));
    JsonState more = st;
    EXPECT_TRUE(more.Feed("{\"b\":1"));  // the last level: scalars only
    EXPECT_FALSE(more.Feed(",\"a\""));
    more = st;
    EXPECT_FALSE(more.Feed("{\"a\""));
    EXPECT_TRUE(more.Feed("{}"));
    EXPECT_TRUE(more.Feed(std::string(JsonMatcher::kMaxDepth - 1, '}')));
    EXPECT_TRUE(more.complete());
  }
  // Unions inside unions: each byte's work stays bounded (a token of nested openings that
  // fails at its end must not try every combination of alternatives).
  {
    std::string alternatives;
    for (int k = 1; k <= 8; ++k) {
      alternatives += R"({"type": "array", "items": {"$ref": "#/$defs/u"}, "maxItems": )" +
                      std::to_string(k) + "},";
    }
    const auto nested =
        MustCompile(R"({"type": "object", "properties": {"a": {"$ref": "#/$defs/u"}},
        "$defs": {"u": {"anyOf": [)" +
                    alternatives + R"({"type": "null"}]}}})");
    JsonState st(nested.get());
    ASSERT_TRUE(st.Feed("{\"a\":"));
    JsonState t = st;
    EXPECT_FALSE(t.Feed(std::string(20, '[') + "x"));
    t = st;
    EXPECT_TRUE(t.Feed(std::string(20, '[') + "null" + std::string(20, ']') + "}"));
    EXPECT_TRUE(t.complete());
  }
  // nullable, allOf of one, a key that JSON escapes.
  const auto odd = MustCompile(
      R"({"type": "object", "properties": {"a\"b": {"allOf": [{"type": "string", "nullable": true}]}},
          "required": ["a\"b"]})");
  EXPECT_TRUE(Complete(odd.get(), R"({"a\"b": null})"));
  EXPECT_TRUE(Complete(odd.get(), R"({"a\"b": "x"})"));
  EXPECT_FALSE(Complete(odd.get(), R"({"a\"b": 1})"));
}

TEST(JsonSchemaTest, RefusesWhatItDoesNotCompileNamingIt) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {R"({"type": "object", "properties": {"age": {"type": "integer", "minimum": 0}}})",
       "\"/properties/age\": \"minimum\" is not supported"},
      {R"({"type": "string", "pattern": "^a"})", "\"pattern\" is not supported"},
      {R"({"type": "string", "format": "date-time"})", "\"format\" is not supported"},
      {R"({"type": "array", "items": [{"type": "string"}]})", "tuple"},
      {R"({"$ref": "#/$defs/missing"})", "does not name"},
      {R"({"$ref": "#"})", "reaches itself"},
      {R"({"anyOf": [{"$ref": "#/$defs/a"}], "$defs": {"a": {"$ref": "#"}}})", "reaches itself"},
      {R"({"type": "integer"})", "bare number"},
      {R"({"type": "object", "properties": {"a": {"$ref": "#"}}, "required": ["a"]})",
       "accepts no value"},
      {R"({"type": "array", "items": {"$ref": "#"}, "minItems": 1})", "accepts no value"},
      {R"({"enum": [1, 2]})", "bare number"},
      {R"({"type": "object", "properties": {"a": {}}, "required": ["b"]})", "\"b\""},
      {R"({"type": "object", "properties": {"a": false}})", "false accepts nothing"},
      {R"({"type": "strin"})", "unknown type"},
      {R"({"type": "array", "minItems": 3, "maxItems": 2})", "minItems"},
      {R"({"type": "string", "maxLength": -1})", "maxLength"},
      {R"({"type": "string", "enum": [1]})", "fits"},
      {R"({"anyOf": [], "title": "x"})", "anyOf"},
      {R"({"allOf": [{}, {}]})", "allOf"},
      {R"({"type": "string", "anyOf": [{}]})", "beside"},
      {"{\"type\": ", "not valid JSON"},
      {"[1]", "must be an object"},
      {std::string(300, '[') + std::string(300, ']'), "nested more than"},
  };
  for (const auto& [text, want] : cases) {
    SCOPED_TRACE(text.substr(0, 120));
    auto schema = JsonSchema::Compile(text);
    ASSERT_FALSE(schema.ok());
    EXPECT_EQ(schema.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(schema.status().message().find(want), std::string::npos) << schema.status();
  }
  // Nested schemas past kMaxDepth.
  std::string deep = R"({"type": "string"})";
  for (int i = 0; i < 70; ++i) deep = R"({"type": "array", "items": )" + deep + "}";
  EXPECT_FALSE(JsonSchema::Compile(deep).ok());
}

// From every prefix a walk of allowed bytes reaches a complete text (no dead ends), and each
// text it completes is valid by the reference; with the bytes of a tokenizer-like vocabulary,
// AllowedJsonTokens gives exactly the tokens a copy of the state accepts.
TEST(JsonSchemaTest, WalksNeverStickAndEndValid) {
  const ojson person = ojson::parse(kPerson);
  const auto schema = MustCompile(kPerson);
  std::vector<std::string> vocab;
  for (int b = 1; b < 128; ++b) vocab.emplace_back(1, static_cast<char>(b));
  for (const char* t : {"true",
                        "false",
                        "null",
                        "\"name\"",
                        "\"age\": ",
                        "\", \"",
                        "\":",
                        "\"}",
                        "}}",
                        "],",
                        "\"kind",
                        "\"cat\"",
                        "ull",
                        "true",
                        "[\"",
                        "\xC3\xA9",
                        "\xC3",
                        "\xA9",
                        "12",
                        "\": {",
                        "adm",
                        "dog\"}",
                        "\"pet\": {\"kind\": \"",
                        "\"ok\": fa",
                        "\"tags\": [\""}) {
    vocab.emplace_back(t);
  }
  const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                              [&](int32_t id) { return vocab[id]; });
  std::mt19937 rng(7);
  int completed = 0;
  for (int walk = 0; walk < 60; ++walk) {
    JsonState s(schema.get());
    std::string text;
    for (int step = 0; step < 400 && !s.complete(); ++step) {
      std::vector<int32_t> allowed;
      AllowedJsonTokens(s, table, &allowed);
      std::sort(allowed.begin(), allowed.end());
      allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
      if (walk < 6) {
        std::vector<int32_t> want;
        for (int32_t id = 0; id < table.vocab_size(); ++id) {
          JsonState t = s;
          if (t.Feed(vocab[id])) want.push_back(id);
        }
        ASSERT_EQ(allowed, want) << "after " << text;
      }
      ASSERT_FALSE(allowed.empty()) << "stuck after " << text;
      // Lean towards closing so that walks end: quotes and brackets when allowed.
      std::vector<int32_t> closers;
      for (const int32_t id : allowed) {
        const char c = vocab[id].back();
        if (c == '"' || c == '}' || c == ']') closers.push_back(id);
      }
      const std::vector<int32_t>& pick = !closers.empty() && rng() % 3 != 0 ? closers : allowed;
      const int32_t id = pick[rng() % pick.size()];
      ASSERT_TRUE(s.Feed(vocab[id]));
      text += vocab[id];
    }
    if (!s.complete()) continue;
    ++completed;
    ojson doc;
    try {
      doc = ojson::parse(text);
    } catch (const ojson::exception& e) {
      // Valid JSON that this parser refuses: an exponent past a double's range.
      ASSERT_NE(std::string(e.what()).find("number overflow"), std::string::npos) << text;
      continue;
    }
    EXPECT_TRUE(Valid(doc, person, person)) << text;
  }
  EXPECT_GT(completed, 30);
}

}  // namespace
}  // namespace spanserve::engine
