// GPT-2's byte-level alphabet: a bijection between the 256 byte values and 256 printable
// code points, so that any byte string can be written as a vocabulary string.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace spanserve::tokenizer {

// UTF-8 of the code point that stands for byte `b` (e.g. ' ' -> "Ġ", '\n' -> "Ċ").
std::string_view ByteLevelChar(uint8_t b);

// The byte that code point `c` stands for, or -1 if `c` is not in the alphabet.
int ByteLevelByte(char32_t c);

// Maps a vocabulary string written in the alphabet back to raw bytes. Returns false (and
// leaves *out unspecified) if some character is not in the alphabet.
bool ByteLevelToBytes(std::string_view token, std::string* out);

}  // namespace spanserve::tokenizer
