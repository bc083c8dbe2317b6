// A Hugging Face tokenizer.json tokenizer: the encode pipeline (added tokens, normalizer,
// pre-tokenizer, BPE model, post-processor) and the decoder, reproducing the ids and text
// of the reference implementation (`tokenizers`, the Rust library behind transformers'
// fast tokenizers). docs/TOKENIZER.md lists the supported components.
//
// Thread-safety: a Tokenizer is immutable after loading; Encode, Decode and every accessor
// may be called concurrently from any number of threads (gRPC handler threads share one).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/vocabulary.h"

namespace spanserve::tokenizer {

class AddedVocabulary;
class BpeModel;
class Decoder;
class Normalizer;
class PostProcessor;
class PreTokenizer;
struct DecodeContext;
struct StreamTraits;

struct LoadOptions {
  // Override what the post-processor implies (e.g. from the model's config.json).
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
};

class Tokenizer {
 public:
  // Loads a tokenizer.json. Errors: NOT_FOUND (no file), INVALID_ARGUMENT (bad JSON, a
  // missing or ill-typed field, an unsupported component: the message names it, e.g.
  // "unsupported pre_tokenizer type 'Xyz'").
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(
      const std::string& path, const LoadOptions& options = {});
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(
      std::string_view json, const LoadOptions& options = {});
  // Builds the tokenizer a GGUF-style vocabulary describes (see vocabulary.h).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Tokenizer>> FromVocabulary(
      const VocabularySpec& spec);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // The ids of `text`, with the post-processor's special tokens (BOS/EOS...) when
  // add_special_tokens. Added tokens in the text (special or not) are recognised.
  // INVALID_ARGUMENT if `text` is not valid UTF-8 (the message gives the byte offset);
  // RESOURCE_EXHAUSTED if a split regex runs out of its limits (only seen on runs of tens
  // of megabytes, far beyond any context window).
  [[nodiscard]] absl::StatusOr<std::vector<int32_t>> Encode(std::string_view text,
                                                            bool add_special_tokens) const;

  // The text of `ids`. Ids the tokenizer does not know are skipped, as are special tokens
  // when skip_special_tokens. Always valid UTF-8 (undecodable bytes become U+FFFD).
  std::string Decode(std::span<const int32_t> ids, bool skip_special_tokens) const;

  // The bytes token `id` stands for, as they are: for a byte-level vocabulary its bytes, for a
  // byte-fallback token (<0xE2>) its one byte, else its text as a token inside a sequence
  // (a SentencePiece word's leading space kept). Unlike Decode's, a token that
  // holds part of a multi-byte character is not replaced by U+FFFD (OpenAI's logprobs `bytes`:
  // the bytes of consecutive tokens join into their text). Empty for an unknown id.
  std::string TokenBytes(int32_t id) const;

  // One past the largest id of the model vocabulary and the added tokens: the number of
  // rows an embedding for this tokenizer needs.
  int32_t vocab_size() const { return vocab_size_; }
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary string of `id` (added tokens first), or empty if unknown.
  std::string_view IdToToken(int32_t id) const;
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  // Whether `id` is an added token marked special.
  bool IsSpecial(int32_t id) const;

 private:
  friend class StreamingDetokenizer;
  friend class TokenizerBuilder;

  Tokenizer();

  // Decode of a window of a longer sequence (see DecodeContext). `ids` must already be
  // filtered (no special tokens when they are skipped).
  std::string DecodeWindow(std::span<const int32_t> ids, const DecodeContext& ctx) const;
  // Whether Decode keeps `id` (known, and not a skipped special token).
  bool Keeps(int32_t id, bool skip_special_tokens) const;
  bool IsByteFallbackToken(int32_t id) const;
  const StreamTraits& stream_traits() const { return *stream_traits_; }

  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<PostProcessor> post_processor_;
  std::unique_ptr<Decoder> decoder_;
  std::unique_ptr<AddedVocabulary> added_;
  std::unique_ptr<StreamTraits> stream_traits_;
  std::vector<bool> byte_fallback_token_;  // by id
  // When the decoder is exactly ByteLevel: the bytes each id decodes to (fast path).
  std::vector<std::string> byte_level_bytes_;
  int32_t vocab_size_ = 0;
  std::optional<int32_t> bos_id_;
  std::optional<int32_t> eos_id_;
};

}  // namespace spanserve::tokenizer
