// The block allocator and prefix cache: reference counts, sharing, LRU eviction, verified
// hits, and consistency under random operations.
#include "runtime/engine/block_manager.h"

#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

std::vector<int32_t> Iota(int n, int32_t start) {
  std::vector<int32_t> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Allocates blocks for `tokens` (after a prefix lookup) and commits the full ones, as the
// scheduler does, under the chain root `root`; returns the table.
std::vector<int32_t> Fill(BlockManager& bm, const std::vector<int32_t>& tokens, int32_t* hits,
                          uint64_t root = 0) {
  std::vector<int32_t> table;
  uint64_t key = 0;
  *hits = bm.MatchPrefix(tokens, static_cast<int32_t>(tokens.size()) / bm.block_size(), &table,
                         &key, root);
  const int32_t need = bm.BlocksFor(tokens.size());
  while (static_cast<int32_t>(table.size()) < need) {
    const int32_t b = bm.Allocate();
    EXPECT_GE(b, 0);
    table.push_back(b);
  }
  for (int32_t i = *hits; i < static_cast<int32_t>(tokens.size()) / bm.block_size(); ++i) {
    key = bm.Commit(table[i], i > 0 ? table[i - 1] : -1, key,
                    std::span<const int32_t>(tokens).subspan(i * bm.block_size(), bm.block_size()));
  }
  return table;
}

TEST(BlockManagerTest, AllocateAndReleaseLeaveThePoolWhole) {
  BlockManager bm(/*num_blocks=*/8, /*block_size=*/4, /*enable_prefix_caching=*/false);
  std::vector<int32_t> got;
  for (int i = 0; i < 8; ++i) got.push_back(bm.Allocate());
  EXPECT_EQ(bm.Allocate(), -1);
  EXPECT_EQ(bm.num_free(), 0);
  EXPECT_EQ(got, Iota(8, 0));
  bm.ReleaseTable(&got);
  EXPECT_EQ(bm.num_free(), 8);
  EXPECT_EQ(bm.num_used(), 0);
  bm.CheckConsistency();
}

TEST(BlockManagerTest, DoubleFreeIsFatal) {
  BlockManager bm(4, 4, false);
  const int32_t b = bm.Allocate();
  bm.Release(b);
  EXPECT_DEATH(bm.Release(b), "check failed");
}

// A chain root (what else the KV contents depend on) separates equal token prefixes: blocks
// are shared only under the same root, and a lookup that matches nothing returns the root
// as the parent key of the first block.
TEST(BlockManagerTest, ChainRootsSeparateEqualPrefixes) {
  BlockManager bm(32, 4, true);
  const std::vector<int32_t> tokens = Iota(10, 100);
  const uint64_t root_a = BlockKey(0, std::vector<int32_t>{-1, 44});
  const uint64_t root_b = BlockKey(0, std::vector<int32_t>{-1, 50});
  int32_t hits = 0;
  std::vector<int32_t> a = Fill(bm, tokens, &hits, root_a);
  EXPECT_EQ(hits, 0);
  std::vector<int32_t> b = Fill(bm, tokens, &hits, root_b);
  EXPECT_EQ(hits, 0);
  EXPECT_NE(a[0], b[0]);
  std::vector<int32_t> plain = Fill(bm, tokens, &hits);
  EXPECT_EQ(hits, 0);
  std::vector<int32_t> again = Fill(bm, tokens, &hits, root_a);
  EXPECT_EQ(hits, 2);
  EXPECT_EQ(again[0], a[0]);
  EXPECT_EQ(again[1], a[1]);
  std::vector<int32_t> plain_again = Fill(bm, tokens, &hits);
  EXPECT_EQ(hits, 2);
  EXPECT_EQ(plain_again[0], plain[0]);
  std::vector<int32_t> none;
  uint64_t key = 0;
  EXPECT_EQ(bm.MatchPrefix(Iota(8, 500), 2, &none, &key, root_b), 0);
  EXPECT_EQ(key, root_b);
  bm.CheckConsistency();
  for (auto* t : {&a, &b, &plain, &again, &plain_again}) bm.ReleaseTable(t);
  EXPECT_EQ(bm.num_used(), 0);
  bm.CheckConsistency();
}

TEST(BlockManagerTest, PrefixHitSharesFullBlocksCopyFree) {
  BlockManager bm(16, 4, true);
  const std::vector<int32_t> a = Iota(10, 100);  // 2 full blocks + 2 tokens
  int32_t hits = 0;
  std::vector<int32_t> ta = Fill(bm, a, &hits);
  EXPECT_EQ(hits, 0);
  std::vector<int32_t> b = Iota(8, 100);
  b.push_back(7);
  b.push_back(8);
  b.push_back(9);
  std::vector<int32_t> tb = Fill(bm, b, &hits);
  EXPECT_EQ(hits, 2);
  EXPECT_EQ(tb[0], ta[0]);
  EXPECT_EQ(tb[1], ta[1]);
  EXPECT_NE(tb[2], ta[2]);
  EXPECT_EQ(bm.ref_count(ta[0]), 2);
  EXPECT_EQ(bm.num_used(), 4);
  bm.CheckConsistency();
  bm.ReleaseTable(&ta);
  bm.ReleaseTable(&tb);
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.num_cached_free(), 2);  // unreferenced but still cached
  // Still reusable after every owner left.
  std::vector<int32_t> tc = Fill(bm, a, &hits);
  EXPECT_EQ(hits, 2);
  bm.ReleaseTable(&tc);
  bm.CheckConsistency();
}

TEST(BlockManagerTest, HitsAreVerifiedAlongTheChain) {
  BlockManager bm(16, 2, true);
  int32_t hits = 0;
  std::vector<int32_t> t1 = Fill(bm, {1, 2, 3, 4}, &hits);
  // Same second block after a different first block: no hit on either.
  std::vector<int32_t> t2 = Fill(bm, {9, 9, 3, 4}, &hits);
  EXPECT_EQ(hits, 0);
  // The first block alone hits; a different second block does not.
  std::vector<int32_t> t3 = Fill(bm, {1, 2, 5, 6}, &hits);
  EXPECT_EQ(hits, 1);
  bm.ReleaseTable(&t1);
  bm.ReleaseTable(&t2);
  bm.ReleaseTable(&t3);
  bm.CheckConsistency();
}

TEST(BlockManagerTest, EvictsLeastRecentlyFreedCachedBlockFirst) {
  BlockManager bm(4, 2, true);
  int32_t hits = 0;
  std::vector<int32_t> a = Fill(bm, {1, 1}, &hits);
  std::vector<int32_t> b = Fill(bm, {2, 2}, &hits);
  std::vector<int32_t> c = Fill(bm, {3, 3}, &hits);
  const int32_t block_a = a[0], block_c = c[0];
  bm.ReleaseTable(&a);  // LRU order: a, b, c
  bm.ReleaseTable(&b);
  bm.ReleaseTable(&c);
  EXPECT_EQ(bm.num_free(), 4);
  EXPECT_EQ(bm.num_cached_free(), 3);
  const int32_t plain = bm.Allocate();  // the never-cached block goes first
  EXPECT_NE(plain, block_a);
  EXPECT_EQ(bm.Allocate(), block_a);  // then the least recently freed cached one
  std::vector<int32_t> again = Fill(bm, {1, 1}, &hits);
  EXPECT_EQ(hits, 0);  // evicted
  std::vector<int32_t> cc = Fill(bm, {3, 3}, &hits);
  EXPECT_EQ(hits, 1);
  EXPECT_EQ(cc[0], block_c);
  bm.CheckConsistency();
}

// A released table goes to the LRU tail last block first, so under pressure the tail of
// a prefix is evicted before the blocks it depends on.
TEST(BlockManagerTest, TailIsEvictedBeforeItsPrefix) {
  BlockManager bm(3, 2, true);
  int32_t hits = 0;
  std::vector<int32_t> t = Fill(bm, {1, 2, 3, 4}, &hits);
  bm.ReleaseTable(&t);
  std::vector<int32_t> other = Fill(bm, {7, 7, 8, 8}, &hits);  // the plain block + the tail
  bm.ReleaseTable(&other);
  std::vector<int32_t> again = Fill(bm, {1, 2, 3, 4}, &hits);
  EXPECT_EQ(hits, 1);
  bm.ReleaseTable(&again);
  bm.CheckConsistency();
}

TEST(BlockManagerTest, KvPoolBytesReadsMemAvailable) {
  EXPECT_EQ(*KvPoolBytes(12345, 0.5), 12345);
  auto bytes = KvPoolBytes(0, 0.01);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_GT(*bytes, 0);
  EXPECT_EQ(KvPoolBytes(0, 1.5).status().code(), absl::StatusCode::kInvalidArgument);
}

// Random sequences drawn from a few shared prefixes, grown, committed, released in random
// order: the structure stays consistent after every operation and whole at the end.
TEST(BlockManagerTest, RandomOperationsKeepThePoolConsistent) {
  constexpr int kBlocks = 48, kBs = 4;
  BlockManager bm(kBlocks, kBs, true);
  std::mt19937 rng(42);
  struct Seq {
    std::vector<int32_t> tokens, table;
    uint64_t key = 0;
    int32_t committed = 0;
  };
  std::vector<Seq> live;
  for (int op = 0; op < 10000; ++op) {
    const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
    if (kind < 3 || live.empty()) {  // start a sequence with a shared prefix
      Seq s;
      const int prefix = std::uniform_int_distribution<int>(0, 3)(rng);
      const int len = std::uniform_int_distribution<int>(1, 14)(rng);
      for (int i = 0; i < len; ++i) s.tokens.push_back(i < 8 ? prefix * 100 + i : rng() % 50);
      s.committed = bm.MatchPrefix(s.tokens, (len - 1) / kBs, &s.table, &s.key);
      bool ok = true;
      while (ok && static_cast<int32_t>(s.table.size()) < bm.BlocksFor(len)) {
        const int32_t b = bm.Allocate();
        if (b < 0)
          ok = false;
        else
          s.table.push_back(b);
      }
      if (!ok) {
        bm.ReleaseTable(&s.table);
      } else {
        live.push_back(std::move(s));
      }
    } else if (kind < 7) {  // grow by a token, committing a block when it fills
      Seq& s = live[rng() % live.size()];
      s.tokens.push_back(rng() % 50);
      if (bm.BlocksFor(s.tokens.size()) > static_cast<int32_t>(s.table.size())) {
        const int32_t b = bm.Allocate();
        if (b < 0) {
          s.tokens.pop_back();
          continue;
        }
        s.table.push_back(b);
      }
      while ((s.committed + 1) * kBs <= static_cast<int32_t>(s.tokens.size())) {
        const int32_t i = s.committed++;
        s.key = bm.Commit(s.table[i], i > 0 ? s.table[i - 1] : -1, s.key,
                          std::span<const int32_t>(s.tokens).subspan(i * kBs, kBs));
      }
    } else {  // finish or cancel
      const size_t i = rng() % live.size();
      bm.ReleaseTable(&live[i].table);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
    }
    bm.CheckConsistency();
  }
  for (Seq& s : live) bm.ReleaseTable(&s.table);
  bm.CheckConsistency();
  EXPECT_EQ(bm.num_used(), 0);
  EXPECT_EQ(bm.num_free(), kBlocks);
}

}  // namespace
}  // namespace spanserve::engine
