#include "runtime/tokenizer/decoders.h"

#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/normalizers.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

std::vector<char32_t> Chars(std::string_view s) {
  std::vector<char32_t> out;
  size_t i = 0;
  while (i < s.size()) out.push_back(DecodeUtf8(s, &i));
  return out;
}

}  // namespace

bool ParseByteToken(std::string_view token, uint8_t* byte) {
  // Rust's u8::from_str_radix(&token[3..5], 16): two hex digits, or '+' and one.
  if (token.size() != 6 || token.substr(0, 3) != "<0x" || token[5] != '>') return false;
  const int lo = HexValue(token[4]);
  if (lo < 0) return false;
  if (token[3] == '+') {
    *byte = static_cast<uint8_t>(lo);
    return true;
  }
  const int hi = HexValue(token[3]);
  if (hi < 0) return false;
  *byte = static_cast<uint8_t>(hi * 16 + lo);
  return true;
}

void ByteLevelDecoder::DecodeChain(std::vector<std::string>* tokens,
                                   const DecodeContext& ctx) const {
  std::string bytes;
  std::string raw;
  for (const std::string& t : *tokens) {
    if (ByteLevelToBytes(t, &raw)) {
      bytes.append(raw);
    } else {
      bytes.append(t);
    }
  }
  tokens->assign(1, Utf8Lossy(bytes));
}

MetaspaceDecoder::MetaspaceDecoder(char32_t replacement, PrependScheme scheme) : scheme_(scheme) {
  AppendUtf8(replacement, &replacement_);
}

void MetaspaceDecoder::DecodeChain(std::vector<std::string>* tokens,
                                   const DecodeContext& ctx) const {
  for (size_t i = 0; i < tokens->size(); ++i) {
    std::string& t = (*tokens)[i];
    if (t.find(replacement_) == std::string::npos) continue;
    const bool drop = i == 0 && ctx.at_start && scheme_ != PrependScheme::kNever;
    std::string out;
    out.reserve(t.size());
    size_t pos = 0;
    while (pos < t.size()) {
      if (t.compare(pos, replacement_.size(), replacement_) == 0) {
        if (!drop) out.push_back(' ');
        pos += replacement_.size();
      } else {
        out.push_back(t[pos++]);
      }
    }
    t = std::move(out);
  }
}

void ByteFallbackDecoder::DecodeChain(std::vector<std::string>* tokens,
                                      const DecodeContext& ctx) const {
  std::vector<std::string> out;
  out.reserve(tokens->size());
  std::string run;
  size_t run_len = 0;
  auto flush = [&]() {
    if (run_len == 0) return;
    if (IsValidUtf8(run)) {
      out.push_back(run);
    } else {
      for (size_t k = 0; k < run_len; ++k) out.emplace_back("\xEF\xBF\xBD");
    }
    run.clear();
    run_len = 0;
  };
  for (std::string& t : *tokens) {
    uint8_t b;
    if (ParseByteToken(t, &b)) {
      run.push_back(static_cast<char>(b));
      ++run_len;
      continue;
    }
    flush();
    out.push_back(std::move(t));
  }
  flush();
  *tokens = std::move(out);
}

bool ByteFallbackDecoder::Prepare(bool fused_before, StreamTraits* traits) {
  traits->byte_fallback = true;
  return fused_before;
}

void FuseDecoder::DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const {
  std::string all;
  for (const std::string& t : *tokens) all.append(t);
  tokens->assign(1, std::move(all));
}

void StripDecoder::DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const {
  const int start = fused_ && !ctx.at_start ? 0 : start_;
  const int stop = fused_ && !ctx.at_end ? 0 : stop_;
  if (start == 0 && stop == 0) return;
  for (std::string& t : *tokens) {
    const std::vector<char32_t> chars = Chars(t);
    size_t start_cut = 0;
    for (size_t i = 0; i < chars.size() && i < static_cast<size_t>(start); ++i) {
      if (chars[i] != content_) break;
      start_cut = i + 1;
    }
    size_t stop_cut = chars.size();
    for (size_t i = 0; i < static_cast<size_t>(stop) && i < chars.size(); ++i) {
      const size_t index = chars.size() - i - 1;
      if (chars[index] != content_) break;
      stop_cut = index;
    }
    std::string out;
    for (size_t i = start_cut; i < stop_cut; ++i) AppendUtf8(chars[i], &out);
    t = std::move(out);
  }
}

bool StripDecoder::Prepare(bool fused_before, StreamTraits* traits) {
  fused_ = fused_before;
  if (fused_ && stop_ > 0) {
    traits->strip_tail = content_;
    traits->strip_tail_count = std::max(traits->strip_tail_count, stop_);
  }
  return fused_before;
}

void ReplaceDecoder::DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const {
  std::string out;
  for (std::string& t : *tokens) {
    // Decoding cannot fail: a token the regex cannot handle stays as it is.
    if (ReplaceAll(*pattern_, t, content_, &out)) t.swap(out);
  }
}

bool ReplaceDecoder::Prepare(bool fused_before, StreamTraits* traits) {
  if (fused_before) {
    if (is_regex_) {
      traits->flush_only = true;
    } else {
      const int chars = static_cast<int>(Chars(pattern_->source()).size());
      traits->replace_holdback = std::max(traits->replace_holdback, chars - 1);
    }
  }
  return fused_before;
}

void SequenceDecoder::DecodeChain(std::vector<std::string>* tokens,
                                  const DecodeContext& ctx) const {
  for (const auto& step : steps_) step->DecodeChain(tokens, ctx);
}

bool SequenceDecoder::Prepare(bool fused_before, StreamTraits* traits) {
  bool fused = fused_before;
  for (const auto& step : steps_) fused = step->Prepare(fused, traits);
  return fused;
}

}  // namespace spanserve::tokenizer
