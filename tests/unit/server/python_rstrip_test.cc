// PythonRstripLength (server/convert.h) removes exactly what Python's str.rstrip() does:
// lm-evaluation-harness's `_encode_pair` moves that whitespace from the context into the
// continuation, so Score must cut at the same place.
#include <cstdint>
#include <string>

#include <gtest/gtest.h>

#include "server/convert.h"

namespace spanserve::server {
namespace {

// UTF-8 of one code point.
std::string Utf8(char32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out += static_cast<char>(cp);
  } else if (cp < 0x800) {
    out += static_cast<char>(0xC0 | (cp >> 6));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += static_cast<char>(0xE0 | (cp >> 12));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    out += static_cast<char>(0xF0 | (cp >> 18));
    out += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
    out += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    out += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return out;
}

bool PythonIsSpace(char32_t cp) {
  // [c for c in range(0x110000) if chr(c).isspace()] (CPython 3.11).
  for (char32_t s : {0x09,   0x0A,   0x0B,   0x0C,   0x0D,   0x1C,   0x1D,   0x1E,   0x1F,   0x20,
                     0x85,   0xA0,   0x1680, 0x2000, 0x2001, 0x2002, 0x2003, 0x2004, 0x2005, 0x2006,
                     0x2007, 0x2008, 0x2009, 0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000}) {
    if (cp == s) return true;
  }
  return false;
}

TEST(PythonRstripTest, EveryCodePointIsWhitespaceExactlyWhenPythonSaysSo) {
  for (char32_t cp = 1; cp < 0x110000; ++cp) {
    if (cp >= 0xD800 && cp <= 0xDFFF) continue;  // not encodable in UTF-8
    std::string text = "a";
    text.append(Utf8(cp));
    ASSERT_EQ(PythonRstripLength(text), PythonIsSpace(cp) ? 1u : text.size())
        << std::hex << static_cast<uint32_t>(cp);
  }
}

TEST(PythonRstripTest, RunsEmptyAndAllWhitespace) {
  EXPECT_EQ(PythonRstripLength(""), 0u);
  EXPECT_EQ(PythonRstripLength(" \t\n"), 0u);
  EXPECT_EQ(PythonRstripLength("was "), 3u);
  EXPECT_EQ(PythonRstripLength("Answer:\t \n"), 7u);
  EXPECT_EQ(PythonRstripLength("x\u00a0\u3000 \u2029"), 1u);
  // Whitespace inside the text stays; a non-space multi-byte end stops the cut.
  EXPECT_EQ(PythonRstripLength("a b"), 3u);
  EXPECT_EQ(PythonRstripLength("caf\u00e9 "), 5u);
  EXPECT_EQ(PythonRstripLength("\u65e5\u672c "), 6u);
  EXPECT_EQ(PythonRstripLength("train \U0001F682"), 10u);
  // U+200B ZERO WIDTH SPACE and U+FEFF are not str.isspace().
  EXPECT_EQ(PythonRstripLength("x\u200b"), 4u);
  EXPECT_EQ(PythonRstripLength("x\ufeff"), 4u);
}

}  // namespace
}  // namespace spanserve::server
