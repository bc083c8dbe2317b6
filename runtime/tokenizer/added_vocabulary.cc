#include "runtime/tokenizer/added_vocabulary.h"

#include <algorithm>

#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

// The last character of text[0, end) (end > 0).
char32_t LastChar(std::string_view text, size_t end) {
  size_t s = end - 1;
  while (s > 0 && (static_cast<uint8_t>(text[s]) & 0xC0) == 0x80) --s;
  return DecodeUtf8(text, &s);
}

// Start of the run of whitespace that ends at `end` (`\s*$` on text[0, end)).
size_t TrailingSpaceStart(std::string_view text, size_t end) {
  while (end > 0) {
    size_t s = end - 1;
    while (s > 0 && (static_cast<uint8_t>(text[s]) & 0xC0) == 0x80) --s;
    size_t i = s;
    if (!IsWhitespace(DecodeUtf8(text, &i))) break;
    end = s;
  }
  return end;
}

// End of the run of whitespace that starts at `begin` (`^\s*` on text[begin, )).
size_t LeadingSpaceEnd(std::string_view text, size_t begin) {
  while (begin < text.size()) {
    size_t i = begin;
    if (!IsWhitespace(DecodeUtf8(text, &i))) break;
    begin = i;
  }
  return begin;
}

}  // namespace

void AddedVocabulary::Matcher::Add(std::string_view pattern, int32_t token) {
  int32_t node = 0;
  for (unsigned char b : pattern) {
    auto& children = nodes[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(b, INT32_MIN));
    if (it != children.end() && it->first == b) {
      node = it->second;
      continue;
    }
    const auto child = static_cast<int32_t>(nodes.size());
    children.insert(it, {b, child});
    nodes.emplace_back();
    node = child;
  }
  // The first of two identical patterns wins, as aho-corasick keeps the first.
  if (nodes[node].token < 0) nodes[node].token = token;
  first_byte[static_cast<uint8_t>(pattern[0])] = true;
}

size_t AddedVocabulary::Matcher::LongestAt(std::string_view text, size_t pos,
                                           int32_t* token) const {
  size_t best = 0;
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto b = static_cast<uint8_t>(text[i]);
    const auto& children = nodes[node].children;
    auto it = std::lower_bound(children.begin(), children.end(), std::make_pair(b, INT32_MIN));
    if (it == children.end() || it->first != b) break;
    node = it->second;
    if (nodes[node].token >= 0) {
      best = i + 1 - pos;
      *token = nodes[node].token;
    }
  }
  return best;
}

AddedVocabulary::AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer) {
  for (AddedToken& t : tokens) {
    if (t.content.empty()) continue;
    const auto index = static_cast<int32_t>(tokens_.size());
    by_id_.try_emplace(t.id, index);
    by_content_.try_emplace(t.content, index);
    tokens_.push_back(std::move(t));
  }
  // `tokenizers` searches special tokens first, then the others, each in file order.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < tokens_.size(); ++i) {
      const AddedToken& t = tokens_[i];
      if (t.special != (pass == 0)) continue;
      if (!t.normalized) {
        raw_.Add(t.content, static_cast<int32_t>(i));
        continue;
      }
      std::string content = t.content;
      uint32_t zero_len = 0;
      if (normalizer != nullptr && !normalizer->Normalize(&content, &zero_len)) continue;
      if (!content.empty()) normalized_.Add(content, static_cast<int32_t>(i));
    }
  }
}

const AddedToken* AddedVocabulary::FindById(int32_t id) const {
  auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

int32_t AddedVocabulary::FindByContent(std::string_view content) const {
  auto it = by_content_.find(content);
  return it == by_content_.end() ? -1 : tokens_[it->second].id;
}

void AddedVocabulary::Split(const Matcher& matcher, const Piece& piece,
                            std::vector<Piece>* out) const {
  const std::string_view text = piece.text;
  if (matcher.empty() || text.empty()) {
    if (!text.empty()) out->push_back(piece);
    return;
  }
  size_t start_offset = 0;
  size_t pos = 0;
  while (pos < text.size()) {
    if (!matcher.first_byte[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    int32_t index = -1;
    const size_t len = matcher.LongestAt(text, pos, &index);
    if (len == 0) {
      ++pos;
      continue;
    }
    size_t start = pos, stop = pos + len;
    pos = stop;  // the search resumes after the match, whatever happens to it below
    const AddedToken& token = tokens_[index];
    if (token.single_word) {
      const bool space_before = start == 0 || !IsWordChar(LastChar(text, start));
      size_t next = stop;
      const bool space_after = stop == text.size() || !IsWordChar(DecodeUtf8(text, &next));
      if (!space_before || !space_after) continue;
    }
    if (token.lstrip) start = std::max(TrailingSpaceStart(text, start), start_offset);
    if (token.rstrip) stop = LeadingSpaceEnd(text, stop);
    if (start_offset < start) {
      out->push_back(
          SubPiece(piece, static_cast<uint32_t>(start_offset), static_cast<uint32_t>(start)));
    }
    Piece t;
    t.added_id = token.id;
    out->push_back(t);
    start_offset = stop;
  }
  if (start_offset < text.size()) {
    out->push_back(
        SubPiece(piece, static_cast<uint32_t>(start_offset), static_cast<uint32_t>(text.size())));
  }
}

}  // namespace spanserve::tokenizer
