// The unit of work between the encode stages: a piece of (normalized) text, or an added
// token already recognised. Mirrors the splits of `tokenizers`' PreTokenizedString without
// its offset bookkeeping, which encoding to ids does not need.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/tokenizer/regex.h"

namespace spanserve::tokenizer {

struct Piece {
  // Points into the input or into an Arena that outlives the piece.
  std::string_view text;
  // The number of leading bytes of `text` that stand for the first character of the
  // original input (0 if the piece does not start there). Metaspace's prepend_scheme
  // "first" asks whether a piece starts at original offset 0: that is `zero_len > 0`.
  uint32_t zero_len = 0;
  // >= 0: the piece is this added token, and `text` is irrelevant.
  int32_t added_id = -1;
};

// Owns the strings that pieces built during one Encode call point into. Never shared
// between threads.
class Arena {
 public:
  std::string_view Store(std::string s) {
    return *strings_.emplace_back(std::make_unique<std::string>(std::move(s)));
  }

 private:
  std::vector<std::unique_ptr<std::string>> strings_;  // allocates nothing until used
};

// How a Split-style pre-tokenizer treats the delimiters it finds (`tokenizers`'
// SplitDelimiterBehavior).
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

// A match list as `tokenizers`' Pattern::find_matches returns it: spans covering the whole
// text in order, each flagged as a match or not.
struct MatchSpan {
  Span span;
  bool is_match;
};

// Builds the covering list from sorted, non-overlapping match spans of a text of `size`
// bytes. An empty text yields one empty non-match.
void CoverMatches(uint32_t size, std::span<const Span> matches, std::vector<MatchSpan>* out);

// Builds the covering list for a character predicate: each matching character is its own
// match (as `tokenizers` does for char patterns).
template <typename Pred>
void CoverCharMatches(std::string_view text, Pred pred, std::vector<MatchSpan>* out);

// Splits `piece` by `cover` (see CoverMatches; flags flipped when `invert`) with the given
// behaviour and appends the non-empty parts to *out.
void SplitPiece(const Piece& piece, std::vector<MatchSpan>& cover, bool invert,
                SplitBehavior behavior, std::vector<Piece>* out);

// The sub-piece [begin, end) of `piece`, with zero_len carried over.
inline Piece SubPiece(const Piece& piece, uint32_t begin, uint32_t end) {
  Piece p;
  p.text = piece.text.substr(begin, end - begin);
  p.zero_len = piece.zero_len > begin ? piece.zero_len - begin : 0;
  if (p.zero_len > p.text.size()) p.zero_len = static_cast<uint32_t>(p.text.size());
  return p;
}

}  // namespace spanserve::tokenizer

#include "runtime/tokenizer/pieces_inl.h"  // IWYU pragma: keep
