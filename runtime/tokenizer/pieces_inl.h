// Template definitions for pieces.h.
#pragma once

#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {

template <typename Pred>
void CoverCharMatches(std::string_view text, Pred pred, std::vector<MatchSpan>* out) {
  out->clear();
  if (text.empty()) {
    out->push_back({{0, 0}, false});
    return;
  }
  uint32_t last = 0;
  size_t i = 0;
  while (i < text.size()) {
    const auto b = static_cast<uint32_t>(i);
    const char32_t c = DecodeUtf8(text, &i);
    if (pred(c)) {
      if (last < b) out->push_back({{last, b}, false});
      out->push_back({{b, static_cast<uint32_t>(i)}, true});
      last = static_cast<uint32_t>(i);
    }
  }
  if (last < text.size()) out->push_back({{last, static_cast<uint32_t>(text.size())}, false});
}

}  // namespace spanserve::tokenizer
