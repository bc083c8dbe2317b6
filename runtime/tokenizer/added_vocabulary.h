// Added tokens of tokenizer.json ("added_tokens"): strings that are never split, matched in
// the text before the model runs, as `tokenizers`' AddedVocabulary does (leftmost-longest,
// with the single_word / lstrip / rstrip / normalized options). Immutable and thread-safe.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "runtime/tokenizer/normalizers.h"
#include "runtime/tokenizer/pieces.h"
#include "runtime/tokenizer/string_map.h"

namespace spanserve::tokenizer {

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool special = false;      // skipped by Decode(skip_special_tokens = true)
  bool single_word = false;  // only matches with no word character on either side
  bool lstrip = false;       // swallows the whitespace on its left
  bool rstrip = false;       // swallows the whitespace on its right
  bool normalized = true;    // matched in the normalized text (else in the raw text)
};

class AddedVocabulary {
 public:
  // `normalizer` (may be null) rewrites the content of normalized tokens, as it rewrites
  // the text they are matched in. Tokens with empty content are ignored.
  AddedVocabulary(std::vector<AddedToken> tokens, const Normalizer* normalizer);

  // Splits `piece` at the tokens matched in raw text (normalized == false), appending the
  // parts in order: token pieces carry added_id, the others keep their text.
  void SplitRaw(const Piece& piece, std::vector<Piece>* out) const { Split(raw_, piece, out); }
  // The same for the tokens matched in normalized text.
  void SplitNormalized(const Piece& piece, std::vector<Piece>* out) const {
    Split(normalized_, piece, out);
  }

  // The token with this id, or null.
  const AddedToken* FindById(int32_t id) const;
  // The id of the token with this content, or -1.
  int32_t FindByContent(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // A byte trie of patterns, searched leftmost-longest.
  struct Matcher {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;  // sorted by byte
      int32_t token = -1;                                 // index into tokens_
    };
    std::vector<Node> nodes{Node{}};
    bool first_byte[256] = {};
    bool empty() const { return nodes.size() == 1; }
    void Add(std::string_view pattern, int32_t token);
    // Length of the longest pattern starting at text[pos] (0: none) and its token.
    size_t LongestAt(std::string_view text, size_t pos, int32_t* token) const;
  };

  void Split(const Matcher& matcher, const Piece& piece, std::vector<Piece>* out) const;

  std::vector<AddedToken> tokens_;
  absl::flat_hash_map<int32_t, int32_t> by_id_;  // id -> index into tokens_
  StringMap<int32_t> by_content_;
  Matcher raw_;
  Matcher normalized_;
};

}  // namespace spanserve::tokenizer
