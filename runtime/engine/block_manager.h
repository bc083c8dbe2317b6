// The KV block allocator: a fixed pool of blocks (each `block_size` token slots in every
// layer's K and V), reference-counted so that full blocks can be shared copy-free between
// sequences through the prefix cache, and LRU eviction of unreferenced cached blocks.
//
// Prefix cache: a full block is keyed by the hash of (its parent block's key, its tokens),
// so a key names the whole token prefix up to the block's end. The first block's parent
// key is the chain's root: 0, or a key of what else the KV contents depend on (dynamic NTK
// RoPE: the prompt's length, see EngineCore), so only identical contents are shared. A hit
// is verified, not trusted: the candidate must hold the same tokens and its recorded parent
// must be the block (same allocation generation) that the lookup matched one level up, or
// for the first block the same root, so by induction a hit holds exactly the looked-up
// prefix even if two keys collide.
//
// Single-threaded (the engine thread). Allocates only in the constructor.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace spanserve::engine {

// Bytes to give the KV pool: `bytes` if > 0, else `fraction` of MemAvailable from
// /proc/meminfo. FAILED_PRECONDITION when /proc/meminfo cannot be read.
// With free_device_bytes >= 0 (a GPU backend's free memory) the fraction is of that instead.
[[nodiscard]] absl::StatusOr<int64_t> KvPoolBytes(int64_t bytes, double fraction,
                                                  int64_t free_device_bytes = -1);

// The KV element type a flag names: "f32" (or "auto", the default: exact) or "bf16".
// INVALID_ARGUMENT names the value and the choices otherwise.
[[nodiscard]] absl::StatusOr<DType> ParseKvCacheDtype(std::string_view name);
// The name ParseKvCacheDtype reads back: "f32" or "bf16".
std::string_view KvCacheDtypeName(DType dtype);

// The prefix-cache key of a block: a hash of the parent's key (0 for the first block)
// and the block's tokens.
uint64_t BlockKey(uint64_t parent_key, std::span<const int32_t> tokens);

// A block-table entry whose block went back to the pool because it lies wholly before the
// sliding window of every position the sequence still computes (no kernel reads it).
inline constexpr int32_t kReleasedBlock = -1;

class BlockManager {
 public:
  BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching);

  int32_t num_blocks() const { return num_blocks_; }
  int32_t block_size() const { return block_size_; }
  bool prefix_caching() const { return prefix_caching_; }
  // Blocks an Allocate can return: never-used/uncached free ones plus evictable cached ones.
  int32_t num_free() const { return num_plain_free_ + num_cached_free_; }
  // Blocks referenced by at least one sequence.
  int32_t num_used() const { return num_blocks_ - num_free(); }
  // Unreferenced blocks that still hold a reusable prefix.
  int32_t num_cached_free() const { return num_cached_free_; }
  int32_t BlocksFor(int64_t tokens) const {
    return static_cast<int32_t>((tokens + block_size_ - 1) / block_size_);
  }

  // Looks up the longest chain of cached full blocks that is a prefix of `tokens` under the
  // chain root `root_key`, at most `max_blocks` blocks. Each hit gains a reference and is
  // appended to `table` (which must be empty); returns the number of blocks matched.
  // *last_key is the key of the last one (root_key if none), the parent key for the next
  // block the caller commits.
  int32_t MatchPrefix(std::span<const int32_t> tokens, int32_t max_blocks,
                      std::vector<int32_t>* table, uint64_t* last_key, uint64_t root_key = 0);

  // A free block with reference count 1 (evicting the least recently freed cached block
  // when no plain free block is left), or -1 if the pool is exhausted.
  int32_t Allocate();
  // Drops one reference. At zero the block becomes free: evictable (most recently used
  // end of the LRU) if it is in the prefix cache, plain free otherwise.
  void Release(int32_t block);
  // Releases every block of `table` (last first, so a shared prefix outlives its tail in
  // the LRU; kReleasedBlock entries are skipped) and clears it.
  void ReleaseTable(std::vector<int32_t>* table);

  // Registers `block`, now full with `tokens`, in the prefix cache under
  // BlockKey(parent_key, tokens), `parent` being the block before it in the table (-1 for
  // the first, whose parent_key is the chain's root). If the key is already cached (another
  // sequence computed the same prefix) the existing entry is kept. Returns the key. No-op
  // (returns 0) without prefix caching.
  uint64_t Commit(int32_t block, int32_t parent, uint64_t parent_key,
                  std::span<const int32_t> tokens);

  int32_t ref_count(int32_t block) const { return blocks_[block].refs; }

  // Full structural check (free lists, LRU links, hash map, counts); aborts with a
  // message on the first broken invariant. For tests. O(num_blocks).
  void CheckConsistency() const;

 private:
  struct Block {
    int32_t refs = 0;
    uint32_t generation = 0;  // bumped at every Allocate
    bool cached = false;      // in map_ under `key`
    uint64_t key = 0;
    int32_t parent = -1;  // the block before it when committed, and its generation
    uint32_t parent_generation = 0;
    uint64_t root_key = 0;  // the first block of a chain: its root (parent_key at Commit)
    int32_t prev = -1;      // LRU links (cached and unreferenced only)
    int32_t next = -1;
  };
  void LruRemove(int32_t b);
  void LruPushBack(int32_t b);
  void Uncache(int32_t b);
  std::span<const int32_t> BlockTokens(int32_t b) const {
    return {tokens_.data() + static_cast<int64_t>(b) * block_size_,
            static_cast<size_t>(block_size_)};
  }

  const int32_t num_blocks_;
  const int32_t block_size_;
  const bool prefix_caching_;
  std::vector<Block> blocks_;
  std::vector<int32_t> tokens_;      // [num_blocks, block_size]: a cached block's tokens
  std::vector<int32_t> plain_free_;  // stack of uncached free blocks
  int32_t num_plain_free_ = 0;
  int32_t lru_head_ = -1;  // least recently freed cached block: evicted first
  int32_t lru_tail_ = -1;
  int32_t num_cached_free_ = 0;
  absl::flat_hash_map<uint64_t, int32_t> map_;
};

}  // namespace spanserve::engine
