#include "runtime/tokenizer/pieces.h"

namespace spanserve::tokenizer {

void CoverMatches(uint32_t size, std::span<const Span> matches, std::vector<MatchSpan>* out) {
  out->clear();
  if (size == 0) {
    out->push_back({{0, 0}, false});
    return;
  }
  uint32_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.begin) out->push_back({{prev, m.begin}, false});
    out->push_back({m, true});
    prev = m.end;
  }
  if (prev != size) out->push_back({{prev, size}, false});
}

void SplitPiece(const Piece& piece, std::vector<MatchSpan>& cover, bool invert,
                SplitBehavior behavior, std::vector<Piece>* out) {
  if (invert) {
    for (MatchSpan& m : cover) m.is_match = !m.is_match;
  }
  auto emit = [&](Span s) {
    if (s.end > s.begin) out->push_back(SubPiece(piece, s.begin, s.end));
  };
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const MatchSpan& m : cover) {
        if (!m.is_match) emit(m.span);
      }
      return;
    case SplitBehavior::kIsolated:
      for (const MatchSpan& m : cover) emit(m.span);
      return;
    case SplitBehavior::kContiguous:
    case SplitBehavior::kMergedWithPrevious: {
      // Folds left to right into a list of spans; a span joins the previous one when
      // Contiguous: its flag equals the previous flag; MergedWithPrevious: it is a match
      // following a non-match.
      std::vector<Span> spans;
      spans.reserve(cover.size());
      bool previous_match = false;
      for (const MatchSpan& m : cover) {
        const bool join = behavior == SplitBehavior::kContiguous ? m.is_match == previous_match
                                                                 : m.is_match && !previous_match;
        if (join && !spans.empty()) {
          spans.back().end = m.span.end;
        } else {
          spans.push_back(m.span);
        }
        previous_match = m.is_match;
      }
      for (const Span& s : spans) emit(s);
      return;
    }
    case SplitBehavior::kMergedWithNext: {
      // The same fold from right to left: a match preceding a non-match joins it.
      std::vector<Span> spans;
      spans.reserve(cover.size());
      bool previous_match = false;
      for (auto it = cover.rbegin(); it != cover.rend(); ++it) {
        if (it->is_match && !previous_match && !spans.empty()) {
          spans.back().begin = it->span.begin;
        } else {
          spans.push_back(it->span);
        }
        previous_match = it->is_match;
      }
      for (auto it = spans.rbegin(); it != spans.rend(); ++it) emit(*it);
      return;
    }
  }
}

}  // namespace spanserve::tokenizer
