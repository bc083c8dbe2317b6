// Paged causal GQA attention on the device (kernels/cuda/ops.h): PagedKvWrite, and
// PagedAttention with the CPU backend's arithmetic (kernels/cpu/attention.cc).
//
// Arithmetic. Every (row, query head) pair, a "unit", runs exactly the operations of the CPU
// kernel, in the same order, whichever block, launch shape or path computes it:
//   - score s_i = scale · (q · k_i): eight partial sums over the dimensions d ≡ 0..7 (mod 8),
//     each an fmaf chain in increasing d, added as ((a0+a4)+(a2+a6))+((a1+a5)+(a3+a7)), then
//     the dimensions past the last multiple of 8 by fmaf in order (the CPU's 8-lane FMA and
//     horizontal sum), times scale;
//   - online softmax over tiles of kTile = 32 positions aligned to absolute positions (the
//     CPU's tiles): tile max, m' = max(m, tile max), correction expf(m - m'), denominator ×
//     correction then + each p_i = Exp(s_i - m') in increasing i, with Exp the CPU's Cephes
//     expf (simd::Exp) written out with fmaf; acc ×= correction, then acc = fmaf(p_i, v_i,
//     acc) in increasing i; out = acc / denominator.
// So for a context of at most kPartition positions the result equals the CPU backend's bit
// for bit, but for expf, which is correctly rounded on the host (so the emulation is exact)
// and within 2 ulp on the device.
//
// Partitions. A row's context is cut into partitions of kPartition = 512 positions (16
// tiles) at absolute positions [0, 512), [512, 1024), ...; each partition runs the online
// softmax above from a fresh state, giving (m_j, l_j, acc_j), and the row's result is their
// left fold in increasing j: (M, L, A) = partition 0's, then for j ≥ 1 with M' = max(M, m_j),
// c = expf(M - M'), w = expf(m_j - M'): L = fmaf(l_j, w, L·c), A = fmaf(acc_j, w, A·c);
// out = A / L. A row's partitions depend only on its own position, so a row's output
// never depends on the other rows of the batch, on how its prompt was chunked, or on which
// path below ran (a longer row differs from the CPU backend's single pass by rounding only,
// well within 1e-5 relative).
//
// Paths (chosen from the shapes alone: rows, sequences, heads, max_context; see MakePlan):
//   - Unsplit: a block serves R consecutive rows (runs of one sequence) × the query heads of
//     one pass over a kv head's group, up to 32 units (fewer for head_dim > 128, the
//     accumulators live in registers); it walks every partition of its rows in order and
//     folds them in registers. R = 1 serves decode (each block reads its sequence's K/V once
//     for all the group's heads); R > 1 serves prefill, where the block stages each K tile
//     in shared memory once for R rows × the group's heads (flash-style, causal per row).
//   - Split (few blocks, long contexts: the GPU would be under-filled): a block per
//     partition as well, writing (m_j, l_j, acc_j) of the rows with more than one partition
//     to scratch, and CombineKernel folding them in the same order with the same operations.
//     Rows of a single partition are written directly, as in the unsplit path. Chosen when
//     max_context > kPartition, the unsplit grid has fewer than kSplitBelowBlocks blocks,
//     and the scratch (rows · heads · max_parts · (head_dim + 2) floats) fits in
//     kMaxScratchFloats; PagedAttentionScratchFloats is 0 otherwise.
// Both paths give the same bits for every row.
//
// Sliding window (layer.sliding_window = W > 0): the row at position p attends to positions
// [lo, p] with lo = max(0, p - W + 1), as the CPU kernel does; tiles and partitions stay at
// absolute positions, a row's first tile and first partition are the ones holding lo, and
// its fold starts at its first partition (partition lo / kPartition), so within one
// partition the result is still the CPU's bit for bit.
//
// Soft-capping (layer.logit_softcap = c > 0, Gemma 2): each score becomes tanhf(s / c) · c
// before the softmax, as the CPU kernel computes it (tanhf within 2 ulp on the device).
#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cuda/ops.h"

// Full unrolling of the loops over register arrays (a GCC pragma in the emulation).
#if defined(SPANSERVE_CUDA_EMULATION)
#define SPANSERVE_ATTENTION_UNROLL _Pragma("GCC unroll 32")
#else
#define SPANSERVE_ATTENTION_UNROLL _Pragma("unroll")
#endif

namespace spanserve::kernels::cuda {
namespace attention_impl {

constexpr int kThreads = 128;  // threads per attention block (4 warps)
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 32;         // positions per online-softmax step (the CPU's kTile)
constexpr int kPartition = 512;   // positions per partition (a multiple of kTile)
constexpr int kMaxHeadDim = 512;  // the CPU kernel's limit too
constexpr int kMaxHeadsPerPass = 8;
constexpr int kUnitBudget = 32;  // units × ceil(head_dim / kThreads) per block (registers)
// The split path runs when the unsplit grid would have fewer blocks than this (a few per
// SM on an H100 / A100) and its scratch stays within kMaxScratchFloats (128 MiB).
constexpr int64_t kSplitBelowBlocks = 1024;
constexpr int64_t kMaxScratchFloats = int64_t{32} << 20;
// The unsplit path serves several rows per block when the batch averages at least this many
// rows per sequence (prefill or chunked prefill).
constexpr int64_t kMultiRowMinRowsPerSeq = 4;

// Tests may force a plan (split: -1 automatic, 0 never, 1 always when any row has two
// partitions; rows_per_block: 0 automatic). Results never depend on it.
int g_force_split = -1;
int g_force_rows_per_block = 0;

struct Params {
  const void* k;
  const void* v;
  int32_t block_size;
  int32_t kv_heads;
  int32_t head_dim;
  const DeviceSeq* seqs;
  const int32_t* block_tables;
  const int32_t* row_seq;
  int64_t rows;
  const float* q;
  int32_t heads;
  float scale;
  float* out;
  float* scratch;          // split: [rows·heads·max_parts] × (m, l), then × head_dim of acc
  int32_t group;           // heads / kv_heads
  int32_t heads_per_pass;  // query heads a block serves
  int32_t passes;          // blocks per kv head
  int32_t rows_per_block;  // R
  int32_t split;           // whether blockIdx.z is a partition (the split path)
  int32_t max_parts;       // partitions of the longest row
  int32_t window;          // sliding window (0: none)
  float softcap;           // logit soft-cap (0: none)
};

struct Plan {
  int cols = 1;  // ceil(head_dim / kThreads): accumulator columns per thread
  int heads_per_pass = 1;
  int passes = 1;
  int rows_per_block = 1;
  bool split = false;
  int max_parts = 1;
  int64_t row_groups = 0;
  int64_t scratch_floats = 0;
};

SPANSERVE_HD constexpr int UnitsFor(int cols) { return kUnitBudget / cols; }
// Keys whose K rows a block stages in shared memory at once.
SPANSERVE_HD constexpr int KeysFor(int cols) { return cols == 1 ? 32 : cols == 2 ? 16 : 8; }

Plan MakePlan(const PagedKvLayer& layer, const DeviceBatch& batch, int32_t heads) {
  Plan plan;
  const int hd = layer.head_dim;
  plan.cols = (hd + kThreads - 1) / kThreads;
  const int units = UnitsFor(plan.cols);
  const int group = heads / layer.kv_heads;
  plan.passes = (group + kMaxHeadsPerPass - 1) / kMaxHeadsPerPass;
  plan.heads_per_pass = (group + plan.passes - 1) / plan.passes;
  plan.max_parts = batch.max_context <= 0 ? 1 : (batch.max_context - 1) / kPartition + 1;
  plan.rows_per_block = 1;
  if (batch.num_seqs > 0 && batch.rows >= kMultiRowMinRowsPerSeq * batch.num_seqs) {
    plan.rows_per_block = units / plan.heads_per_pass;
  }
  if (g_force_rows_per_block > 0) {
    plan.rows_per_block = g_force_rows_per_block < units / plan.heads_per_pass
                              ? g_force_rows_per_block
                              : units / plan.heads_per_pass;
  }
  if (plan.rows_per_block < 1) plan.rows_per_block = 1;
  plan.row_groups = (batch.rows + plan.rows_per_block - 1) / plan.rows_per_block;
  const int64_t blocks = plan.row_groups * layer.kv_heads * plan.passes;
  const int64_t scratch = batch.rows * heads * static_cast<int64_t>(plan.max_parts) * (hd + 2);
  plan.split = plan.max_parts > 1 && blocks < kSplitBelowBlocks && scratch <= kMaxScratchFloats;
  if (g_force_split >= 0) plan.split = g_force_split == 1 && plan.max_parts > 1;
  plan.scratch_floats = plan.split ? scratch : 0;
  return plan;
}

// Shared memory of AttentionKernel<·, cols> for head_dim hd.
size_t SharedBytes(int hd, int cols) {
  const int units = UnitsFor(cols);
  const size_t floats = static_cast<size_t>(KeysFor(cols)) * (hd + 1) +  // K rows
                        static_cast<size_t>(units) * (hd + 8) +          // q rows
                        2 * static_cast<size_t>(units) * kTile +         // scores, probs
                        5 * static_cast<size_t>(units);  // correction, max, merge c/w, L
  return 2 * kTile * sizeof(int64_t) + floats * sizeof(float) + units * sizeof(int32_t);
}

template <bool kBf16>
__device__ __forceinline__ float LoadKv(const void* base, int64_t i) {
  if constexpr (kBf16) {
    return Bf16BitsToF32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return static_cast<const float*>(base)[i];
  }
}

// e^x as the CPU's simd::Exp computes it (Cephes expf, inputs clamped to [-87.3, 88]).
__device__ __forceinline__ float CephesExp(float x) {
  x = fminf(x, 88.0f);
  x = fmaxf(x, -87.3365478515625f);
  const float n = rintf(x * 1.44269504088896341f);
  float r = fmaf(-n, 0.693359375f, x);
  r = fmaf(-n, -2.12194440e-4f, r);
  float p = 1.9875691500E-4f;
  p = fmaf(p, r, 1.3981999507E-3f);
  p = fmaf(p, r, 8.3334519073E-3f);
  p = fmaf(p, r, 4.1665795894E-2f);
  p = fmaf(p, r, 1.6666665459E-1f);
  p = fmaf(p, r, 5.0000001201E-1f);
  p = fmaf(p, r * r, r + 1.0f);
  const uint32_t bits = static_cast<uint32_t>(static_cast<int>(n) + 127) << 23;
  float two_n;
  memcpy(&two_n, &bits, 4);
  return p * two_n;
}

// scale · (q · k) in the CPU's order (see the file comment).
__device__ __forceinline__ float Score(const float* q, const float* k, int dim, float scale) {
  const int d8 = dim & ~7;
  float a0 = 0.0f, a1 = 0.0f, a2 = 0.0f, a3 = 0.0f, a4 = 0.0f, a5 = 0.0f, a6 = 0.0f, a7 = 0.0f;
  for (int d = 0; d < d8; d += 8) {
    a0 = fmaf(q[d], k[d], a0);
    a1 = fmaf(q[d + 1], k[d + 1], a1);
    a2 = fmaf(q[d + 2], k[d + 2], a2);
    a3 = fmaf(q[d + 3], k[d + 3], a3);
    a4 = fmaf(q[d + 4], k[d + 4], a4);
    a5 = fmaf(q[d + 5], k[d + 5], a5);
    a6 = fmaf(q[d + 6], k[d + 6], a6);
    a7 = fmaf(q[d + 7], k[d + 7], a7);
  }
  float dot = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7));
  for (int d = d8; d < dim; ++d) dot = fmaf(q[d], k[d], dot);
  return dot * scale;
}

// The soft-capped score cap · tanh(s / cap) in the CPU's order (cap 0: s).
__device__ __forceinline__ float SoftCap(float s, float cap) {
  return cap > 0.0f ? tanhf(s / cap) * cap : s;
}

// Positions of `pos`'s row a tile [t0, t0 + nt) covers: 0 when the row ends before it.
__device__ __forceinline__ int KeysOfRow(int pos, int t0, int nt) {
  const int n = pos + 1 - t0;
  return n < 0 ? 0 : (n < nt ? n : nt);
}

// The first position the row at `pos` attends to (window 0: no sliding window).
SPANSERVE_HD inline int WindowStart(int pos, int window) {
  return window > 0 && pos - window + 1 > 0 ? pos - window + 1 : 0;
}

// The row's first key in a tile starting at t0: keys [KeyBegin, KeysOfRow) are its own.
__device__ __forceinline__ int KeyBegin(int lo, int t0) { return lo > t0 ? lo - t0 : 0; }

// Grid: x = groups of R rows, y = kv head × pass, z = partition (split) or 1. Block:
// kThreads. See the file comment.
template <bool kBf16, int kCols>
__global__ void AttentionKernel(Params p) {
  constexpr int kUnits = UnitsFor(kCols);
  constexpr int kKeys = KeysFor(kCols);
  constexpr int kUnitsPerWarp = (kUnits + kWarps - 1) / kWarps;
  const int hd = p.head_dim;
  const int kstride = hd + 1;  // odd for even head_dim: a warp's 32 keys hit 32 banks
  const int qstride = hd + 8;  // the 2 or 4 units a warp reads sit on different banks

  SPANSERVE_DYNAMIC_SHARED(unsigned char, smem);
  int64_t* slots = reinterpret_cast<int64_t*>(smem);  // [2][kTile]: K/V rows of a tile
  float* ks = reinterpret_cast<float*>(slots + 2 * kTile);
  float* qs = ks + kKeys * kstride;
  float* ss = qs + kUnits * qstride;                        // [unit][kTile] scores
  float* ps = ss + kUnits * kTile;                          // [unit][kTile] probabilities
  float* cs = ps + kUnits * kTile;                          // [unit] the tile's correction
  float* ms = cs + kUnits;                                  // [unit] running max
  float* mc = ms + kUnits;                                  // [unit] the fold's c
  float* mw = mc + kUnits;                                  // [unit] the fold's w
  float* ls = mw + kUnits;                                  // [unit] L at the end
  int32_t* upos = reinterpret_cast<int32_t*>(ls + kUnits);  // [unit] the unit's position

  const int t = static_cast<int>(threadIdx.x);
  const int lane = t % 32;
  const int warp = t / 32;
  const int kvh = static_cast<int>(blockIdx.y) / p.passes;
  const int pass = static_cast<int>(blockIdx.y) % p.passes;
  const int h0 = kvh * p.group + pass * p.heads_per_pass;
  const int nh = p.group - pass * p.heads_per_pass < p.heads_per_pass
                     ? p.group - pass * p.heads_per_pass
                     : p.heads_per_pass;
  const int part = static_cast<int>(blockIdx.z);
  const bool split = p.split != 0;
  const int bs = p.block_size;
  const int64_t first_row = static_cast<int64_t>(blockIdx.x) * p.rows_per_block;
  const int64_t end_row =
      first_row + p.rows_per_block < p.rows ? first_row + p.rows_per_block : p.rows;
  const int64_t parts_stride = static_cast<int64_t>(p.max_parts);
  float* scratch_acc = split ? p.scratch + p.rows * p.heads * parts_stride * 2 : nullptr;

  // Runs of consecutive rows of one sequence (the same for every thread).
  for (int64_t r = first_row; r < end_row;) {
    const int32_t s = p.row_seq[r];
    if (s < 0) {
      ++r;
      continue;
    }
    int64_t run_end = r + 1;
    while (run_end < end_row && p.row_seq[run_end] == s) ++run_end;
    const int64_t run_begin = r;
    r = run_end;

    const DeviceSeq seq = p.seqs[s];
    const int32_t* table = p.block_tables + seq.table_offset;
    const int units = static_cast<int>(run_end - run_begin) * nh;
    const int first_pos = seq.cached + static_cast<int>(run_begin - seq.row_begin);
    const int last_pos = first_pos + static_cast<int>(run_end - run_begin) - 1;
    const int parts = last_pos / kPartition + 1;
    const int lo_min = WindowStart(first_pos, p.window);  // the run's first key
    int j_begin = lo_min / kPartition;
    int j_end = parts;
    if (split) {
      if (part >= parts || part < j_begin) continue;
      j_begin = part;
      j_end = part + 1;
    }

    __syncthreads();  // the previous run is done with qs, upos and ls
    for (int e = t; e < units * hd; e += kThreads) {
      const int u = e / hd;
      const int d = e - u * hd;
      const int64_t row = run_begin + u / nh;
      const int h = h0 + u % nh;
      qs[u * qstride + d] = p.q[(row * p.heads + h) * hd + d];
    }
    if (t < units) upos[t] = first_pos + t / nh;
    __syncthreads();

    float A[kUnits][kCols];  // the fold of the partitions so far
    float big_m = 0.0f;      // thread t < units: M and L of unit t
    float big_l = 0.0f;
    SPANSERVE_ATTENTION_UNROLL
    for (int u = 0; u < kUnits; ++u) {
      SPANSERVE_ATTENTION_UNROLL
      for (int c = 0; c < kCols; ++c) A[u][c] = 0.0f;
    }

    for (int j = j_begin; j < j_end; ++j) {
      const int t_begin = j * kPartition;
      const int t_first = lo_min > t_begin ? lo_min / kTile * kTile : t_begin;
      const int t_end = t_begin + kPartition < last_pos + 1 ? t_begin + kPartition : last_pos + 1;
      float acc[kUnits][kCols];
      float run_max[kUnitsPerWarp];  // warp w: units w, w + kWarps, ...
      float den = 0.0f;              // thread t < units: unit t's denominator
      SPANSERVE_ATTENTION_UNROLL
      for (int u = 0; u < kUnits; ++u) {
        SPANSERVE_ATTENTION_UNROLL
        for (int c = 0; c < kCols; ++c) acc[u][c] = 0.0f;
      }
      SPANSERVE_ATTENTION_UNROLL
      for (int k = 0; k < kUnitsPerWarp; ++k) run_max[k] = -INFINITY;

      int tile = 0;
      for (int t0 = t_first; t0 < t_end; t0 += kTile, ++tile) {
        const int nt = t_end - t0 < kTile ? t_end - t0 : kTile;
        int64_t* tile_slots = slots + (tile & 1) * kTile;  // PV of the last tile may still read
        // Scores, kKeys keys at a time staged in shared memory.
        for (int sb = 0; sb < nt; sb += kKeys) {
          const int nk = nt - sb < kKeys ? nt - sb : kKeys;
          for (int key = warp; key < nk; key += kWarps) {
            const int pos = t0 + sb + key;
            if (pos < lo_min) {
              // Before every row's window (the first tile starts at a multiple of kTile): no
              // score reads it, and its block may be back in the pool (kReleasedBlock, -1).
              if (lane == 0) tile_slots[sb + key] = -1;
              continue;
            }
            const int64_t slot =
                (static_cast<int64_t>(table[pos / bs]) * bs + pos % bs) * p.kv_heads + kvh;
            if (lane == 0) tile_slots[sb + key] = slot;
            for (int d = lane; d < hd; d += 32)
              ks[key * kstride + d] = LoadKv<kBf16>(p.k, slot * hd + d);
          }
          __syncthreads();
          const int key = t % kKeys;
          if (key < nk) {
            for (int u = t / kKeys; u < units; u += kThreads / kKeys) {
              if (sb + key < KeysOfRow(upos[u], t0, nt) &&
                  sb + key >= KeyBegin(WindowStart(upos[u], p.window), t0)) {
                ss[u * kTile + sb + key] =
                    SoftCap(Score(qs + u * qstride, ks + key * kstride, hd, p.scale), p.softcap);
              }
            }
          }
          __syncthreads();
        }
        // The softmax step: warp w serves units w, w + kWarps, ...
        SPANSERVE_ATTENTION_UNROLL
        for (int k = 0; k < kUnitsPerWarp; ++k) {
          const int u = warp + kWarps * k;
          if (u < units) {
            const int n = KeysOfRow(upos[u], t0, nt);
            const int b = KeyBegin(WindowStart(upos[u], p.window), t0);
            if (n > b) {
              const float* su = ss + u * kTile;
              float tile_max = su[b];
              for (int i = b + 1; i < n; ++i) tile_max = fmaxf(tile_max, su[i]);
              const float new_max = fmaxf(run_max[k], tile_max);
              const float correction = expf(run_max[k] - new_max);
              run_max[k] = new_max;
              if (lane >= b && lane < n) ps[u * kTile + lane] = CephesExp(su[lane] - new_max);
              if (lane == 0) {
                cs[u] = correction;
                ms[u] = new_max;
              }
            }
          }
        }
        __syncthreads();
        // acc = acc · correction + Σ_i p_i · v_i (each column in increasing i).
        int n_of[kUnits];
        int b_of[kUnits];
        SPANSERVE_ATTENTION_UNROLL
        for (int u = 0; u < kUnits; ++u) {
          n_of[u] = u < units ? KeysOfRow(upos[u], t0, nt) : 0;
          b_of[u] = u < units ? KeyBegin(WindowStart(upos[u], p.window), t0) : 0;
          if (n_of[u] > b_of[u]) {
            const float correction = cs[u];
            SPANSERVE_ATTENTION_UNROLL
            for (int c = 0; c < kCols; ++c) acc[u][c] *= correction;
          }
        }
        if (t < units) {
          const int n = KeysOfRow(upos[t], t0, nt);
          const int b = KeyBegin(WindowStart(upos[t], p.window), t0);
          if (n > b) {
            den *= cs[t];
            for (int i = b; i < n; ++i) den += ps[t * kTile + i];
          }
        }
        for (int i = 0; i < nt; ++i) {
          if (tile_slots[i] < 0) continue;  // before every row's window (above)
          const int64_t base = tile_slots[i] * hd;
          SPANSERVE_ATTENTION_UNROLL
          for (int c = 0; c < kCols; ++c) {
            const int col = t + c * kThreads;
            if (col < hd) {
              const float v = LoadKv<kBf16>(p.v, base + col);
              SPANSERVE_ATTENTION_UNROLL
              for (int u = 0; u < kUnits; ++u) {
                if (i >= b_of[u] && i < n_of[u]) {
                  acc[u][c] = fmaf(ps[u * kTile + i], v, acc[u][c]);
                }
              }
            }
          }
        }
      }

      // The partition's (m, l, acc): to scratch (split, a row of several partitions), or
      // folded into (M, L, A).
      __syncthreads();  // ms is final
      // Unit u has keys in this partition when its position is in or past it and its
      // window starts before its end; its first partition is the one holding its window
      // start, and it has several when that is not its own position's.
      const int t_limit = t_begin + kPartition;
      if (t < units && upos[t] >= t_begin && WindowStart(upos[t], p.window) < t_limit) {
        const float m = ms[t];
        const int j_first = WindowStart(upos[t], p.window) / kPartition;
        if (split && upos[t] / kPartition > j_first) {
          const int64_t row = run_begin + t / nh;
          const int64_t pi = (row * p.heads + h0 + t % nh) * parts_stride + j;
          p.scratch[2 * pi] = m;
          p.scratch[2 * pi + 1] = den;
        } else if (j == j_first) {
          big_m = m;
          big_l = den;
        } else {
          const float new_m = fmaxf(big_m, m);
          const float c = expf(big_m - new_m);
          const float w = expf(m - new_m);
          big_m = new_m;
          big_l = fmaf(den, w, big_l * c);
          mc[t] = c;
          mw[t] = w;
        }
      }
      __syncthreads();
      SPANSERVE_ATTENTION_UNROLL
      for (int u = 0; u < kUnits; ++u) {
        const int lo_u = u < units ? WindowStart(upos[u], p.window) : 0;
        if (u < units && upos[u] >= t_begin && lo_u < t_limit) {
          if (split && upos[u] / kPartition > lo_u / kPartition) {
            const int64_t row = run_begin + u / nh;
            const int64_t pi = (row * p.heads + h0 + u % nh) * parts_stride + j;
            SPANSERVE_ATTENTION_UNROLL
            for (int c = 0; c < kCols; ++c) {
              const int col = t + c * kThreads;
              if (col < hd) scratch_acc[pi * hd + col] = acc[u][c];
            }
          } else if (j == lo_u / kPartition) {
            SPANSERVE_ATTENTION_UNROLL
            for (int c = 0; c < kCols; ++c) A[u][c] = acc[u][c];
          } else {
            const float c_u = mc[u];
            const float w_u = mw[u];
            SPANSERVE_ATTENTION_UNROLL
            for (int c = 0; c < kCols; ++c) A[u][c] = fmaf(acc[u][c], w_u, A[u][c] * c_u);
          }
        }
      }
    }

    // out = A / L for the units this block completed.
    if (t < units) ls[t] = big_l;
    __syncthreads();
    SPANSERVE_ATTENTION_UNROLL
    for (int u = 0; u < kUnits; ++u) {
      const int j_first = u < units ? WindowStart(upos[u], p.window) / kPartition : 0;
      if (u < units && (!split || (part == j_first && upos[u] / kPartition == j_first))) {
        const int64_t row = run_begin + u / nh;
        float* o = p.out + (row * p.heads + h0 + u % nh) * hd;
        const float l = ls[u];
        SPANSERVE_ATTENTION_UNROLL
        for (int c = 0; c < kCols; ++c) {
          const int col = t + c * kThreads;
          if (col < hd) o[col] = A[u][c] / l;
        }
      }
    }
  }
}

// Split path: out[row, h] = the fold of the row's partitions from scratch, for rows of more
// than one partition. Grid: x = rows, y = heads. Block: kThreads.
__global__ void CombineKernel(Params p) {
  const int64_t row = blockIdx.x;
  const int h = static_cast<int>(blockIdx.y);
  const int32_t s = p.row_seq[row];
  if (s < 0) return;
  const DeviceSeq seq = p.seqs[s];
  const int pos = seq.cached + static_cast<int>(row - seq.row_begin);
  const int parts = pos / kPartition + 1;
  const int j_first = WindowStart(pos, p.window) / kPartition;
  if (parts - j_first < 2) return;
  const int hd = p.head_dim;
  const int64_t pi0 = (row * p.heads + h) * static_cast<int64_t>(p.max_parts);
  const float* ml = p.scratch;
  const float* scratch_acc = p.scratch + p.rows * p.heads * static_cast<int64_t>(p.max_parts) * 2;
  constexpr int kCols = kMaxHeadDim / kThreads;
  float a[kCols] = {};  // set by the first partition; zeroed so compilers see it set
  float big_m = 0.0f;
  float big_l = 0.0f;
  for (int j = j_first; j < parts; ++j) {
    const int64_t pi = pi0 + j;
    const float m = ml[2 * pi];
    const float l = ml[2 * pi + 1];
    if (j == j_first) {
      big_m = m;
      big_l = l;
      SPANSERVE_ATTENTION_UNROLL
      for (int c = 0; c < kCols; ++c) {
        const int col = static_cast<int>(threadIdx.x) + c * kThreads;
        a[c] = col < hd ? scratch_acc[pi * hd + col] : 0.0f;
      }
    } else {
      const float new_m = fmaxf(big_m, m);
      const float cf = expf(big_m - new_m);
      const float w = expf(m - new_m);
      big_m = new_m;
      big_l = fmaf(l, w, big_l * cf);
      SPANSERVE_ATTENTION_UNROLL
      for (int c = 0; c < kCols; ++c) {
        const int col = static_cast<int>(threadIdx.x) + c * kThreads;
        if (col < hd) a[c] = fmaf(scratch_acc[pi * hd + col], w, a[c] * cf);
      }
    }
  }
  float* o = p.out + (row * p.heads + h) * hd;
  SPANSERVE_ATTENTION_UNROLL
  for (int c = 0; c < kCols; ++c) {
    const int col = static_cast<int>(threadIdx.x) + c * kThreads;
    if (col < hd) o[col] = a[c] / big_l;
  }
}

// One block per row: the row's kv_heads · head_dim values of k and v into its slot.
template <bool kBf16>
__global__ void KvWriteKernel(void* k_cache, void* v_cache, int32_t block_size, int64_t width,
                              const DeviceSeq* seqs, const int32_t* block_tables,
                              const int32_t* row_seq, const float* k, const float* v) {
  const int64_t row = blockIdx.x;
  const int32_t s = row_seq[row];
  if (s < 0) return;
  const DeviceSeq seq = seqs[s];
  const int64_t pos = seq.cached + (row - seq.row_begin);
  const int64_t block = block_tables[seq.table_offset + pos / block_size];
  const int64_t dst = (block * block_size + pos % block_size) * width;
  const float* ks = k + row * width;
  const float* vs = v + row * width;
  for (int64_t e = threadIdx.x; e < width; e += blockDim.x) {
    if constexpr (kBf16) {
      static_cast<uint16_t*>(k_cache)[dst + e] = F32ToBf16Bits(ks[e]);
      static_cast<uint16_t*>(v_cache)[dst + e] = F32ToBf16Bits(vs[e]);
    } else {
      static_cast<float*>(k_cache)[dst + e] = ks[e];
      static_cast<float*>(v_cache)[dst + e] = vs[e];
    }
  }
}

template <bool kBf16, int kCols>
void LaunchAttention(cudaStream_t stream, const Plan& plan, const Params& params, int kv_heads) {
  auto* kernel = &AttentionKernel<kBf16, kCols>;
  const size_t shared = SharedBytes(params.head_dim, kCols);  // ≤ 44 KiB: no opt-in needed
  const dim3 grid(static_cast<unsigned>(plan.row_groups),
                  static_cast<unsigned>(kv_heads * plan.passes),
                  static_cast<unsigned>(plan.split ? plan.max_parts : 1));
  SPANSERVE_LAUNCH(kernel, grid, dim3(kThreads), shared, stream, params);
}

template <bool kBf16>
void LaunchAttention(cudaStream_t stream, const Plan& plan, const Params& params, int kv_heads) {
  switch (plan.cols) {
    case 1:
      LaunchAttention<kBf16, 1>(stream, plan, params, kv_heads);
      break;
    case 2:
      LaunchAttention<kBf16, 2>(stream, plan, params, kv_heads);
      break;
    case 3:
      LaunchAttention<kBf16, 3>(stream, plan, params, kv_heads);
      break;
    default:
      LaunchAttention<kBf16, 4>(stream, plan, params, kv_heads);
      break;
  }
}

}  // namespace attention_impl

namespace attention_testing {
// For tests only (results never depend on it): split -1 automatic, 0 never, 1 whenever a
// row has more than one partition; rows_per_block 0 automatic, else at most that many rows
// per unsplit block. Not thread-safe.
void ForceAttentionPlan(int split, int rows_per_block) {
  attention_impl::g_force_split = split;
  attention_impl::g_force_rows_per_block = rows_per_block;
}
int AttentionPartitionSize() { return attention_impl::kPartition; }
}  // namespace attention_testing

void PagedKvWrite(cudaStream_t stream, const PagedKvLayer& layer, const DeviceBatch& batch,
                  const float* k, const float* v) {
  if (batch.rows <= 0) return;
  const int64_t width = static_cast<int64_t>(layer.kv_heads) * layer.head_dim;
  const int threads = width >= 256 ? 256 : (width >= 128 ? 128 : 64);
  const dim3 grid(static_cast<unsigned>(batch.rows));
  if (layer.dtype == DType::kBF16) {
    auto* kernel = &attention_impl::KvWriteKernel<true>;
    SPANSERVE_LAUNCH(kernel, grid, dim3(threads), 0, stream, layer.k, layer.v, layer.block_size,
                     width, batch.seqs, batch.block_tables, batch.row_seq, k, v);
  } else {
    auto* kernel = &attention_impl::KvWriteKernel<false>;
    SPANSERVE_LAUNCH(kernel, grid, dim3(threads), 0, stream, layer.k, layer.v, layer.block_size,
                     width, batch.seqs, batch.block_tables, batch.row_seq, k, v);
  }
}

int64_t PagedAttentionScratchFloats(const PagedKvLayer& layer, const DeviceBatch& batch,
                                    int32_t heads) {
  if (batch.rows <= 0) return 0;
  return attention_impl::MakePlan(layer, batch, heads).scratch_floats;
}

void PagedAttention(cudaStream_t stream, const PagedKvLayer& layer, const DeviceBatch& batch,
                    const float* q, int32_t heads, float scale, float* out, float* scratch) {
  using namespace attention_impl;
  if (batch.rows <= 0) return;
  const Plan plan = MakePlan(layer, batch, heads);
  Params params{};
  params.k = layer.k;
  params.v = layer.v;
  params.block_size = layer.block_size;
  params.kv_heads = layer.kv_heads;
  params.head_dim = layer.head_dim;
  params.seqs = batch.seqs;
  params.block_tables = batch.block_tables;
  params.row_seq = batch.row_seq;
  params.rows = batch.rows;
  params.q = q;
  params.heads = heads;
  params.scale = scale;
  params.out = out;
  params.scratch = plan.split ? scratch : nullptr;
  params.group = heads / layer.kv_heads;
  params.heads_per_pass = plan.heads_per_pass;
  params.passes = plan.passes;
  params.rows_per_block = plan.rows_per_block;
  params.split = plan.split ? 1 : 0;
  params.max_parts = plan.max_parts;
  params.window = layer.sliding_window > 0 ? layer.sliding_window : 0;
  params.softcap = layer.logit_softcap > 0.0f ? layer.logit_softcap : 0.0f;
  if (layer.dtype == DType::kBF16) {
    LaunchAttention<true>(stream, plan, params, layer.kv_heads);
  } else {
    LaunchAttention<false>(stream, plan, params, layer.kv_heads);
  }
  if (plan.split) {
    const dim3 grid(static_cast<unsigned>(batch.rows), static_cast<unsigned>(heads));
    SPANSERVE_LAUNCH(&CombineKernel, grid, dim3(kThreads), 0, stream, params);
  }
}

}  // namespace spanserve::kernels::cuda

#undef SPANSERVE_ATTENTION_UNROLL
