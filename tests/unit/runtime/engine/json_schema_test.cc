#include "runtime/engine/json_schema.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <regex>
#include <string>
#include <tuple>
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
      {R"({"type": "object", "properties": {"age": {"type": "integer", "multipleOf": 2}}})",
       "\"/properties/age\": \"multipleOf\" is not supported"},
      {R"({"type": "string", "pattern": "(?=a)b"})", "\"pattern\" at offset 0"},
      {R"({"type": "string", "pattern": "a\\1"})", "\"pattern\" at offset 1"},
      {R"({"type": "string", "pattern": "[^\\s\\S]"})",
       "\"pattern\" at offset 4: `\\S` in a negated class"},
      {R"({"type": "string", "format": "color"})", "\"format\" \"color\" is not supported"},
      {R"({"type": "string", "format": "date", "pattern": "1"})", "beside"},
      {R"({"type": "string", "format": "date", "maxLength": 5})", "\"maxLength\""},
      {R"({"type": "string", "pattern": "^abc$", "minLength": 4})", "\"minLength\""},
      {R"({"type": "object", "properties": {"x": {"type": "number", "minimum": 0.5}}})",
       "\"/properties/x\": \"minimum\" 0.5: a number's bounds must be integers"},
      {R"({"type": "object", "properties": {"x": {"type": "integer", "minimum": 5,
          "exclusiveMaximum": 5}}})",
       "\"/properties/x\": no integer is within the bounds"},
      {R"({"type": "object", "properties": {"x": {"type": "number", "exclusiveMinimum": 1,
          "maximum": 1}}})",
       "no number is within the bounds"},
      {R"({"type": "object", "properties": {"x": {"type": "number", "minimum": 1e14}}})", "beyond"},
      {R"({"type": "object", "properties": {"x": {"type": "integer", "maximum": "3"}}})",
       "\"maximum\" must be a number"},
      {R"({"type": "object", "properties": {"x": {"type": "integer", "format": "date"}}})",
       "not supported for numbers"},
      {R"({"type": "object", "properties": {"x": {"exclusiveMinimum": true}}})",
       "needs \"minimum\""},
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

// Random walks through the tokens of `vocab` from the schema's start, each of at most `steps`
// tokens: at every step AllowedJsonTokens allows some token (no dead ends) and, in the first
// `checked` walks, exactly the tokens a copy of the state accepts. A token that ends in one of
// `closers` is preferred with odds `lean` in 4, so that walks end. Returns the texts completed.
std::vector<std::string> RandomWalks(const JsonSchema* schema,
                                     const std::vector<std::string>& vocab, uint32_t seed,
                                     int walks, int steps, int checked, std::string_view closers,
                                     int lean) {
  const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                              [&](int32_t id) { return vocab[id]; });
  std::mt19937 rng(seed);
  std::vector<std::string> texts;
  for (int walk = 0; walk < walks; ++walk) {
    JsonState s(schema);
    std::string text;
    for (int step = 0; step < steps && !s.complete(); ++step) {
      std::vector<int32_t> allowed;
      AllowedJsonTokens(s, table, &allowed);
      std::sort(allowed.begin(), allowed.end());
      allowed.erase(std::unique(allowed.begin(), allowed.end()), allowed.end());
      if (walk < checked) {
        std::vector<int32_t> want;
        for (int32_t id = 0; id < table.vocab_size(); ++id) {
          JsonState t = s;
          if (t.Feed(vocab[id])) want.push_back(id);
        }
        EXPECT_EQ(allowed, want) << "after " << text;
      }
      if (allowed.empty()) {
        ADD_FAILURE() << "stuck after " << ojson(text).dump();
        return texts;
      }
      std::vector<int32_t> closing;
      for (const int32_t id : allowed) {
        if (closers.find(vocab[id].back()) != std::string_view::npos) closing.push_back(id);
      }
      const std::vector<int32_t>& pick =
          !closing.empty() && static_cast<int>(rng() % 4) < lean ? closing : allowed;
      const int32_t id = pick[rng() % pick.size()];
      if (!s.Feed(vocab[id])) {
        ADD_FAILURE() << "an allowed token refused after " << ojson(text).dump();
        return texts;
      }
      text += vocab[id];
    }
    if (s.complete()) texts.push_back(std::move(text));
  }
  return texts;
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
  const std::vector<std::string> texts =
      RandomWalks(schema.get(), vocab, /*seed=*/7, /*walks=*/60, /*steps=*/400, /*checked=*/6,
                  "\"}]", /*lean=*/3);
  for (const std::string& text : texts) {
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
  EXPECT_GT(texts.size(), 30u);
}

const char* const kConstrained = R"({
  "type": "object",
  "properties": {
    "code": {"type": "string", "pattern": "^[A-Z]{2}-\\d{2,3}$"},
    "word": {"type": "string", "pattern": "ab", "maxLength": 5},
    "esc": {"type": "string", "pattern": "^[a\\n\"é]+$"},
    "day": {"type": "string", "format": "date"},
    "ip": {"type": "string", "format": "ipv4"},
    "n": {"type": "integer", "minimum": -5, "exclusiveMaximum": 120},
    "x": {"type": "number", "minimum": 0, "maximum": 1},
    "y": {"type": "number", "exclusiveMinimum": -3, "maximum": 250},
    "big": {"type": "integer", "minimum": 1000000, "maximum": 1000050},
    "old": {"type": "integer", "minimum": 2, "exclusiveMinimum": true, "maximum": 40}
  },
  "required": ["code", "word", "esc", "day", "ip", "n", "x", "y", "big", "old"]
})";

// Whether s is a real date (yyyy-mm-dd; no 29 February, as the format's pattern has none).
bool RealDate(const std::string& s) {
  if (s.size() != 10 || s[4] != '-' || s[7] != '-') return false;
  for (const int i : {0, 1, 2, 3, 5, 6, 8, 9}) {
    if (s[i] < '0' || s[i] > '9') return false;
  }
  const int m = std::stoi(s.substr(5, 2)), d = std::stoi(s.substr(8, 2));
  constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return m >= 1 && m <= 12 && d >= 1 && d <= kDays[m - 1];
}

bool Ipv4(const std::string& s) {
  int parts = 0;
  size_t i = 0;
  while (true) {
    size_t j = i;
    while (j < s.size() && s[j] >= '0' && s[j] <= '9') ++j;
    if (j == i || j - i > 3 || (j - i > 1 && s[i] == '0') || std::stoi(s.substr(i, j - i)) > 255) {
      return false;
    }
    ++parts;
    if (j == s.size()) return parts == 4;
    if (s[j] != '.') return false;
    i = j + 1;
  }
}

// kConstrained's rules, checked on the parsed document with std::regex (ECMAScript) and the
// numbers as doubles, as a JSON Schema validator checks them.
void ExpectConstrainedValid(const ojson& v, const std::string& text) {
  SCOPED_TRACE(text);
  ASSERT_TRUE(v.is_object());
  for (const char* key : {"code", "word", "esc", "day", "ip"}) ASSERT_TRUE(v[key].is_string());
  const auto search = [](const std::string& s, const char* re) {
    return std::regex_search(s, std::regex(re, std::regex::ECMAScript));
  };
  EXPECT_TRUE(search(v["code"].get<std::string>(), R"(^[A-Z]{2}-\d{2,3}$)"));
  EXPECT_TRUE(search(v["word"].get<std::string>(), "ab"));
  EXPECT_LE(CodePoints(v["word"].get<std::string>()), 5u);
  const std::string esc = v["esc"].get<std::string>();
  EXPECT_FALSE(esc.empty());
  for (size_t i = 0; i < esc.size(); ++i) {
    const bool e = esc.compare(i, 2, "\xC3\xA9") == 0;
    EXPECT_TRUE(esc[i] == 'a' || esc[i] == '\n' || esc[i] == '"' || e) << esc;
    if (e) ++i;
  }
  EXPECT_TRUE(RealDate(v["day"].get<std::string>()));
  EXPECT_TRUE(Ipv4(v["ip"].get<std::string>()));
  ASSERT_TRUE(v["n"].is_number_integer());
  EXPECT_GE(v["n"].get<int64_t>(), -5);
  EXPECT_LT(v["n"].get<int64_t>(), 120);
  const double x = v["x"].get<double>(), y = v["y"].get<double>();
  EXPECT_TRUE(x >= 0 && x <= 1);
  EXPECT_TRUE(y > -3 && y <= 250);
  ASSERT_TRUE(v["big"].is_number_integer());
  EXPECT_GE(v["big"].get<int64_t>(), 1000000);
  EXPECT_LE(v["big"].get<int64_t>(), 1000050);
  EXPECT_GT(v["old"].get<int64_t>(), 2);
  EXPECT_LE(v["old"].get<int64_t>(), 40);
}

std::string Member(const std::string& key, const std::string& value) {
  return "\"" + key + "\": " + value;
}

TEST(JsonSchemaTest, PatternsFormatsAndBoundsAcceptExactlyTheirValues) {
  const auto schema = MustCompile(kConstrained);
  const std::vector<std::pair<std::string, std::string>> good = {{"code", "\"AB-12\""},
                                                                 {"word", "\"xaby\""},
                                                                 {"esc", "\"a\\n\\\"\xC3\xA9\""},
                                                                 {"day", "\"2024-02-28\""},
                                                                 {"ip", "\"10.0.255.1\""},
                                                                 {"n", "-5"},
                                                                 {"x", "0.25"},
                                                                 {"y", "-2.999"},
                                                                 {"big", "1000050"},
                                                                 {"old", "3"}};
  const auto doc = [&](const std::string& key, const std::string& value) {
    std::string text = "{";
    for (const auto& [k, v] : good) {
      if (text.size() > 1) text += ", ";
      text += Member(k, k == key ? value : v);
    }
    return text + "}";
  };
  EXPECT_TRUE(Complete(schema.get(), doc("", "")));
  const std::vector<std::pair<std::string, std::string>> also = {{"code", "\"ZZ-999\""},
                                                                 {"word", "\"ab\""},
                                                                 {"word", "\"aab\""},
                                                                 {"esc", "\"\\u0061\""},
                                                                 {"esc", "\"\\n\""},
                                                                 {"day", "\"1999-12-31\""},
                                                                 {"ip", "\"0.0.0.0\""},
                                                                 {"n", "119"},
                                                                 {"n", "0"},
                                                                 {"x", "1"},
                                                                 {"x", "1.0"},
                                                                 {"x", "0"},
                                                                 {"x", "0.999999"},
                                                                 {"y", "250"},
                                                                 {"y", "-2"},
                                                                 {"y", "0.5"},
                                                                 {"big", "1000000"},
                                                                 {"old", "40"}};
  for (const auto& [key, value] : also) {
    EXPECT_TRUE(Complete(schema.get(), doc(key, value))) << key << " " << value;
  }
  const std::vector<std::pair<std::string, std::string>> bad = {{"code", "\"AB-1\""},
                                                                {"code", "\"ab-12\""},
                                                                {"code", "\"AB-1234\""},
                                                                {"word", "\"xayb\""},
                                                                {"word", "\"abcdef\""},
                                                                {"esc", "\"b\""},
                                                                {"esc", "\"\""},
                                                                {"esc", "\"\\u00e9\""},
                                                                {"esc", "\"\\t\""},
                                                                {"day", "\"2023-02-30\""},
                                                                {"day", "\"2023-13-01\""},
                                                                {"day", "\"2023-1-01\""},
                                                                {"ip", "\"256.1.1.1\""},
                                                                {"ip", "\"1.2.3\""},
                                                                {"ip", "\"01.2.3.4\""},
                                                                {"n", "120"},
                                                                {"n", "-6"},
                                                                {"n", "5.0"},
                                                                {"n", "1e2"},
                                                                {"x", "1.5"},
                                                                {"x", "1.0001"},
                                                                {"x", "-0.1"},
                                                                {"x", "2"},
                                                                {"x", "0.5e0"},
                                                                {"y", "-3"},
                                                                {"y", "-3.0"},
                                                                {"y", "-3.5"},
                                                                {"y", "250.01"},
                                                                {"big", "999999"},
                                                                {"big", "10000000"},
                                                                {"old", "2"},
                                                                {"x", "0.1234567890123456"}};
  for (const auto& [key, value] : bad) {
    EXPECT_FALSE(Complete(schema.get(), doc(key, value))) << key << " " << value;
  }
  // A prefix that no value within the bounds begins is refused at once.
  const std::string head = "{" + Member("code", "\"AB-12\"") + ", " + Member("word", "\"ab\"") +
                           ", " + Member("esc", "\"a\"") + ", " + Member("day", "\"2024-01-01\"") +
                           ", " + Member("ip", "\"1.1.1.1\"") + ", ";
  for (const auto& [prefix, ok] : std::vector<std::pair<std::string, bool>>{
           {Member("n", "-"), true},
           {Member("n", "-6"), false},
           {Member("n", "12"), true},
           {Member("n", "121"), false},
           {Member("n", "1000"), false},
           {Member("n", "0"), true},
           {Member("n", "00"), false},
           {Member("n", "5, ") + Member("x", "1."), true},
           {Member("n", "5, ") + Member("x", "1.0"), true},
           {Member("n", "5, ") + Member("x", "1.01"), false},
           {Member("n", "5, ") + Member("x", "-"), true},  // -0 and -0.0 are 0
           {Member("n", "5, ") + Member("x", "-1"), false},
           {Member("n", "5, ") + Member("x", "3"), false},
           {Member("n", "5, ") + Member("x", "0.") + std::string(13, '9'), true},
           {Member("n", "5, ") + Member("x", "0.") + std::string(14, '9'), true},
           {Member("n", "5, ") + Member("x", "0.") + std::string(15, '9'), false},
           {Member("n", "5, ") + Member("x", "0, ") + Member("y", "-3."), false},
           {Member("n", "5, ") + Member("x", "0, ") + Member("y", "-2."), true},
           {Member("n", "5, ") + Member("x", "0, ") + Member("y", "2500"), false},
           {Member("n", "5, ") + Member("x", "0, ") + Member("y", "25"), true}}) {
    JsonState s(schema.get());
    EXPECT_EQ(s.Feed(head + prefix), ok) << prefix;
  }
}

// Each string format takes values a strict checker of it takes, and refuses others.
TEST(JsonSchemaTest, StringFormats) {
  const std::vector<std::tuple<std::string, std::vector<std::string>, std::vector<std::string>>>
      cases = {
          {"date",
           {"2024-02-28", "1999-12-31", "0001-01-01"},
           {"2024-02-30", "2024-13-01", "2024-1-01", "24-01-01", "2024-01-01T00:00:00Z"}},
          {"time",
           {"23:59:59Z", "00:00:00.123456+05:30", "12:00:00-23:59"},
           {"24:00:00Z", "12:00:00", "12:60:00Z", "12:00:00.1234567Z", "1:00:00Z"}},
          {"date-time",
           {"2024-02-28T12:00:00Z", "2000-01-31T23:59:59.5-01:00"},
           {"2024-02-28 12:00:00Z", "2024-02-28T12:00Z", "2024-04-31T12:00:00Z"}},
          {"duration", {"P1D", "PT1H30M", "P1Y2M3DT4H5M6S", "P2W"}, {"P", "PT", "P1H", "1D"}},
          {"email",
           {"a@example.com", "first.last+tag@mail.example.org"},
           {"a@b", "@example.com", "a..b@example.com", "a@example.test", "a@-x.com"}},
          {"hostname", {"example", "a-b.example.com"}, {"-a.com", "a..b", "a_b.com", ""}},
          {"ipv4",
           {"0.0.0.0", "255.255.255.255", "10.1.20.200"},
           {"256.0.0.0", "1.2.3", "01.2.3.4", "1.2.3.4.5"}},
          {"ipv6", {"2001:db8:0:0:0:0:2:1", "FFFF:0:0:0:0:0:0:1"}, {"2001:db8::1", "1:2:3"}},
          {"uuid",
           {"123e4567-e89b-12d3-a456-426614174000"},
           {"123e4567e89b12d3a456426614174000", "123e4567-e89b-12d3-a456-42661417400g"}},
          {"uri",
           {"https://example.com", "http://a.b:8080/p/q?x=1&y=2#top"},
           {"example.com", "https://", "https://a b", "http://a/%zz"}},
      };
  for (const auto& [format, good, bad] : cases) {
    SCOPED_TRACE(format);
    const auto schema = MustCompile(R"({"type": "object", "properties": {"f": {"type":
        "string", "format": ")" + format +
                                    R"("}}})");
    for (const std::string& v : good) {
      EXPECT_TRUE(Complete(schema.get(), "{\"f\": \"" + v + "\"}")) << v;
    }
    for (const std::string& v : bad) {
      EXPECT_FALSE(Complete(schema.get(), "{\"f\": \"" + v + "\"}")) << v;
    }
  }
}

// A maxLength too long to fold into a pattern's automaton is kept by each state's shortest way
// to a match: a URL's path runs to the bound exactly, and a format's own bound holds.
TEST(JsonSchemaTest, LongMaxLengthsBesideAPattern) {
  const auto schema = MustCompile(
      R"({"type": "object", "properties": {"u": {"type": "string", "format": "uri",
          "minLength": 0, "maxLength": 2000}, "h": {"type": "string", "format": "hostname"}}})");
  const std::string head = "{\"u\": \"http://a/";
  JsonState s(schema.get());
  ASSERT_TRUE(s.Feed(head + std::string(1991 - 1, 'b')));
  {
    JsonState t = s;
    EXPECT_TRUE(t.Feed("b\""));  // 2,000 characters
  }
  JsonState t = s;
  ASSERT_TRUE(t.Feed("b"));
  EXPECT_FALSE(JsonState(t).Feed("b"));
  EXPECT_FALSE(JsonState(t).Feed("\\u0062"));
  EXPECT_FALSE(JsonState(s).Feed("\xC3\xA9"));  // not in a URL at all
  // "http://a" is the shortest match: 8 characters.
  EXPECT_TRUE(Complete(schema.get(), "{\"u\": \"http://a\"}"));
  EXPECT_FALSE(Complete(schema.get(), "{\"u\": \"http://\"}"));
  // Hostnames: at most 253 characters (labels of at most 63).
  std::string host;
  while (host.size() < 240) host += std::string(59, 'x') + ".";
  host += std::string(12, 'y');  // 252
  EXPECT_TRUE(Complete(schema.get(), "{\"h\": \"" + host + "z\"}"));
  EXPECT_FALSE(Complete(schema.get(), "{\"h\": \"" + host + "zz\"}"));
  EXPECT_FALSE(Complete(schema.get(), "{\"h\": \"" + std::string(64, 'x') + "\"}"));
}

// Random walks over a vocabulary of single bytes and longer pieces: every state has an
// allowed token (no dead ends), AllowedJsonTokens gives exactly what a copy accepts, and every
// text a walk completes is valid by the rules checked independently.
TEST(JsonSchemaTest, ConstrainedWalksNeverStickAndEndValid) {
  const auto schema = MustCompile(kConstrained);
  std::vector<std::string> vocab;
  for (int b = 1; b < 128; ++b) vocab.emplace_back(1, static_cast<char>(b));
  for (const char* t :
       {"\"code\": \"", "\"word\": \"", "\"esc\": \"", "\"day\": \"", "\"ip\": \"", "\"n\": ",
        "\"x\": ",      "\"y\": ",      "\"big\": ",   "\"old\": ",   "\", ",       ", \"",
        "AB-",          "12",           "123",         "0.",          ".5",         "-1",
        "99",           "2024-",        "-02-",        "29",          "30",         "31",
        "192.168.",     "255",          "25",          "\\n",         "\\\"",       "\\u00",
        "\\u0061",      "61",           "ab",          "abc",         "\xC3\xA9",   "\xC3",
        "\xA9",         "a\xC3\xA9",    "100",         "00",          "0000",       "1000",
        "\"}",          "1\"",          "-0"}) {
    vocab.emplace_back(t);
  }
  const std::vector<std::string> texts =
      RandomWalks(schema.get(), vocab, /*seed=*/11, /*walks=*/120, /*steps=*/600, /*checked=*/20,
                  "\"}, ", /*lean=*/1);
  for (const std::string& text : texts) ExpectConstrainedValid(ojson::parse(text), text);
  EXPECT_GT(texts.size(), 60u);
}

}  // namespace
}  // namespace spanserve::engine
