#include "runtime/tokenizer/normalizers.h"

namespace spanserve::tokenizer {
namespace {

// After a rewrite that may change the first character: a piece at the original start
// keeps exactly its (new) first character there.
void ResetZeroLen(const std::string& text, uint32_t* zero_len) {
  if (*zero_len == 0) return;
  *zero_len = text.empty() ? 0 : static_cast<uint32_t>(Utf8LeadLength(text[0]));
}

}  // namespace

bool ReplaceAll(const Pattern& pattern, std::string_view text, std::string_view content,
                std::string* out) {
  std::vector<Span> matches;
  if (!pattern.FindAll(text, &matches)) return false;
  out->clear();
  out->reserve(text.size() + matches.size() * content.size());
  uint32_t prev = 0;
  for (const Span& m : matches) {
    out->append(text.substr(prev, m.begin - prev));
    out->append(content);
    prev = m.end;
  }
  out->append(text.substr(prev));
  return true;
}

bool UnicodeNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  std::string out;
  NormalizeUnicode(form_, *text, &out);
  *text = std::move(out);
  ResetZeroLen(*text, zero_len);
  return true;
}

bool LowercaseNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  std::string out;
  LowercaseChars(*text, &out);
  *text = std::move(out);
  ResetZeroLen(*text, zero_len);
  return true;
}

bool PrependNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  if (text->empty()) return true;
  text->insert(0, prefix_);
  // The prepended characters take the alignment of the first character.
  if (*zero_len > 0) *zero_len += static_cast<uint32_t>(prefix_.size());
  return true;
}

bool ReplaceNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  std::string out;
  if (!ReplaceAll(*pattern_, *text, content_, &out)) return false;
  *text = std::move(out);
  ResetZeroLen(*text, zero_len);
  return true;
}

bool StripNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  size_t begin = 0, end = text->size();
  if (left_) {
    while (begin < end) {
      size_t i = begin;
      if (!IsWhitespace(DecodeUtf8(*text, &i))) break;
      begin = i;
    }
  }
  if (right_) {
    while (end > begin) {
      size_t s = end - 1;
      while (s > begin && (static_cast<uint8_t>((*text)[s]) & 0xC0) == 0x80) --s;
      size_t i = s;
      if (!IsWhitespace(DecodeUtf8(*text, &i))) break;
      end = s;
    }
  }
  *text = text->substr(begin, end - begin);
  // Stripped leading characters leave the piece starting past the original start.
  if (begin > 0) *zero_len = 0;
  if (*zero_len > text->size()) *zero_len = static_cast<uint32_t>(text->size());
  return true;
}

bool SequenceNormalizer::Normalize(std::string* text, uint32_t* zero_len) const {
  for (const auto& step : steps_) {
    if (!step->Normalize(text, zero_len)) return false;
  }
  return true;
}

}  // namespace spanserve::tokenizer
