#include "runtime/tokenizer/byte_level.h"

#include <array>

#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

struct Tables {
  std::array<std::string, 256> byte_to_char;
  std::array<int16_t, 512> char_to_byte;  // every alphabet code point is below U+0200

  Tables() {
    char_to_byte.fill(-1);
    std::array<char32_t, 256> cp{};
    std::array<bool, 256> printable{};
    for (int b = '!'; b <= '~'; ++b) printable[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) printable[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) printable[b] = true;
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) cp[b] = printable[b] ? static_cast<char32_t>(b) : next++;
    for (int b = 0; b < 256; ++b) {
      AppendUtf8(cp[b], &byte_to_char[b]);
      char_to_byte[cp[b]] = static_cast<int16_t>(b);
    }
  }
};

const Tables& GetTables() {
  static const Tables* tables = new Tables();
  return *tables;
}

}  // namespace

std::string_view ByteLevelChar(uint8_t b) { return GetTables().byte_to_char[b]; }

int ByteLevelByte(char32_t c) { return c < 512 ? GetTables().char_to_byte[c] : -1; }

bool ByteLevelToBytes(std::string_view token, std::string* out) {
  out->clear();
  size_t i = 0;
  while (i < token.size()) {
    const int b = ByteLevelByte(DecodeUtf8(token, &i));
    if (b < 0) return false;
    out->push_back(static_cast<char>(b));
  }
  return true;
}

}  // namespace spanserve::tokenizer
