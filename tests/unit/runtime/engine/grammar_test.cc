// The GBNF grammars of guided decoding: what compiles and what is refused (and where), a
// reference recognizer written here as the oracle on every short text over small alphabets,
// UTF-8 (characters split between feeds, invalid bytes), AllowedGrammarTokens against feeding
// each token, random walks that never get stuck, and the limits on ambiguous grammars.
#include "runtime/engine/grammar.h"

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

using ::testing::HasSubstr;

std::shared_ptr<const Grammar> MustCompile(const std::string& text) {
  auto g = Grammar::Compile(text);
  EXPECT_TRUE(g.ok()) << text << "\n" << g.status();
  return g.ok() ? *g : nullptr;
}

bool Feeds(const Grammar& g, std::string_view text) {
  GrammarState s(&g);
  return s.Feed(text);
}

bool Accepts(const Grammar& g, std::string_view text) {
  GrammarState s(&g);
  return s.Feed(text) && s.accepting();
}

// ---------------------------------------------------------------------------------------
// Parsing.

TEST(GrammarTest, ValidGrammarsCompile) {
  const std::vector<std::string> grammars = {
      R"(root ::= "a")",
      R"(root ::= "\n\r\t\\\"\[\]\x41\u00e9\U0001F600")",
      "root ::= [a-z0-9_] [^\"\\\\] [\\x00-\\x1F\\]\\[] [-a] [a-]",
      R"(root ::= . .? .* .+)",
      "root ::= (\"a\" | \"b\")* \"c\"{3} \"d\"{2,} \"e\"{1,4} \"f\"{0,0} \"g\"{ 2 , 5 }",
      "# a comment\nroot ::= a b # another\na ::= \"x\"  # the a\nb ::= \"y\"\n",
      "root ::= (\n  \"a\"\n  | \"b\"\n  # inside\n)\n",
      "root ::= \"a\"\n  | \"b\"\n\n  | \"c\"\nother ::= \"d\"\n",
      "root ::=\n  value\nvalue ::= \"1\" | \"2\" |\n  \"3\"\n",
      "root ::= \"\" | \"a\" root",
      "root ::= item*\nitem ::= \"(\" item* \")\" | \"a\"",
      "root   ::=   x-y_z\nx-y_z ::= [\xC3\xA9-\xC3\xAA\xE6\x97\xA5]+ \"\xE6\x97\xA5\"",
      "root ::= (\"a\" (\"b\" (\"c\")?)*)+ \"d\"*? \r\n",
      "root ::= \"a\" unused\nunused ::= \"u\"\nnever ::= \"v\"",
  };
  for (const std::string& text : grammars) {
    SCOPED_TRACE(text);
    MustCompile(text);
  }
}

TEST(GrammarTest, InvalidGrammarsAreRefused) {
  struct Case {
    std::string text;
    std::string message;
  };
  const std::string big(Grammar::kMaxGrammarBytes + 1, ' ');
  std::string deep = "root ::= ";
  for (int i = 0; i < Grammar::kMaxNesting + 1; ++i) deep += "(";
  deep += "\"a\"";
  for (int i = 0; i < Grammar::kMaxNesting + 1; ++i) deep += ")";
  std::string many;
  for (int i = 0; i < 300; ++i) many += "\"a\"{1000} ";
  const std::vector<Case> cases = {
      {"root = \"a\"", "at 1:6: expected '::='"},
      {"root ::= \"a\"\n  x ::= \"b\" )", "at 2:13: unexpected ')'"},
      {"root ::= \"a", "at 1:10: unterminated string literal"},
      {"root ::= \"a\nb\"", "at 1:12: unterminated string literal"},
      {"root ::= [ab", "at 1:10: unterminated character class"},
      {"root ::= (\"a\"", "at 1:14: expected ')' before the end"},
      {"root ::= *", "at 1:10: nothing to repeat"},
      {"root ::= \"a\" @", "at 1:14: unexpected '@'"},
      {"::= \"a\"", "at 1:1: expected a rule name"},
      {"root ::= value", "at 1:10: rule 'value' is used but not defined"},
      {"root ::= \"a\"\nroot ::= \"b\"", "at 2:1: rule 'root' is defined twice"},
      {"start ::= \"a\"", "no rule 'root' (the start rule)"},
      {"root ::= root \"a\" | \"b\"", "rule 'root' is left-recursive"},
      {"root ::= a\na ::= b \"x\" | \"y\"\nb ::= a", "is left-recursive"},
      {"root ::= a\na ::= \"x\"? b\nb ::= \"z\"* a \"y\" | \"w\"", "is left-recursive"},
      {"root ::= (root \"x\" | \"y\")", "rule 'root' is left-recursive"},
      {"root ::= a\na ::= \"x\" a", "rule 'a' can never finish (it derives no finite text)"},
      {"root ::= \"a\" root", "rule 'root' can never finish"},
      {"root ::= [^\\x00-\\U0010FFFF]", "at 1:10: an empty character class"},
      {"root ::= []", "at 1:10: an empty character class"},
      {"root ::= \"\\q\"", "at 1:11: bad escape '\\q'"},
      {"root ::= \"\\x4\"", "at 1:11: bad escape: expected 2 hex digits"},
      {"root ::= \"\\U00110000\"", "at 1:11: bad escape: past U+10FFFF"},
      {"root ::= \"\\uD800\"", "a surrogate in a string literal"},
      {"root ::= [z-a]", "at 1:12: a range whose end is before its start"},
      {"root ::= \"a\"{1001}", "at 1:14: too large: repetition bound over 1000"},
      {"root ::= \"a\"{3,2}", "at 1:13: {3,2}: m is over n"},
      {"root ::= \"a\"{2", "at 1:15: expected '}'"},
      {"root ::= (\"a\"?)*", "at 1:10: a repetition of something that can be empty"},
      {"root ::= \"a\" b ::= \"c\"", "at 1:14: expected a line break before the next rule"},
      {big, "too large: the grammar is over 65536 bytes"},
      {deep, "too large: groups nested deeper than 64"},
      {"root ::= ((\"a\"{1000}){1000}){1000}\nr ::= " + many,
       "too large: more than 262144 elements"},
      {"root ::= \"\xC3\"", "invalid UTF-8"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.text.size() > 200 ? c.text.substr(0, 40) : c.text);
    auto g = Grammar::Compile(c.text);
    ASSERT_FALSE(g.ok());
    EXPECT_EQ(g.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(g.status().message()), HasSubstr(c.message));
  }
}

TEST(GrammarTest, LiteralsAndEscapes) {
  auto g = MustCompile(R"(root ::= "\n\r\t\\\"\[\]\x41\u00e9\U0001F600")");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Accepts(*g, "\n\r\t\\\"[]A\xC3\xA9\xF0\x9F\x98\x80"));
  EXPECT_FALSE(Accepts(*g, "\n\r\t\\\"[]A\xC3\xA9"));
  auto c = MustCompile(R"(root ::= [^"\\a-c] [\-x]? .)");
  ASSERT_NE(c, nullptr);
  EXPECT_TRUE(Accepts(*c, "d-z"));
  EXPECT_TRUE(Accepts(*c, "dxz"));
  EXPECT_TRUE(Accepts(*c, "d\n"));
  EXPECT_FALSE(Feeds(*c, "b"));
  EXPECT_FALSE(Feeds(*c, "\""));
  EXPECT_FALSE(Feeds(*c, "\\"));
}

// ---------------------------------------------------------------------------------------
// The oracle: grammars built here as trees, printed as GBNF, and recognized by a direct
// recursive matcher: Full(node, i) is where the node's matches of text[i..] can end, and
// Partial(node, i) whether text[i..] is a proper prefix of one of its texts.

struct Node {
  enum Kind { kLit, kClass, kSeq, kAlt, kRep, kRef } kind = kLit;
  std::string text;  // kLit: the literal; kClass: the characters
  std::vector<Node> kids;
  int m = 0, n = -1;  // kRep; n -1: unbounded
  int ref = 0;
};

Node Lit(std::string s) { return Node{Node::kLit, std::move(s), {}}; }
Node Cls(std::string s) { return Node{Node::kClass, std::move(s), {}}; }
Node SeqOf(std::vector<Node> k) { return Node{Node::kSeq, "", std::move(k)}; }
Node AltOf(std::vector<Node> k) { return Node{Node::kAlt, "", std::move(k)}; }
Node Rep(Node k, int m, int n) { return Node{Node::kRep, "", {std::move(k)}, m, n}; }
Node Ref(int r) {
  Node x;
  x.kind = Node::kRef;
  x.ref = r;
  return x;
}

std::string Print(const Node& x) {
  switch (x.kind) {
    case Node::kLit:
      return "\"" + x.text + "\"";
    case Node::kClass:
      return "[" + x.text + "]";
    case Node::kSeq: {
      std::string s = "(";
      for (const Node& k : x.kids) s += " " + Print(k);
      return s + " )";
    }
    case Node::kAlt: {
      std::string s = "(";
      for (size_t i = 0; i < x.kids.size(); ++i) s += (i ? " | " : " ") + Print(x.kids[i]);
      return s + " )";
    }
    case Node::kRep: {
      const std::string k = Print(x.kids[0]);
      if (x.m == 0 && x.n < 0) return k + "*";
      if (x.m == 1 && x.n < 0) return k + "+";
      if (x.m == 0 && x.n == 1) return k + "?";
      if (x.n < 0) return k + "{" + std::to_string(x.m) + ",}";
      if (x.m == x.n) return k + "{" + std::to_string(x.m) + "}";
      return k + "{" + std::to_string(x.m) + "," + std::to_string(x.n) + "}";
    }
    case Node::kRef:
      return x.ref == 0 ? "root" : "r" + std::to_string(x.ref);
  }
  return "";
}

std::string PrintGrammar(const std::vector<Node>& rules) {
  std::string s;
  for (size_t r = 0; r < rules.size(); ++r) {
    s +=
        (r == 0 ? std::string("root") : "r" + std::to_string(r)) + " ::= " + Print(rules[r]) + "\n";
  }
  return s;
}

class Oracle {
 public:
  Oracle(const std::vector<Node>* rules, std::string text) : rules_(rules), t_(std::move(text)) {}
  // text is a prefix of a sentence / a sentence.
  bool Prefix() { return Partial((*rules_)[0], 0) || Sentence(); }
  bool Sentence() { return Full((*rules_)[0], 0).count(static_cast<int>(t_.size())) > 0; }

 private:
  using Ends = std::set<int>;
  int len() const { return static_cast<int>(t_.size()); }
  Ends Full(const Node& x, int i) {
    switch (x.kind) {
      case Node::kLit:
        if (t_.compare(i, x.text.size(), x.text) == 0 && i + x.text.size() <= t_.size()) {
          return {i + static_cast<int>(x.text.size())};
        }
        return {};
      case Node::kClass:
        if (i < len() && x.text.find(t_[i]) != std::string::npos) return {i + 1};
        return {};
      case Node::kSeq: {
        Ends cur = {i};
        for (const Node& k : x.kids) {
          Ends next;
          for (int j : cur) {
            Ends e = Full(k, j);
            next.insert(e.begin(), e.end());
          }
          cur = std::move(next);
        }
        return cur;
      }
      case Node::kAlt: {
        Ends out;
        for (const Node& k : x.kids) {
          Ends e = Full(k, i);
          out.insert(e.begin(), e.end());
        }
        return out;
      }
      case Node::kRep: {
        Ends out, cur = {i};
        const int last = x.n < 0 ? x.m + len() + 1 : x.n;
        for (int k = 0; k <= last && !cur.empty(); ++k) {
          if (k >= x.m) out.insert(cur.begin(), cur.end());
          Ends next;
          for (int j : cur) {
            Ends e = Full(x.kids[0], j);
            next.insert(e.begin(), e.end());
          }
          cur = std::move(next);
        }
        return out;
      }
      case Node::kRef: {
        auto key = std::make_pair(x.ref, i);
        auto it = full_.find(key);
        if (it != full_.end()) return it->second;
        Ends e = Full((*rules_)[x.ref], i);
        full_[key] = e;
        return e;
      }
    }
    return {};
  }
  bool Partial(const Node& x, int i) {
    switch (x.kind) {
      case Node::kLit:
        return len() - i < static_cast<int>(x.text.size()) &&
               x.text.compare(0, len() - i, t_, i, len() - i) == 0;
      case Node::kClass:
        return i == len();
      case Node::kSeq: {
        Ends cur = {i};
        for (const Node& k : x.kids) {
          Ends next;
          for (int j : cur) {
            if (Partial(k, j)) return true;
            Ends e = Full(k, j);
            next.insert(e.begin(), e.end());
          }
          cur = std::move(next);
        }
        return false;
      }
      case Node::kAlt:
        for (const Node& k : x.kids) {
          if (Partial(k, i)) return true;
        }
        return false;
      case Node::kRep: {
        Ends cur = {i};
        const int last = x.n < 0 ? x.m + len() + 1 : x.n;
        for (int k = 0; k < last && !cur.empty(); ++k) {
          Ends next;
          for (int j : cur) {
            if (Partial(x.kids[0], j)) return true;
            Ends e = Full(x.kids[0], j);
            next.insert(e.begin(), e.end());
          }
          cur = std::move(next);
        }
        return false;
      }
      case Node::kRef: {
        auto key = std::make_pair(x.ref, i);
        auto it = partial_.find(key);
        if (it != partial_.end()) return it->second;
        const bool p = Partial((*rules_)[x.ref], i);
        partial_[key] = p;
        return p;
      }
    }
    return false;
  }

  const std::vector<Node>* rules_;
  std::string t_;
  std::map<std::pair<int, int>, Ends> full_;
  std::map<std::pair<int, int>, bool> partial_;
};

// Every text of up to `max_len` characters of `alphabet`: Feed, accepting and final against
// the oracle, byte by byte = whole, and a shortest completion completes.
void CheckAgainstOracle(const std::vector<Node>& rules, const std::string& alphabet, int max_len) {
  const std::string text = PrintGrammar(rules);
  SCOPED_TRACE(text);
  auto g = MustCompile(text);
  ASSERT_NE(g, nullptr);
  std::vector<std::string> layer = {""};
  int prefixes = 0;
  for (int l = 0; l <= max_len; ++l) {
    std::vector<std::string> next;
    for (const std::string& s : layer) {
      Oracle o(&rules, s);
      GrammarState st(g.get());
      const bool fed = st.Feed(s);
      ASSERT_FALSE(st.over_limits()) << s;
      ASSERT_EQ(fed, o.Prefix()) << "text \"" << s << "\"";
      if (!fed) continue;
      ++prefixes;
      GrammarState bytewise(g.get());
      for (char c : s) ASSERT_TRUE(bytewise.Feed(std::string_view(&c, 1)));
      EXPECT_TRUE(bytewise == st) << s;
      EXPECT_EQ(bytewise.Hash(), st.Hash());
      EXPECT_EQ(st.accepting(), o.Sentence()) << "text \"" << s << "\"";
      bool extends = false;
      for (char c : alphabet) {
        Oracle e(&rules, s + c);
        extends = extends || e.Prefix();
      }
      EXPECT_EQ(st.final(), !extends) << "text \"" << s << "\"";
      if (st.final()) {
        EXPECT_TRUE(st.accepting());
      }
      std::string completion;
      ASSERT_TRUE(st.ShortestCompletion(1000, &completion)) << s;
      EXPECT_EQ(completion.size(), st.min_completion_bytes()) << s;
      Oracle c(&rules, s + completion);
      EXPECT_TRUE(c.Sentence()) << s << " + " << completion;
      GrammarState done = st;
      EXPECT_TRUE(done.Feed(completion) && done.accepting()) << s << " + " << completion;
      for (char c2 : alphabet) next.push_back(s + c2);
    }
    layer = std::move(next);
  }
  EXPECT_GE(prefixes, 1);
}

TEST(GrammarTest, HandWrittenGrammarsAgreeWithTheOracle) {
  // ("a" | "ab")* "c"?
  CheckAgainstOracle({SeqOf({Rep(AltOf({Lit("a"), Lit("ab")}), 0, -1), Rep(Lit("c"), 0, 1)})},
                     "abc", 7);
  // Nested parentheses.
  CheckAgainstOracle(
      {Rep(Ref(1), 0, -1), AltOf({SeqOf({Lit("("), Rep(Ref(1), 0, -1), Lit(")")}), Lit("a")})},
      "()a", 7);
  // Counted repetition.
  CheckAgainstOracle({AltOf({SeqOf({Rep(Cls("ab"), 2, 4), Rep(Lit("c"), 1, -1)}),
                             SeqOf({Rep(Lit("b"), 1, -1), Rep(Lit("a"), 0, 1)})})},
                     "abc", 7);
  // Ambiguous.
  CheckAgainstOracle({SeqOf({Rep(AltOf({Lit("a"), Lit("a"), Lit("aa")}), 0, -1), Lit("b")})}, "ab",
                     9);
  // Nullable prefixes and empty alternatives.
  CheckAgainstOracle(
      {SeqOf({Ref(1), Ref(2), Lit("c")}), Rep(Lit("a"), 0, 1), AltOf({Lit("b"), Lit("")})}, "abc",
      5);
  // Right recursion, exact counts.
  CheckAgainstOracle({AltOf({Lit(""), SeqOf({Lit("a"), Ref(0), Lit("b")})}), Lit("x")}, "ab", 9);
  CheckAgainstOracle({SeqOf({Rep(Lit("ab"), 3, 3), Rep(Lit("c"), 0, 2), Rep(Cls("abc"), 2, -1)})},
                     "abc", 8);
  // A finite language: final states.
  CheckAgainstOracle({AltOf({Lit("abc"), Lit("ab"), Lit("b"), SeqOf({Lit("c"), Cls("ab")})})},
                     "abc", 4);
}

Node RandomNode(std::mt19937& rng, int depth, int rule, int num_rules) {
  const int pick = depth <= 0 ? static_cast<int>(rng() % 2) : static_cast<int>(rng() % 6);
  static const char* kLits[] = {"a", "b", "c", "ab", "ba", "abc", ""};
  static const char* kClasses[] = {"a", "ab", "bc", "abc"};
  switch (pick) {
    case 0:
      return Lit(kLits[rng() % 7]);
    case 1:
      if (rule + 1 < num_rules && rng() % 3 == 0) {
        return Ref(rule + 1 + static_cast<int>(rng() % (num_rules - rule - 1)));
      }
      return Cls(kClasses[rng() % 4]);
    case 2:
    case 3: {
      std::vector<Node> kids;
      const int n = 1 + static_cast<int>(rng() % 3);
      for (int i = 0; i < n; ++i) kids.push_back(RandomNode(rng, depth - 1, rule, num_rules));
      return pick == 2 ? SeqOf(std::move(kids)) : AltOf(std::move(kids));
    }
    default: {
      static const int kBounds[][2] = {{0, -1}, {1, -1}, {0, 1}, {2, 2}, {1, 3}, {2, -1}, {0, 2}};
      const auto& b = kBounds[rng() % 7];
      // The repeated part never empty: a letter before it.
      return Rep(SeqOf({Cls(kClasses[rng() % 4]), RandomNode(rng, depth - 1, rule, num_rules)}),
                 b[0], b[1]);
    }
  }
}

TEST(GrammarTest, RandomGrammarsAgreeWithTheOracle) {
  std::mt19937 rng(7);
  for (int i = 0; i < 60; ++i) {
    const int num_rules = 1 + static_cast<int>(rng() % 3);
    std::vector<Node> rules;
    for (int r = 0; r < num_rules; ++r) rules.push_back(RandomNode(rng, 3, r, num_rules));
    CheckAgainstOracle(rules, "abc", 5);
    if (HasFailure()) break;
  }
}

// ---------------------------------------------------------------------------------------
// UTF-8.

TEST(GrammarTest, Utf8CharactersMayBeSplitAndInvalidUtf8IsRefused) {
  // é is C3 A9, ê C3 AA, 日 E6 97 A5, 😀 F0 9F 98 80.
  auto g = MustCompile("root ::= [\xC3\xA9-\xC3\xAA] \"\xE6\x97\xA5\" | \"\xF0\x9F\x98\x80\"+");
  ASSERT_NE(g, nullptr);
  EXPECT_TRUE(Feeds(*g, "\xC3"));
  EXPECT_TRUE(Feeds(*g, "\xC3\xA9\xE6"));
  EXPECT_TRUE(Accepts(*g, "\xC3\xAA\xE6\x97\xA5"));
  EXPECT_FALSE(Feeds(*g, "\xC3\xAB"));
  EXPECT_FALSE(Feeds(*g, "\xC4"));
  EXPECT_FALSE(Feeds(*g, "\xC3\xA9\xE6\x97\xA6"));
  EXPECT_TRUE(Feeds(*g, "\xF0\x9F\x98"));
  EXPECT_FALSE(Feeds(*g, "\xF0\x9F\x99"));
  EXPECT_TRUE(Accepts(*g, "\xF0\x9F\x98\x80\xF0\x9F\x98\x80"));
  // Byte by byte = whole.
  const std::string text = "\xF0\x9F\x98\x80\xF0\x9F\x98\x80";
  GrammarState whole(g.get()), bytes(g.get());
  ASSERT_TRUE(whole.Feed(text));
  for (char c : text) ASSERT_TRUE(bytes.Feed(std::string_view(&c, 1)));
  EXPECT_TRUE(whole == bytes);
  EXPECT_EQ(whole.Hash(), bytes.Hash());

  auto any = MustCompile("root ::= .*");
  ASSERT_NE(any, nullptr);
  for (const char* bad :
       {"\x80", "\xC0\x80", "\xC1\xBF", "\xE0\x80\x80", "\xE0\x9F", "\xED\xA0\x80", "\xED\xBF",
        "\xF4\x90\x80\x80", "\xF5", "\xFF", "\xC3\x41", "\xE6\x97\x41"}) {
    SCOPED_TRACE(testing::PrintToString(std::string(bad)));
    EXPECT_FALSE(Feeds(*any, bad));
  }
  for (const char* good :
       {"\x00", "\x7F", "\xC2\x80", "\xDF\xBF", "\xE0\xA0\x80", "\xED\x9F\xBF", "\xEE\x80\x80",
        "\xEF\xBF\xBF", "\xF0\x90\x80\x80", "\xF4\x8F\xBF\xBF"}) {
    SCOPED_TRACE(testing::PrintToString(std::string(good)));
    GrammarState s(any.get());
    EXPECT_TRUE(s.Feed(std::string_view(good, std::max<size_t>(1, std::strlen(good)))));
    EXPECT_TRUE(s.accepting());
  }
  // A partial character is accepted exactly when a completion matches: every lead byte and
  // every second byte against a class of a few scattered characters.
  auto cls = MustCompile("root ::= [\xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80\\u0800\\uFFFD] \"!\"");
  ASSERT_NE(cls, nullptr);
  const std::vector<std::string> members = {"\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x98\x80",
                                            "\xE0\xA0\x80", "\xEF\xBF\xBD"};
  for (int b0 = 0x80; b0 < 0x100; ++b0) {
    for (int b1 = 0x00; b1 < 0x100; b1 += 1) {
      std::string p = {static_cast<char>(b0), static_cast<char>(b1)};
      for (const std::string& q : {p.substr(0, 1), p}) {
        const bool want = std::any_of(members.begin(), members.end(), [&](const std::string& m) {
          return m.size() >= q.size() && m.compare(0, q.size(), q) == 0;
        });
        EXPECT_EQ(Feeds(*cls, q), want) << testing::PrintToString(q);
      }
    }
  }
  // A negated class and `.` take no surrogate, and no \uFFFE-style hole is made up.
  auto neg = MustCompile("root ::= [^a]");
  ASSERT_NE(neg, nullptr);
  EXPECT_FALSE(Feeds(*neg, "\xED\xA0"));
  EXPECT_TRUE(Accepts(*neg, "\xEF\xBF\xBE"));
  EXPECT_FALSE(Feeds(*neg, "a"));
}

// ---------------------------------------------------------------------------------------
// Allowed tokens.

std::vector<int32_t> BruteForce(const GrammarState& s, const std::vector<std::string>& vocab) {
  std::vector<int32_t> want;
  for (int32_t id = 0; id < static_cast<int32_t>(vocab.size()); ++id) {
    if (vocab[id].empty()) continue;
    GrammarState t = s;
    if (t.Feed(vocab[id])) want.push_back(id);
  }
  return want;
}

// A small JSON grammar, whitespace bounded as the engine's JSON mode bounds it.
constexpr char kJson[] = R"(# JSON values
root   ::= object
value  ::= object | array | string | number | ("true" | "false" | "null") ws
object ::= "{" ws ( string ":" ws value ("," ws string ":" ws value)* )? "}" ws
array  ::= "[" ws ( value ("," ws value)* )? "]" ws
string ::= "\"" (
    [^"\\\x7F\x00-\x1F] |
    "\\" (["\\bfnrt/] | "u" [0-9a-fA-F]{4})
  )* "\"" ws
number ::= ("-"? ([0-9] | [1-9] [0-9]{0,15})) ("." [0-9]+)? ([eE] [-+]? [0-9]{1,3})? ws
ws ::= | " " | "\n" [ \t]{0,20}
)";

TEST(GrammarTest, AllowedTokensEqualFeedingEachToken) {
  const std::vector<std::string> grammars = {
      kJson,
      "root ::= ([a-c] | \"\xC3\xA9\" | \"\xE6\x97\xA5\xE6\x9C\xAC\")* \"!\"",
      "root ::= (\"a\" | \"a\" | \"aa\")* \"b\" | [^b]{2,3}",
  };
  std::mt19937 rng(11);
  const std::vector<std::string> pieces = {
      "a",        "b",    "c",    "!",  "{",    "}",           "[",    "]",    "\"",
      ":",        ",",    " ",    "\n", "1",    "0",           "-",    ".",    "e",
      "true",     "null", "\\",   "u",  "\xC3", "\xA9",        "\xE6", "\x97", "\xA5",
      "\xE6\x9C", "\x9C", "\xAC", "x",  "\xFF", "\xED\xA0\x80"};
  for (const std::string& text : grammars) {
    SCOPED_TRACE(text);
    auto g = MustCompile(text);
    ASSERT_NE(g, nullptr);
    for (int v = 0; v < 4; ++v) {
      std::vector<std::string> vocab = {""};  // a special token
      for (int i = 0; i < 300; ++i) {
        std::string t;
        const int n = 1 + static_cast<int>(rng() % 4);
        for (int k = 0; k < n; ++k) t += pieces[rng() % pieces.size()];
        vocab.push_back(t);
      }
      for (const std::string& p : pieces) vocab.push_back(p);
      const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                                  [&](int32_t id) { return vocab[id]; });
      for (int walk = 0; walk < 8; ++walk) {
        GrammarState s(g.get());
        std::string out;
        for (int step = 0; step < 40; ++step) {
          std::vector<int32_t> allowed;
          const int32_t n = AllowedGrammarTokens(s, table, &allowed);
          ASSERT_EQ(n, static_cast<int32_t>(allowed.size()));
          std::sort(allowed.begin(), allowed.end());
          ASSERT_EQ(allowed, BruteForce(s, vocab)) << "after " << out;
          // Never stuck: a token or the end.
          ASSERT_TRUE(!allowed.empty() || s.accepting()) << "after " << testing::PrintToString(out);
          if (allowed.empty() || (s.accepting() && rng() % 8 == 0)) break;
          const int32_t id = allowed[rng() % allowed.size()];
          ASSERT_TRUE(s.Feed(vocab[id]));
          out += vocab[id];
        }
        if (s.accepting()) {
          EXPECT_TRUE(Accepts(*g, out)) << out;
        }
        std::string completion;
        ASSERT_TRUE(s.ShortestCompletion(4096, &completion)) << out;
        EXPECT_TRUE(Accepts(*g, out + completion)) << out << " + " << completion;
      }
    }
  }
}

// Random walks against the oracle: the texts that end accepting are sentences.
TEST(GrammarTest, RandomWalksEndInSentences) {
  const std::vector<Node> rules = {
      Rep(Ref(1), 1, -1), AltOf({SeqOf({Lit("("), Rep(Ref(1), 0, -1), Lit(")")}), Lit("ab")})};
  auto g = MustCompile(PrintGrammar(rules));
  ASSERT_NE(g, nullptr);
  const std::vector<std::string> vocab = {"(",  ")",  "a",  "b",  "ab",   "((", "))",
                                          ")(", "ba", "(a", "b)", "abab", ""};
  const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                              [&](int32_t id) { return vocab[id]; });
  std::mt19937 rng(3);
  int sentences = 0;
  for (int walk = 0; walk < 300; ++walk) {
    GrammarState s(g.get());
    std::string out;
    for (int step = 0; step < 12; ++step) {
      std::vector<int32_t> allowed;
      AllowedGrammarTokens(s, table, &allowed);
      ASSERT_TRUE(!allowed.empty() || s.accepting()) << out;
      if (allowed.empty() || (s.accepting() && rng() % 4 == 0)) break;
      const std::string& t = vocab[allowed[rng() % allowed.size()]];
      ASSERT_TRUE(s.Feed(t));
      out += t;
      Oracle o(&rules, out);
      ASSERT_TRUE(o.Prefix()) << out;
    }
    Oracle o(&rules, out);
    EXPECT_EQ(s.accepting(), o.Sentence()) << out;
    sentences += s.accepting();
  }
  EXPECT_GT(sentences, 10);
}

// ---------------------------------------------------------------------------------------
// Limits.

TEST(GrammarTest, AmbiguousGrammarsStayWithinTheBounds) {
  auto g = MustCompile(R"(root ::= ("a" | "a" | "aa")*)");
  ASSERT_NE(g, nullptr);
  GrammarState s(g.get());
  for (int i = 0; i < 3000; ++i) {
    ASSERT_TRUE(s.Feed("a")) << i;
    ASSERT_LE(s.num_stacks(), static_cast<size_t>(Grammar::kMaxStacks));
  }
  EXPECT_TRUE(s.accepting());
  // Exponentially many parses: refused past the limits, never slow or unbounded.
  auto e = MustCompile("root ::= x*\nx ::= y y\ny ::= z z | \"a\"\nz ::= \"a\" | \"a\" \"a\"");
  ASSERT_NE(e, nullptr);
  GrammarState t(e.get());
  int fed = 0;
  for (int i = 0; i < 3000; ++i) {
    GrammarState u = t;
    if (!u.Feed("a")) break;
    t = u;
    ++fed;
    ASSERT_LE(t.num_stacks(), static_cast<size_t>(Grammar::kMaxStacks));
  }
  EXPECT_GT(fed, 0);
  // Deep nesting: a stack past kMaxStackDepth is refused.
  auto d = MustCompile("root ::= \"(\" root \")\" | \"x\"");
  ASSERT_NE(d, nullptr);
  GrammarState n(d.get());
  int depth = 0;
  for (; depth < 3000; ++depth) {
    if (!n.Feed("(")) break;
  }
  EXPECT_LT(depth, 3000);
  EXPECT_GE(depth, Grammar::kMaxStackDepth - 2);
  EXPECT_TRUE(n.over_limits());
}

// A vocabulary of 50,000 made-up tokens (a model's size), inside a string, in an array and in
// a number: the allowed tokens are exactly those a copy of the state takes.
TEST(GrammarTest, AllowedTokensOnAModelSizedVocabulary) {
  auto g = MustCompile(kJson);
  ASSERT_NE(g, nullptr);
  std::mt19937 rng(5);
  const std::string chars = "abcdefghijklmnopqrstuvwxyz    ,:{}[]\"0123456789.-_\n";
  std::vector<std::string> vocab;
  for (int i = 0; i < 50000; ++i) {
    std::string t;
    const int n = 1 + static_cast<int>(rng() % 8);
    for (int k = 0; k < n; ++k) t += chars[rng() % chars.size()];
    if (i % 10 == 0) t += "\xE6\x97\xA5";
    vocab.push_back(t);
  }
  const TokenBytesTable table(static_cast<int32_t>(vocab.size()),
                              [&](int32_t id) { return vocab[id]; });
  for (const char* prefix : {"{\"name\": \"ab", "{\"a\": [1, ", "{\"a\": 12"}) {
    SCOPED_TRACE(prefix);
    GrammarState s(g.get());
    ASSERT_TRUE(s.Feed(prefix));
    std::vector<int32_t> ids;
    AllowedGrammarTokens(s, table, &ids);
    std::sort(ids.begin(), ids.end());
    std::vector<int32_t> want;
    for (int32_t id = 0; id < table.vocab_size(); ++id) {
      GrammarState t = s;
      if (t.Feed(vocab[id])) want.push_back(id);
    }
    EXPECT_EQ(ids, want);
    EXPECT_GT(ids.size(), 0u);
  }
}

}  // namespace
}  // namespace spanserve::engine
