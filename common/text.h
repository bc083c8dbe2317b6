// Client-supplied strings on their way into an error message or a log line: bounded, so a
// 100 KB value cannot make a 100 KB answer or log line, and escaped for where they go.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"

namespace spanserve {

// The most bytes of a client's value that an error message or a log line repeats.
inline constexpr size_t kMaxEchoBytes = 128;

// The code point of the well-formed UTF-8 sequence at s[i] (i < s.size()) in *code_point,
// and its length in bytes (1-4); 0 if the bytes there are not one (an overlong form, a
// surrogate, a value past U+10FFFF, or cut short).
size_t DecodeUtf8(absl::string_view s, size_t i, uint32_t* code_point);

// Appends the UTF-8 encoding of `code_point` (1-4 bytes); a value past U+10FFFF is written
// as U+FFFD.
void AppendUtf8(uint32_t code_point, std::string* out);

// Whether `value` is well-formed UTF-8 (no overlong forms, surrogates or values past
// U+10FFFF), as protobuf requires of string fields.
bool IsValidUtf8(absl::string_view value);

// C-escaped (absl::CEscape) and cut to at most `max_bytes` of the value, with
// "... (N bytes)" appended when cut, for error messages.
std::string EchoValue(absl::string_view value, size_t max_bytes = kMaxEchoBytes);

// A JSON string literal, quotes included: `"`, `\` and every control byte escaped (\u00XX),
// bytes that are not valid UTF-8 replaced by U+FFFD, cut on a character boundary to at
// most `max_bytes` of the value with "..." appended when cut. Every byte above 0x7F of
// valid UTF-8 is kept as it is.
std::string JsonString(absl::string_view value, size_t max_bytes = kMaxEchoBytes);

}  // namespace spanserve
