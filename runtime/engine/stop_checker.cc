#include "runtime/engine/stop_checker.h"

#include <algorithm>

namespace spanserve::engine {
namespace {

// Tokens of context decoded before the new ones (vLLM's INITIAL_INCREMENTAL_DETOKENIZATION_OFFSET).
constexpr int32_t kContextTokens = 5;
constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

}  // namespace

void IncrementalDetokenizer::Reset(int32_t prompt_len, bool skip_special_tokens) {
  skip_special_tokens_ = skip_special_tokens;
  read_offset_ = prompt_len;
  prefix_offset_ = std::max(prompt_len - kContextTokens, 0);
}

void IncrementalDetokenizer::Step(const DetokenizeFn& decode, std::span<const int32_t> tokens,
                                  std::string* delta) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  if (n <= read_offset_) return;
  const std::string prefix =
      decode(tokens.subspan(prefix_offset_, static_cast<size_t>(read_offset_ - prefix_offset_)),
             skip_special_tokens_);
  const std::string text = decode(tokens.subspan(prefix_offset_), skip_special_tokens_);
  if (text.size() > prefix.size() && !std::string_view(text).ends_with(kReplacement)) {
    delta->append(text, prefix.size());
    prefix_offset_ = read_offset_;
    read_offset_ = n;
  }
}

void IncrementalDetokenizer::Flush(const DetokenizeFn& decode, std::span<const int32_t> tokens,
                                   std::string* delta) {
  const int32_t n = static_cast<int32_t>(tokens.size());
  if (n <= read_offset_) return;
  const std::string prefix =
      decode(tokens.subspan(prefix_offset_, static_cast<size_t>(read_offset_ - prefix_offset_)),
             skip_special_tokens_);
  const std::string text = decode(tokens.subspan(prefix_offset_), skip_special_tokens_);
  if (text.size() > prefix.size()) delta->append(text, prefix.size());
  prefix_offset_ = read_offset_ = n;
}

int StopStringMatcher::Feed(std::string_view text, std::span<const std::string> stops, bool check,
                            std::string* out, bool include) {
  if (!check || stops.empty()) {
    out->append(held_);
    held_.clear();
    out->append(text);
    return -1;
  }
  held_.append(text);
  // The earliest match wins. A match cannot start in text already released: that text was
  // released because no suffix of it was a prefix of any stop string.
  size_t best_pos = std::string::npos;
  int best = -1;
  for (int i = 0; i < static_cast<int>(stops.size()); ++i) {
    const size_t pos = held_.find(stops[i]);
    if (pos < best_pos) {
      best_pos = pos;
      best = i;
    }
  }
  if (best >= 0) {
    out->append(held_, 0, best_pos + (include ? stops[best].size() : 0));
    held_.clear();
    return best;
  }
  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stops) {
    const size_t max_len = std::min(held_.size(), s.size() - 1);
    for (size_t len = max_len; len > hold; --len) {
      if (std::string_view(held_).substr(held_.size() - len) ==
          std::string_view(s).substr(0, len)) {
        hold = len;
        break;
      }
    }
  }
  out->append(held_, 0, held_.size() - hold);
  held_.erase(0, held_.size() - hold);
  return -1;
}

void StopStringMatcher::Flush(std::string* out) {
  out->append(held_);
  held_.clear();
}

}  // namespace spanserve::engine
