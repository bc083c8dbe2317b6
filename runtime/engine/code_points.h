// Sets of Unicode code points for the guided-decoding compilers (regex.h, grammar.h): sorted,
// disjoint, non-adjacent ranges that never hold a surrogate (U+D800..U+DFFF), which no valid
// UTF-8 text encodes.
#pragma once

#include <cstdint>
#include <utility>
#include <vector>

namespace spanserve::engine {

inline constexpr uint32_t kMaxCodePoint = 0x10FFFF;

using CodePointRanges = std::vector<std::pair<uint32_t, uint32_t>>;

// The code points of `ranges` (inclusive pairs, in any order, overlapping or not) in that
// form: surrogates and values past U+10FFFF dropped, overlapping and adjacent ranges joined.
CodePointRanges NormalizeCodePoints(CodePointRanges ranges);

// Every code point not in `set` (a normalized set), surrogates excepted.
CodePointRanges ComplementCodePoints(const CodePointRanges& set);

}  // namespace spanserve::engine
