// UTF-8 helpers and the Unicode services the tokenizer needs (normal forms, case mapping,
// character properties). Properties and normal forms come from ICU, never from tables
// written here. All functions are thread-safe.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/text.h"

namespace spanserve::tokenizer {

// Length in bytes of the well-formed UTF-8 sequence at the start of `s`, or 0 if `s` does
// not start with one (Unicode Table 3-7: no overlongs, no surrogates, max U+10FFFF).
size_t ValidUtf8SequenceLength(std::string_view s);

// Byte offset of the first ill-formed UTF-8 sequence in `s`, or std::string_view::npos.
size_t FindInvalidUtf8(std::string_view s);
inline bool IsValidUtf8(std::string_view s) { return FindInvalidUtf8(s) == std::string_view::npos; }

// Length of the UTF-8 sequence whose lead byte is `lead`; 1 for a byte that is not a lead.
inline size_t Utf8LeadLength(uint8_t lead) {
  if (lead < 0x80) return 1;
  if (lead >= 0xF0) return 4;
  if (lead >= 0xE0) return 3;
  if (lead >= 0xC0) return 2;
  return 1;
}

// Decodes the code point at s[*pos] (`s` must be valid UTF-8) and advances *pos past it.
inline char32_t DecodeUtf8(std::string_view s, size_t* pos) {
  const auto b0 = static_cast<uint8_t>(s[*pos]);
  if (b0 < 0x80) {
    ++*pos;
    return b0;
  }
  const size_t len = Utf8LeadLength(b0);
  char32_t c = b0 & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) c = (c << 6) | (static_cast<uint8_t>(s[*pos + k]) & 0x3F);
  *pos += len;
  return c;
}

// AppendUtf8 (the UTF-8 encoding of a code point): common/text.h.

// Rust's String::from_utf8_lossy: each maximal ill-formed subpart becomes one U+FFFD.
std::string Utf8Lossy(std::string_view bytes);

bool IsWhitespaceSlow(char32_t c);
bool IsNumericSlow(char32_t c);

// Rust's char::is_whitespace and regex `\s`: the White_Space property.
inline bool IsWhitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return IsWhitespaceSlow(c);
}

// Rust regex `\w`: Alphabetic, Mark, Decimal_Number, Connector_Punctuation, Join_Control.
bool IsWordChar(char32_t c);

// Rust's char::is_numeric: general category Nd, Nl or No (what the Digits pre-tokenizer
// splits on: "½", "²", "Ⅻ" and "٣" count, not only 0-9).
inline bool IsNumeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  return IsNumericSlow(c);
}

enum class NormalForm { kNfc, kNfd, kNfkc, kNfkd };

// Writes the normal form of `in` (valid UTF-8) to *out. ASCII input is copied unchanged.
void NormalizeUnicode(NormalForm form, std::string_view in, std::string* out);

// Rust's per-character char::to_lowercase (full mappings, no context: Σ always → σ).
void LowercaseChars(std::string_view in, std::string* out);

}  // namespace spanserve::tokenizer
