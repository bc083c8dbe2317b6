// Patterns of tokenizer.json (Split pre-tokenizer, Replace normalizer/decoder): an
// Oniguruma regex (what Hugging Face `tokenizers` uses) run by PCRE2, or a literal string.
// Compiled patterns are immutable and safe to use from many threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace spanserve::tokenizer {

// A half-open byte range [begin, end).
struct Span {
  uint32_t begin = 0;
  uint32_t end = 0;
};

// Rewrites the Oniguruma (Ruby syntax) constructs whose meaning differs in PCRE2: `\s`
// and `\S` (Oniguruma counts U+0085 as space), `\h`/`\H` (hex digits there), `\w`/`\W`
// (Oniguruma includes marks), `\uHHHH`. Everything else passes through unchanged.
std::string TranslateOnigurumaPattern(std::string_view pattern);

class Pattern {
 public:
  // A regex in Oniguruma syntax, compiled with PCRE2_UTF | PCRE2_UCP (JIT when available).
  static absl::StatusOr<std::unique_ptr<Pattern>> Regex(std::string_view oniguruma_pattern);
  // A regex already in PCRE2 syntax (for the patterns `tokenizers` compiles with Rust's
  // regex crate rather than Oniguruma).
  static absl::StatusOr<std::unique_ptr<Pattern>> Pcre2(std::string_view pattern);
  // A literal string (may not be empty).
  static absl::StatusOr<std::unique_ptr<Pattern>> Literal(std::string_view literal);

  ~Pattern();
  Pattern(const Pattern&) = delete;
  Pattern& operator=(const Pattern&) = delete;

  // Appends the leftmost-first, non-overlapping matches in `text` (valid UTF-8) to
  // *matches, in order. As Oniguruma's iterator does, an empty match right where the
  // previous match ended is skipped. Returns false if the regex engine ran out of its
  // resource limits (a pathological run of many megabytes); *matches is then incomplete.
  [[nodiscard]] bool FindAll(std::string_view text, std::vector<Span>* matches) const;

  const std::string& source() const { return source_; }

 private:
  Pattern() = default;

  std::string source_;
  std::string literal_;   // used when code_ is null
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

}  // namespace spanserve::tokenizer
