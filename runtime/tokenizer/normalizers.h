// Normalizers of tokenizer.json ("normalizer"): rewrite a piece of text before
// pre-tokenization. Each is immutable after construction and thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  // Rewrites *text (valid UTF-8, stays valid). *zero_len is the piece's count of leading
  // bytes that stand for original offset 0 (see Piece); a normalizer keeps it current.
  // Returns false only if a regex ran out of its resource limits.
  [[nodiscard]] virtual bool Normalize(std::string* text, uint32_t* zero_len) const = 0;
};

// NFC, NFD, NFKC, NFKD.
class UnicodeNormalizer final : public Normalizer {
 public:
  explicit UnicodeNormalizer(NormalForm form) : form_(form) {}
  bool Normalize(std::string* text, uint32_t* zero_len) const override;

 private:
  NormalForm form_;
};

class LowercaseNormalizer final : public Normalizer {
 public:
  bool Normalize(std::string* text, uint32_t* zero_len) const override;
};

// Prepends `prefix` to a non-empty text.
class PrependNormalizer final : public Normalizer {
 public:
  explicit PrependNormalizer(std::string prefix) : prefix_(std::move(prefix)) {}
  bool Normalize(std::string* text, uint32_t* zero_len) const override;

 private:
  std::string prefix_;
};

// Replaces every match of `pattern` with `content`.
class ReplaceNormalizer final : public Normalizer {
 public:
  ReplaceNormalizer(std::unique_ptr<Pattern> pattern, std::string content)
      : pattern_(std::move(pattern)), content_(std::move(content)) {}
  bool Normalize(std::string* text, uint32_t* zero_len) const override;

 private:
  std::unique_ptr<Pattern> pattern_;
  std::string content_;
};

// Strips White_Space characters from the left and/or right end.
class StripNormalizer final : public Normalizer {
 public:
  StripNormalizer(bool left, bool right) : left_(left), right_(right) {}
  bool Normalize(std::string* text, uint32_t* zero_len) const override;

 private:
  bool left_, right_;
};

class SequenceNormalizer final : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}
  bool Normalize(std::string* text, uint32_t* zero_len) const override;

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

// Writes `text` with every match of `pattern` replaced by `content` to *out (shared with
// the Replace decoder). False if the regex ran out of its resource limits.
[[nodiscard]] bool ReplaceAll(const Pattern& pattern, std::string_view text,
                              std::string_view content, std::string* out);

}  // namespace spanserve::tokenizer
