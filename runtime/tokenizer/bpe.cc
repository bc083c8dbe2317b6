#include "runtime/tokenizer/bpe.h"

#include <algorithm>
#include <cstdio>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/byte_level.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

uint64_t PairKey(int32_t a, int32_t b) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
}

// An entry of the merge queue. The queue pops the lowest rank, then the lowest position:
// both packed into one key so that a sift step is a single integer comparison.
struct QueuedMerge {
  uint64_t key;  // rank << 32 | position
  int32_t new_id;
};
struct QueueOrder {
  bool operator()(const QueuedMerge& a, const QueuedMerge& b) const { return a.key > b.key; }
};

QueuedMerge MakeEntry(int32_t rank, int32_t pos, int32_t new_id) {
  return {(static_cast<uint64_t>(static_cast<uint32_t>(rank)) << 32) | static_cast<uint32_t>(pos),
          new_id};
}

struct Scratch {
  std::vector<QueuedMerge> queue;
  std::string spelled;  // the word in vocabulary spelling
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

BpeModel::BpeModel(BpeConfig config) : config_(std::move(config)) {
  std::fill(std::begin(byte_ids_), std::end(byte_ids_), -1);
}

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::Create(BpeConfig config) {
  std::unique_ptr<BpeModel> model(new BpeModel(std::move(config)));
  const BpeConfig& c = model->config_;
  int32_t max_id = -1;
  model->vocab_.reserve(c.vocab.size());
  for (const auto& [token, id] : c.vocab) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("negative id for '", token, "'"));
    model->vocab_[token] = id;
    max_id = std::max(max_id, id);
  }
  model->id_to_token_.resize(static_cast<size_t>(max_id + 1));
  for (const auto& [token, id] : model->vocab_) model->id_to_token_[id] = token;

  const size_t prefix_len = c.continuing_subword_prefix.size();
  model->merges_.reserve(c.merges.size());
  for (size_t rank = 0; rank < c.merges.size(); ++rank) {
    const auto& [a, b] = c.merges[rank];
    auto ia = model->vocab_.find(a);
    auto ib = model->vocab_.find(b);
    if (ia == model->vocab_.end() || ib == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("BPE merge '", a, " ", b, "' (rank ", rank,
                                                     ") names a token not in the vocabulary"));
    }
    std::string merged = a;
    merged.append(b.size() >= prefix_len ? std::string_view(b).substr(prefix_len) : b);
    auto im = model->vocab_.find(merged);
    if (im == model->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("BPE merge '", a, " ", b, "' yields '", merged,
                                                     "', which is not in the vocabulary"));
    }
    // A repeated pair keeps its last rank, as `tokenizers` builds its map.
    model->merges_[PairKey(ia->second, ib->second)] = Merge{static_cast<int32_t>(rank), im->second};
  }
  if (c.unk_token.has_value()) {
    auto it = model->vocab_.find(*c.unk_token);
    if (it == model->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE unk_token '", *c.unk_token, "' is not in the vocabulary"));
    }
    model->unk_id_ = it->second;
  }
  std::fill(std::begin(model->byte_fallback_ids_), std::end(model->byte_fallback_ids_), -1);
  if (c.byte_fallback) {
    for (int b = 0; b < 256; ++b) {
      char name[8];
      std::snprintf(name, sizeof(name), "<0x%02X>", b);
      if (auto it = model->vocab_.find(std::string_view(name)); it != model->vocab_.end()) {
        model->byte_fallback_ids_[b] = it->second;
      }
    }
  }
  if (c.byte_level) {
    std::string raw;
    for (const auto& [token, id] : model->vocab_) {
      if (ByteLevelToBytes(token, &raw)) model->raw_vocab_[raw] = id;
    }
    if (prefix_len == 0 && c.end_of_word_suffix.empty()) {
      model->byte_fast_path_ = true;
      for (int b = 0; b < 256; ++b) {
        auto it = model->vocab_.find(ByteLevelChar(static_cast<uint8_t>(b)));
        if (it != model->vocab_.end()) model->byte_ids_[b] = it->second;
      }
    }
  }
  model->cache_ = std::make_unique<CacheShard[]>(kCacheShards);
  return model;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(token);
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

std::string_view BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_limit()) return {};
  return id_to_token_[id];
}

const BpeModel::Merge* BpeModel::FindMerge(int32_t left, int32_t right) const {
  auto it = merges_.find(PairKey(left, right));
  return it == merges_.end() ? nullptr : &it->second;
}

void BpeModel::InitialSymbols(std::string_view word, std::vector<Symbol>* symbols) const {
  auto add = [symbols](int32_t id, int32_t len) {
    const auto n = static_cast<int32_t>(symbols->size());
    symbols->push_back(Symbol{id, n - 1, n + 1, len});
  };
  std::string key;
  // A pending unknown: (id, byte length); fused runs grow the length.
  int32_t unk_pending_id = -1, unk_pending_len = 0;
  size_t i = 0;
  while (i < word.size()) {
    const size_t len = Utf8LeadLength(static_cast<uint8_t>(word[i]));
    const bool is_first = i == 0;
    const bool is_last = i + len >= word.size();
    std::string_view s = word.substr(i, len);
    i += len;
    if (!is_first && !config_.continuing_subword_prefix.empty()) {
      key = config_.continuing_subword_prefix;
      key.append(s);
      s = key;
    }
    if (is_last && !config_.end_of_word_suffix.empty()) {
      if (s.data() != key.data()) key = std::string(s);
      key.append(config_.end_of_word_suffix);
      s = key;
    }
    if (auto it = vocab_.find(s); it != vocab_.end()) {
      if (unk_pending_id >= 0) {
        add(unk_pending_id, unk_pending_len);
        unk_pending_id = -1;
      }
      add(it->second, static_cast<int32_t>(len));
      continue;
    }
    if (config_.byte_fallback) {
      bool all = true;
      for (unsigned char b : s) all = all && byte_fallback_ids_[b] >= 0;
      if (all) {
        for (unsigned char b : s) add(byte_fallback_ids_[b], 1);
        continue;
      }
    }
    if (unk_id_ >= 0) {
      if (unk_pending_id >= 0 && config_.fuse_unk) {
        unk_pending_len += static_cast<int32_t>(len);
      } else {
        if (unk_pending_id >= 0) add(unk_pending_id, unk_pending_len);
        unk_pending_id = unk_id_;
        unk_pending_len = static_cast<int32_t>(len);
      }
    }
    // Without an unk token an unknown character is dropped, as in `tokenizers`.
  }
  if (unk_pending_id >= 0) add(unk_pending_id, unk_pending_len);
}

void BpeModel::MergeAll(std::vector<Symbol>* symbols_ptr) const {
  std::vector<Symbol>& symbols = *symbols_ptr;
  const auto n = static_cast<int32_t>(symbols.size());
  if (n < 2) return;
  if (!symbols.empty()) symbols.back().next = -1;
  std::vector<QueuedMerge>& queue = ThreadScratch().queue;
  queue.clear();
  for (int32_t i = 0; i + 1 < n; ++i) {
    if (const Merge* m = FindMerge(symbols[i].id, symbols[i + 1].id)) {
      queue.push_back(MakeEntry(m->rank, i, m->new_id));
    }
  }
  std::make_heap(queue.begin(), queue.end(), QueueOrder());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end(), QueueOrder());
    const QueuedMerge top = queue.back();
    queue.pop_back();
    const auto pos = static_cast<int32_t>(top.key & 0xFFFFFFFFu);
    Symbol& cur = symbols[pos];
    if (cur.len == 0 || cur.next == -1) continue;
    const int32_t next_pos = cur.next;
    const Symbol right = symbols[next_pos];
    // Skip an expired entry: the pair at this position no longer yields this token.
    const Merge* now = FindMerge(cur.id, right.id);
    if (now == nullptr || now->new_id != top.new_id) continue;
    cur.id = top.new_id;
    cur.len += right.len;
    cur.next = right.next;
    symbols[next_pos].len = 0;
    if (right.next > -1 && right.next < n) symbols[right.next].prev = pos;
    if (cur.prev >= 0) {
      if (const Merge* m = FindMerge(symbols[cur.prev].id, cur.id)) {
        queue.push_back(MakeEntry(m->rank, cur.prev, m->new_id));
        std::push_heap(queue.begin(), queue.end(), QueueOrder());
      }
    }
    if (cur.next > -1 && cur.next < n) {
      if (const Merge* m = FindMerge(cur.id, symbols[cur.next].id)) {
        queue.push_back(MakeEntry(m->rank, pos, m->new_id));
        std::push_heap(queue.begin(), queue.end(), QueueOrder());
      }
    }
  }
}

void BpeModel::Tokenize(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (config_.ignore_merges) {
    const auto& whole = config_.byte_level ? raw_vocab_ : vocab_;
    if (auto it = whole.find(word); it != whole.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() < kMaxCachedWordBytes;
  CacheShard* shard = nullptr;
  if (cacheable) {
    // The top bits pick the shard; the map inside uses the low ones.
    shard = &cache_[(StringViewHash()(word) >> 58) % kCacheShards];
    std::shared_lock lock(shard->mu, std::try_to_lock);
    if (lock.owns_lock()) {
      if (auto it = shard->words.find(word); it != shard->words.end()) {
        ids->insert(ids->end(), it->second.begin(), it->second.end());
        return;
      }
    }
  }
  thread_local std::vector<Symbol> symbols;
  symbols.clear();
  bool built = false;
  if (byte_fast_path_) {
    built = true;
    for (unsigned char b : word) {
      const int32_t id = byte_ids_[b];
      if (id < 0) {
        built = false;
        break;
      }
      const auto n = static_cast<int32_t>(symbols.size());
      symbols.push_back(Symbol{id, n - 1, n + 1, 1});
    }
  }
  if (!built) {
    symbols.clear();
    if (config_.byte_level) {
      std::string& spelled = ThreadScratch().spelled;
      spelled.clear();
      for (unsigned char b : word) spelled.append(ByteLevelChar(b));
      InitialSymbols(spelled, &symbols);
    } else {
      InitialSymbols(word, &symbols);
    }
  }
  MergeAll(&symbols);
  const size_t first = ids->size();
  for (const Symbol& s : symbols) {
    if (s.len != 0) ids->push_back(s.id);
  }
  if (cacheable) {
    std::unique_lock lock(shard->mu, std::try_to_lock);
    if (lock.owns_lock() && shard->words.size() < kCacheShardCapacity) {
      shard->words.try_emplace(std::string(word), ids->begin() + static_cast<ptrdiff_t>(first),
                               ids->end());
    }
  }
}

}  // namespace spanserve::tokenizer
