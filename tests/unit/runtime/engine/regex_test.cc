// The regex DFA of guided decoding: std::regex (ECMAScript) as the oracle on ASCII texts, UTF-8,
// the liveness of every state, WithLength, and what is refused.
#include "runtime/engine/regex.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <random>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

using ::testing::HasSubstr;
using Match = RegexDfa::Match;

std::shared_ptr<const RegexDfa> MustCompile(const std::string& pattern,
                                            Match match = Match::kFull) {
  auto dfa = RegexDfa::Compile(pattern, match);
  EXPECT_TRUE(dfa.ok()) << pattern << ": " << dfa.status();
  return dfa.ok() ? *dfa : nullptr;
}

bool Accepts(const RegexDfa& dfa, std::string_view text) {
  return dfa.accepting(dfa.Walk(dfa.start(), text));
}

// Whether `state` can reach an accepting state.
bool CanFinish(const RegexDfa& dfa, uint32_t state) {
  std::vector<bool> seen(dfa.num_states(), false);
  std::deque<uint32_t> queue = {state};
  seen[state] = true;
  while (!queue.empty()) {
    const uint32_t s = queue.front();
    queue.pop_front();
    if (dfa.accepting(s)) return true;
    for (int b = 0; b < 256; ++b) {
      const uint32_t t = dfa.Next(s, static_cast<uint8_t>(b));
      if (t != RegexDfa::kDead && !seen[t]) {
        seen[t] = true;
        queue.push_back(t);
      }
    }
  }
  return false;
}

// The structural invariants: dead is state 0 and stays dead; every other state can reach a
// match; `final` is exactly "no byte leads anywhere" and implies accepting.
void ExpectWellFormed(const RegexDfa& dfa, const std::string& pattern) {
  SCOPED_TRACE(pattern);
  ASSERT_GE(dfa.num_states(), 2);
  EXPECT_EQ(dfa.start(), 1u);
  EXPECT_FALSE(dfa.accepting(RegexDfa::kDead));
  for (int b = 0; b < 256; ++b) {
    ASSERT_EQ(dfa.Next(RegexDfa::kDead, static_cast<uint8_t>(b)), RegexDfa::kDead);
  }
  for (int32_t s = 1; s < dfa.num_states(); ++s) {
    EXPECT_TRUE(CanFinish(dfa, s)) << "state " << s << " cannot reach a match";
    bool any = false;
    for (int b = 0; b < 256; ++b) {
      const uint32_t t = dfa.Next(s, static_cast<uint8_t>(b));
      ASSERT_LT(t, static_cast<uint32_t>(dfa.num_states()));
      any |= t != RegexDfa::kDead;
    }
    EXPECT_EQ(dfa.final(s), !any) << "state " << s;
    if (dfa.final(s)) {
      EXPECT_TRUE(dfa.accepting(s)) << "state " << s;
    }
  }
}

struct OracleCase {
  const char* pattern;
  const char* alphabet;  // the characters of the random texts
};

// ASCII patterns where this DFA and std::regex (ECMAScript) must agree.
const OracleCase kOracleCases[] = {
    {"abc", "abcx"},
    {"a|b|c", "abcx"},
    {"ab*c", "abcx"},
    {"a+b?", "abx"},
    {"(ab|cd)*", "abcd"},
    {"(a|b)*abb", "abx"},
    {"[a-c]+x", "abcdx"},
    {"[^ab]c", "abc\n."},
    {"a{2}", "ab"},
    {"a{2,}", "ab"},
    {"a{1,3}b", "ab"},
    {"(ab){0,2}c", "abc"},
    {"a*?b", "ab"},
    {"(a|ab)(c|bcd)(d*)", "abcd"},
    {"\\d+", "0129a"},
    {"\\w\\s\\W", "a_1 \t\n.-"},
    {"[\\d.]+", "01.a"},
    {"x(a|)y", "axy"},
    {"(|a)b", "ab"},
    {"((a|b)c)+", "abc"},
    {"a.c", "abc\n\r."},
    {"\\.\\*\\+", ".*+a"},
    {"[.]?[a-]", ".a-b"},
    {"(?:ab)+?c", "abc"},
    {"a{0,2}b{1,2}?", "ab"},
    {"[^\\d]+", "01ab "},
    {"\\x41\\u0042", "ABab"},
    {"(a*)*b", "ab"},
    {"(a|b|)+c", "abc"},
    {"ab|cd|", "abcd"},
    {"[a-cx-z]{2,3}", "abcdxyz"},
    {"(a(b(c)?)?)?d", "abcd"},
    {"\\D\\S", "0a \t"},
    {"a{3}|b{2,4}", "ab"},
    {"-?\\d+(\\.\\d+)?", "-.019"},
    {"[abc]*c[abc]{2}", "abc"},
    {"(ab|a)(bc|c)?", "abc"},
    {"\\(a\\)", "()a"},
    {"a\\|b", "a|b"},
    {"[\\]a]+-", "]a-b"},
    {"((ab)*|c)d", "abcd"},
    {"^ab|cd$", "abcd"},
    {"^(a|b)+$", "abc"},
    {"x*", "xy"},
    {"", "ab"},
    {"a{0}b", "ab"},
    {"(?:a|b){2}c{0,1}", "abc"},
    {"[a-c\\s]+", "abd \t\n"},
    {"\\t\\n?", "\t\na"},
    {"[^\\n]+", "a\n\r "},
    {"\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])", "0123-9"},
    {"((25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)",
     "012569."},
    {"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}", "ab.@%-"},
};

std::string RandomText(std::mt19937& rng, const std::string& alphabet) {
  std::string s(rng() % 13, ' ');
  for (char& c : s) c = alphabet[rng() % alphabet.size()];
  return s;
}

// A text along random non-dead transitions over ASCII bytes.
std::string RandomWalk(std::mt19937& rng, const RegexDfa& dfa) {
  std::string s;
  uint32_t state = dfa.start();
  const size_t len = rng() % 17;
  while (s.size() < len) {
    std::vector<char> next;
    for (int b = 0; b < 128; ++b) {
      if (dfa.Next(state, static_cast<uint8_t>(b)) != RegexDfa::kDead) {
        next.push_back(static_cast<char>(b));
      }
    }
    if (next.empty()) break;
    s.push_back(next[rng() % next.size()]);
    state = dfa.Next(state, static_cast<uint8_t>(s.back()));
  }
  return s;
}

void CheckAgainstOracle(Match match) {
  std::mt19937 rng(20240611);
  for (const OracleCase& c : kOracleCases) {
    SCOPED_TRACE(c.pattern);
    const auto dfa = MustCompile(c.pattern, match);
    ASSERT_NE(dfa, nullptr);
    ExpectWellFormed(*dfa, c.pattern);
    const std::regex re(c.pattern, std::regex::ECMAScript);
    std::set<std::string> texts;
    for (int i = 0; i < 400; ++i) texts.insert(RandomText(rng, c.alphabet));
    for (int i = 0; i < 200; ++i) texts.insert(RandomWalk(rng, *dfa));
    if (match == Match::kSearch) {
      // Full matches with text around them.
      const auto full = MustCompile(c.pattern);
      ASSERT_NE(full, nullptr);
      for (int i = 0; i < 200; ++i) {
        texts.insert(RandomText(rng, c.alphabet).substr(0, 3) + RandomWalk(rng, *full) +
                     RandomText(rng, c.alphabet).substr(0, 3));
      }
    }
    int matched = 0;
    for (const std::string& text : texts) {
      const bool want =
          match == Match::kFull ? std::regex_match(text, re) : std::regex_search(text, re);
      const uint32_t end = dfa->Walk(dfa->start(), text);
      ASSERT_EQ(dfa->accepting(end), want) << "text \"" << text << "\"";
      matched += want;
      if (want) {
        // No prefix of a match is refused.
        for (size_t n = 0; n <= text.size(); ++n) {
          ASSERT_NE(dfa->Walk(dfa->start(), std::string_view(text).substr(0, n)), RegexDfa::kDead)
              << "prefix " << n << " of \"" << text << "\"";
        }
      }
    }
    EXPECT_GT(matched, 0);
  }
}

TEST(RegexDfaTest, FullMatchAgreesWithStdRegex) { CheckAgainstOracle(Match::kFull); }

TEST(RegexDfaTest, SearchAgreesWithStdRegex) { CheckAgainstOracle(Match::kSearch); }

TEST(RegexDfaTest, AcceptingAndFinal) {
  const auto abc = MustCompile("abc");
  ASSERT_NE(abc, nullptr);
  uint32_t s = abc->Walk(abc->start(), "ab");
  EXPECT_FALSE(abc->accepting(s));
  EXPECT_FALSE(abc->final(s));
  s = abc->Next(s, 'c');
  EXPECT_TRUE(abc->accepting(s));
  EXPECT_TRUE(abc->final(s));
  EXPECT_EQ(abc->Next(s, 'c'), RegexDfa::kDead);
  EXPECT_EQ(abc->Walk(abc->start(), "abx"), RegexDfa::kDead);
  EXPECT_EQ(abc->Walk(abc->start(), "x"), RegexDfa::kDead);
  EXPECT_EQ(abc->num_states(), 5);  // dead, "", "a", "ab", "abc"

  const auto star = MustCompile("a*");
  ASSERT_NE(star, nullptr);
  EXPECT_TRUE(star->accepting(star->start()));
  EXPECT_FALSE(star->final(star->start()));
  EXPECT_EQ(star->num_states(), 2);

  const auto opt = MustCompile("a?");
  ASSERT_NE(opt, nullptr);
  EXPECT_TRUE(opt->accepting(opt->start()));
  EXPECT_FALSE(opt->final(opt->start()));
  EXPECT_TRUE(opt->final(opt->Next(opt->start(), 'a')));

  const auto empty = MustCompile("");
  ASSERT_NE(empty, nullptr);
  EXPECT_TRUE(empty->accepting(empty->start()));
  EXPECT_TRUE(empty->final(empty->start()));
  EXPECT_FALSE(empty->accepting(RegexDfa::kDead));
  EXPECT_FALSE(empty->final(RegexDfa::kDead));
}

TEST(RegexDfaTest, AnchorsInFullMatchChangeNothing) {
  for (const char* p : {"^abc$", "^abc", "abc$"}) {
    const auto dfa = MustCompile(p);
    ASSERT_NE(dfa, nullptr);
    EXPECT_TRUE(Accepts(*dfa, "abc")) << p;
    EXPECT_EQ(dfa->Walk(dfa->start(), "xabc"), RegexDfa::kDead) << p;
  }
}

TEST(RegexDfaTest, SearchHonoursAnchorsPerAlternative) {
  const auto dfa = MustCompile("^ab|cd$", Match::kSearch);
  ASSERT_NE(dfa, nullptr);
  EXPECT_TRUE(Accepts(*dfa, "abxyz"));
  EXPECT_TRUE(Accepts(*dfa, "xyzcd"));
  EXPECT_FALSE(Accepts(*dfa, "xab"));
  EXPECT_FALSE(Accepts(*dfa, "cdx"));
  EXPECT_NE(dfa->Walk(dfa->start(), "cdx"), RegexDfa::kDead);   // a later "cd" can end it
  EXPECT_EQ(dfa->Walk(dfa->start(), "\xFF"), RegexDfa::kDead);  // never valid UTF-8
  // Once an unanchored alternative has matched, any text may follow: one state.
  const auto contains = MustCompile("ab", Match::kSearch);
  ASSERT_NE(contains, nullptr);
  const uint32_t s = contains->Walk(contains->start(), "xxab");
  EXPECT_TRUE(contains->accepting(s));
  EXPECT_EQ(contains->Walk(s, "zzz\xC3\xA9"), s);
  // The empty pattern is found in every text.
  const auto empty = MustCompile("", Match::kSearch);
  ASSERT_NE(empty, nullptr);
  EXPECT_TRUE(Accepts(*empty, ""));
  EXPECT_TRUE(Accepts(*empty, "anything \xE2\x82\xAC"));
  EXPECT_FALSE(Accepts(*empty, "\xE2\x82"));
}

TEST(RegexDfaTest, Utf8) {
  const auto dot = MustCompile(".");
  ASSERT_NE(dot, nullptr);
  ExpectWellFormed(*dot, ".");
  for (const char* ok : {"a", "\xC3\xA9", "\xE4\xB8\xAD", "\xF0\x9F\x98\x80", "\xF4\x8F\xBF\xBF",
                         "\xEF\xBF\xBF", "\xED\x9F\xBF", "\xEE\x80\x80", "\x7F", "\t"}) {
    EXPECT_TRUE(Accepts(*dot, ok)) << ok;
  }
  const std::string nul(1, '\0');
  EXPECT_TRUE(Accepts(*dot, nul));
  // Line terminators, and what is not UTF-8: stray continuation bytes, C0/C1 and F5.. leads,
  // overlong forms, surrogates, past U+10FFFF, a lead byte followed by a non-continuation.
  for (const char* bad :
       {"\n", "\r", "\xE2\x80\xA8", "\xE2\x80\xA9", "\x80", "\xBF", "\xC0\xAF", "\xC1\xBF",
        "\xE0\x80\xAF", "\xF0\x80\x80\xAF", "\xED\xA0\x80", "\xED\xBF\xBF", "\xF4\x90\x80\x80",
        "\xF5\x80\x80\x80", "\xFF", "\xC3\x28", "\xE4\xB8\x41"}) {
    EXPECT_FALSE(Accepts(*dot, bad)) << testing::PrintToString(std::string(bad));
  }
  // A truncated sequence is not a match yet, but not dead either.
  const uint32_t half = dot->Walk(dot->start(), "\xF0\x9F\x98");
  EXPECT_NE(half, RegexDfa::kDead);
  EXPECT_FALSE(dot->accepting(half));
  EXPECT_TRUE(dot->accepting(dot->Next(half, 0x80)));
  EXPECT_EQ(dot->Next(half, 'a'), RegexDfa::kDead);
  EXPECT_EQ(dot->Walk(dot->start(), "\xED\xA0"), RegexDfa::kDead);  // surrogate, at once

  const auto greek = MustCompile("[\xCE\xB1-\xCF\x89]+");  // [α-ω]+
  ASSERT_NE(greek, nullptr);
  ExpectWellFormed(*greek, "[α-ω]+");
  EXPECT_TRUE(Accepts(*greek, "\xCE\xB1\xCE\xB2\xCF\x89"));  // αβω
  EXPECT_FALSE(Accepts(*greek, "a"));
  EXPECT_FALSE(Accepts(*greek, "\xCE\x91"));  // Α
  EXPECT_EQ(greek->Walk(greek->start(), "\xCE\x91"), RegexDfa::kDead);
  EXPECT_FALSE(Accepts(*greek, "\xCE"));

  const auto not_a = MustCompile("[^a]");
  ASSERT_NE(not_a, nullptr);
  EXPECT_TRUE(Accepts(*not_a, "\xC3\xA9"));
  EXPECT_TRUE(Accepts(*not_a, "\n"));
  EXPECT_TRUE(Accepts(*not_a, "\xF0\x9F\x98\x80"));
  EXPECT_FALSE(Accepts(*not_a, "a"));
  EXPECT_FALSE(Accepts(*not_a, "\xC3"));
  EXPECT_FALSE(Accepts(*not_a, "\xE9"));
  EXPECT_FALSE(Accepts(*not_a, "\xED\xB0\x80"));
  EXPECT_FALSE(Accepts(*not_a, "bc"));

  for (const char* p : {"\\u00e9", "\\xE9", "\\u{e9}", "\xC3\xA9", "[\\u00e9]", "[\\xe8-\\xea]"}) {
    const auto dfa = MustCompile(p);
    ASSERT_NE(dfa, nullptr);
    EXPECT_TRUE(Accepts(*dfa, "\xC3\xA9")) << p;
    EXPECT_EQ(dfa->Walk(dfa->start(), "\xE9"), RegexDfa::kDead) << p;
  }
  for (const char* p : {"\\u{1F600}", "\\uD83D\\uDE00", "\xF0\x9F\x98\x80"}) {
    const auto dfa = MustCompile(p);
    ASSERT_NE(dfa, nullptr);
    EXPECT_TRUE(Accepts(*dfa, "\xF0\x9F\x98\x80")) << p;
    EXPECT_FALSE(Accepts(*dfa, "\xF0\x9F\x98\x81")) << p;
    EXPECT_EQ(dfa->num_states(), 6) << p;
  }
  // The class escapes hold what both dialects agree on: \W only ASCII (Python's \w takes
  // letters like é), \D up to U+024F (Python's \d takes other scripts' digits), \S nothing
  // either counts as whitespace, \s nothing only one does.
  const auto word = MustCompile("\\W\\S\\D");
  ASSERT_NE(word, nullptr);
  EXPECT_TRUE(Accepts(*word, "!\xE4\xB8\xAD\xC3\xA9"));
  EXPECT_FALSE(Accepts(*word, "\xC3\xA9\xE4\xB8\xAD\xC3\xA9"));  // é is \w in Python
  EXPECT_FALSE(Accepts(*word, "!\xE4\xB8\xAD\xD9\xA3"));         // ٣ is \d in Python
  EXPECT_FALSE(Accepts(*word,
                       "!\xC2\x85"
                       "a"));  // NEL: Python's \s
  const auto not_word = MustCompile("[^\\w]");
  ASSERT_NE(not_word, nullptr);
  EXPECT_TRUE(Accepts(*not_word, "!"));
  EXPECT_FALSE(Accepts(*not_word, "\xC3\xA9"));
  const auto space = MustCompile("\\s+");
  ASSERT_NE(space, nullptr);
  EXPECT_TRUE(Accepts(*space, " \t\n\v\f\r\xC2\xA0\xE2\x80\x83\xE3\x80\x80"));
  EXPECT_FALSE(Accepts(*space, "\xC2\x85"));      // NEL: not ECMAScript's
  EXPECT_FALSE(Accepts(*space, "\xEF\xBB\xBF"));  // U+FEFF: not Python's
  const auto not_space = MustCompile("[^\\s]+");
  ASSERT_NE(not_space, nullptr);
  EXPECT_TRUE(Accepts(*not_space, "a\xC3\xA9"));
  EXPECT_FALSE(Accepts(*not_space, "\x1C"));  // Python's whitespace
  // Every byte sequence up to three bytes: accepted by `.` exactly when it is one valid
  // UTF-8 code point other than a line terminator.
  for (uint32_t v = 0; v < (1u << 24); v += 7) {
    const std::string text = {static_cast<char>(v >> 16), static_cast<char>(v >> 8),
                              static_cast<char>(v)};
    const uint32_t cp = ((v >> 16) & 0x0F) << 12 | ((v >> 8) & 0x3F) << 6 | (v & 0x3F);
    const bool valid = (v >> 16) >= 0xE0 && (v >> 16) <= 0xEF && ((v >> 8) & 0xC0) == 0x80 &&
                       (v & 0xC0) == 0x80 && cp >= 0x800 && (cp < 0xD800 || cp > 0xDFFF) &&
                       cp != 0x2028 && cp != 0x2029;
    ASSERT_EQ(Accepts(*dot, text), valid) << v;
  }
}

std::string Utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xF0 | (cp >> 18));
    s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

// Classes of random code-point ranges (their bounds near the UTF-8 boundaries): every code
// point is accepted exactly when it is in the class.
TEST(RegexDfaTest, RandomClassesOverAllCodePoints) {
  std::mt19937 rng(7);
  const uint32_t edges[] = {0x0,    0x7F,   0x80,    0x7FF,   0x800,   0xFFF,   0x1000,   0xD7FF,
                            0xE000, 0xFFFF, 0x10000, 0x3FFFF, 0x40000, 0xFFFFF, 0x100000, 0x10FFFF};
  auto pick = [&] {
    const uint32_t e = edges[rng() % std::size(edges)];
    const int32_t jitter = static_cast<int32_t>(rng() % 129) - 64;
    const int64_t v = std::clamp<int64_t>(int64_t{e} + jitter, 0, 0x10FFFF);
    return static_cast<uint32_t>(v >= 0xD800 && v <= 0xDFFF ? 0xE000 : v);
  };
  for (int round = 0; round < 6; ++round) {
    std::vector<std::pair<uint32_t, uint32_t>> ranges;
    std::string pattern = round % 2 ? "[^" : "[";
    for (int i = 0, n = 1 + static_cast<int>(rng() % 4); i < n; ++i) {
      uint32_t lo = pick(), hi = pick();
      if (lo > hi) std::swap(lo, hi);
      ranges.push_back({lo, hi});
      char buf[48];
      snprintf(buf, sizeof(buf), "\\u{%X}-\\u{%X}", lo, hi);
      pattern += buf;
    }
    pattern += "]";
    const auto dfa = MustCompile(pattern);
    ASSERT_NE(dfa, nullptr);
    // Every third code point, and each bound and its neighbours.
    std::vector<uint32_t> cps;
    for (uint32_t cp = round % 3; cp <= 0x10FFFF; cp += 3) cps.push_back(cp);
    for (const auto& [lo, hi] : ranges) {
      for (const int64_t v : {int64_t{lo} - 1, int64_t{lo}, int64_t{hi}, int64_t{hi} + 1}) {
        if (v >= 0 && v <= 0x10FFFF) cps.push_back(static_cast<uint32_t>(v));
      }
    }
    for (const uint32_t cp : cps) {
      if (cp >= 0xD800 && cp <= 0xDFFF) continue;
      bool in = false;
      for (const auto& [lo, hi] : ranges) in |= cp >= lo && cp <= hi;
      if (round % 2) in = !in;
      ASSERT_EQ(Accepts(*dfa, Utf8(cp)), in) << pattern << " U+" << std::hex << cp;
    }
  }
}

TEST(RegexDfaTest, LiteralBraces) {
  for (const auto& [p, text] : std::vector<std::pair<const char*, const char*>>{{"a{", "a{"},
                                                                                {"{x}", "{x}"},
                                                                                {"a{1,2", "a{1,2"},
                                                                                {"x{a}", "x{a}"},
                                                                                {"}", "}"},
                                                                                {"]", "]"},
                                                                                {"a{ 2}", "a{ 2}"},
                                                                                {"a{}", "a{}"}}) {
    const auto dfa = MustCompile(p);
    ASSERT_NE(dfa, nullptr);
    EXPECT_TRUE(Accepts(*dfa, text)) << p;
  }
}

TEST(RegexDfaTest, GroupsAndEscapes) {
  const auto named = MustCompile("(?<year>\\d{2})-(?P<m>[a-z])(?:x|y)");
  ASSERT_NE(named, nullptr);
  EXPECT_TRUE(Accepts(*named, "24-qx"));
  EXPECT_FALSE(Accepts(*named, "24-qz"));
  const auto escapes = MustCompile("\\n\\t\\r\\f\\v\\0\\/\\-\\ \\_[\\b]");
  ASSERT_NE(escapes, nullptr);
  EXPECT_TRUE(Accepts(*escapes, std::string("\n\t\r\f\v\0/- _\b", 11)));
  const auto dash = MustCompile("[a\\-z]+");
  ASSERT_NE(dash, nullptr);
  EXPECT_TRUE(Accepts(*dash, "a-z"));
  EXPECT_FALSE(Accepts(*dash, "b"));
}

TEST(RegexDfaTest, WithLength) {
  const auto word = MustCompile("[a-z]+");
  ASSERT_NE(word, nullptr);
  auto bounded = word->WithLength(2, 4);
  ASSERT_TRUE(bounded.ok()) << bounded.status();
  const RegexDfa& b = **bounded;
  ExpectWellFormed(b, "[a-z]+ 2..4");
  EXPECT_TRUE(Accepts(b, "ab"));
  EXPECT_TRUE(Accepts(b, "abcd"));
  EXPECT_TRUE(b.final(b.Walk(b.start(), "abcd")));
  const uint32_t one = b.Walk(b.start(), "a");
  EXPECT_NE(one, RegexDfa::kDead);
  EXPECT_FALSE(b.accepting(one));
  EXPECT_EQ(b.Walk(b.start(), "abcde"), RegexDfa::kDead);
  EXPECT_EQ(b.Walk(b.start(), "A"), RegexDfa::kDead);

  // Code points, not bytes.
  const auto any = MustCompile(".+");
  ASSERT_NE(any, nullptr);
  auto two = any->WithLength(1, 2);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_TRUE(Accepts(**two, "\xC3\xA9"));
  EXPECT_TRUE(Accepts(**two, "\xF0\x9F\x98\x80\xC3\xA9"));
  EXPECT_EQ((*two)->Walk((*two)->start(), "\xC3\xA9\xC3\xA9\xC3"), RegexDfa::kDead);
  ExpectWellFormed(**two, ".+ 1..2");

  auto at_least = word->WithLength(3, RegexDfa::kUnbounded);
  ASSERT_TRUE(at_least.ok()) << at_least.status();
  EXPECT_FALSE(Accepts(**at_least, "ab"));
  EXPECT_TRUE(Accepts(**at_least, "abc"));
  EXPECT_TRUE(Accepts(**at_least, std::string(500, 'q')));
  EXPECT_LE((*at_least)->num_states(), 6);

  // On a search DFA: texts of 3 code points holding "é".
  const auto search = MustCompile("\xC3\xA9", Match::kSearch);
  ASSERT_NE(search, nullptr);
  auto three = search->WithLength(3, 3);
  ASSERT_TRUE(three.ok()) << three.status();
  EXPECT_TRUE(Accepts(**three, "a\xC3\xA9z"));
  EXPECT_FALSE(Accepts(**three, "a\xC3\xA9"));
  EXPECT_EQ((*three)->Walk((*three)->start(), "abc"), RegexDfa::kDead);  // no room left for é
  ExpectWellFormed(**three, "search é 3..3");

  for (const auto& [lo, hi] : std::vector<std::pair<uint32_t, uint32_t>>{{4, 3}, {0, 2}}) {
    auto none = MustCompile("abc")->WithLength(lo, hi);
    ASSERT_FALSE(none.ok());
    EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(none.status().message(), HasSubstr("no text matches it"));
  }
  auto huge = word->WithLength(0, 20000);
  ASSERT_FALSE(huge.ok());
  EXPECT_THAT(huge.status().message(), HasSubstr("too complex"));
}

TEST(RegexDfaTest, RefusesWithOffsetAndConstruct) {
  struct Case {
    std::string pattern;
    int offset;
    const char* what;
  };
  const std::vector<Case> cases = {
      {"a(?=b)", 1, "lookahead"},
      {"a(?!b)", 1, "lookahead"},
      {"(?<=a)b", 0, "lookbehind"},
      {"(?<!a)b", 0, "lookbehind"},
      {"(a)\\1", 3, "backreference"},
      {"(?<n>a)\\k<n>", 7, "backreference"},
      {"(?P<n>a)(?P=n)", 8, "backreference"},
      {"\\bfoo", 0, "word boundary"},
      {"a\\B", 1, "word boundary"},
      {"(?i)abc", 0, "inline flags"},
      {"a(?s:b)", 1, "inline flags"},
      {"a*+", 2, "possessive"},
      {"a++", 2, "possessive"},
      {"a?+", 2, "possessive"},
      {"a{2}+", 4, "possessive"},
      {"\\p{L}", 0, "Unicode property"},
      {"x\\P{Lu}", 1, "Unicode property"},
      {"*a", 0, "nothing to repeat"},
      {"a|*", 2, "nothing to repeat"},
      {"(+)", 1, "nothing to repeat"},
      {"a**", 2, "nothing to repeat"},
      {"a*??", 3, "nothing to repeat"},
      {"{2}", 0, "nothing to repeat"},
      {"^*", 1, "nothing to repeat"},
      {"a{3,2}", 1, "out of order"},
      {"a{10001}", 1, "over 10000"},
      {"a{1,10001}", 1, "over 10000"},
      {"a{99999999999999999999}", 1, "over 10000"},
      {"a{,3}", 1, "{,m}"},
      {"x(ab", 1, "unbalanced parenthesis"},
      {"ab)", 2, "unbalanced parenthesis"},
      {"[ab", 0, "unbalanced bracket"},
      {"a^b", 1, "`^`"},
      {"a$b", 1, "`$`"},
      {"(^a)", 1, "`^`"},
      {"(a$)", 2, "`$`"},
      {"a$$", 1, "`$`"},
      {"\\", 0, "end of the pattern"},
      {"[]a]", 1, "`]` first"},
      {"[^]", 2, "`]` first"},
      {"[z-a]", 2, "out of order"},
      {"[\\d-z]", 3, "class escape"},
      {"\\q", 0, "escape `\\q`"},
      {"\\x4g", 0, "\\x"},
      {"\\u12", 0, "\\u"},
      {"\\u{110000}", 0, "\\u{"},
      {"\xC3(", 0, "UTF-8"},
      {"ab\xED\xA0\x80", 2, "UTF-8"},
      {"(?#c)", 0, "comment"},
      {"(?>a)", 0, "atomic"},
      {"[[:alpha:]]", 1, "POSIX"},
      {"\\A", 0, "anchor"},
      {"a\\Z", 1, "anchor"},
      {"(?<1a>x)", 3, "group name"},
      {"(?<n>a)(?<n>b)", 10, "used twice"},
      {"\\01", 0, "octal"},
      {"[\\1]", 1, "octal"},
      {"\\cA", 0, "control"},
  };
  for (const Case& c : cases) {
    auto dfa = RegexDfa::Compile(c.pattern);
    ASSERT_FALSE(dfa.ok()) << c.pattern;
    EXPECT_EQ(dfa.status().code(), absl::StatusCode::kInvalidArgument) << c.pattern;
    const std::string message(dfa.status().message());
    EXPECT_THAT(message, HasSubstr("at offset " + std::to_string(c.offset) + ":")) << c.pattern;
    EXPECT_THAT(message, HasSubstr(c.what)) << c.pattern;
    EXPECT_THAT(message, HasSubstr("not supported")) << c.pattern;
  }
}

TEST(RegexDfaTest, RefusesPastTheLimits) {
  std::string deep =
      std::string(RegexDfa::kMaxNesting, '(') + "a" + std::string(RegexDfa::kMaxNesting, ')');
  EXPECT_TRUE(RegexDfa::Compile(deep).ok());
  deep = "(" + deep + ")";
  auto nested = RegexDfa::Compile(deep);
  ASSERT_FALSE(nested.ok());
  EXPECT_THAT(nested.status().message(), HasSubstr("at offset 256: groups nested deeper"));

  const std::string longest = "[" + std::string(RegexDfa::kMaxPatternBytes - 2, 'a') + "]";
  EXPECT_TRUE(RegexDfa::Compile(longest).ok());
  auto too_long = RegexDfa::Compile(longest + "a");
  ASSERT_FALSE(too_long.ok());
  EXPECT_THAT(too_long.status().message(), HasSubstr("at offset 16384: a pattern over"));

  auto nfa = RegexDfa::Compile("(a{1000}){200}");
  ASSERT_FALSE(nfa.ok());
  EXPECT_EQ(nfa.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(nfa.status().message(), HasSubstr("too complex"));

  // Exponentially many DFA states: refused at the cap, quickly.
  for (const auto& [p, match] :
       std::vector<std::pair<const char*, Match>>{{"(a|b)*a(a|b){20}", Match::kFull},
                                                  {"a[ab]{20}", Match::kSearch},
                                                  {"(.*a.{30}|b)*", Match::kFull}}) {
    const auto t0 = std::chrono::steady_clock::now();
    auto dfa = RegexDfa::Compile(p, match);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_FALSE(dfa.ok()) << p;
    EXPECT_EQ(dfa.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_EQ(dfa.status().message(), "too complex: more than 16384 states") << p;
    EXPECT_LT(s, 5.0) << p;
  }
  // Few states, each with a long closure: refused for the work, not the states.
  auto costly = RegexDfa::Compile("(a|b)*a(a|b){12}((){1000}){120}");
  ASSERT_FALSE(costly.ok());
  EXPECT_THAT(costly.status().message(), HasSubstr("too complex"));
  // Just under the cap is fine.
  EXPECT_TRUE(RegexDfa::Compile("(a|b)*a(a|b){12}").ok());
}

TEST(RegexDfaTest, RefusesPatternsNoTextMatches) {
  for (const char* p : {"[^\\s\\x00-\\u{10FFFF}]", "a[^\\d\\x00-\\u{10FFFF}]b|[^\\w\\x00-\\x7F]",
                        "\\uD800", "[\\uD800-\\uDFFF]+"}) {
    for (Match match : {Match::kFull, Match::kSearch}) {
      auto dfa = RegexDfa::Compile(p, match);
      ASSERT_FALSE(dfa.ok()) << p;
      EXPECT_EQ(dfa.status().code(), absl::StatusCode::kInvalidArgument);
      EXPECT_EQ(dfa.status().message(), "no text matches it") << p;
    }
  }
  // A dead branch is pruned; the rest stays.
  const auto dfa = MustCompile("a[^\\s\\x00-\\u{10FFFF}]|b");
  ASSERT_NE(dfa, nullptr);
  EXPECT_EQ(dfa->Walk(dfa->start(), "a"), RegexDfa::kDead);
  EXPECT_TRUE(Accepts(*dfa, "b"));
  ExpectWellFormed(*dfa, "a[^\\s\\S]|b");
}

// Patterns of JSON Schema formats and everyday guided_regex use: they compile fast and match
// what they should.
TEST(RegexDfaTest, FormatPatterns) {
  struct Case {
    const char* name;
    const char* pattern;
    std::vector<const char*> good, bad;
  };
  const std::vector<Case> cases = {
      {"date",
       "\\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\\d|3[01])",
       {"2024-02-28", "1999-12-31", "0000-01-01"},
       {"2024-13-01", "2024-00-10", "2024-1-01", "2024-01-32", "24-01-01", "2024-01-01 "}},
      {"time",
       "([01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(\\.\\d+)?(Z|[+-]([01]\\d|2[0-3]):[0-5]\\d)",
       {"23:59:59Z", "00:00:00.123+05:30"},
       {"24:00:00Z", "12:60:00Z", "12:00:00", "12:00:00.Z"}},
      {"uuid",
       "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
       {"123e4567-e89b-12d3-a456-426614174000", "ABCDEF01-2345-6789-abcd-ef0123456789"},
       {"123e4567-e89b-12d3-a456-42661417400", "123e4567e89b-12d3-a456-426614174000",
        "g23e4567-e89b-12d3-a456-426614174000"}},
      {"ipv4",
       "((25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)\\.){3}(25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)",
       {"255.255.255.255", "0.0.0.0", "192.168.1.10", "9.99.199.249"},
       {"256.1.1.1", "01.1.1.1", "1.2.3", "1.2.3.4.5", "1..2.3"}},
      {"ipv4 short", "(\\d{1,3}\\.){3}\\d{1,3}", {"1.22.333.4"}, {"1.2.3.4444"}},
      {"email",
       "[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\\.[A-Za-z]{2,}",
       {"a.b@x.org", "first+tag@mail.example.co"},
       {"a@b", "@x.org", "a b@x.org", "a@x.o"}},
      {"long", "[a-z]{1000}", {}, {"abc"}},
      {"phone",
       "\\+?\\d{1,3}[ -]?\\(?\\d{3}\\)?[ -]?\\d{3}[ -]?\\d{4}",
       {"+1 (555) 123-4567"},
       {"555-1234"}},
      {"hostname",
       "[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}"
       "[A-Za-z0-9])?)*",
       {"example.com", "a-b.c"},
       {"-a.com", "a..b"}},
  };
  for (const Case& c : cases) {
    const auto t0 = std::chrono::steady_clock::now();
    const auto dfa = MustCompile(c.pattern);
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    ASSERT_NE(dfa, nullptr) << c.name;
    printf("  %-10s %8.2f ms  %6d states\n", c.name, ms, dfa->num_states());
    EXPECT_LT(ms, 2000) << c.name;
    for (const char* text : c.good) EXPECT_TRUE(Accepts(*dfa, text)) << c.name << " " << text;
    for (const char* text : c.bad) EXPECT_FALSE(Accepts(*dfa, text)) << c.name << " " << text;
    const std::regex re(c.pattern, std::regex::ECMAScript);
    for (const char* text : c.good) EXPECT_TRUE(std::regex_match(text, re)) << c.name;
    for (const char* text : c.bad) EXPECT_FALSE(std::regex_match(text, re)) << c.name;
  }
  const auto long_word = MustCompile("[a-z]{1000}");
  ASSERT_NE(long_word, nullptr);
  EXPECT_TRUE(Accepts(*long_word, std::string(1000, 'k')));
  EXPECT_FALSE(Accepts(*long_word, std::string(999, 'k')));
  EXPECT_EQ(long_word->Walk(long_word->start(), std::string(1001, 'k')), RegexDfa::kDead);
  EXPECT_EQ(long_word->num_states(), 1002);
}

}  // namespace
}  // namespace spanserve::engine
