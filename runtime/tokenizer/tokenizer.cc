#include "runtime/tokenizer/tokenizer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "runtime/tokenizer/added_vocabulary.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/decoders.h"
#include "runtime/tokenizer/normalizers.h"
#include "runtime/tokenizer/pieces.h"
#include "runtime/tokenizer/post_processors.h"
#include "runtime/tokenizer/pre_tokenizers.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {

Tokenizer::Tokenizer() : stream_traits_(std::make_unique<StreamTraits>()) {}
Tokenizer::~Tokenizer() = default;

namespace {

absl::Status RegexLimitError() {
  return absl::ResourceExhaustedError(
      "text is too long for the tokenizer's regex (a run of many megabytes without a split)");
}

}  // namespace

absl::StatusOr<std::vector<int32_t>> Tokenizer::Encode(std::string_view text,
                                                       bool add_special_tokens) const {
  if (const size_t bad = FindInvalidUtf8(text); bad != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("text is not valid UTF-8 (ill-formed sequence at byte offset ", bad, ")"));
  }
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  Arena arena;
  PreTokenizeScratch scratch;
  scratch.arena = &arena;
  std::vector<Piece> top, parts, words;

  Piece whole;
  whole.text = text;
  whole.zero_len = text.empty() ? 0 : static_cast<uint32_t>(Utf8LeadLength(text[0]));
  // 1. Added tokens matched in the raw text.
  added_->SplitRaw(whole, &top);
  std::string buffer;
  for (const Piece& piece : top) {
    if (piece.added_id >= 0) {
      ids.push_back(piece.added_id);
      continue;
    }
    // 2. Each remaining piece is normalized on its own, then searched for the added
    // tokens that match normalized text.
    Piece normalized = piece;
    if (normalizer_ != nullptr) {
      buffer.assign(piece.text);
      uint32_t zero_len = piece.zero_len;
      if (!normalizer_->Normalize(&buffer, &zero_len)) return RegexLimitError();
      normalized.text = arena.Store(std::move(buffer));
      normalized.zero_len = zero_len;
    }
    parts.clear();
    added_->SplitNormalized(normalized, &parts);
    for (const Piece& part : parts) {
      if (part.added_id >= 0) {
        ids.push_back(part.added_id);
        continue;
      }
      // 3. Pre-tokenize into words, 4. encode each word with the model.
      words.clear();
      if (pre_tokenizer_ != nullptr) {
        pre_tokenizer_->Split(part, &scratch, &words);
      } else {
        words.push_back(part);
      }
      for (const Piece& word : words) model_->Tokenize(word.text, &ids);
    }
  }
  if (scratch.regex_failed) return RegexLimitError();
  // 5. Special tokens around the sequence.
  if (add_special_tokens && post_processor_ != nullptr) post_processor_->Process(&ids);
  return ids;
}

bool Tokenizer::Keeps(int32_t id, bool skip_special_tokens) const {
  if (const AddedToken* t = added_->FindById(id)) return !(skip_special_tokens && t->special);
  return !model_->IdToToken(id).empty();
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special_tokens) const {
  std::vector<int32_t> kept;
  kept.reserve(ids.size());
  for (int32_t id : ids) {
    if (Keeps(id, skip_special_tokens)) kept.push_back(id);
  }
  return DecodeWindow(kept, DecodeContext{});
}

std::string Tokenizer::DecodeWindow(std::span<const int32_t> ids, const DecodeContext& ctx) const {
  if (!byte_level_bytes_.empty()) {
    std::string bytes;
    for (int32_t id : ids) bytes.append(byte_level_bytes_[id]);
    return Utf8Lossy(bytes);
  }
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int32_t id : ids) tokens.emplace_back(IdToToken(id));
  if (decoder_ == nullptr) {
    // `tokenizers` joins with spaces; a window that continues a sequence starts with one.
    return absl::StrCat(ctx.at_start || tokens.empty() ? "" : " ", absl::StrJoin(tokens, " "));
  }
  decoder_->DecodeChain(&tokens, ctx);
  return absl::StrJoin(tokens, "");
}

std::string Tokenizer::TokenBytes(int32_t id) const {
  if (!Keeps(id, /*skip_special_tokens=*/false)) return "";
  if (!byte_level_bytes_.empty()) return byte_level_bytes_[id];
  uint8_t byte = 0;
  if (IsByteFallbackToken(id) && ParseByteToken(IdToToken(id), &byte)) {
    return std::string(1, static_cast<char>(byte));
  }
  // As a token inside a sequence: a SentencePiece word's "▁" is its space.
  return DecodeWindow(std::span<const int32_t>(&id, 1),
                      DecodeContext{.at_start = false, .at_end = false});
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  if (const int32_t id = added_->FindByContent(token); id >= 0) return id;
  return model_->TokenToId(token);
}

std::string_view Tokenizer::IdToToken(int32_t id) const {
  if (const AddedToken* t = added_->FindById(id)) return t->content;
  return model_->IdToToken(id);
}

bool Tokenizer::IsSpecial(int32_t id) const {
  const AddedToken* t = added_->FindById(id);
  return t != nullptr && t->special;
}

bool Tokenizer::IsByteFallbackToken(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < byte_fallback_token_.size() &&
         byte_fallback_token_[id];
}

}  // namespace spanserve::tokenizer
