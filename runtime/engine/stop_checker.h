// Text for a request's output: incremental detokenization (text appears as tokens
// complete it) and stop strings that may span token boundaries. Text that could still be
// the start of a stop string is held back until the following text decides.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/engine/engine.h"

namespace spanserve::engine {

// vLLM's incremental detokenization: decode a short window of tokens before the new ones
// and emit what the new ones add, holding it back while it ends in U+FFFD (an incomplete
// UTF-8 sequence that the next token may complete).
class IncrementalDetokenizer {
 public:
  // `prompt_len`: the tokens before the first one to detokenize; special tokens are left
  // out of the text when `skip_special_tokens`.
  void Reset(int32_t prompt_len, bool skip_special_tokens = true);
  // Appends to *delta the text that tokens[read_offset..] add; `tokens` is prompt +
  // output so far.
  void Step(const DetokenizeFn& decode, std::span<const int32_t> tokens, std::string* delta);
  // At the end: whatever the remaining tokens decode to, even if incomplete.
  void Flush(const DetokenizeFn& decode, std::span<const int32_t> tokens, std::string* delta);

 private:
  int32_t prefix_offset_ = 0;
  int32_t read_offset_ = 0;
  bool skip_special_tokens_ = true;
};

// Finds the first stop string in streamed text.
class StopStringMatcher {
 public:
  void Reset() { held_.clear(); }
  // Feeds new text. Appends to *out the text that can no longer be part of a stop string.
  // When a stop string matches, appends the text before it, drops the rest and returns the
  // index of the stop string (the earliest match; the first listed on a tie); else -1.
  // With `check` false (below min_tokens) text passes straight through. With `include`, the
  // matched stop string is appended too (vLLM's include_stop_str_in_output).
  int Feed(std::string_view text, std::span<const std::string> stops, bool check, std::string* out,
           bool include = false);
  // The held-back text, released at the end of a request that did not stop on a string.
  void Flush(std::string* out);

 private:
  std::string held_;
};

}  // namespace spanserve::engine
