#include "runtime/tokenizer/streaming.h"

#include "runtime/tokenizer/decoders.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";

// Start of the last character of text[0, end) (end > 0).
size_t LastCharStart(const std::string& text, size_t end) {
  size_t s = end - 1;
  while (s > 0 && (static_cast<uint8_t>(text[s]) & 0xC0) == 0x80) --s;
  return s;
}

}  // namespace

std::string StreamingDetokenizer::Add(int32_t id) {
  if (!tokenizer_.Keeps(id, skip_special_tokens_)) return "";
  window_.push_back(id);
  const StreamTraits& traits = tokenizer_.stream_traits();
  if (traits.flush_only) return "";
  // An open run of byte tokens may still turn out valid or invalid as a whole.
  if (traits.byte_fallback && tokenizer_.IsByteFallbackToken(id)) return "";

  const std::string text = tokenizer_.DecodeWindow(window_, DecodeContext{at_start_, false});
  size_t end = text.size();
  // A trailing U+FFFD may be an incomplete sequence that the next bytes complete.
  bool held = false;
  while (end >= emitted_ + kReplacementChar.size() &&
         std::string_view(text).substr(end - kReplacementChar.size(), kReplacementChar.size()) ==
             kReplacementChar) {
    end -= kReplacementChar.size();
    held = true;
  }
  // Characters that a Strip decoder removes from the very end of the text.
  for (int k = 0; k < traits.strip_tail_count && end > emitted_; ++k) {
    const size_t s = LastCharStart(text, end);
    size_t i = s;
    if (DecodeUtf8(text, &i) != traits.strip_tail) break;
    end = s;
    held = true;
  }
  // Characters that a Replace on the fused text may still rewrite with what follows.
  for (int k = 0; k < traits.replace_holdback && end > emitted_; ++k) {
    end = LastCharStart(text, end);
    held = true;
  }
  std::string out;
  if (end > emitted_) {
    out = text.substr(emitted_, end - emitted_);
    emitted_ = end;
  }
  // Restart the window here when all of its text is final, no Replace spans windows, and
  // the start-sensitive decoder steps have seen some text.
  if (!held && traits.replace_holdback == 0 && !(at_start_ && text.empty())) {
    window_.clear();
    emitted_ = 0;
    at_start_ = false;
  }
  return out;
}

std::string StreamingDetokenizer::Flush() {
  std::string out;
  // A sequence with no kept id still decodes to what the decoder makes of no tokens (a
  // Fuse then a Replace whose regex matches the empty string writes its content).
  if (!window_.empty() || at_start_) {
    const std::string text = tokenizer_.DecodeWindow(window_, DecodeContext{at_start_, true});
    if (text.size() > emitted_) out = text.substr(emitted_);
  }
  window_.clear();
  emitted_ = 0;
  at_start_ = true;
  return out;
}

}  // namespace spanserve::tokenizer
