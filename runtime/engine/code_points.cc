#include "runtime/engine/code_points.h"

#include <algorithm>

namespace spanserve::engine {

CodePointRanges NormalizeCodePoints(CodePointRanges ranges) {
  CodePointRanges split;
  for (auto [lo, hi] : ranges) {
    hi = std::min(hi, kMaxCodePoint);
    if (lo > hi) continue;
    if (lo <= 0xD7FF) split.push_back({lo, std::min<uint32_t>(hi, 0xD7FF)});
    if (hi >= 0xE000) split.push_back({std::max<uint32_t>(lo, 0xE000), hi});
  }
  std::sort(split.begin(), split.end());
  CodePointRanges out;
  for (const auto& r : split) {
    if (!out.empty() && r.first <= out.back().second + 1) {
      out.back().second = std::max(out.back().second, r.second);
    } else {
      out.push_back(r);
    }
  }
  return out;
}

CodePointRanges ComplementCodePoints(const CodePointRanges& set) {
  CodePointRanges out;
  uint32_t next = 0;
  for (auto [lo, hi] : set) {
    if (lo > next) out.push_back({next, lo - 1});
    next = hi + 1;
  }
  if (next <= kMaxCodePoint) out.push_back({next, kMaxCodePoint});
  return NormalizeCodePoints(std::move(out));
}

}  // namespace spanserve::engine
