// A tokenizer described the way GGUF files describe one (tokenizer.ggml.*): token list,
// merges or scores, token types, model kind, pre-tokenizer name, BOS/EOS. A GGUF loader
// fills this from the file's metadata and calls Tokenizer::FromVocabulary.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace spanserve::tokenizer {

enum class VocabularyModel {
  kGpt2,   // tokenizer.ggml.model "gpt2": byte-level BPE with merges
  kLlama,  // tokenizer.ggml.model "llama": SentencePiece BPE, byte fallback, "▁" for spaces
};

// GGUF's tokenizer.ggml.token_type values.
enum class GgufTokenType : int32_t {
  kNormal = 1,
  kUnknown = 2,
  kControl = 3,
  kUserDefined = 4,
  kUnused = 5,
  kByte = 6,
};

struct VocabularySpec {
  VocabularyModel model = VocabularyModel::kGpt2;
  std::vector<std::string> tokens;  // id -> token, in the model's own spelling
  // "a b" merges by rank. For kLlama they may be empty: they are then derived from
  // `scores` as transformers' SentencePiece converter does.
  std::vector<std::string> merges;
  std::vector<float> scores;         // kLlama: per-token scores (higher merges first)
  std::vector<int32_t> token_types;  // GgufTokenType values; empty: all normal
  // tokenizer.ggml.pre for kGpt2: "default"/"gpt2", "llama3"/"llama-bpe", "qwen2",
  // "smollm" (and the names that share its regex), ... Unknown names are an error.
  std::string pre = "default";
  std::optional<int32_t> bos_id;
  std::optional<int32_t> eos_id;
  std::optional<int32_t> unk_id;
  bool add_bos = false;          // add_special_tokens puts BOS first
  bool add_eos = false;          // ... and EOS last
  bool add_space_prefix = true;  // kLlama: "▁" before the text
};

}  // namespace spanserve::tokenizer
