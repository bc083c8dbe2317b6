#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/thread_pool.h"
#include "gtest/gtest.h"
#include "kernels/cpu/simd.h"
#include "test_util.h"

namespace spanserve::kernels::cpu {
namespace {

using testing::BitIdentical;
using testing::RandomFloats;

struct Shape {
  int32_t heads;
  int32_t kv_heads;
  int32_t head_dim;
  int32_t block_size;
  DType kv = DType::kF32;  // the cache's element type
};

void PrintTo(const Shape& s, std::ostream* os) {
  *os << "heads=" << s.heads << " kv_heads=" << s.kv_heads << " head_dim=" << s.head_dim
      << " block_size=" << s.block_size << " kv=" << DTypeName(s.kv);
}

// What the cache gives back for a value it stored.
float Cached(float x, DType kv) { return kv == DType::kBF16 ? Bf16ToF32(F32ToBf16(x)) : x; }

// A paged pool whose unwritten slots are NaN, so reading one poisons the output.
class Pool {
 public:
  Pool(const Shape& s, int32_t num_blocks) : free_(num_blocks) {
    const size_t elements =
        static_cast<size_t>(num_blocks) * s.block_size * s.kv_heads * s.head_dim;
    const float nan = std::numeric_limits<float>::quiet_NaN();
    if (s.kv == DType::kBF16) {
      k_.resize(elements * 2);
      for (size_t i = 0; i < elements; ++i) {
        const uint16_t h = F32ToBf16(nan);
        std::memcpy(k_.data() + 2 * i, &h, 2);
      }
    } else {
      k_.resize(elements * 4);
      for (size_t i = 0; i < elements; ++i) std::memcpy(k_.data() + 4 * i, &nan, 4);
    }
    v_ = k_;
    layer_ = {k_.data(), v_.data(), num_blocks, s.block_size, s.kv_heads, s.head_dim, s.kv};
    // Shuffled so logical blocks land on scattered, non-monotonic physical blocks.
    std::iota(free_.begin(), free_.end(), 0);
    std::shuffle(free_.begin(), free_.end(), std::mt19937(7));
  }
  const PagedKvLayer& layer() const { return layer_; }
  void set_sliding_window(int32_t window) { layer_.sliding_window = window; }

  std::vector<int32_t> Allocate(int64_t tokens) {
    std::vector<int32_t> table;
    for (int64_t t = 0; t < tokens; t += layer_.block_size) {
      table.push_back(free_.back());
      free_.pop_back();
    }
    return table;
  }

 private:
  std::vector<uint8_t> k_, v_;
  std::vector<int32_t> free_;
  PagedKvLayer layer_;
};

// Every token of one sequence: q [len, heads, dim], k/v [len, kv_heads, dim].
struct Sequence {
  int64_t len;
  std::vector<float> q, k, v;
  std::vector<int32_t> table;
};

Sequence MakeSequence(const Shape& s, Pool& pool, int64_t len, uint32_t seed) {
  Sequence seq{len, RandomFloats(len * s.heads * s.head_dim, seed, -3.0f, 3.0f),
               RandomFloats(len * s.kv_heads * s.head_dim, seed + 1),
               RandomFloats(len * s.kv_heads * s.head_dim, seed + 2), pool.Allocate(len)};
  return seq;
}

// One sequence's part of a step: tokens [begin, begin + count) are new.
struct Part {
  const Sequence* seq;
  int64_t begin;
  int64_t count;
};

// Writes the new tokens of all parts to the cache and attends them in one batched call;
// returns out [Σ count, heads, dim].
std::vector<float> Step(const Shape& s, Pool& pool, const std::vector<Part>& parts, float scale) {
  const int64_t q_row = int64_t{s.heads} * s.head_dim;
  const int64_t kv_row = int64_t{s.kv_heads} * s.head_dim;
  std::vector<float> q, k, v;
  std::vector<AttentionSeq> seqs;
  int64_t rows = 0;
  for (const Part& p : parts) {
    seqs.push_back(
        {p.seq->table.data(), static_cast<int32_t>(p.begin), static_cast<int32_t>(p.count), rows});
    q.insert(q.end(), p.seq->q.begin() + p.begin * q_row,
             p.seq->q.begin() + (p.begin + p.count) * q_row);
    k.insert(k.end(), p.seq->k.begin() + p.begin * kv_row,
             p.seq->k.begin() + (p.begin + p.count) * kv_row);
    v.insert(v.end(), p.seq->v.begin() + p.begin * kv_row,
             p.seq->v.begin() + (p.begin + p.count) * kv_row);
    rows += p.count;
  }
  std::vector<float> out(rows * q_row, -1.0f);
  PagedKvWrite(pool.layer(), seqs.data(), static_cast<int32_t>(seqs.size()), k.data(), v.data());
  PagedAttention(pool.layer(), seqs.data(), static_cast<int32_t>(seqs.size()), q.data(), s.heads,
                 scale, out.data());
  return out;
}

// Naive causal GQA over the contiguous sequence, in double: out for position `pos`, over
// positions > pos - window when window > 0.
std::vector<double> NaiveAttention(const Shape& s, const Sequence& seq, int64_t pos, float scale,
                                   int64_t window = 0) {
  const int64_t lo = window > 0 ? std::max<int64_t>(0, pos - window + 1) : 0;
  const int64_t dim = s.head_dim;
  const int64_t group = s.heads / s.kv_heads;
  std::vector<double> out(s.heads * dim, 0.0);
  for (int64_t h = 0; h < s.heads; ++h) {
    const int64_t kvh = h / group;
    const float* q = seq.q.data() + (pos * s.heads + h) * dim;
    std::vector<double> score(pos + 1 - lo);
    for (int64_t t = lo; t <= pos; ++t) {
      const float* k = seq.k.data() + (t * s.kv_heads + kvh) * dim;
      double dot = 0;
      for (int64_t d = 0; d < dim; ++d) dot += static_cast<double>(q[d]) * Cached(k[d], s.kv);
      score[t - lo] = dot * scale;
    }
    const double max = *std::max_element(score.begin(), score.end());
    double sum = 0;
    for (double& x : score) sum += (x = std::exp(x - max));
    for (int64_t t = lo; t <= pos; ++t) {
      const float* v = seq.v.data() + (t * s.kv_heads + kvh) * dim;
      for (int64_t d = 0; d < dim; ++d) {
        out[h * dim + d] += score[t - lo] / sum * Cached(v[d], s.kv);
      }
    }
  }
  return out;
}

class AttentionTest : public ::testing::TestWithParam<Shape> {
 protected:
  const Shape& shape() const { return GetParam(); }
  float scale() const { return 1.0f / std::sqrt(static_cast<float>(shape().head_dim)); }
  int64_t q_row() const { return int64_t{shape().heads} * shape().head_dim; }
};

TEST_P(AttentionTest, PagedBatchMatchesNaiveReference) {
  Pool pool(shape(), 64);
  const Sequence prompt = MakeSequence(shape(), pool, 37, 100);
  const Sequence decode = MakeSequence(shape(), pool, 80, 200);
  const Sequence chunk = MakeSequence(shape(), pool, 21, 300);
  // Earlier steps filled the cache of `decode` (79 tokens) and `chunk` (12 tokens).
  Step(shape(), pool, {{&decode, 0, 79}, {&chunk, 0, 12}}, scale());
  const std::vector<float> out =
      Step(shape(), pool, {{&prompt, 0, 37}, {&decode, 79, 1}, {&chunk, 12, 9}}, scale());

  int64_t row = 0;
  for (const Part& p : std::vector<Part>{{&prompt, 0, 37}, {&decode, 79, 1}, {&chunk, 12, 9}}) {
    for (int64_t j = 0; j < p.count; ++j, ++row) {
      const std::vector<double> want = NaiveAttention(shape(), *p.seq, p.begin + j, scale());
      for (int64_t i = 0; i < q_row(); ++i) {
        ASSERT_NEAR(out[row * q_row() + i], want[i], 1e-5)
            << "position " << p.begin + j << " element " << i;
      }
    }
  }
}

TEST_P(AttentionTest, ChunkedPromptIsBitIdenticalToWholePrompt) {
  Pool pool(shape(), 64);
  Sequence seq = MakeSequence(shape(), pool, 37, 400);
  const std::vector<float> whole = Step(shape(), pool, {{&seq, 0, 37}}, scale());

  Pool fresh(shape(), 64);
  seq.table = fresh.Allocate(37);
  std::vector<float> chunked;
  for (int64_t begin = 0; begin < 37; begin += 5) {
    const std::vector<float> out =
        Step(shape(), fresh, {{&seq, begin, std::min<int64_t>(5, 37 - begin)}}, scale());
    chunked.insert(chunked.end(), out.begin(), out.end());
  }
  ASSERT_EQ(chunked.size(), whole.size());
  EXPECT_TRUE(BitIdentical(chunked.data(), whole.data(), static_cast<int64_t>(whole.size())));
}

TEST_P(AttentionTest, SequenceAloneIsBitIdenticalToSequenceInBatch) {
  Pool pool(shape(), 64);
  const Sequence a = MakeSequence(shape(), pool, 50, 500);
  const Sequence x = MakeSequence(shape(), pool, 45, 600);
  const Sequence b = MakeSequence(shape(), pool, 9, 700);
  Step(shape(), pool, {{&a, 0, 44}, {&x, 0, 41}}, scale());
  const std::vector<float> batch =
      Step(shape(), pool, {{&a, 44, 6}, {&x, 41, 4}, {&b, 0, 9}}, scale());
  const std::vector<float> alone = Step(shape(), pool, {{&x, 41, 4}}, scale());
  EXPECT_TRUE(BitIdentical(batch.data() + 6 * q_row(), alone.data(), 4 * q_row()));
}

TEST_P(AttentionTest, ResultDoesNotDependOnThreadCount) {
  Pool pool(shape(), 64);
  const Sequence a = MakeSequence(shape(), pool, 40, 800);
  const Sequence b = MakeSequence(shape(), pool, 23, 900);
  std::vector<float> one;
  {
    UsePool alone(nullptr);
    one = Step(shape(), pool, {{&a, 0, 40}, {&b, 0, 23}}, scale());
  }
  ThreadPool five(5);
  UsePool use(&five);
  const std::vector<float> many = Step(shape(), pool, {{&a, 0, 40}, {&b, 0, 23}}, scale());
  EXPECT_TRUE(BitIdentical(one.data(), many.data(), static_cast<int64_t>(one.size())));
}

// One decode row: with one thread each kv head's query heads share a pass over its K/V; with
// six, the kernel deals the heads out in passes of one (Shape{6, 2, ...}: 6 items rather than
// 2). Each head must run the same operations either way.
TEST_P(AttentionTest, DecodeRowDoesNotDependOnTheHeadsPerPass) {
  Pool pool(shape(), 64);
  const Sequence a = MakeSequence(shape(), pool, 40, 1000);
  Step(shape(), pool, {{&a, 0, 39}}, scale());
  std::vector<float> one;
  {
    UsePool alone(nullptr);
    one = Step(shape(), pool, {{&a, 39, 1}}, scale());
  }
  ThreadPool six(6);
  UsePool use(&six);
  const std::vector<float> many = Step(shape(), pool, {{&a, 39, 1}}, scale());
  EXPECT_TRUE(BitIdentical(one.data(), many.data(), static_cast<int64_t>(one.size())));
}

// Rows past the first 512-position partition: each partition runs from a fresh state and
// the row folds them in order. A small batch of such rows is dealt out by partition when
// there are many threads (to scratch, folded after): the same bits as one thread walking
// every partition, and the naive result. A decode row of three partitions, a chunk crossing
// the boundary at 512, and with a window, rows whose window starts past partition 0.
TEST_P(AttentionTest, LongRowsGiveTheSameBitsOnAnyThreadCount) {
  for (const int32_t window : {0, 300}) {
    SCOPED_TRACE(window);
    Pool pool(shape(), 1200);
    pool.set_sliding_window(window);
    const Sequence seq = MakeSequence(shape(), pool, 1101, 1500);
    {
      UsePool alone(nullptr);
      Step(shape(), pool, {{&seq, 0, 1100}}, scale());
    }
    for (const Part& part : {Part{&seq, 1100, 1}, Part{&seq, 505, 12}}) {
      std::vector<float> one;
      {
        UsePool alone(nullptr);
        one = Step(shape(), pool, {part}, scale());
      }
      for (const int threads : {2, 16}) {
        ThreadPool pool_threads(threads);
        UsePool use(&pool_threads);
        const std::vector<float> many = Step(shape(), pool, {part}, scale());
        EXPECT_TRUE(BitIdentical(one.data(), many.data(), static_cast<int64_t>(one.size())))
            << threads << " threads, rows from " << part.begin;
      }
      for (int64_t j = 0; j < part.count; ++j) {
        const std::vector<double> want =
            NaiveAttention(shape(), seq, part.begin + j, scale(), window);
        for (int64_t i = 0; i < q_row(); ++i) {
          ASSERT_NEAR(one[j * q_row() + i], want[i], 1e-5)
              << "position " << part.begin + j << " element " << i;
        }
      }
    }
  }
}

// Windows of 1, smaller than a block, crossing blocks and the 32-position tiles (70
// positions: tiles [0, 32), [32, 64), [64, 70)), and as long as the context.
TEST_P(AttentionTest, SlidingWindowMatchesNaiveReference) {
  for (const int32_t window : {1, 3, 13, 40, 70}) {
    SCOPED_TRACE(window);
    Pool pool(shape(), 128);
    pool.set_sliding_window(window);
    const Sequence prompt = MakeSequence(shape(), pool, 70, 1000);
    const Sequence decode = MakeSequence(shape(), pool, 80, 1100);
    const Sequence chunk = MakeSequence(shape(), pool, 45, 1200);
    Step(shape(), pool, {{&decode, 0, 79}, {&chunk, 0, 30}}, scale());
    const std::vector<Part> parts = {{&prompt, 0, 70}, {&decode, 79, 1}, {&chunk, 30, 15}};
    const std::vector<float> out = Step(shape(), pool, parts, scale());
    int64_t row = 0;
    for (const Part& p : parts) {
      for (int64_t j = 0; j < p.count; ++j, ++row) {
        const std::vector<double> want =
            NaiveAttention(shape(), *p.seq, p.begin + j, scale(), window);
        for (int64_t i = 0; i < q_row(); ++i) {
          ASSERT_NEAR(out[row * q_row() + i], want[i], 1e-5)
              << "position " << p.begin + j << " element " << i;
        }
      }
    }
  }
}

// A window at least as long as the context changes nothing, bit for bit; with a window,
// chunking and batching still change nothing.
TEST_P(AttentionTest, SlidingWindowIsBatchAndChunkInvariant) {
  Pool pool(shape(), 64);
  Sequence seq = MakeSequence(shape(), pool, 70, 1300);
  const std::vector<float> full = Step(shape(), pool, {{&seq, 0, 70}}, scale());
  pool.set_sliding_window(70);
  const std::vector<float> long_window = Step(shape(), pool, {{&seq, 0, 70}}, scale());
  EXPECT_TRUE(BitIdentical(full.data(), long_window.data(), static_cast<int64_t>(full.size())));
  pool.set_sliding_window(100);
  const std::vector<float> longer = Step(shape(), pool, {{&seq, 0, 70}}, scale());
  EXPECT_TRUE(BitIdentical(full.data(), longer.data(), static_cast<int64_t>(full.size())));

  pool.set_sliding_window(19);
  const std::vector<float> whole = Step(shape(), pool, {{&seq, 0, 70}}, scale());
  Pool fresh(shape(), 64);
  fresh.set_sliding_window(19);
  Sequence other = MakeSequence(shape(), fresh, 33, 1400);
  seq.table = fresh.Allocate(70);
  std::vector<float> chunked;
  for (int64_t begin = 0; begin < 70; begin += 9) {
    const int64_t n = std::min<int64_t>(9, 70 - begin);
    // Each chunk in a batch behind another sequence's rows.
    const std::vector<float> out =
        Step(shape(), fresh, {{&other, begin / 9, 1}, {&seq, begin, n}}, scale());
    chunked.insert(chunked.end(), out.begin() + q_row(), out.end());
  }
  ASSERT_EQ(chunked.size(), whole.size());
  EXPECT_TRUE(BitIdentical(chunked.data(), whole.data(), static_cast<int64_t>(whole.size())));
}

std::string ShapeName(const ::testing::TestParamInfo<Shape>& info) {
  const Shape& s = info.param;
  std::ostringstream name;
  name << "H" << s.heads << "Kv" << s.kv_heads << "D" << s.head_dim << "B" << s.block_size;
  if (s.kv == DType::kBF16) name << "Bf16";
  return name.str();
}

// GQA group 3 with a head_dim tail and odd blocks; MHA with 9 vectors per head (8 + 1);
// Qwen2-0.5B's decode shape; a group of 10 heads, more than one pass over K/V serves. The
// bf16 cache on the shapes with a head_dim tail and with several passes, and Qwen2's.
INSTANTIATE_TEST_SUITE_P(Shapes, AttentionTest,
                         ::testing::Values(Shape{6, 2, 20, 5}, Shape{2, 2, 72, 3},
                                           Shape{14, 2, 64, 16}, Shape{20, 2, 16, 4},
                                           Shape{6, 2, 20, 5, DType::kBF16},
                                           Shape{14, 2, 64, 16, DType::kBF16},
                                           Shape{20, 2, 16, 4, DType::kBF16}),
                         ShapeName);

// The scores of eight positions are reduced together; each must be exactly simd::HSum of
// its accumulator (values spread over many magnitudes, so another association would show).
TEST(Simd, HSum8IsEightHSumsBitForBit) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> mantissa(-1.0f, 1.0f);
  std::uniform_int_distribution<int> exponent(-30, 30);
  for (int trial = 0; trial < 1000; ++trial) {
    alignas(32) float lanes[8][8];
    __m256 v[8];
    for (int j = 0; j < 8; ++j) {
      for (float& x : lanes[j]) x = std::ldexp(mantissa(rng), exponent(rng));
      v[j] = _mm256_load_ps(lanes[j]);
    }
    alignas(32) float got[8];
    _mm256_store_ps(got, simd::HSum8(v));
    for (int j = 0; j < 8; ++j) {
      const float want = simd::HSum(v[j]);
      ASSERT_EQ(std::memcmp(&got[j], &want, 4), 0) << "trial " << trial << " vector " << j;
    }
  }
}

// The bf16 cache holds each value rounded to nearest-even (ties to even, NaN kept).
TEST(PagedKvWrite, Bf16CacheRoundsToNearestEven) {
  const Shape s{1, 1, 8, 2, DType::kBF16};
  Pool pool(s, 2);
  // 1 + 2^-8 is a tie between 1 and 1 + 2^-7 (goes to 1, the even one); 1 + 3·2^-8 a tie
  // between 1 + 2^-7 and 1 + 2^-6 (goes to 1 + 2^-6); 1 + 2^-8 + 2^-20 rounds up; the largest float
  // overflows.
  const std::vector<float> k = {1.0f + 0x1p-8f,
                                1.0f + 0x3p-8f,
                                1.0f + 0x1p-8f + 0x1p-20f,
                                -2.5f,
                                0.0f,
                                std::numeric_limits<float>::infinity(),
                                std::numeric_limits<float>::max(),
                                std::numeric_limits<float>::quiet_NaN()};
  const std::vector<float> v(8, 0.5f);
  const std::vector<int32_t> table = pool.Allocate(1);
  const AttentionSeq seq{table.data(), 0, 1, 0};
  PagedKvWrite(pool.layer(), &seq, 1, k.data(), v.data());
  const auto* stored = static_cast<const uint16_t*>(pool.layer().k) +
                       static_cast<int64_t>(table[0]) * s.block_size * s.head_dim;
  EXPECT_EQ(Bf16ToF32(stored[0]), 1.0f);
  EXPECT_EQ(Bf16ToF32(stored[1]), 1.0f + 0x1p-6f);
  EXPECT_EQ(Bf16ToF32(stored[2]), 1.0f + 0x1p-7f);
  EXPECT_EQ(Bf16ToF32(stored[3]), -2.5f);
  EXPECT_EQ(Bf16ToF32(stored[4]), 0.0f);
  EXPECT_EQ(Bf16ToF32(stored[5]), std::numeric_limits<float>::infinity());
  // The largest float is past the halfway point to bf16's (absent) next binade: infinity.
  EXPECT_EQ(Bf16ToF32(stored[6]), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::isnan(Bf16ToF32(stored[7])));
}

}  // namespace
}  // namespace spanserve::kernels::cpu
