// Incremental detokenization for one generated sequence: ids arrive one at a time and
// each Add() returns the text they complete.
//
// Contract: every returned string is valid UTF-8 (never a split sequence), and the
// concatenation of all Add() results and the final Flush() equals
// tokenizer.Decode(all ids, skip_special_tokens). Text that a later id could still change
// (an incomplete UTF-8 sequence, an open run of <0xXX> byte tokens, a trailing character a
// Strip decoder removes at the end) is held back until it is final.
//
// Cost: each Add() decodes only the ids since the last point where the text was final
// (usually one). Not thread-safe: one detokenizer per request, used by one thread at a
// time. The tokenizer must outlive it.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::tokenizer {

class StreamingDetokenizer {
 public:
  StreamingDetokenizer(const Tokenizer& tokenizer, bool skip_special_tokens)
      : tokenizer_(tokenizer), skip_special_tokens_(skip_special_tokens) {}

  // Adds the next id; returns the newly final text (often empty).
  std::string Add(int32_t id);
  // Ends the sequence: returns everything still held back. Add() after Flush() starts a
  // new sequence.
  std::string Flush();

 private:
  const Tokenizer& tokenizer_;
  const bool skip_special_tokens_;
  std::vector<int32_t> window_;  // kept ids since the last final point
  bool at_start_ = true;         // the window begins at the start of the sequence
  size_t emitted_ = 0;           // bytes of the window's text already returned
};

}  // namespace spanserve::tokenizer
