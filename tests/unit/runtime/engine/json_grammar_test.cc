#include "runtime/engine/json_grammar.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::engine {
namespace {

// Whether `text` is accepted whole, and the object then complete.
bool Complete(std::string_view text) {
  JsonMatcher m;
  return m.Feed(text) && m.complete();
}

// The length of the longest prefix of `text` the matcher accepts.
size_t AcceptedPrefix(std::string_view text) {
  JsonMatcher m;
  for (size_t i = 0; i < text.size(); ++i) {
    if (!m.Feed(static_cast<uint8_t>(text[i]))) return i;
  }
  return text.size();
}

// Whether a run of whitespace outside strings holds two line breaks (what the matcher refuses
// and a parser takes). Strings' contents are skipped roughly: between unescaped quotes.
bool HasBlankLine(std::string_view t) {
  bool in_string = false;
  int breaks = 0;
  for (size_t i = 0; i < t.size(); ++i) {
    const char c = t[i];
    if (in_string) {
      if (c == '\\') ++i;
      if (c == '"') in_string = false;
      continue;
    }
    if (c == '"') in_string = true;
    if (c == '\n' || c == '\r') {
      if (++breaks > 1) return true;
    } else if (c != ' ' && c != '\t') {
      breaks = 0;
    }
  }
  return false;
}

TEST(JsonMatcherTest, AcceptsObjectsAndEveryPrefixOfThem) {
  const std::vector<std::string> docs = {
      "{}",
      "{\"a\":1}",
      " {\n  \"name\": \"Ada\",\n  \"age\": 36,\n  \"tags\": [\"x\", \"y\"]\n}",
      "{\"a\": [1, -2.5e+3, 0, 0.25, 1E-7, -0, true, false, null, [], {}],"
      " \"b\": {\"c\": {\"d\": []}}, \"e\": \"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\uD83D\\uDE00\","
      " \"f\": \"h\xC3\xA9llo \xE2\x82\xAC \xF0\x9F\x98\x80\"}",
  };
  for (const std::string& doc : docs) {
    SCOPED_TRACE(doc);
    ASSERT_TRUE(nlohmann::json::parse(doc).is_object());
    JsonMatcher m;
    for (size_t i = 0; i < doc.size(); ++i) {
      EXPECT_FALSE(m.complete()) << "complete before byte " << i;
      ASSERT_TRUE(m.Feed(static_cast<uint8_t>(doc[i]))) << "byte " << i;
    }
    EXPECT_TRUE(m.complete());
    // Nothing after the closing brace, not even whitespace.
    EXPECT_FALSE(m.Feed(' '));
    EXPECT_FALSE(m.Feed('}'));
    EXPECT_TRUE(m.complete());
  }
}

TEST(JsonMatcherTest, RefusesWhatIsNotAnObjectPrefix) {
  // {text, the length of its longest valid prefix}.
  const std::vector<std::pair<std::string, size_t>> cases = {
      {"[1]", 0},
      {"\"a\"", 0},
      {"1", 0},
      {"{\"a\" 1}", 5},
      {"{\"a\":01}", 6},
      {"{\"a\":1.}", 7},
      {"{\"a\":-}", 6},
      {"{\"a\":1e}", 7},
      {"{,}", 1},
      {"{\"a\":1,}", 7},
      {"{\"a\":[1,]}", 8},
      {"{\"a\":tru}", 8},
      {"{\"a\":nul1}", 8},
      {"{\"a\":\"\\x\"}", 7},
      {"{\"a\":\"\\u12g4\"}", 10},
      {"{\"a\":\"x\ny\"}", 7},
      {"{\"a\":\"\xC0\x80\"}", 6},          // overlong
      {"{\"a\":\"\xED\xA0\x80\"}", 7},      // a surrogate
      {"{\"a\":\"\xF5\x80\x80\x80\"}", 6},  // past U+10FFFF
      {"{\"a\":\"\x80\"}", 6},              // a lone continuation byte
      {"{\"a\":\"\xE2\x82\"}", 8},          // a truncated character
      {"{'a':1}", 1},
      {"{\"a\":1]", 6},
      {"{\"a\":[1}", 7},
  };
  for (const auto& [text, prefix] : cases) {
    SCOPED_TRACE(text);
    EXPECT_EQ(AcceptedPrefix(text), prefix);
    EXPECT_FALSE(Complete(text));
  }
}

TEST(JsonMatcherTest, BoundsNestingAndWhitespace) {
  std::string deep = "{\"a\":";
  for (int i = 1; i < JsonMatcher::kMaxDepth; ++i) deep += '[';
  EXPECT_EQ(AcceptedPrefix(deep), deep.size());
  EXPECT_EQ(AcceptedPrefix(deep + "["), deep.size());
  const std::string spaces(JsonMatcher::kMaxWhitespace, ' ');
  EXPECT_TRUE(Complete("{" + spaces + "\"a\"" + spaces + ":" + spaces + "1" + spaces + "}"));
  EXPECT_EQ(AcceptedPrefix("{" + spaces + " \"a\":1}"), 1 + spaces.size());
  // One line break per run of whitespace, "\n" or "\r\n": indented output, not blank lines.
  EXPECT_TRUE(Complete("{\r\n  \"a\": [\n    1\n  ]\n}"));
  EXPECT_EQ(AcceptedPrefix("{\n  \n\"a\":1}"), 4u);
  EXPECT_EQ(AcceptedPrefix("{\n\r\"a\":1}"), 2u);
  EXPECT_EQ(AcceptedPrefix("\n\n{}"), 1u);
  // A failed byte leaves the state as it was.
  JsonMatcher m;
  ASSERT_TRUE(m.Feed(std::string_view("{\"a\":1")));
  EXPECT_FALSE(m.Feed('x'));
  EXPECT_TRUE(m.Feed('}'));
  EXPECT_TRUE(m.complete());
}

// Random objects, printed compactly or indented, then mutated by one byte: the matcher
// completes a text exactly when nlohmann::json parses it as an object.
TEST(JsonMatcherTest, AgreesWithAJsonParserOnMutatedDocuments) {
  std::mt19937 rng(7);
  const auto random_value = [&](auto&& self, int depth) -> nlohmann::json {
    const int kind = static_cast<int>(rng() % (depth < 3 ? 7 : 5));
    switch (kind) {
      case 0:
        return static_cast<int>(rng() % 2001) - 1000;
      case 1:
        return std::ldexp(static_cast<double>(rng() % 100000) - 50000,
                          -static_cast<int>(rng() % 12));
      case 2:
        return std::string(1 + rng() % 6, static_cast<char>('a' + rng() % 26)) + "\xC3\xA9\n\"";
      case 3:
        return rng() % 2 == 0;
      case 4:
        return nullptr;
      case 5: {
        nlohmann::json a = nlohmann::json::array();
        for (int i = static_cast<int>(rng() % 4); i > 0; --i) a.push_back(self(self, depth + 1));
        return a;
      }
      default: {
        nlohmann::json o = nlohmann::json::object();
        for (int i = static_cast<int>(rng() % 4); i > 0; --i) {
          o[std::string(1, static_cast<char>('a' + rng() % 26))] = self(self, depth + 1);
        }
        return o;
      }
    }
  };
  const std::string alphabet = "{}[]:,\" \n-+.eE0123456789tfnrulsa\\\xC3\xA9\x80";
  int completed = 0, refused = 0;
  for (int round = 0; round < 400; ++round) {
    nlohmann::json doc = nlohmann::json::object();
    for (int i = static_cast<int>(1 + rng() % 4); i > 0; --i) {
      doc[std::string(1, static_cast<char>('a' + rng() % 26))] = random_value(random_value, 1);
    }
    const std::string text = doc.dump(rng() % 2 == 0 ? -1 : 2);
    ASSERT_TRUE(Complete(text)) << text;
    for (int mutation = 0; mutation < 20; ++mutation) {
      std::string t = text;
      const size_t at = rng() % t.size();
      switch (rng() % 3) {
        case 0:
          t[at] = alphabet[rng() % alphabet.size()];
          break;
        case 1:
          t.erase(at, 1);
          break;
        default:
          t.insert(at, 1, alphabet[rng() % alphabet.size()]);
          break;
      }
      if (t.find("\\u") != std::string::npos) continue;  // the parser refuses lone surrogates
      if (HasBlankLine(t)) continue;  // the matcher's bound on whitespace, not the grammar's
      bool parses = false;
      try {
        parses = nlohmann::json::parse(t).is_object();
      } catch (const nlohmann::json::out_of_range&) {
        continue;  // a number past a double's range: the parser's limit, not the grammar's
      } catch (const nlohmann::json::exception&) {
      }
      // (The matcher takes nothing after the closing brace, the parser takes whitespace.)
      parses = parses && t.back() == '}';
      EXPECT_EQ(Complete(t), parses) << t;
      (parses ? completed : refused)++;
    }
  }
  EXPECT_GT(completed, 100);
  EXPECT_GT(refused, 1000);
}

// AllowedJsonTokens (its string fast path and first-byte groups) gives exactly the tokens a
// copy of the matcher accepts one by one, at every prefix of a document.
TEST(JsonMatcherTest, AllowedTokensAreThoseTheMatcherAccepts) {
  const std::vector<std::string> vocab = {
      "",    "{",     "}",    "{\"",     "\"",   "\":",  "\": \"",   "\",",
      "\"}", " ",     "\n",   "  ",      "a",    "name", " the",     "1",
      "12",  "-",     "0",    ".",       "5",    "e",    "true",     "tr",
      "ue",  "false", "null", "[",       "]",    "],",   ",",        ", \"",
      "\\",  "\\n",   "\\u",  "00e9",    "\xC3", "\xA9", "\xC3\xA9", "\xE2\x82\xAC",
      "x\"", "\x01",  "}\n",  "ok\",\"", ":",    " {",   "[1",       "1]"};
  const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                              [&](int32_t id) { return vocab[id]; });
  const std::string doc =
      "{\"name\": \"h\xC3\xA9\\n\\u00e9\", \"a\": [1, -0.5e1, true, null, {}], \"b\": false}";
  JsonState m;
  for (size_t i = 0; i <= doc.size(); ++i) {
    SCOPED_TRACE(::testing::Message() << "after " << i << " bytes");
    std::vector<int32_t> got;
    const int32_t n = AllowedJsonTokens(m, table, &got);
    EXPECT_EQ(n, static_cast<int32_t>(got.size()));
    std::sort(got.begin(), got.end());
    std::vector<int32_t> want;
    for (int32_t id = 0; id < table.vocab_size(); ++id) {
      JsonMatcher t = m.threads()[0];
      if (!vocab[id].empty() && t.Feed(vocab[id])) want.push_back(id);
    }
    EXPECT_EQ(got, want);
    if (i < doc.size()) {
      ASSERT_TRUE(m.Feed(doc.substr(i, 1)));
    }
  }
  EXPECT_TRUE(m.complete());
}

}  // namespace
}  // namespace spanserve::engine
