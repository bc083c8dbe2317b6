#include "runtime/engine/block_manager.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/meminfo.h"
#include "runtime/model/model.h"

namespace spanserve::engine {

absl::StatusOr<int64_t> KvPoolBytes(int64_t bytes, double fraction, int64_t free_device_bytes) {
  if (bytes > 0) return bytes;
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("kv_cache_memory_fraction must be in (0, 1], got ", fraction));
  }
  if (free_device_bytes >= 0) return static_cast<int64_t>(fraction * free_device_bytes);
  if (const std::optional<int64_t> available = MemAvailableBytes(); available.has_value()) {
    return static_cast<int64_t>(fraction * static_cast<double>(*available));
  }
  return absl::FailedPreconditionError(
      "cannot read MemAvailable from /proc/meminfo; give the KV cache size in bytes");
}

absl::StatusOr<DType> ParseKvCacheDtype(std::string_view name) {
  return model::ParseF32OrBf16(name, "kv_cache_dtype");
}

std::string_view KvCacheDtypeName(DType dtype) { return model::F32OrBf16Name(dtype); }

namespace {

inline uint64_t Mix(uint64_t x) {  // splitmix64's finaliser
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ULL;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebULL;
  x ^= x >> 31;
  return x;
}

}  // namespace

uint64_t BlockKey(uint64_t parent_key, std::span<const int32_t> tokens) {
  uint64_t h = Mix(parent_key ^ 0x9e3779b97f4a7c15ULL);
  for (int32_t t : tokens) h = Mix(h ^ (static_cast<uint64_t>(static_cast<uint32_t>(t)) + 1));
  // 0 means "no parent": keep it out of the key space.
  return h == 0 ? 1 : h;
}

BlockManager::BlockManager(int32_t num_blocks, int32_t block_size, bool enable_prefix_caching)
    : num_blocks_(num_blocks), block_size_(block_size), prefix_caching_(enable_prefix_caching) {
  SPANSERVE_CHECK_GT(num_blocks, 0);
  SPANSERVE_CHECK_GT(block_size, 0);
  blocks_.resize(num_blocks);
  plain_free_.reserve(num_blocks);
  // Pop order 0, 1, 2, ...: a fresh engine hands out blocks in ascending order.
  for (int32_t b = num_blocks - 1; b >= 0; --b) plain_free_.push_back(b);
  num_plain_free_ = num_blocks;
  if (prefix_caching_) {
    tokens_.resize(static_cast<size_t>(num_blocks) * block_size);
    map_.reserve(num_blocks);
  }
}

void BlockManager::LruRemove(int32_t b) {
  Block& blk = blocks_[b];
  if (blk.prev >= 0) {
    blocks_[blk.prev].next = blk.next;
  } else {
    lru_head_ = blk.next;
  }
  if (blk.next >= 0) {
    blocks_[blk.next].prev = blk.prev;
  } else {
    lru_tail_ = blk.prev;
  }
  blk.prev = blk.next = -1;
  --num_cached_free_;
}

void BlockManager::LruPushBack(int32_t b) {
  Block& blk = blocks_[b];
  blk.prev = lru_tail_;
  blk.next = -1;
  if (lru_tail_ >= 0) {
    blocks_[lru_tail_].next = b;
  } else {
    lru_head_ = b;
  }
  lru_tail_ = b;
  ++num_cached_free_;
}

void BlockManager::Uncache(int32_t b) {
  Block& blk = blocks_[b];
  auto it = map_.find(blk.key);
  SPANSERVE_CHECK(it != map_.end() && it->second == b);
  map_.erase(it);
  blk.cached = false;
  blk.key = 0;
}

int32_t BlockManager::MatchPrefix(std::span<const int32_t> tokens, int32_t max_blocks,
                                  std::vector<int32_t>* table, uint64_t* last_key,
                                  uint64_t root_key) {
  SPANSERVE_CHECK(table->empty());
  *last_key = root_key;
  if (!prefix_caching_) return 0;
  const int32_t limit =
      std::min<int32_t>(max_blocks, static_cast<int32_t>(tokens.size()) / block_size_);
  int32_t parent = -1;
  uint32_t parent_generation = 0;
  uint64_t key = root_key;
  int32_t matched = 0;
  for (; matched < limit; ++matched) {
    const std::span<const int32_t> blk_tokens =
        tokens.subspan(static_cast<size_t>(matched) * block_size_, block_size_);
    const uint64_t k = BlockKey(key, blk_tokens);
    auto it = map_.find(k);
    if (it == map_.end()) break;
    const int32_t b = it->second;
    const Block& blk = blocks_[b];
    const std::span<const int32_t> stored = BlockTokens(b);
    if (blk.parent != parent || (parent >= 0 && blk.parent_generation != parent_generation) ||
        (parent < 0 && blk.root_key != root_key) ||
        !std::equal(stored.begin(), stored.end(), blk_tokens.begin())) {
      break;  // a key collision: not our prefix
    }
    if (blk.refs == 0) LruRemove(b);
    ++blocks_[b].refs;
    table->push_back(b);
    parent = b;
    parent_generation = blk.generation;
    key = k;
  }
  *last_key = key;
  return matched;
}

int32_t BlockManager::Allocate() {
  int32_t b;
  if (!plain_free_.empty()) {
    b = plain_free_.back();
    plain_free_.pop_back();
    --num_plain_free_;
  } else if (lru_head_ >= 0) {
    b = lru_head_;
    LruRemove(b);
    Uncache(b);
  } else {
    return -1;
  }
  Block& blk = blocks_[b];
  SPANSERVE_CHECK_EQ(blk.refs, 0);
  blk.refs = 1;
  ++blk.generation;
  blk.parent = -1;
  return b;
}

void BlockManager::Release(int32_t b) {
  SPANSERVE_CHECK(b >= 0 && b < num_blocks_);
  Block& blk = blocks_[b];
  SPANSERVE_CHECK_GT(blk.refs, 0);  // a double free
  if (--blk.refs > 0) return;
  if (blk.cached) {
    LruPushBack(b);
  } else {
    plain_free_.push_back(b);
    ++num_plain_free_;
  }
}

void BlockManager::ReleaseTable(std::vector<int32_t>* table) {
  for (auto it = table->rbegin(); it != table->rend(); ++it) {
    if (*it != kReleasedBlock) Release(*it);
  }
  table->clear();
}

uint64_t BlockManager::Commit(int32_t block, int32_t parent, uint64_t parent_key,
                              std::span<const int32_t> tokens) {
  if (!prefix_caching_) return 0;
  SPANSERVE_CHECK_EQ(static_cast<int32_t>(tokens.size()), block_size_);
  Block& blk = blocks_[block];
  SPANSERVE_CHECK_GT(blk.refs, 0);
  const uint64_t key = BlockKey(parent_key, tokens);
  if (blk.cached) return key;  // a prefix hit being committed again
  auto [it, inserted] = map_.try_emplace(key, block);
  if (!inserted) return key;  // someone else's copy of the same prefix stays the cached one
  blk.cached = true;
  blk.key = key;
  blk.parent = parent;
  blk.parent_generation = parent >= 0 ? blocks_[parent].generation : 0;
  blk.root_key = parent >= 0 ? 0 : parent_key;
  std::copy(tokens.begin(), tokens.end(),
            tokens_.begin() + static_cast<int64_t>(block) * block_size_);
  return key;
}

void BlockManager::CheckConsistency() const {
  std::vector<char> in_plain(num_blocks_, 0), in_lru(num_blocks_, 0);
  SPANSERVE_CHECK_EQ(static_cast<int32_t>(plain_free_.size()), num_plain_free_);
  for (int32_t b : plain_free_) {
    SPANSERVE_CHECK(b >= 0 && b < num_blocks_);
    SPANSERVE_CHECK_EQ(in_plain[b], 0);  // listed twice: a double free
    in_plain[b] = 1;
    SPANSERVE_CHECK_EQ(blocks_[b].refs, 0);
    SPANSERVE_CHECK(!blocks_[b].cached);
  }
  int32_t lru_count = 0, prev = -1;
  for (int32_t b = lru_head_; b >= 0; b = blocks_[b].next) {
    SPANSERVE_CHECK_EQ(in_lru[b], 0);
    in_lru[b] = 1;
    SPANSERVE_CHECK_EQ(blocks_[b].prev, prev);
    SPANSERVE_CHECK_EQ(blocks_[b].refs, 0);
    SPANSERVE_CHECK(blocks_[b].cached);
    prev = b;
    ++lru_count;
  }
  SPANSERVE_CHECK_EQ(prev, lru_tail_);
  SPANSERVE_CHECK_EQ(lru_count, num_cached_free_);
  int32_t cached = 0;
  for (int32_t b = 0; b < num_blocks_; ++b) {
    const Block& blk = blocks_[b];
    SPANSERVE_CHECK_GE(blk.refs, 0);
    if (blk.refs == 0) {
      SPANSERVE_CHECK_EQ(in_plain[b] + in_lru[b], 1);  // free blocks are listed exactly once
    } else {
      SPANSERVE_CHECK_EQ(in_plain[b] + in_lru[b], 0);
    }
    if (blk.cached) {
      ++cached;
      auto it = map_.find(blk.key);
      SPANSERVE_CHECK(it != map_.end());
      SPANSERVE_CHECK_EQ(it->second, b);
    }
  }
  SPANSERVE_CHECK_EQ(cached, static_cast<int32_t>(map_.size()));
}

}  // namespace spanserve::engine
