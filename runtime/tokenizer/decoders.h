// Decoders of tokenizer.json ("decoder"): turn the token strings of an id sequence back
// into text, as `tokenizers`' decode_chain does. Immutable and thread-safe.
//
// A decode may cover a window of a longer sequence (the streaming detokenizer decodes
// only the tail): DecodeContext says whether the window holds the real start and end of
// the sequence, which the start- and end-sensitive steps (Metaspace's first token, a
// Strip after the tokens are fused) need.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "runtime/tokenizer/pre_tokenizers.h"
#include "runtime/tokenizer/regex.h"

namespace spanserve::tokenizer {

struct DecodeContext {
  bool at_start = true;
  bool at_end = true;
};

// What the streaming detokenizer must know about a decoder chain.
struct StreamTraits {
  bool byte_fallback = false;  // runs of <0xXX> tokens decode as a unit
  char32_t strip_tail = 0;     // a Strip on fused text removes this char from the end ...
  int strip_tail_count = 0;    // ... at most this many times
  int replace_holdback = 0;    // characters a Replace on fused text may still rewrite
  bool flush_only = false;     // a regex Replace on fused text: nothing is final before Flush
};

class Decoder {
 public:
  virtual ~Decoder() = default;
  // Rewrites the token strings in place (the number of tokens may change).
  virtual void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const = 0;
  // Called once after construction with whether an earlier step fused the tokens into one
  // string; returns whether they are fused after this step. Adds to *traits.
  virtual bool Prepare(bool fused_before, StreamTraits* traits) { return fused_before; }
};

// ByteLevel: maps alphabet characters back to bytes and fuses everything into one string
// (invalid UTF-8 becomes U+FFFD). A token with a character outside the alphabet (an added
// token) contributes its own UTF-8 bytes.
class ByteLevelDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override { return true; }
};

class MetaspaceDecoder final : public Decoder {
 public:
  MetaspaceDecoder(char32_t replacement, PrependScheme scheme);
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;

 private:
  std::string replacement_;
  PrependScheme scheme_;
};

// ByteFallback: runs of <0xXX> tokens become their bytes if valid UTF-8, else one U+FFFD
// per byte.
class ByteFallbackDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override;
};

class FuseDecoder final : public Decoder {
 public:
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override { return true; }
};

// Strip: removes up to `start` leading and `stop` trailing `content` characters of each
// token.
class StripDecoder final : public Decoder {
 public:
  StripDecoder(char32_t content, int start, int stop)
      : content_(content), start_(start), stop_(stop) {}
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override;

 private:
  char32_t content_;
  int start_, stop_;
  bool fused_ = false;  // one token = the whole text: only its real ends are stripped
};

class ReplaceDecoder final : public Decoder {
 public:
  ReplaceDecoder(std::unique_ptr<Pattern> pattern, bool is_regex, std::string content)
      : pattern_(std::move(pattern)), is_regex_(is_regex), content_(std::move(content)) {}
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override;

 private:
  std::unique_ptr<Pattern> pattern_;
  bool is_regex_;
  std::string content_;
};

class SequenceDecoder final : public Decoder {
 public:
  explicit SequenceDecoder(std::vector<std::unique_ptr<Decoder>> steps)
      : steps_(std::move(steps)) {}
  void DecodeChain(std::vector<std::string>* tokens, const DecodeContext& ctx) const override;
  bool Prepare(bool fused_before, StreamTraits* traits) override;

 private:
  std::vector<std::unique_ptr<Decoder>> steps_;
};

// Whether `token` is a byte-fallback token "<0xXX>" (as ByteFallback parses it); sets *byte.
bool ParseByteToken(std::string_view token, uint8_t* byte);

}  // namespace spanserve::tokenizer
