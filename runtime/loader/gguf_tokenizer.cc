#include "runtime/loader/gguf_tokenizer.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace spanserve::loader {
namespace {

using gguf::GgufFile;

absl::Status IdOutOfRange(const GgufFile& f, const std::string& key, int64_t id, size_t n) {
  return absl::InvalidArgumentError(absl::StrCat(f.path(), ": metadata key '", key, "' = ", id,
                                                 " is not a token id (the vocabulary has ", n,
                                                 " tokens)"));
}

absl::StatusOr<std::optional<int32_t>> TokenId(const GgufFile& f, const std::string& key,
                                               size_t vocab) {
  if (!f.Has(key)) return std::optional<int32_t>();
  ASSIGN_OR_RETURN(const int64_t id, f.GetInt(key));
  if (id < 0 || static_cast<uint64_t>(id) >= vocab) return IdOutOfRange(f, key, id, vocab);
  return std::optional<int32_t>(static_cast<int32_t>(id));
}

absl::StatusOr<bool> OptBool(const GgufFile& f, const std::string& key, bool fallback) {
  if (!f.Has(key)) return fallback;
  return f.GetBool(key);
}

}  // namespace

absl::StatusOr<tokenizer::VocabularySpec> GgufVocabulary(const GgufFile& f) {
  using tokenizer::VocabularyModel;
  tokenizer::VocabularySpec spec;
  ASSIGN_OR_RETURN(const std::string_view model, f.GetString("tokenizer.ggml.model"));
  if (model == "gpt2") {
    spec.model = VocabularyModel::kGpt2;
  } else if (model == "llama") {
    spec.model = VocabularyModel::kLlama;
  } else {
    return absl::UnimplementedError(absl::StrCat(f.path(), ": tokenizer.ggml.model '",
                                                 std::string(model),
                                                 "' is not supported (supported: gpt2, llama)"));
  }
  absl::StatusOr<std::vector<std::string_view>> tokens = f.GetStringArray("tokenizer.ggml.tokens");
  if (!tokens.ok()) {
    if (absl::IsNotFound(tokens.status())) {
      return absl::InvalidArgumentError(tokens.status().message());
    }
    return tokens.status();
  }
  const size_t n = tokens->size();
  spec.tokens.assign(tokens->begin(), tokens->end());
  if (f.Has("tokenizer.ggml.merges")) {
    ASSIGN_OR_RETURN(const std::vector<std::string_view> merges,
                     f.GetStringArray("tokenizer.ggml.merges"));
    spec.merges.assign(merges.begin(), merges.end());
  }
  if (f.Has("tokenizer.ggml.scores")) {
    ASSIGN_OR_RETURN(spec.scores, f.GetFloatArray("tokenizer.ggml.scores"));
    if (spec.scores.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.scores has ",
                                                     spec.scores.size(),
                                                     " entries but tokenizer.ggml.tokens has ", n));
    }
  }
  if (f.Has("tokenizer.ggml.token_type")) {
    ASSIGN_OR_RETURN(const std::vector<int64_t> types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != n) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.token_type has ",
                                                     types.size(),
                                                     " entries but tokenizer.ggml.tokens has ", n));
    }
    spec.token_types.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      if (types[i] < 1 || types[i] > 6) {
        return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tokenizer.ggml.token_type[", i,
                                                       "] = ", types[i], " (expected 1..6)"));
      }
      spec.token_types.push_back(static_cast<int32_t>(types[i]));
    }
  }
  if (spec.model == VocabularyModel::kGpt2) {
    if (f.Has("tokenizer.ggml.pre")) {
      ASSIGN_OR_RETURN(const std::string_view pre, f.GetString("tokenizer.ggml.pre"));
      spec.pre = std::string(pre);
    }
    if (spec.merges.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.path(), ": tokenizer.ggml.model 'gpt2' needs tokenizer.ggml.merges, which is missing"));
    }
  } else if (spec.scores.empty() && spec.merges.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(), ": tokenizer.ggml.model 'llama' needs tokenizer.ggml.scores or .merges"));
  }
  ASSIGN_OR_RETURN(spec.bos_id, TokenId(f, "tokenizer.ggml.bos_token_id", n));
  ASSIGN_OR_RETURN(spec.eos_id, TokenId(f, "tokenizer.ggml.eos_token_id", n));
  ASSIGN_OR_RETURN(spec.unk_id, TokenId(f, "tokenizer.ggml.unknown_token_id", n));
  // Checked for range only: the runtime's tokenizer never pads.
  ASSIGN_OR_RETURN(const std::optional<int32_t> pad,
                   TokenId(f, "tokenizer.ggml.padding_token_id", n));
  (void)pad;
  // llama.cpp's defaults when the keys are absent: SentencePiece models add BOS, BPE ones not.
  const bool spm = spec.model == VocabularyModel::kLlama;
  ASSIGN_OR_RETURN(spec.add_bos, OptBool(f, "tokenizer.ggml.add_bos_token", spm));
  ASSIGN_OR_RETURN(spec.add_eos, OptBool(f, "tokenizer.ggml.add_eos_token", false));
  ASSIGN_OR_RETURN(spec.add_space_prefix, OptBool(f, "tokenizer.ggml.add_space_prefix", spm));
  if (spec.add_bos && !spec.bos_id.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(),
        ": tokenizer.ggml.add_bos_token is true but tokenizer.ggml.bos_token_id is missing"));
  }
  if (spec.add_eos && !spec.eos_id.has_value()) {
    return absl::InvalidArgumentError(absl::StrCat(
        f.path(),
        ": tokenizer.ggml.add_eos_token is true but tokenizer.ggml.eos_token_id is missing"));
  }
  return spec;
}

}  // namespace spanserve::loader
