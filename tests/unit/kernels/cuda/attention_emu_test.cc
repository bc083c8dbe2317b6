// The CUDA attention kernels (kernels/cuda/attention.cu) on the CPU emulation, against the
// CPU backend's kernels (kernels/cpu/attention.h) on the same inputs: the paged KV cache
// after PagedKvWrite byte for byte, and PagedAttention's outputs: bit for bit for rows of at
// most one partition (512 positions; the kernels run the CPU's operations in the CPU's order,
// and the emulation's expf is the CPU's), within 1e-5 for longer rows (a fixed-order fold of
// 512-position partitions instead of one pass). Every plan (split or not, one or several
// rows per block) gives the same bits, and a sequence's rows the same bits alone or in a
// batch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/attention.h"
#include "kernels/cuda/ops.h"

namespace spanserve::kernels::cuda {
namespace attention_testing {
// Defined in kernels/cuda/attention.cu, for tests only.
void ForceAttentionPlan(int split, int rows_per_block);
int AttentionPartitionSize();
}  // namespace attention_testing

namespace {

constexpr int kBlockSize = 16;
constexpr float kSentinel = 7777.0f;

struct Config {
  int32_t heads;
  int32_t kv_heads;
  int32_t head_dim;
  DType kv;
  int32_t window = 0;    // PagedKvLayer::sliding_window
  float softcap = 0.0f;  // PagedKvLayer::logit_softcap
};

std::string Name(const Config& c) {
  return "heads=" + std::to_string(c.heads) + " kv_heads=" + std::to_string(c.kv_heads) +
         " head_dim=" + std::to_string(c.head_dim) + " kv=" + std::string(DTypeName(c.kv)) +
         " window=" + std::to_string(c.window) + " softcap=" + std::to_string(c.softcap);
}

// A sequence of a step: its history (cached tokens), its new rows, and the seed its data
// comes from (so the same sequence gets the same data in any batch).
struct SeqIn {
  int32_t cached;
  int32_t num_new;
  uint32_t seed;
};

struct SeqData {
  std::vector<float> hist_k, hist_v;  // [cached, kv_heads·head_dim]
  std::vector<float> q;               // [num_new, heads·head_dim]
  std::vector<float> k, v;            // [num_new, kv_heads·head_dim]
};

std::vector<float> Random(std::mt19937& rng, size_t n, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> out(n);
  for (float& x : out) x = dist(rng);
  return out;
}

SeqData MakeData(const Config& c, const SeqIn& s) {
  std::mt19937 rng(s.seed);
  const size_t width = static_cast<size_t>(c.kv_heads) * c.head_dim;
  SeqData d;
  d.hist_k = Random(rng, s.cached * width, -1.0f, 1.0f);
  d.hist_v = Random(rng, s.cached * width, -1.0f, 1.0f);
  d.q = Random(rng, static_cast<size_t>(s.num_new) * c.heads * c.head_dim, -4.0f, 4.0f);
  d.k = Random(rng, s.num_new * width, -1.0f, 1.0f);
  d.v = Random(rng, s.num_new * width, -1.0f, 1.0f);
  return d;
}

// A plan to force: split -1/0/1, rows_per_block 0 (automatic) or a count.
struct PlanChoice {
  int split;
  int rows_per_block;
};

struct StepResult {
  std::vector<std::vector<float>> cpu;                // per sequence: [num_new, heads·head_dim]
  std::vector<std::vector<std::vector<float>>> cuda;  // per plan, per sequence
};

// A paged pool of num_blocks blocks whose unwritten slots hold NaN (so reading one shows).
std::vector<unsigned char> NanPool(const Config& c, int32_t num_blocks) {
  const size_t elements = static_cast<size_t>(num_blocks) * kBlockSize * c.kv_heads * c.head_dim;
  std::vector<unsigned char> pool(elements * DTypeSize(c.kv));
  const float nan = std::numeric_limits<float>::quiet_NaN();
  for (size_t i = 0; i < elements; ++i) {
    if (c.kv == DType::kBF16) {
      const uint16_t h = F32ToBf16(nan);
      std::memcpy(pool.data() + 2 * i, &h, 2);
    } else {
      std::memcpy(pool.data() + 4 * i, &nan, 4);
    }
  }
  return pool;
}

// Runs one step of `seqs` (a row of no sequence after the first when gap_row) on both
// backends: the history, then the new rows' K/V (the caches compared byte for byte after
// each), then attention, on the CUDA kernels once per plan.
StepResult RunStep(const Config& c, const std::vector<SeqIn>& seqs, bool gap_row,
                   uint32_t table_seed, const std::vector<PlanChoice>& plans) {
  const int64_t width = static_cast<int64_t>(c.kv_heads) * c.head_dim;
  const int64_t qwidth = static_cast<int64_t>(c.heads) * c.head_dim;
  const int n = static_cast<int>(seqs.size());
  std::vector<SeqData> data;
  for (const SeqIn& s : seqs) data.push_back(MakeData(c, s));

  // Block tables: a shuffled pool, a few blocks to spare.
  std::vector<int32_t> offsets(n);
  int32_t needed = 0;
  int32_t max_context = 0;
  for (int i = 0; i < n; ++i) {
    offsets[i] = needed;
    const int32_t context = seqs[i].cached + seqs[i].num_new;
    needed += (context + kBlockSize - 1) / kBlockSize;
    max_context = std::max(max_context, context);
  }
  const int32_t num_blocks = needed + 5;
  std::vector<int32_t> perm(num_blocks);
  std::iota(perm.begin(), perm.end(), 0);
  std::mt19937 table_rng(table_seed);
  std::shuffle(perm.begin(), perm.end(), table_rng);
  const std::vector<int32_t> tables(perm.begin(), perm.begin() + needed);

  std::vector<unsigned char> cpu_k = NanPool(c, num_blocks), cpu_v = cpu_k;
  std::vector<unsigned char> cuda_k = cpu_k, cuda_v = cpu_k;
  const PagedKvLayer cpu_layer{cpu_k.data(), cpu_v.data(), num_blocks, kBlockSize, c.kv_heads,
                               c.head_dim,   c.kv,         c.window,   c.softcap};
  const PagedKvLayer cuda_layer{cuda_k.data(), cuda_v.data(), num_blocks, kBlockSize, c.kv_heads,
                                c.head_dim,    c.kv,          c.window,   c.softcap};
  const auto caches_equal = [&](const char* when) {
    EXPECT_TRUE(cpu_k == cuda_k) << "K cache differs after " << when;
    EXPECT_TRUE(cpu_v == cuda_v) << "V cache differs after " << when;
  };

  // The history: every sequence's cached tokens as one prefill batch.
  {
    std::vector<AttentionSeq> cpu_seqs;
    std::vector<DeviceSeq> dev_seqs;
    std::vector<int32_t> row_seq;
    std::vector<float> k, v;
    for (int i = 0; i < n; ++i) {
      if (seqs[i].cached == 0) continue;
      const int64_t begin = static_cast<int64_t>(row_seq.size());
      cpu_seqs.push_back({tables.data() + offsets[i], 0, seqs[i].cached, begin});
      row_seq.insert(row_seq.end(), seqs[i].cached, static_cast<int32_t>(dev_seqs.size()));
      dev_seqs.push_back({offsets[i], 0, seqs[i].cached, 0, begin});
      k.insert(k.end(), data[i].hist_k.begin(), data[i].hist_k.end());
      v.insert(v.end(), data[i].hist_v.begin(), data[i].hist_v.end());
    }
    if (!row_seq.empty()) {
      cpu::PagedKvWrite(cpu_layer, cpu_seqs.data(), static_cast<int32_t>(cpu_seqs.size()), k.data(),
                        v.data());
      const DeviceBatch batch{dev_seqs.data(), static_cast<int32_t>(dev_seqs.size()), tables.data(),
                              row_seq.data(),  static_cast<int64_t>(row_seq.size()),  max_context};
      PagedKvWrite(nullptr, cuda_layer, batch, k.data(), v.data());
      caches_equal("the history");
    }
  }

  // The step's rows, with a row of no sequence after the first sequence's.
  std::vector<AttentionSeq> cpu_seqs;
  std::vector<DeviceSeq> dev_seqs;
  std::vector<int32_t> row_seq;
  std::vector<float> q, k, v;
  std::mt19937 gap_rng(table_seed + 1);
  for (int i = 0; i < n; ++i) {
    const int64_t begin = static_cast<int64_t>(row_seq.size());
    cpu_seqs.push_back({tables.data() + offsets[i], seqs[i].cached, seqs[i].num_new, begin});
    dev_seqs.push_back({offsets[i], seqs[i].cached, seqs[i].num_new, 0, begin});
    row_seq.insert(row_seq.end(), seqs[i].num_new, i);
    q.insert(q.end(), data[i].q.begin(), data[i].q.end());
    k.insert(k.end(), data[i].k.begin(), data[i].k.end());
    v.insert(v.end(), data[i].v.begin(), data[i].v.end());
    if (gap_row && i == 0) {
      row_seq.push_back(-1);
      const std::vector<float> gq = Random(gap_rng, qwidth, -4.0f, 4.0f);
      const std::vector<float> gk = Random(gap_rng, width, -1.0f, 1.0f);
      q.insert(q.end(), gq.begin(), gq.end());
      k.insert(k.end(), gk.begin(), gk.end());
      v.insert(v.end(), gk.begin(), gk.end());
    }
  }
  const int64_t rows = static_cast<int64_t>(row_seq.size());
  cpu::PagedKvWrite(cpu_layer, cpu_seqs.data(), n, k.data(), v.data());
  const DeviceBatch batch{dev_seqs.data(), n, tables.data(), row_seq.data(), rows, max_context};
  PagedKvWrite(nullptr, cuda_layer, batch, k.data(), v.data());
  caches_equal("the step's rows");

  const float scale = 1.0f / std::sqrt(static_cast<float>(c.head_dim));
  const auto per_seq = [&](const std::vector<float>& out) {
    std::vector<std::vector<float>> r;
    for (int i = 0; i < n; ++i) {
      const auto first = out.begin() + dev_seqs[i].row_begin * qwidth;
      r.emplace_back(first, first + static_cast<int64_t>(seqs[i].num_new) * qwidth);
    }
    for (int64_t row = 0; row < rows; ++row) {
      if (row_seq[row] >= 0) continue;
      for (int64_t e = 0; e < qwidth; ++e) {
        EXPECT_EQ(out[row * qwidth + e], kSentinel) << "row " << row << " has no sequence";
      }
    }
    return r;
  };
  StepResult result;
  std::vector<float> out(rows * qwidth, kSentinel);
  {
    UsePool serial(nullptr);
    cpu::PagedAttention(cpu_layer, cpu_seqs.data(), n, q.data(), c.heads, scale, out.data());
  }
  result.cpu = per_seq(out);
  {
    // On sixteen threads the CPU kernel deals a small batch's long rows out by partition (to
    // scratch, folded after): the same bits.
    ThreadPool sixteen(16);
    UsePool use(&sixteen);
    std::fill(out.begin(), out.end(), kSentinel);
    cpu::PagedAttention(cpu_layer, cpu_seqs.data(), n, q.data(), c.heads, scale, out.data());
    const std::vector<std::vector<float>> threaded = per_seq(out);
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(std::memcmp(threaded[i].data(), result.cpu[i].data(), result.cpu[i].size() * 4) ==
                  0)
          << "CPU sequence " << i << " differs on one thread and on sixteen";
    }
  }
  for (const PlanChoice& plan : plans) {
    attention_testing::ForceAttentionPlan(plan.split, plan.rows_per_block);
    std::vector<float> scratch(PagedAttentionScratchFloats(cuda_layer, batch, c.heads),
                               std::numeric_limits<float>::quiet_NaN());
    std::fill(out.begin(), out.end(), kSentinel);
    PagedAttention(nullptr, cuda_layer, batch, q.data(), c.heads, scale, out.data(),
                   scratch.data());
    attention_testing::ForceAttentionPlan(-1, 0);
    result.cuda.push_back(per_seq(out));
  }
  return result;
}

// Compares the CUDA outputs with the CPU's, bit for bit; and every plan with the first.
void ExpectMatchesCpu(const std::vector<SeqIn>& seqs, const Config& c, const StepResult& r) {
  const int64_t qwidth = static_cast<int64_t>(c.heads) * c.head_dim;
  for (size_t p = 0; p < r.cuda.size(); ++p) {
    for (size_t i = 0; i < seqs.size(); ++i) {
      const std::vector<float>& got = r.cuda[p][i];
      const std::vector<float>& want = r.cpu[i];
      int bad = 0;
      for (int64_t e = 0; e < static_cast<int64_t>(want.size()) && bad < 5; ++e) {
        const int64_t pos = seqs[i].cached + e / qwidth;
        if (std::memcmp(&got[e], &want[e], 4) != 0) {
          ++bad;
          ADD_FAILURE() << Name(c) << " plan " << p << " seq " << i << " position " << pos
                        << " head " << e % qwidth / c.head_dim << " dim " << e % c.head_dim
                        << ": cuda " << got[e] << " cpu " << want[e];
        }
      }
      if (p > 0) {
        EXPECT_TRUE(std::memcmp(got.data(), r.cuda[0][i].data(), got.size() * 4) == 0)
            << Name(c) << " plan " << p << " seq " << i << " differs from plan 0";
      }
    }
  }
}

// A decode row, a gap row, a prompt, a chunked prefill, a first token, a long decode (three
// partitions: the split path), and a chunk crossing the first partition boundary.
const std::vector<SeqIn> kMixed = {{45, 1, 11},   {0, 37, 12},   {20, 13, 13}, {0, 1, 14},
                                   {1497, 3, 15}, {500, 30, 16}, {7, 1, 17}};

// Automatic; unsplit with one row and with several rows per block; split likewise.
const std::vector<PlanChoice> kAllPlans = {{-1, 0}, {0, 1}, {0, 32}, {1, 1}, {1, 32}};

TEST(CudaAttentionEmuTest, MatchesCpuBackend) {
  const std::vector<Config> configs = {
      {4, 4, 32, DType::kF32},  {4, 4, 64, DType::kBF16},  {8, 2, 64, DType::kF32},
      {8, 2, 80, DType::kBF16}, {6, 1, 80, DType::kF32},   {6, 1, 128, DType::kBF16},
      {8, 2, 128, DType::kF32}, {4, 4, 128, DType::kBF16},
  };
  uint32_t seed = 100;
  for (const Config& c : configs) {
    SCOPED_TRACE(Name(c));
    const StepResult r = RunStep(c, kMixed, /*gap_row=*/true, seed++, kAllPlans);
    ExpectMatchesCpu(kMixed, c, r);
  }
}

// head_dim past 128 (two to four accumulator columns per thread, fewer keys staged at once),
// a head_dim that is not a multiple of 8, and a group of more than 8 heads (two passes).
TEST(CudaAttentionEmuTest, WideHeadsAndLargeGroups) {
  const std::vector<SeqIn> seqs = {{45, 1, 21}, {0, 19, 22}, {530, 2, 23}};
  const std::vector<Config> configs = {
      {4, 2, 256, DType::kF32},  {2, 1, 384, DType::kBF16}, {2, 2, 512, DType::kF32},
      {4, 1, 36, DType::kF32},   {2, 2, 200, DType::kBF16}, {12, 1, 64, DType::kF32},
      {20, 2, 32, DType::kBF16},
  };
  uint32_t seed = 200;
  for (const Config& c : configs) {
    SCOPED_TRACE(Name(c));
    const StepResult r = RunStep(c, seqs, /*gap_row=*/true, seed++, kAllPlans);
    ExpectMatchesCpu(seqs, c, r);
  }
}

// A sequence's rows get the same bits alone and in a batch with others (other rows, other
// physical blocks, the automatic plan choosing differently).
TEST(CudaAttentionEmuTest, BatchInvariant) {
  const std::vector<Config> configs = {{8, 2, 64, DType::kBF16}, {4, 4, 80, DType::kF32}};
  const std::vector<SeqIn> targets = {{1100, 1, 31}, {20, 13, 32}, {600, 5, 33}};
  const std::vector<SeqIn> others = {{0, 40, 41}, {300, 1, 42}, {10, 25, 43}, {1300, 1, 44}};
  const std::vector<PlanChoice> automatic = {{-1, 0}};
  for (const Config& c : configs) {
    SCOPED_TRACE(Name(c));
    for (size_t t = 0; t < targets.size(); ++t) {
      const StepResult alone = RunStep(c, {targets[t]}, false, 300 + t, automatic);
      std::vector<SeqIn> batch = others;
      batch.insert(batch.begin() + 1 + t, targets[t]);
      const StepResult mixed = RunStep(c, batch, true, 400 + t, automatic);
      const std::vector<float>& a = alone.cuda[0][0];
      const std::vector<float>& b = mixed.cuda[0][1 + t];
      ASSERT_EQ(a.size(), b.size());
      EXPECT_TRUE(std::memcmp(a.data(), b.data(), a.size() * 4) == 0)
          << "sequence " << t << " differs alone and in a batch";
      ExpectMatchesCpu({targets[t]}, c, alone);
    }
  }
}

// Sliding windows: of 1; inside a block; crossing blocks and 32-position tiles; about a
// partition, so some rows' windows cross the partition boundary at 512 and others start
// past partition 0 (the long decode at 1497 reads partition 2 only, or 1 and 2); and
// longer than every context (the same bits as no window).
TEST(CudaAttentionEmuTest, SlidingWindowMatchesCpuBackend) {
  const std::vector<Config> configs = {
      {8, 2, 64, DType::kBF16},
      {6, 1, 80, DType::kF32},
      {2, 1, 384, DType::kBF16},
  };
  uint32_t seed = 500;
  for (Config c : configs) {
    for (const int32_t window : {1, 7, 40, 300, 600, 4096}) {
      c.window = window;
      SCOPED_TRACE(Name(c));
      const StepResult r = RunStep(c, kMixed, /*gap_row=*/true, seed++, kAllPlans);
      ExpectMatchesCpu(kMixed, c, r);
      if (window == 4096) {
        Config full = c;
        full.window = 0;
        const StepResult f = RunStep(full, kMixed, /*gap_row=*/true, seed - 1, kAllPlans);
        for (size_t i = 0; i < kMixed.size(); ++i) {
          EXPECT_TRUE(f.cuda[0][i] == r.cuda[0][i]) << "seq " << i;
          EXPECT_TRUE(f.cpu[i] == r.cpu[i]) << "seq " << i;
        }
      }
    }
  }
}

// Soft-capped scores (Gemma 2), with and without a window: the CPU backend's bits, under
// every plan; and the cap changes the output.
TEST(CudaAttentionEmuTest, SoftCapMatchesCpuBackend) {
  const std::vector<Config> configs = {
      {8, 2, 64, DType::kBF16},
      {6, 1, 80, DType::kF32},
  };
  uint32_t seed = 900;
  for (Config c : configs) {
    for (const int32_t window : {0, 7}) {
      c.window = window;
      c.softcap = 0.5f;
      SCOPED_TRACE(Name(c));
      const StepResult r = RunStep(c, kMixed, /*gap_row=*/true, seed, kAllPlans);
      ExpectMatchesCpu(kMixed, c, r);
      Config uncapped = c;
      uncapped.softcap = 0.0f;
      const StepResult u = RunStep(uncapped, kMixed, /*gap_row=*/true, seed, kAllPlans);
      EXPECT_FALSE(u.cpu[0] == r.cpu[0]) << "the cap changed nothing";
      ++seed;
    }
  }
}

TEST(CudaAttentionEmuTest, SlidingWindowBatchInvariant) {
  const Config c{8, 2, 64, DType::kF32, 600};
  const std::vector<SeqIn> targets = {{1100, 1, 51}, {20, 13, 52}, {600, 5, 53}};
  const std::vector<SeqIn> others = {{0, 40, 61}, {300, 1, 62}, {10, 25, 63}, {1300, 1, 64}};
  const std::vector<PlanChoice> automatic = {{-1, 0}};
  for (size_t t = 0; t < targets.size(); ++t) {
    const StepResult alone = RunStep(c, {targets[t]}, false, 700 + t, automatic);
    std::vector<SeqIn> batch = others;
    batch.insert(batch.begin() + 1 + t, targets[t]);
    const StepResult mixed = RunStep(c, batch, true, 800 + t, automatic);
    const std::vector<float>& a = alone.cuda[0][0];
    const std::vector<float>& b = mixed.cuda[0][1 + t];
    ASSERT_EQ(a.size(), b.size());
    EXPECT_TRUE(std::memcmp(a.data(), b.data(), a.size() * 4) == 0)
        << "sequence " << t << " differs alone and in a batch";
    ExpectMatchesCpu({targets[t]}, c, alone);
  }
}

TEST(CudaAttentionEmuTest, ScratchOnlyWhenSplit) {
  const Config c{8, 2, 64, DType::kF32};
  const PagedKvLayer layer{nullptr, nullptr, 100, kBlockSize, c.kv_heads, c.head_dim, c.kv};
  DeviceBatch batch{nullptr, 4, nullptr, nullptr, 4, 512};
  EXPECT_EQ(PagedAttentionScratchFloats(layer, batch, c.heads), 0);  // one partition
  batch.max_context = 1500;  // three partitions, 4 rows · 2 kv heads: split
  EXPECT_EQ(PagedAttentionScratchFloats(layer, batch, c.heads), 4 * 8 * 3 * (64 + 2));
  batch.rows = 4096;  // many blocks: unsplit
  batch.num_seqs = 4096;
  EXPECT_EQ(PagedAttentionScratchFloats(layer, batch, c.heads), 0);
}

}  // namespace
}  // namespace spanserve::kernels::cuda
