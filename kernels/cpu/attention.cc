// Paged causal GQA attention: one-pass online softmax over position tiles aligned to absolute
// positions [0, kTile), [kTile, 2·kTile), ..., so a row at position p runs the same
// operations whether its prompt came in one call or in chunks, alone or in a batch.
#include "kernels/cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "common/check.h"
#include "common/thread_pool.h"
#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu {
namespace {

// Positions per online-softmax step (scores and pointers live on the stack).
constexpr int64_t kTile = 32;
// Positions per partition (a multiple of kTile). A row's context is cut at absolute positions
// [0, 512), [512, 1024), ...; each partition runs the online softmax from a fresh state, and
// the row's result is their left fold in increasing order (FoldPartition). The CUDA kernels
// (kernels/cuda/attention.cu) cut and fold the same way, so the backends agree bit for bit
// (but for the device's expf). Partitions also let several threads share one long row.
constexpr int64_t kPartition = 512;
// A batch's rows of several partitions are dealt out a partition at a time (each to scratch,
// folded after) only while it has fewer items than kSplitBelowItemsPerThread per thread (more
// keep every thread busy as they are), within kMaxScratchFloats of scratch, and where that
// takes the busiest thread's share below kSplitGain of its share with whole rows (the scratch
// and the fold cost a little).
constexpr int64_t kSplitBelowItemsPerThread = 4;
constexpr int64_t kMaxScratchFloats = int64_t{16} << 20;
constexpr double kSplitGain = 0.85;
// Largest head_dim the stack accumulator holds.
constexpr int64_t kMaxHeadDim = 512;

// Pointers to the K and V rows of kv head `kvh` for positions [t0, t0 + n) of a sequence.
template <DType kT>
void GatherRows(const PagedKvLayer& layer, const int32_t* block_table, int64_t t0, int64_t n,
                int64_t kvh, const void** k, const void** v) {
  const int64_t row_bytes = layer.head_dim * static_cast<int64_t>(DTypeSize(kT));
  const int64_t bs = layer.block_size;
  // Consecutive positions of a block are a slot (kv_heads rows) apart.
  const int64_t slot_bytes = layer.kv_heads * row_bytes;
  int64_t logical = t0 / bs;
  int64_t offset = t0 % bs;
  for (int64_t i = 0; i < n;) {
    const int64_t at =
        (static_cast<int64_t>(block_table[logical]) * bs + offset) * slot_bytes + kvh * row_bytes;
    const char* kr = static_cast<const char*>(layer.k) + at;
    const char* vr = static_cast<const char*>(layer.v) + at;
    const int64_t run = std::min(bs - offset, n - i);
    for (int64_t j = 0; j < run; ++j, ++i) {
      k[i] = kr + j * slot_bytes;
      v[i] = vr + j * slot_bytes;
    }
    offset = 0;
    ++logical;
  }
}

// Asks for one K or V row to be fetched into L2 ahead of its use (into L1 was slower:
// docs/KERNELS.md, "Attention from memory").
inline void PrefetchRow(const void* row, int64_t bytes) {
  for (int64_t b = 0; b < bytes; b += 64) {
    _mm_prefetch(static_cast<const char*>(row) + b, _MM_HINT_T1);
  }
}

// s[j] = scale · (q · k[j]) for G positions side by side (G independent FMA chains hide the
// FMA latency); each dot product keeps the order of simd::Dot.
template <DType kT, int G>
inline void ScoreGroup(const float* q, const void* const* k, int64_t dim, float scale, float* s) {
  const int64_t d8 = dim & ~int64_t{7};
  __m256 acc[G];
#pragma GCC unroll 8
  for (int j = 0; j < G; ++j) acc[j] = _mm256_setzero_ps();
  for (int64_t d = 0; d < d8; d += 8) {
    const __m256 qv = _mm256_loadu_ps(q + d);
#pragma GCC unroll 8
    for (int j = 0; j < G; ++j) acc[j] = _mm256_fmadd_ps(qv, simd::Load8<kT>(k[j], d), acc[j]);
  }
  if constexpr (G == 8) {
    if (d8 == dim) {  // no tail: all eight sums reduced and scaled together
      _mm256_storeu_ps(s, _mm256_mul_ps(simd::HSum8(acc), _mm256_set1_ps(scale)));
      return;
    }
  }
  for (int j = 0; j < G; ++j) {
    float dot = simd::HSum(acc[j]);
    for (int64_t d = d8; d < dim; ++d) dot = std::fma(q[d], simd::Load1<kT>(k[j], d), dot);
    s[j] = dot * scale;
  }
}

// s[i] = scale · (q · k[i]) for i < n. A position's score does not depend on which group
// computes it, so tiles cut short at a row's own position agree with full ones.
template <DType kT>
void Scores(const float* q, const void* const* k, int64_t n, int64_t dim, float scale, float* s) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) ScoreGroup<kT, 8>(q, k + i, dim, scale, s + i);
  for (; i + 4 <= n; i += 4) ScoreGroup<kT, 4>(q, k + i, dim, scale, s + i);
  for (; i < n; ++i) ScoreGroup<kT, 1>(q, k + i, dim, scale, s + i);
}

// Scores of H heads (2 or 3) whose q rows are consecutive at q, over the same K rows:
// s[h][i] = scale · (q_h · k[i]), each exactly as Scores computes it; the heads share every K
// load (and, for a bf16 cache, its widening).
template <DType kT, int H>
void ScoresHeads(const float* q, const void* const* k, int64_t n, int64_t dim, float scale,
                 float (*s)[kTile]) {
  static_assert(H == 2 || H == 3);
  const int64_t d8 = dim & ~int64_t{7};
  if (d8 != dim) {  // a head_dim tail: per head
    for (int h = 0; h < H; ++h) Scores<kT>(q + h * dim, k, n, dim, scale, s[h]);
    return;
  }
  const __m256 sv = _mm256_set1_ps(scale);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    __m256 acc[16];  // head h's four positions at 4h .. 4h + 3; the rest zero, for HSum8
#pragma GCC unroll 16
    for (int j = 0; j < 16; ++j) acc[j] = _mm256_setzero_ps();
    for (int64_t d = 0; d < d8; d += 8) {
      __m256 qv[H];
#pragma GCC unroll 3
      for (int h = 0; h < H; ++h) qv[h] = _mm256_loadu_ps(q + h * dim + d);
#pragma GCC unroll 4
      for (int j = 0; j < 4; ++j) {
        __m256 kv = simd::Load8<kT>(k[i + j], d);
        asm("" : "+x"(kv));  // one load for every head, as in AccumulateHeadsChunk
#pragma GCC unroll 3
        for (int h = 0; h < H; ++h) acc[4 * h + j] = _mm256_fmadd_ps(qv[h], kv, acc[4 * h + j]);
      }
    }
    alignas(32) float sums[16];
    _mm256_store_ps(sums, _mm256_mul_ps(simd::HSum8(acc), sv));
    if constexpr (H == 3) _mm256_store_ps(sums + 8, _mm256_mul_ps(simd::HSum8(acc + 8), sv));
    for (int h = 0; h < H; ++h) std::memcpy(s[h] + i, sums + 4 * h, 4 * sizeof(float));
  }
  for (; i < n; ++i) {
    for (int h = 0; h < H; ++h) ScoreGroup<kT, 1>(q + h * dim, k + i, dim, scale, s[h] + i);
  }
}

// acc[c..c+8·NV) += Σ_i p[i] · v[i][c..], over i in increasing order per element.
template <DType kT, int NV>
void AccumulateVectors(const float* p, const void* const* v, int64_t n, int64_t c, float* acc) {
  __m256 a[NV];
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) a[j] = _mm256_loadu_ps(acc + c + 8 * j);
  for (int64_t i = 0; i < n; ++i) {
    const __m256 pi = _mm256_set1_ps(p[i]);
#pragma GCC unroll 8
    for (int j = 0; j < NV; ++j) {
      a[j] = _mm256_fmadd_ps(pi, simd::Load8<kT>(v[i], c + 8 * j), a[j]);
    }
  }
#pragma GCC unroll 8
  for (int j = 0; j < NV; ++j) _mm256_storeu_ps(acc + c + 8 * j, a[j]);
}

// From column `from` (a multiple of 8) on.
template <DType kT>
void Accumulate(const float* p, const void* const* v, int64_t n, int64_t dim, float* acc,
                int64_t from = 0) {
  const int64_t vectors = dim / 8;
  int64_t c = from;
  for (; c + 64 <= vectors * 8; c += 64) AccumulateVectors<kT, 8>(p, v, n, c, acc);
  switch (vectors - c / 8) {
    case 0:
      break;
    case 1:
      AccumulateVectors<kT, 1>(p, v, n, c, acc);
      break;
    case 2:
      AccumulateVectors<kT, 2>(p, v, n, c, acc);
      break;
    case 3:
      AccumulateVectors<kT, 3>(p, v, n, c, acc);
      break;
    case 4:
      AccumulateVectors<kT, 4>(p, v, n, c, acc);
      break;
    case 5:
      AccumulateVectors<kT, 5>(p, v, n, c, acc);
      break;
    case 6:
      AccumulateVectors<kT, 6>(p, v, n, c, acc);
      break;
    default:
      AccumulateVectors<kT, 7>(p, v, n, c, acc);
      break;
  }
  for (int64_t d = vectors * 8; d < dim; ++d) {
    float a = acc[d];
    for (int64_t i = 0; i < n; ++i) a = std::fma(p[i], simd::Load1<kT>(v[i], d), a);
    acc[d] = a;
  }
}

// Accumulate for H heads (2 or 3) at once over the same V rows: acc[h][c..c+32) += Σ_i
// p[h][i] · v[i][c..], each element in increasing i as Accumulate does; the heads' independent
// FMA chains hide the latency one head's four leave exposed.
template <DType kT, int H>
void AccumulateHeadsChunk(const float (*p)[kTile], const void* const* v, int64_t n, int64_t c,
                          float (*acc)[kMaxHeadDim]) {
  __m256 a[H][4];
#pragma GCC unroll 3
  for (int h = 0; h < H; ++h) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) a[h][j] = _mm256_loadu_ps(acc[h] + c + 8 * j);
  }
  for (int64_t i = 0; i < n; ++i) {
    __m256 w[H];
#pragma GCC unroll 3
    for (int h = 0; h < H; ++h) w[h] = _mm256_set1_ps(p[h][i]);
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      __m256 vv = simd::Load8<kT>(v[i], c + 8 * j);
      // One load for every head (the compiler would otherwise fold it into each FMA).
      asm("" : "+x"(vv));
#pragma GCC unroll 3
      for (int h = 0; h < H; ++h) a[h][j] = _mm256_fmadd_ps(w[h], vv, a[h][j]);
    }
  }
#pragma GCC unroll 3
  for (int h = 0; h < H; ++h) {
#pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) _mm256_storeu_ps(acc[h] + c + 8 * j, a[h][j]);
  }
}

// Accumulate for H heads: whole 32-float chunks together, the rest per head.
template <DType kT, int H>
void AccumulateHeads(const float (*p)[kTile], const void* const* v, int64_t n, int64_t dim,
                     float (*acc)[kMaxHeadDim]) {
  const int64_t chunked = dim / 32 * 32;
  for (int64_t c = 0; c < chunked; c += 32) AccumulateHeadsChunk<kT, H>(p, v, n, c, acc);
  if (chunked < dim) {
    // The remaining columns, per head, exactly as Accumulate would treat them.
    for (int h = 0; h < H; ++h) Accumulate<kT>(p[h], v, n, dim, acc[h], chunked);
  }
}

// Asks for the K/V rows of the first tile AttendHeads reads for positions [first, last].
template <DType kT>
void PrefetchFirstTile(const PagedKvLayer& layer, const int32_t* block_table, int64_t first,
                       int64_t last, int64_t kvh) {
  const void* rows[2][kTile];
  const int64_t n = std::min((first / kTile + 1) * kTile, last + 1) - first;
  GatherRows<kT>(layer, block_table, first, n, kvh, rows[0], rows[1]);
  const int64_t row_bytes = layer.head_dim * static_cast<int64_t>(DTypeSize(kT));
  for (int64_t i = 0; i < n; ++i) {
    PrefetchRow(rows[0][i], row_bytes);
    PrefetchRow(rows[1][i], row_bytes);
  }
}

// Most query heads one pass over K/V serves (their accumulators live on the stack).
constexpr int64_t kMaxHeadsPerPass = 8;

// How many of the `remaining` heads of a pass share their K and V loads next (ScoresHeads,
// AccumulateHeads): three, but four as two and two (a three would leave one alone), and a last
// two or one as they are.
inline int HeadsTogether(int64_t remaining) {
  return remaining == 4 || remaining == 2 ? 2 : remaining >= 3 ? 3 : 1;
}

// The online softmax of the `nh` query heads of kv head `kvh` whose q rows are consecutive at
// q (each head_dim long) over positions [first, last] of one sequence, all in one partition,
// from a fresh state: acc[h] = Σ p_i · v_i (not yet divided), running_max[h] and
// denominator[h] = Σ p_i. Each tile of K/V rows is gathered once and used by every head while
// it is in L1; each head runs exactly the operations it would alone. Tiles stay aligned to
// absolute positions: the first tile is [first, the next multiple of kTile), so the operations
// depend only on first and last. prefetch_last: after the last tile, the first tile of
// (last, prefetch_last] is asked for (the next partition this thread computes).
template <DType kT>
void AttendRange(const PagedKvLayer& layer, const int32_t* block_table, int64_t first, int64_t last,
                 int64_t kvh, const float* q, int64_t nh, float scale, bool prefetch,
                 int64_t prefetch_last, float (*acc)[kMaxHeadDim], float* running_max,
                 float* denominator) {
  const int64_t dim = layer.head_dim;
  alignas(32) float probs[kMaxHeadsPerPass][kTile];
  // This tile's K/V rows and the next one's, which `prefetch` asks to be fetched while this
  // one is computed: a sequence's rows are spread over its blocks, which hardware prefetchers
  // do not follow. (For a prompt's rows the K/V rows are in cache already, from the rows
  // before them, and the prefetches would only cost.) The first tile's rows the caller asks
  // for (PrefetchFirstTile) while it computes the item before. The next tile's K rows are
  // asked for before this tile's scores, its V rows before this tile's products with V: in two
  // halves, not in one burst (one burst of every K and V row, 8 KiB of requests for a bf16
  // tile of 64-wide heads, made the 16-stream step's attention from memory half as slow again:
  // docs/KERNELS.md, "Attention from memory").
  const void* rows[2][2][kTile];
  const void* const* next_v = nullptr;
  int64_t next_n = 0;
  int cur = 0;
  for (int64_t h = 0; h < nh; ++h) {
    std::fill(acc[h], acc[h] + dim, 0.0f);
    running_max[h] = -std::numeric_limits<float>::infinity();
    denominator[h] = 0.0f;
  }

  const int64_t row_bytes = dim * static_cast<int64_t>(DTypeSize(kT));
  const auto tile_length = [&](int64_t t0) {
    return std::min((t0 / kTile + 1) * kTile, last + 1) - t0;
  };
  GatherRows<kT>(layer, block_table, first, tile_length(first), kvh, rows[0][0], rows[0][1]);
  for (int64_t t0 = first; t0 <= last; t0 = (t0 / kTile + 1) * kTile) {
    const int64_t n = tile_length(t0);
    const void* const* k_rows = rows[cur][0];
    const void* const* v_rows = rows[cur][1];
    if (const int64_t next = (t0 / kTile + 1) * kTile; next <= last) {
      const int64_t nn = tile_length(next);
      GatherRows<kT>(layer, block_table, next, nn, kvh, rows[cur ^ 1][0], rows[cur ^ 1][1]);
      if (prefetch) {
        for (int64_t i = 0; i < nn; ++i) PrefetchRow(rows[cur ^ 1][0][i], row_bytes);
        next_v = rows[cur ^ 1][1];
        next_n = nn;
      }
    } else if (prefetch && next <= prefetch_last) {
      PrefetchFirstTile<kT>(layer, block_table, next, prefetch_last, kvh);
    }
    cur ^= 1;
    // Every head's scores first, heads in threes and twos sharing the K loads (HeadsTogether).
    for (int64_t hs = 0; hs < nh;) {
      const int together = HeadsTogether(nh - hs);
      if (together == 3) {
        ScoresHeads<kT, 3>(q + hs * dim, k_rows, n, dim, scale, probs + hs);
      } else if (together == 2) {
        ScoresHeads<kT, 2>(q + hs * dim, k_rows, n, dim, scale, probs + hs);
      } else {
        Scores<kT>(q + hs * dim, k_rows, n, dim, scale, probs[hs]);
      }
      hs += together;
    }
    if (layer.logit_softcap > 0.0f) {
      // Gemma 2: s -> cap · tanh(s / cap), as transformers orders it.
      const float cap = layer.logit_softcap;
      for (int64_t h = 0; h < nh; ++h) {
        for (int64_t i = 0; i < n; ++i) probs[h][i] = std::tanh(probs[h][i] / cap) * cap;
      }
    }
    for (int64_t h = 0; h < nh; ++h) {
      float* s = probs[h];
      // The tile's maximum (order-free), the padding lanes -inf for it.
      std::fill(s + n, s + kTile, -std::numeric_limits<float>::infinity());
      __m256 mx = _mm256_load_ps(s);
      for (int64_t i = 8; i < kTile; i += 8) mx = _mm256_max_ps(mx, _mm256_load_ps(s + i));
      const float tile_max = simd::HMax(mx);
      const float new_max = std::max(running_max[h], tile_max);
      // Rescale what was accumulated under the old maximum (exp(-inf) = 0 on the first tile).
      const float correction = std::exp(running_max[h] - new_max);
      denominator[h] *= correction;
      const __m256 cv = _mm256_set1_ps(correction);
      float* a = acc[h];
      int64_t d = 0;
      for (; d + 8 <= dim; d += 8) {
        _mm256_storeu_ps(a + d, _mm256_mul_ps(_mm256_loadu_ps(a + d), cv));
      }
      for (; d < dim; ++d) a[d] *= correction;

      // Padding lanes get exp(0) and are never read.
      std::fill(s + n, s + kTile, new_max);
      const __m256 mv = _mm256_set1_ps(new_max);
      for (int64_t i = 0; i < kTile; i += 8) {
        _mm256_store_ps(s + i, simd::Exp(_mm256_sub_ps(_mm256_load_ps(s + i), mv)));
      }
      running_max[h] = new_max;
    }
    // Each head's denominator adds its probabilities in order, in a register (indexed by a
    // runtime head, the sums would round-trip through the stack at every add); the heads'
    // chains are independent and overlap.
    for (int64_t h = 0; h < nh; ++h) {
      float sum = denominator[h];
      for (int64_t i = 0; i < n; ++i) sum += probs[h][i];
      denominator[h] = sum;
    }
    for (int64_t i = 0; i < next_n; ++i) PrefetchRow(next_v[i], row_bytes);
    next_n = 0;
    // Each head's acc += its probabilities · V; heads in threes and twos share the V loads.
    for (int64_t h = 0; h < nh;) {
      const int together = HeadsTogether(nh - h);
      if (together == 3) {
        AccumulateHeads<kT, 3>(probs + h, v_rows, n, dim, acc + h);
      } else if (together == 2) {
        AccumulateHeads<kT, 2>(probs + h, v_rows, n, dim, acc + h);
      } else {
        Accumulate<kT>(probs[h], v_rows, n, dim, acc[h]);
      }
      h += together;
    }
  }
}

// (a, big_m, big_l) of one head, the fold of a row's partitions so far, folded with the next
// partition's (acc, m, l), as the CUDA kernels fold: M' = max(M, m), c = exp(M − M'),
// w = exp(m − M'), L = fma(l, w, L·c), A = fma(acc, w, A·c).
inline void FoldPartition(int64_t dim, const float* acc, float m, float l, float* a, float* big_m,
                          float* big_l) {
  const float new_m = std::max(*big_m, m);
  const float c = std::exp(*big_m - new_m);
  const float w = std::exp(m - new_m);
  *big_m = new_m;
  *big_l = std::fma(l, w, *big_l * c);
  const __m256 cv = _mm256_set1_ps(c);
  const __m256 wv = _mm256_set1_ps(w);
  int64_t d = 0;
  for (; d + 8 <= dim; d += 8) {
    _mm256_storeu_ps(a + d, _mm256_fmadd_ps(_mm256_loadu_ps(acc + d), wv,
                                            _mm256_mul_ps(_mm256_loadu_ps(a + d), cv)));
  }
  for (; d < dim; ++d) a[d] = std::fma(acc[d], w, a[d] * c);
}

// out_h = softmax(scale · q_h·Kᵀ) · V over positions [first, last] of one sequence and kv head,
// for the `nh` query heads of that kv head whose q rows (and out rows) are consecutive at q
// (out): each partition the window touches by AttendRange, folded in order.
template <DType kT>
void AttendHeads(const PagedKvLayer& layer, const int32_t* block_table, int64_t first, int64_t last,
                 int64_t kvh, const float* q, int64_t nh, float scale, bool prefetch, float* out) {
  const int64_t dim = layer.head_dim;
  alignas(32) float a[kMaxHeadsPerPass][kMaxHeadDim];
  float big_m[kMaxHeadsPerPass];
  float big_l[kMaxHeadsPerPass];
  int64_t hi = std::min(last, (first / kPartition + 1) * kPartition - 1);
  AttendRange<kT>(layer, block_table, first, hi, kvh, q, nh, scale, prefetch, last, a, big_m,
                  big_l);
  if (hi < last) {
    alignas(32) float acc[kMaxHeadsPerPass][kMaxHeadDim];
    float m[kMaxHeadsPerPass];
    float l[kMaxHeadsPerPass];
    for (int64_t lo = hi + 1; lo <= last; lo = hi + 1) {
      hi = std::min(last, lo + kPartition - 1);
      AttendRange<kT>(layer, block_table, lo, hi, kvh, q, nh, scale, prefetch, last, acc, m, l);
      for (int64_t h = 0; h < nh; ++h) {
        FoldPartition(dim, acc[h], m[h], l[h], a[h], &big_m[h], &big_l[h]);
      }
    }
  }
  for (int64_t h = 0; h < nh; ++h) {
    for (int64_t d = 0; d < dim; ++d) out[h * dim + d] = a[h][d] / big_l[h];
  }
}

// One partition of one row for the `nh` heads from head h0, to scratch: per head (row, h) its
// (m, l) at ml[2·pi] and acc at acc[pi·dim], pi = (row·heads + h)·max_parts + partition.
template <DType kT>
void AttendPartitionToScratch(const PagedKvLayer& layer, const int32_t* block_table, int64_t first,
                              int64_t last, int64_t kvh, const float* q, int64_t nh, float scale,
                              bool prefetch, int64_t pi0, int64_t max_parts, float* scratch_ml,
                              float* scratch_acc) {
  const int64_t dim = layer.head_dim;
  alignas(32) float acc[kMaxHeadsPerPass][kMaxHeadDim];
  float m[kMaxHeadsPerPass];
  float l[kMaxHeadsPerPass];
  AttendRange<kT>(layer, block_table, first, last, kvh, q, nh, scale, prefetch, last, acc, m, l);
  for (int64_t h = 0; h < nh; ++h) {
    const int64_t pi = pi0 + h * max_parts;
    scratch_ml[2 * pi] = m[h];
    scratch_ml[2 * pi + 1] = l[h];
    std::memcpy(scratch_acc + pi * dim, acc[h], dim * sizeof(float));
  }
}

}  // namespace

void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                  const float* k, const float* v) {
  SPANSERVE_CHECK(layer.dtype == DType::kF32 || layer.dtype == DType::kBF16);
  const int64_t bs = layer.block_size;
  const int64_t row = static_cast<int64_t>(layer.kv_heads) * layer.head_dim;
  const int64_t row_bytes = row * static_cast<int64_t>(DTypeSize(layer.dtype));
  const auto store = [&](void* base, int64_t slot, const float* src) {
    char* dst = static_cast<char*>(base) + slot * row_bytes;
    if (layer.dtype == DType::kF32) {
      std::memcpy(dst, src, row * sizeof(float));
    } else {
      auto* out = reinterpret_cast<uint16_t*>(dst);
      for (int64_t e = 0; e < row; ++e) out[e] = F32ToBf16(src[e]);
    }
  };
  for (int32_t s = 0; s < num_seqs; ++s) {
    const AttentionSeq& seq = seqs[s];
    for (int64_t j = 0; j < seq.num_new; ++j) {
      const int64_t pos = seq.cached + j;
      const int64_t block = seq.block_table[pos / bs];
      SPANSERVE_CHECK(block >= 0 && block < layer.num_blocks);
      const int64_t slot = block * bs + pos % bs;
      store(layer.k, slot, k + (seq.row_begin + j) * row);
      store(layer.v, slot, v + (seq.row_begin + j) * row);
    }
  }
}

void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                    const float* q, int32_t heads, float scale, float* out) {
  SPANSERVE_CHECK_LE(layer.head_dim, kMaxHeadDim);
  SPANSERVE_CHECK(layer.kv_heads > 0 && heads % layer.kv_heads == 0);
  SPANSERVE_CHECK(layer.dtype == DType::kF32 || layer.dtype == DType::kBF16);
  SPANSERVE_CHECK_GE(layer.sliding_window, 0);
  SPANSERVE_CHECK(layer.logit_softcap >= 0.0f);
  const auto attend =
      layer.dtype == DType::kBF16 ? AttendHeads<DType::kBF16> : AttendHeads<DType::kF32>;
  const int64_t group = heads / layer.kv_heads;
  const int64_t dim = layer.head_dim;

  // Query heads of one kv head share a pass over its K/V: of the passes of at most
  // kMaxHeadsPerPass heads that divide the group evenly, the one whose busiest thread has the
  // least to do, counting an item (sequence, row, kv head, pass) as one unit for fetching its
  // K/V rows plus one per head; ties go to the larger pass. (One decode row of SmolLM2, 3
  // heads per kv head, 2 threads: 3 passes of 3 heads, 8 units on the busiest thread, rather
  // than 9 of one head, 10 units.) Each head runs the same operations whatever its pass.
  int64_t rows = 0;
  for (int32_t s = 0; s < num_seqs; ++s) rows += seqs[s].num_new;
  const int64_t threads_max = ParallelThreads();
  int64_t per_pass = 1, best_cost = -1;
  for (int64_t pp = std::min(group, kMaxHeadsPerPass); pp >= 1; --pp) {
    if (group % pp != 0) continue;
    const int64_t items = rows * layer.kv_heads * (group / pp);
    const int64_t cost = (items + threads_max - 1) / threads_max * (1 + pp);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      per_pass = pp;
    }
  }
  const int64_t passes = group / per_pass;

  // Rows of several partitions may instead be dealt out a partition at a time (each to
  // scratch, folded after): when the batch has too few items to keep every thread busy. Same
  // operations either way, so the same bits.
  const auto window_start = [&](int64_t pos) {
    return layer.sliding_window > 0 ? std::max<int64_t>(0, pos - layer.sliding_window + 1) : 0;
  };
  int64_t max_parts = 1;
  bool several = false;
  int64_t row_end = 0;  // past the last row of q (rows may leave gaps)
  for (int32_t s = 0; s < num_seqs; ++s) {
    if (seqs[s].num_new <= 0) continue;
    row_end = std::max<int64_t>(row_end, seqs[s].row_begin + seqs[s].num_new);
    const int64_t last = seqs[s].cached + seqs[s].num_new - 1;
    max_parts = std::max(max_parts, last / kPartition + 1);
    several = several || last / kPartition > window_start(last) / kPartition;
  }
  const int64_t scratch_floats = row_end * heads * max_parts * (dim + 2);

  // Work items are (sequence, row, kv head, pass) in that order; dealt by partition, each
  // partition of a row of several is an item of its own. visit(cost, item) for each, the
  // cost in positions.
  struct Item {
    const int32_t* block_table;
    int64_t first, last, kvh;
    const float* q;
    float* out;     // whole rows (AttendHeads)
    bool prefetch;  // decode (a few new rows): its K/V rows are fetched ahead (a prompt's are
                    // in cache already)
    bool partition;
    int64_t pi0;  // partitions (to scratch): the first head's scratch index
  };
  const auto for_each_item = [&](bool by_partition, auto&& visit) {
    for (int32_t s = 0; s < num_seqs; ++s) {
      const AttentionSeq& seq = seqs[s];
      const bool prefetch = seq.num_new <= 4;
      for (int64_t j = 0; j < seq.num_new; ++j) {
        const int64_t r = seq.row_begin + j;
        const int64_t pos = seq.cached + j;
        const int64_t first = window_start(pos);
        const bool parts = by_partition && pos / kPartition > first / kPartition;
        for (int64_t kvh = 0; kvh < layer.kv_heads; ++kvh) {
          for (int64_t pass = 0; pass < passes; ++pass) {
            const int64_t h0 = kvh * group + pass * per_pass;
            const float* qh = q + (r * heads + h0) * dim;
            if (!parts) {
              visit(pos - first + 1, Item{seq.block_table, first, pos, kvh, qh,
                                          out + (r * heads + h0) * dim, prefetch, false, 0});
              continue;
            }
            for (int64_t lo = first; lo <= pos;) {
              const int64_t hi = std::min(pos, (lo / kPartition + 1) * kPartition - 1);
              visit(hi - lo + 1, Item{seq.block_table, lo, hi, kvh, qh, nullptr, prefetch, true,
                                      (r * heads + h0) * max_parts + lo / kPartition});
              lo = hi + 1;
            }
          }
        }
      }
    }
  };
  // Unsplit, items are dealt round-robin to threads: rows late in a prompt cost more, and
  // dealing spreads them evenly without a work list. Split, each thread takes the items whose
  // cost midpoint falls in its equal share of the total.
  int64_t total_cost = 0;  // only needed where a split is considered
  const auto owner = [&](bool by_partition, int64_t threads, int64_t item, int64_t cost_before,
                         int64_t cost) {
    if (!by_partition) return item % threads;
    const double mid = static_cast<double>(cost_before) + 0.5 * static_cast<double>(cost);
    return std::min<int64_t>(threads - 1,
                             static_cast<int64_t>(mid * threads / static_cast<double>(total_cost)));
  };
  // Split when a few rows of several partitions leave threads idle: when the busiest thread's
  // share, dealt by partition, is under kSplitGain of its share dealt by row.
  bool split = false;
  if (several && threads_max > 1 && scratch_floats <= kMaxScratchFloats &&
      rows * layer.kv_heads * passes < kSplitBelowItemsPerThread * threads_max) {
    for_each_item(false, [&](int64_t cost, const Item&) { total_cost += cost; });
    thread_local std::vector<int64_t> load;
    const auto busiest = [&](bool by_partition) {
      load.assign(threads_max, 0);
      int64_t item = 0, before = 0;
      for_each_item(by_partition, [&](int64_t cost, const Item&) {
        load[owner(by_partition, threads_max, item++, before, cost)] += cost;
        before += cost;
      });
      return *std::max_element(load.begin(), load.end());
    };
    split = static_cast<double>(busiest(true)) < kSplitGain * static_cast<double>(busiest(false));
  }
  float* scratch_ml = nullptr;
  float* scratch_acc = nullptr;
  if (split) {
    // Grows to the largest split call, then is reused (the pointer, not the thread_local, goes
    // into the jobs).
    thread_local std::vector<float> scratch;
    if (static_cast<int64_t>(scratch.size()) < scratch_floats) scratch.resize(scratch_floats);
    scratch_ml = scratch.data();
    scratch_acc = scratch_ml + 2 * row_end * heads * max_parts;
  }

  const auto prefetch_first = layer.dtype == DType::kBF16 ? PrefetchFirstTile<DType::kBF16>
                                                          : PrefetchFirstTile<DType::kF32>;
  const auto to_scratch = layer.dtype == DType::kBF16 ? AttendPartitionToScratch<DType::kBF16>
                                                      : AttendPartitionToScratch<DType::kF32>;
  Parallel([&](int64_t self, int64_t threads) {
    // A thread computes its items one behind finding them: a decode item's first tile is
    // asked for when it is found and arrives while the item before it is computed.
    Item pending{};
    bool has_pending = false;
    const auto run = [&](const Item& it) {
      if (it.partition) {
        to_scratch(layer, it.block_table, it.first, it.last, it.kvh, it.q, per_pass, scale,
                   it.prefetch, it.pi0, max_parts, scratch_ml, scratch_acc);
      } else {
        attend(layer, it.block_table, it.first, it.last, it.kvh, it.q, per_pass, scale, it.prefetch,
               it.out);
      }
    };
    int64_t item = 0, before = 0;
    for_each_item(split, [&](int64_t cost, const Item& it) {
      const bool mine = owner(split, threads, item++, before, cost) == self;
      before += cost;
      if (!mine) return;
      if (it.prefetch) prefetch_first(layer, it.block_table, it.first, it.last, it.kvh);
      if (has_pending) run(pending);
      pending = it;
      has_pending = true;
    });
    if (has_pending) run(pending);
  });
  if (!split) return;

  // Rows dealt by partition: out = the fold of their partitions, in increasing order, as
  // AttendHeads folds them.
  const auto fold_row = [&](int64_t r, int64_t pos, int64_t h) {
    alignas(32) float a[kMaxHeadDim];
    const int64_t j_first = window_start(pos) / kPartition;
    const int64_t pi0 = (r * heads + h) * max_parts;
    float big_m = scratch_ml[2 * (pi0 + j_first)];
    float big_l = scratch_ml[2 * (pi0 + j_first) + 1];
    std::memcpy(a, scratch_acc + (pi0 + j_first) * dim, dim * sizeof(float));
    for (int64_t j = j_first + 1; j <= pos / kPartition; ++j) {
      FoldPartition(dim, scratch_acc + (pi0 + j) * dim, scratch_ml[2 * (pi0 + j)],
                    scratch_ml[2 * (pi0 + j) + 1], a, &big_m, &big_l);
    }
    float* o = out + (r * heads + h) * dim;
    for (int64_t d = 0; d < dim; ++d) o[d] = a[d] / big_l;
  };
  Parallel([&](int64_t self, int64_t threads) {
    int64_t item = 0;
    for (int32_t s = 0; s < num_seqs; ++s) {
      for (int64_t j = 0; j < seqs[s].num_new; ++j) {
        const int64_t pos = seqs[s].cached + j;
        if (pos / kPartition == window_start(pos) / kPartition) continue;
        for (int64_t h = 0; h < heads; ++h) {
          if (item++ % threads == self) fold_row(seqs[s].row_begin + j, pos, h);
        }
      }
    }
  });
}

}  // namespace spanserve::kernels::cpu
