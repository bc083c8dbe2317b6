// Incremental detokenization and stop strings across token boundaries.
#include "runtime/engine/stop_checker.h"

#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

TEST(StopStringMatcherTest, MatchAcrossPiecesIsExcludedWithWhatFollows) {
  StopStringMatcher m;
  const std::vector<std::string> stops = {"STOP"};
  std::string out;
  EXPECT_EQ(m.Feed("hello S", stops, true, &out), -1);
  EXPECT_EQ(out, "hello ");  // "S" is held: it may start "STOP"
  EXPECT_EQ(m.Feed("T", stops, true, &out), -1);
  EXPECT_EQ(out, "hello ");
  EXPECT_EQ(m.Feed("OP and more", stops, true, &out), 0);
  EXPECT_EQ(out, "hello ");
}

TEST(StopStringMatcherTest, HeldTextIsReleasedWhenItDiverges) {
  StopStringMatcher m;
  const std::vector<std::string> stops = {"abc"};
  std::string out;
  EXPECT_EQ(m.Feed("xab", stops, true, &out), -1);
  EXPECT_EQ(out, "x");
  EXPECT_EQ(m.Feed("d", stops, true, &out), -1);
  EXPECT_EQ(out, "xabd");
  EXPECT_EQ(m.Feed("a", stops, true, &out), -1);
  m.Flush(&out);
  EXPECT_EQ(out, "xabda");
}

TEST(StopStringMatcherTest, IncludeKeepsTheMatchButNotWhatFollows) {
  StopStringMatcher m;
  const std::vector<std::string> stops = {"STOP", "ab"};
  std::string out;
  EXPECT_EQ(m.Feed("hello ST", stops, true, &out, /*include=*/true), -1);
  EXPECT_EQ(out, "hello ");
  EXPECT_EQ(m.Feed("OP and more", stops, true, &out, /*include=*/true), 0);
  EXPECT_EQ(out, "hello STOP");
  StopStringMatcher m2;
  out.clear();
  EXPECT_EQ(m2.Feed("xxabSTOP", stops, true, &out, /*include=*/true), 1);
  EXPECT_EQ(out, "xxab");
}

TEST(StopStringMatcherTest, EarliestMatchWinsAndUncheckedTextPasses) {
  StopStringMatcher m;
  const std::vector<std::string> stops = {"world", "lo w"};
  std::string out;
  EXPECT_EQ(m.Feed("hello world", stops, true, &out), 1);
  EXPECT_EQ(out, "hel");
  StopStringMatcher unchecked;
  out.clear();
  EXPECT_EQ(unchecked.Feed("hello world", stops, false, &out), -1);
  EXPECT_EQ(out, "hello world");
}

// Bytes per token; an incomplete UTF-8 tail decodes to U+FFFD, like a byte-level BPE.
// Token 5 is special: "<s>", or nothing when skipped.
std::string ByteDecode(std::span<const int32_t> ids, bool skip_special_tokens) {
  static const std::vector<std::string> kPieces = {"a", "\xC3", "\xA9", "b", " ", "<s>"};
  std::string s;
  for (int32_t t : ids) {
    if (t != 5 || !skip_special_tokens) s += kPieces[t];
  }
  if (!s.empty() && (static_cast<unsigned char>(s.back()) & 0xE0) == 0xC0) {
    s.pop_back();
    s += "\xEF\xBF\xBD";
  }
  return s;
}

TEST(IncrementalDetokenizerTest, HoldsIncompleteUtf8) {
  IncrementalDetokenizer d;
  const std::vector<int32_t> tokens = {0, 4, 0, 1, 2, 3};  // prompt "a ", then "a", "é", "b"
  d.Reset(2);
  std::string text;
  d.Step(ByteDecode, std::span<const int32_t>(tokens).first(3), &text);
  EXPECT_EQ(text, "a");
  d.Step(ByteDecode, std::span<const int32_t>(tokens).first(4), &text);
  EXPECT_EQ(text, "a");  // half a character: held
  d.Step(ByteDecode, std::span<const int32_t>(tokens).first(5), &text);
  EXPECT_EQ(text, "a\xC3\xA9");
  d.Step(ByteDecode, tokens, &text);
  EXPECT_EQ(text,
            "a\xC3\xA9"
            "b");
}

TEST(IncrementalDetokenizerTest, FlushReleasesAnIncompleteTail) {
  IncrementalDetokenizer d;
  const std::vector<int32_t> tokens = {0, 1};
  d.Reset(1);
  std::string text;
  d.Step(ByteDecode, tokens, &text);
  EXPECT_EQ(text, "");
  d.Flush(ByteDecode, tokens, &text);
  EXPECT_EQ(text, "\xEF\xBF\xBD");
}

TEST(IncrementalDetokenizerTest, SpecialTokensAreSkippedUnlessAsked) {
  const std::vector<int32_t> tokens = {0, 5, 3, 5};  // prompt "a", then <s> b <s>
  for (const bool skip : {true, false}) {
    IncrementalDetokenizer d;
    d.Reset(1, skip);
    std::string text;
    for (size_t n = 2; n <= tokens.size(); ++n) {
      d.Step(ByteDecode, std::span<const int32_t>(tokens).first(n), &text);
    }
    d.Flush(ByteDecode, tokens, &text);
    EXPECT_EQ(text, skip ? "b" : "<s>b<s>");
  }
}

}  // namespace
}  // namespace spanserve::engine
