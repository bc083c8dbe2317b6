#include "common/text.h"

#include <string>

#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve {
namespace {

// What a log reader sees: the literal parses as JSON, back to the text it stands for.
std::string ParsedBack(const std::string& literal) {
  return nlohmann::json::parse(literal).get<std::string>();
}

TEST(JsonString, EscapesQuotesBackslashesAndControlBytes) {
  constexpr char kNasty[] = "it's \"q\" \\ \x01\x1f\n\t\x7f end\0.";
  const std::string nasty(kNasty, sizeof(kNasty) - 1);  // the NUL byte included
  const std::string lit = JsonString(nasty);
  EXPECT_EQ(ParsedBack(lit), nasty);
  EXPECT_EQ(lit.find('\x01'), std::string::npos);
  EXPECT_EQ(lit.find("\\'"), std::string::npos);  // not a JSON escape
  EXPECT_EQ(JsonString("caf\xC3\xA9 \xE2\x82\xAC"), "\"caf\xC3\xA9 \xE2\x82\xAC\"");
}

TEST(JsonString, ReplacesInvalidUtf8AndBoundsTheLength) {
  EXPECT_EQ(ParsedBack(JsonString("a\xFF"
                                  "b\xC0\xAF"
                                  "c\xED\xA0\x80")),
            "a\xEF\xBF\xBD"
            "b\xEF\xBF\xBD\xEF\xBF\xBD"
            "c\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");
  const std::string big(100000, 'x');
  const std::string lit = JsonString(big);
  EXPECT_LE(lit.size(), kMaxEchoBytes + 8);
  EXPECT_EQ(ParsedBack(lit), std::string(kMaxEchoBytes, 'x') + "...");
  // A cut never splits a character: 63 two-byte characters fit in 127 bytes, not 64.
  std::string accents;
  for (int i = 0; i < 100; ++i) accents += "\xC3\xA9";
  const std::string cut = ParsedBack(JsonString(accents, 127));
  EXPECT_EQ(cut.size(), 63 * 2 + 3u);
}

TEST(IsValidUtf8, AcceptsUtf8AndRefusesTheRest) {
  EXPECT_TRUE(IsValidUtf8(""));
  EXPECT_TRUE(IsValidUtf8("plain \x7f caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x98\x80"));
  EXPECT_FALSE(IsValidUtf8("\xFF"));
  EXPECT_FALSE(IsValidUtf8("\xC0\x80"));          // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xED\xA0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xF4\x90\x80\x80"));  // past U+10FFFF
  EXPECT_FALSE(IsValidUtf8("ok\xE2\x82"));        // cut short
}

TEST(EchoValue, CEscapesAndBounds) {
  EXPECT_EQ(EchoValue("a'b\n"), "a\\'b\\n");
  const std::string echoed = EchoValue(std::string(100000, 'm'));
  EXPECT_LT(echoed.size(), kMaxEchoBytes + 32);
  EXPECT_NE(echoed.find("(100000 bytes)"), std::string::npos);
}

}  // namespace
}  // namespace spanserve
