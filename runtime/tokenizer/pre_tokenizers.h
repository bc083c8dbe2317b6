// Pre-tokenizers of tokenizer.json ("pre_tokenizer"): split a normalized piece into the
// words the model encodes one by one. Immutable after construction and thread-safe.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/pieces.h"
#include "runtime/tokenizer/regex.h"

namespace spanserve::tokenizer {

// Per-call scratch space (never shared between threads).
struct PreTokenizeScratch {
  Arena* arena = nullptr;
  std::vector<Span> matches;
  std::vector<MatchSpan> cover;
  bool regex_failed = false;  // a split regex ran out of its resource limits
};

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Appends the non-empty parts of `piece` to *out.
  virtual void Split(const Piece& piece, PreTokenizeScratch* scratch,
                     std::vector<Piece>* out) const = 0;
};

// The GPT-2 split regex that ByteLevel uses when `use_regex` is set.
inline constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ByteLevel: optional leading space, optional GPT-2 split. The byte-to-alphabet mapping is
// not done here: a byte-level BPE model works on the raw bytes of each piece directly.
class ByteLevelPreTokenizer final : public PreTokenizer {
 public:
  ByteLevelPreTokenizer(bool add_prefix_space, std::unique_ptr<Pattern> gpt2_regex)
      : add_prefix_space_(add_prefix_space), regex_(std::move(gpt2_regex)) {}
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  bool add_prefix_space_;
  std::unique_ptr<Pattern> regex_;  // null: use_regex = false
};

enum class PrependScheme { kAlways, kFirst, kNever };

// Metaspace: spaces become `replacement`, which is prepended per `scheme`; with `split`,
// the piece splits before each replacement character.
class MetaspacePreTokenizer final : public PreTokenizer {
 public:
  MetaspacePreTokenizer(char32_t replacement, PrependScheme scheme, bool split);
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  char32_t replacement_;
  std::string replacement_utf8_;
  PrependScheme scheme_;
  bool split_;
};

// Split: by a regex or string pattern with a delimiter behaviour, optionally inverted.
class SplitPreTokenizer final : public PreTokenizer {
 public:
  SplitPreTokenizer(std::unique_ptr<Pattern> pattern, SplitBehavior behavior, bool invert)
      : pattern_(std::move(pattern)), behavior_(behavior), invert_(invert) {}
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  std::unique_ptr<Pattern> pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

// Digits: numeric characters (Rust's char::is_numeric) isolated one by one, or as
// contiguous runs.
class DigitsPreTokenizer final : public PreTokenizer {
 public:
  explicit DigitsPreTokenizer(bool individual_digits) : individual_(individual_digits) {}
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  bool individual_;
};

// WhitespaceSplit: splits on White_Space, dropping it.
class WhitespaceSplitPreTokenizer final : public PreTokenizer {
 public:
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;
};

// Whitespace: keeps the matches of `\w+|[^\w\s]+`.
class WhitespacePreTokenizer final : public PreTokenizer {
 public:
  explicit WhitespacePreTokenizer(std::unique_ptr<Pattern> pattern)
      : pattern_(std::move(pattern)) {}
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  std::unique_ptr<Pattern> pattern_;
};

class SequencePreTokenizer final : public PreTokenizer {
 public:
  explicit SequencePreTokenizer(std::vector<std::unique_ptr<PreTokenizer>> steps)
      : steps_(std::move(steps)) {}
  void Split(const Piece& piece, PreTokenizeScratch* scratch,
             std::vector<Piece>* out) const override;

 private:
  std::vector<std::unique_ptr<PreTokenizer>> steps_;
};

}  // namespace spanserve::tokenizer
