// The BPE model of tokenizer.json ("model": {"type": "BPE"}), merge for merge the
// algorithm of Hugging Face `tokenizers` (a priority queue of merges ordered by rank, then
// position), with unk / fuse_unk / byte_fallback / ignore_merges and a word cache.
//
// Thread-safety: immutable after Create() except for the word cache, which is internally
// synchronised; Tokenize() may run concurrently from any number of threads.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/inlined_vector.h"
#include "absl/status/statusor.h"
#include "runtime/tokenizer/string_map.h"

namespace spanserve::tokenizer {

struct BpeConfig {
  std::vector<std::pair<std::string, int32_t>> vocab;       // token -> id (ids may have gaps)
  std::vector<std::pair<std::string, std::string>> merges;  // by rank, 0 first
  std::optional<std::string> unk_token;
  std::string continuing_subword_prefix;  // empty: none
  std::string end_of_word_suffix;         // empty: none
  bool fuse_unk = false;
  bool byte_fallback = false;  // unknown characters become <0xXX> byte tokens
  bool ignore_merges = false;  // a word that is itself a token is never split (Llama-3)
  // The pieces are raw bytes that stand for GPT-2 byte-level characters (the ByteLevel
  // pre-tokenizer ran before the model); the vocabulary is written in that alphabet.
  bool byte_level = false;
};

class BpeModel {
 public:
  // Fails if a merge names a token (or yields one) that is not in the vocabulary, or if the
  // unk token is not in it.
  static absl::StatusOr<std::unique_ptr<BpeModel>> Create(BpeConfig config);

  // Appends the ids of `word` (one pre-tokenized piece, valid UTF-8) to *ids.
  void Tokenize(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The vocabulary string of `id`, or empty if the model has no such id.
  std::string_view IdToToken(int32_t id) const;
  // One past the largest id in the vocabulary.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }

 private:
  struct Merge {
    int32_t rank;
    int32_t new_id;
  };
  struct Symbol {
    int32_t id;
    int32_t prev;
    int32_t next;
    int32_t len;  // 0: merged away
  };
  // A shard of the word cache. Lookups and inserts only try the lock: under contention
  // the word is simply encoded again (the cache never changes results).
  struct CacheShard {
    std::shared_mutex mu;
    // Most words are a few tokens: no allocation beyond the (short-string) key.
    StringMap<absl::InlinedVector<int32_t, 4>> words;  // guarded by mu
  };

  explicit BpeModel(BpeConfig config);

  // Builds the initial symbols of `word` character by character, with `tokenizers`' unk,
  // fuse_unk, byte_fallback and affix rules. `word` is in vocabulary spelling.
  void InitialSymbols(std::string_view word, std::vector<Symbol>* symbols) const;
  void MergeAll(std::vector<Symbol>* symbols) const;
  const Merge* FindMerge(int32_t left, int32_t right) const;

  BpeConfig config_;
  StringMap<int32_t> vocab_;
  StringMap<int32_t> raw_vocab_;  // byte_level: raw bytes -> id
  std::vector<std::string> id_to_token_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  int32_t unk_id_ = -1;
  // byte_level without affixes: the id of each single byte, -1 if not a token.
  int32_t byte_ids_[256];
  // byte_fallback: the id of each <0xXX> token, -1 if absent.
  int32_t byte_fallback_ids_[256];
  bool byte_fast_path_ = false;

  // At most 64 x 1024 words of under 64 bytes (a few MB): pre-tokenized words repeat,
  // whole sentences (a tokenizer without a pre-tokenizer) do not.
  static constexpr size_t kCacheShards = 64;
  static constexpr size_t kCacheShardCapacity = 1024;
  static constexpr size_t kMaxCachedWordBytes = 64;
  std::unique_ptr<CacheShard[]> cache_;
};

}  // namespace spanserve::tokenizer
