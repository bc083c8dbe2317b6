#include "runtime/tokenizer/pre_tokenizers.h"

#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {

void ByteLevelPreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                                  std::vector<Piece>* out) const {
  Piece p = piece;
  if (add_prefix_space_ && !p.text.empty() && p.text[0] != ' ') {
    std::string spaced;
    spaced.reserve(piece.text.size() + 1);
    spaced.push_back(' ');
    spaced.append(piece.text);
    p.text = scratch->arena->Store(std::move(spaced));
    if (p.zero_len > 0) ++p.zero_len;
  }
  if (regex_ == nullptr) {
    if (!p.text.empty()) out->push_back(p);
    return;
  }
  scratch->matches.clear();
  if (!regex_->FindAll(p.text, &scratch->matches)) scratch->regex_failed = true;
  CoverMatches(static_cast<uint32_t>(p.text.size()), scratch->matches, &scratch->cover);
  SplitPiece(p, scratch->cover, /*invert=*/false, SplitBehavior::kIsolated, out);
}

MetaspacePreTokenizer::MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split)
    : replacement_(replacement), scheme_(scheme), split_(split) {
  AppendUtf8(replacement, &replacement_utf8_);
}

void MetaspacePreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                                  std::vector<Piece>* out) const {
  std::string text;
  text.reserve(piece.text.size() + 8);
  uint32_t zero_len = piece.zero_len;
  for (size_t i = 0; i < piece.text.size(); ++i) {
    if (piece.text[i] == ' ') {
      text.append(replacement_utf8_);
      // A replaced first character stays the first character.
      if (i == 0 && zero_len > 0) zero_len = static_cast<uint32_t>(replacement_utf8_.size());
    } else {
      text.push_back(piece.text[i]);
    }
  }
  const bool starts_with_replacement =
      text.compare(0, replacement_utf8_.size(), replacement_utf8_) == 0;
  bool prepend = false;
  switch (scheme_) {
    case PrependScheme::kAlways:
      prepend = !starts_with_replacement;
      break;
    case PrependScheme::kFirst:
      prepend = !starts_with_replacement && zero_len > 0;
      break;
    case PrependScheme::kNever:
      break;
  }
  // `tokenizers` prepends only to a non-empty piece; empty pieces never get here.
  if (prepend && !text.empty()) {
    text.insert(0, replacement_utf8_);
    if (zero_len > 0) zero_len += static_cast<uint32_t>(replacement_utf8_.size());
  }
  Piece p;
  p.text = scratch->arena->Store(std::move(text));
  p.zero_len = zero_len;
  if (!split_) {
    if (!p.text.empty()) out->push_back(p);
    return;
  }
  const char32_t r = replacement_;
  CoverCharMatches(
      p.text, [r](char32_t c) { return c == r; }, &scratch->cover);
  SplitPiece(p, scratch->cover, /*invert=*/false, SplitBehavior::kMergedWithNext, out);
}

void SplitPreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                              std::vector<Piece>* out) const {
  scratch->matches.clear();
  if (!pattern_->FindAll(piece.text, &scratch->matches)) scratch->regex_failed = true;
  CoverMatches(static_cast<uint32_t>(piece.text.size()), scratch->matches, &scratch->cover);
  SplitPiece(piece, scratch->cover, invert_, behavior_, out);
}

void DigitsPreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                               std::vector<Piece>* out) const {
  CoverCharMatches(
      piece.text, [](char32_t c) { return IsNumeric(c); }, &scratch->cover);
  SplitPiece(piece, scratch->cover, /*invert=*/false,
             individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
}

void WhitespaceSplitPreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                                        std::vector<Piece>* out) const {
  CoverCharMatches(
      piece.text, [](char32_t c) { return IsWhitespace(c); }, &scratch->cover);
  SplitPiece(piece, scratch->cover, /*invert=*/false, SplitBehavior::kRemoved, out);
}

void WhitespacePreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                                   std::vector<Piece>* out) const {
  scratch->matches.clear();
  if (!pattern_->FindAll(piece.text, &scratch->matches)) scratch->regex_failed = true;
  CoverMatches(static_cast<uint32_t>(piece.text.size()), scratch->matches, &scratch->cover);
  SplitPiece(piece, scratch->cover, /*invert=*/true, SplitBehavior::kRemoved, out);
}

void SequencePreTokenizer::Split(const Piece& piece, PreTokenizeScratch* scratch,
                                 std::vector<Piece>* out) const {
  std::vector<Piece> current{piece};
  std::vector<Piece> next;
  for (const auto& step : steps_) {
    next.clear();
    for (const Piece& p : current) step->Split(p, scratch, &next);
    current.swap(next);
  }
  out->insert(out->end(), current.begin(), current.end());
}

}  // namespace spanserve::tokenizer
