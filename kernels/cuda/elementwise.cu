// Embeddings, norms, RoPE, element-wise ops, row moves and the mixture-of-experts router and
// combiner of the CUDA backend (kernels/cuda/ops.h), with the CPU backend's arithmetic
// (kernels/cpu/norm.cc, rope.cc, elementwise.cc, cpu_backend.cc): the same operations in the
// same order and rounding wherever an op is element-wise (--fmad=false: every fused
// multiply-add is an explicit fmaf, as the CPU's are explicit FMAs), and fixed-order trees
// where the CPU reduces a row with 8 lanes (the tree depends only on the row's length, never
// on the batch, so a row's result never depends on the other rows).
//
// Launch shapes, in one place:
//   - element-wise ops (SiluMul, GeluTanhMul, Add, Axpby): one thread per element, kElementThreads
//   a block;
//   - row ops (EmbeddingLookup, GatherRows, ScatterRows, MoeCombine, GatedAdd): grid.x = the
//     row, grid.y = a chunk of kRowChunk columns; kRowThreads threads, each kRowChunk /
//     kRowThreads columns strided by kRowThreads (coalesced);
//   - norms: one block per token row, NormThreads(dim) threads (a warp for dim ≤ 128, up to
//     1024), block sums as warp butterflies then a butterfly over the warps' sums;
//   - RoPE: grid.x = the token, grid.y = chunks of kRopeThreads (head, pair) items;
//   - SumOfSquares: one block of 1024 threads (no scratch to combine blocks without atomics);
//   - MoeRoute: one warp per token, kRouteWarps tokens a block.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <type_traits>

#include "kernels/cuda/ops.h"

namespace spanserve::kernels::cuda {
// Internal names live in their own namespace (ew): kernels_emu.cc compiles every .cu of this
// folder in one translation unit.
namespace ew {

constexpr int kElementThreads = 256;
constexpr int kRowThreads = 256;
constexpr int kRowChunk = 1024;  // columns a row-op block covers (4 per thread)
constexpr int kRopeThreads = 256;
constexpr int kSumThreads = 1024;
constexpr int kRouteWarps = 4;
constexpr unsigned kFullMask = 0xffffffffu;

// Element i of an array of kT, widened to f32 exactly (LoadWeight with the type fixed).
template <DType kT>
__device__ __forceinline__ float Load(const void* p, int64_t i) {
  if constexpr (kT == DType::kF32) {
    return static_cast<const float*>(p)[i];
  } else if constexpr (kT == DType::kBF16) {
    return Bf16BitsToF32(static_cast<const uint16_t*>(p)[i]);
  } else {
    return F16BitsToF32(static_cast<const uint16_t*>(p)[i]);
  }
}

// Calls f(std::integral_constant<DType, t>{}) for the runtime dtype t (host side).
template <class F>
void WithDType(DType t, F&& f) {
  switch (t) {
    case DType::kF32:
      f(std::integral_constant<DType, DType::kF32>{});
      return;
    case DType::kBF16:
      f(std::integral_constant<DType, DType::kBF16>{});
      return;
    case DType::kF16:
      f(std::integral_constant<DType, DType::kF16>{});
      return;
  }
  std::abort();
}

// Sum over a warp by an xor butterfly: every lane ends with the same bits (each addition's
// operands are the same pair on both lanes, and IEEE addition is commutative).
template <class T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int mask = 16; mask > 0; mask >>= 1) v += __shfl_xor_sync(kFullMask, v, mask);
  return v;
}

// Sum of v over the block, returned to every thread (same bits everywhere). The order
// depends only on blockDim.x: the warps' butterflies, then a butterfly over the warps' sums
// (zero-padded to 32). Every thread of the block must call it; it may be called again.
template <class T>
__device__ __forceinline__ T BlockSum(T v) {
  __shared__ T warp_sums[32];
  const int lane = static_cast<int>(threadIdx.x) % warpSize;
  const int warp = static_cast<int>(threadIdx.x) / warpSize;
  const int warps = static_cast<int>(blockDim.x) / warpSize;
  v = WarpSum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  T total = lane < warps ? warp_sums[lane] : T(0);
  total = WarpSum(total);
  __syncthreads();  // warp_sums may be written again by the next call
  return total;
}

// ---- Row ops. grid.x: the row; grid.y: the kRowChunk-column chunk; each thread copies (or
// combines) columns chunk + threadIdx.x + k·kRowThreads.

// out[t, :] = widened table[ids[t], :].
template <DType kT>
__global__ void EmbeddingKernel(const void* table, int64_t dim, const int32_t* ids, float* out) {
  const int64_t t = blockIdx.x;
  const int64_t row = static_cast<int64_t>(ids[t]) * dim;
  float* o = out + t * dim;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kRowChunk + threadIdx.x;
  const int64_t end = begin + kRowChunk < dim ? begin + kRowChunk : dim;
  for (int64_t c = begin; c < end; c += kRowThreads) o[c] = Load<kT>(table, row + c);
}

// dst[r, :] = src[rows[r] / divisor, :].
__global__ void GatherKernel(const float* src, int64_t width, const int32_t* rows, int32_t divisor,
                             float* dst) {
  const int64_t r = blockIdx.x;
  const float* s = src + static_cast<int64_t>(rows[r] / divisor) * width;
  float* d = dst + r * width;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kRowChunk + threadIdx.x;
  const int64_t end = begin + kRowChunk < width ? begin + kRowChunk : width;
  for (int64_t c = begin; c < end; c += kRowThreads) d[c] = s[c];
}

// dst[rows[r], :] = src[r, :].
__global__ void ScatterKernel(const float* src, int64_t width, const int32_t* rows, float* dst) {
  const int64_t r = blockIdx.x;
  const float* s = src + r * width;
  float* d = dst + static_cast<int64_t>(rows[r]) * width;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kRowChunk + threadIdx.x;
  const int64_t end = begin + kRowChunk < width ? begin + kRowChunk : width;
  for (int64_t c = begin; c < end; c += kRowThreads) d[c] = s[c];
}

// out[t, :] = Σ_j w[t, j] · slot_out[t·top_k + j, :], j from 0, each step o = w·s + 1·o
// rounded as the CPU's Axpby(w, s, 1, o) from o = 0.
__global__ void MoeCombineKernel(const float* slot_out, const float* top_weight, int32_t top_k,
                                 int64_t width, float* out) {
  const int64_t t = blockIdx.x;
  const float* w = top_weight + t * top_k;
  const float* s = slot_out + t * top_k * width;
  float* o = out + t * width;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kRowChunk + threadIdx.x;
  const int64_t end = begin + kRowChunk < width ? begin + kRowChunk : width;
  for (int64_t c = begin; c < end; c += kRowThreads) {
    float acc = 0.0f;
    for (int32_t j = 0; j < top_k; ++j) acc = w[j] * s[j * width + c] + 1.0f * acc;
    o[c] = acc;
  }
}

// y[t, :] = g·x[t, :] + 1·y[t, :], g = 1 / (1 + e^-gate[t]) (1 without gates).
__global__ void GatedAddKernel(const float* gate_logits, const float* x, int64_t width, float* y) {
  const int64_t t = blockIdx.x;
  const float g = gate_logits != nullptr ? 1.0f / (1.0f + expf(-gate_logits[t])) : 1.0f;
  const float* xr = x + t * width;
  float* yr = y + t * width;
  const int64_t begin = static_cast<int64_t>(blockIdx.y) * kRowChunk + threadIdx.x;
  const int64_t end = begin + kRowChunk < width ? begin + kRowChunk : width;
  for (int64_t c = begin; c < end; c += kRowThreads) yr[c] = g * xr[c] + 1.0f * yr[c];
}

dim3 RowGrid(int64_t rows, int64_t width) {
  return dim3(static_cast<unsigned>(rows), BlocksFor(width, kRowChunk));
}

// ---- Norms: one block per token row (blockIdx.x), threads striding over the row.

// Threads for a row of dim: about 4 elements a thread, whole warps, 32 to 1024.
int NormThreads(int64_t dim) {
  int64_t threads = (dim + 3) / 4;
  threads = (threads + 31) / 32 * 32;
  if (threads < 32) threads = 32;
  if (threads > 1024) threads = 1024;
  return static_cast<int>(threads);
}

// out = x / sqrt(mean(x²) + eps) · gain: the sum of squares with one fmaf per element (the
// CPU's FMA chain, tree-ordered here), mean = sum / dim, 1 / sqrtf, then (x·inv)·gain.
template <DType kG>
__global__ void RmsNormKernel(const float* x, int64_t dim, const void* gain, float eps,
                              float* out) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * dim;
  float* ot = out + t * dim;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) acc = fmaf(xt[i], xt[i], acc);
  const float sum = BlockSum(acc);
  const float mean_square = sum / static_cast<float>(dim);
  const float inv_rms = 1.0f / sqrtf(mean_square + eps);
  // Every read of the row happened before the barrier in BlockSum: out may alias x.
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    ot[i] = (xt[i] * inv_rms) * Load<kG>(gain, i);
  }
}

// out = ((x - mean) · inv_std) · gain (+ bias): mean = Σx / dim, var = Σ fmaf(d, d) / dim
// with d = x - mean, inv_std = 1 / sqrtf(var + eps), as kernels/cpu/norm.cc.
template <DType kG, DType kB, bool kBias>
__global__ void LayerNormKernel(const float* x, int64_t dim, const void* gain, const void* bias,
                                float eps, float* out) {
  const int64_t t = blockIdx.x;
  const float* xt = x + t * dim;
  float* ot = out + t * dim;
  float acc = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) acc += xt[i];
  const float mean = BlockSum(acc) / static_cast<float>(dim);
  acc = 0.0f;
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    const float d = xt[i] - mean;
    acc = fmaf(d, d, acc);
  }
  const float var = BlockSum(acc) / static_cast<float>(dim);
  const float inv_std = 1.0f / sqrtf(var + eps);
  for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) {
    float v = ((xt[i] - mean) * inv_std) * Load<kG>(gain, i);
    if constexpr (kBias) v = v + Load<kB>(bias, i);
    ot[i] = v;
  }
}

// ---- RoPE. grid.x: the token; grid.y: a chunk of kRopeThreads items of heads × half, one
// (head, i) pair a thread: x1 = a·cos - b·sin, x2 = b·cos + a·sin, each product and sum
// rounded (as PyTorch's separate kernels, and kernels/cpu/rope.cc).
__global__ void RopeKernel(float* x, int32_t heads, int32_t head_dim, const int32_t* positions,
                           const float* cos_table, const float* sin_table) {
  const int32_t half = head_dim / 2;
  const int32_t item =
      static_cast<int32_t>(blockIdx.y) * kRopeThreads + static_cast<int32_t>(threadIdx.x);
  if (item >= heads * half) return;
  const int64_t t = blockIdx.x;
  const int32_t h = item / half;
  const int32_t i = item % half;
  const int64_t table = static_cast<int64_t>(positions[t]) * half + i;
  const float c = cos_table[table];
  const float s = sin_table[table];
  float* x1 = x + (t * heads + h) * head_dim + i;
  float* x2 = x1 + half;
  const float a = *x1;
  const float b = *x2;
  *x1 = a * c - b * s;
  *x2 = b * c + a * s;
}

// ---- Element-wise: one thread per element.

// out = (g / (1 + e^-g)) · u, e^-g with its argument clamped at 88 as the CPU's simd::Exp
// does (so a very negative g still gives g / 1.65e38, not -0).
__global__ void SiluMulKernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const float g = gate[i];
  const float e = expf(fminf(-g, 88.0f));
  out[i] = (g / (1.0f + e)) * up[i];
}

// PyTorch's gelu(approximate='tanh') in f32, in its order (as kernels/cpu/elementwise.cc).
__global__ void GeluTanhMulKernel(const float* gate, const float* up, int64_t n, float* out) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  constexpr float kBeta = static_cast<float>(1.41421356237309504880 * 1.12837916709551257390 * 0.5);
  constexpr float kKappa = 0.044715f;
  const float x = gate[i];
  const float x_cube = x * x * x;
  const float inner = kBeta * (x + kKappa * x_cube);
  out[i] = (0.5f * x * (1.0f + tanhf(inner))) * up[i];
}

// As kernels/cpu/elementwise.cc: x / cap, tanhf, times cap.
__global__ void SoftCapKernel(float* x, int64_t n, float cap) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] = tanhf(x[i] / cap) * cap;
}

__global__ void AddKernel(const float* x, float* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = y[i] + x[i];
}

// y = a·x + b·y, two products and a sum, each rounded (no contraction: --fmad=false).
__global__ void AxpbyKernel(float a, const float* x, float b, float* y, int64_t n) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) y[i] = a * x[i] + b * y[i];
}

// ---- SumOfSquares: one block of kSumThreads threads; thread k sums x[i]² (exact in double)
// over i ≡ k mod kSumThreads in increasing i, in double, then BlockSum: the order depends only
// on n. Eight loads are issued before their additions, to keep enough bytes in flight.
__global__ void SumOfSquaresKernel(const float* x, int64_t n, double* out) {
  double acc = 0.0;
  int64_t i = threadIdx.x;
  constexpr int kUnroll = 8;
  for (; i + (kUnroll - 1) * int64_t{kSumThreads} < n; i += kUnroll * int64_t{kSumThreads}) {
    float v[kUnroll];
    for (int u = 0; u < kUnroll; ++u) v[u] = x[i + u * int64_t{kSumThreads}];
    for (int u = 0; u < kUnroll; ++u) acc += static_cast<double>(v[u]) * v[u];
  }
  for (; i < n; i += kSumThreads) acc += static_cast<double>(x[i]) * x[i];
  const double total = BlockSum(acc);
  if (threadIdx.x == 0) *out = total;
}

// ---- MoeRoute: one warp per token (kRouteWarps a block). Lane l owns experts l, l + 32, ...:
// it scores them in place, then each of top_k rounds picks the best remaining expert by a
// warp max of rank keys, and lane 0 writes the picks (and normalises them in j order).

// The rank of expert e with score v as one integer, larger ranking first: the score's bits
// mapped to an unsigned order (NaN as -inf, -0 as +0, so they compare as the CPU's `>`),
// then the id reversed, so equal scores rank the lower id first (the CPU's ties). Never 0.
// With NaN as -inf every pick is a valid expert (the CPU's scan, which NaN comparisons
// derail, is not matched on NaN scores).
__device__ __forceinline__ uint64_t RankKey(float v, int e) {
  uint32_t u;
  memcpy(&u, &v, 4);
  if (v != v) u = 0xff800000u;  // -inf
  if (u == 0x80000000u) u = 0;  // -0
  const uint32_t ordered = (u & 0x80000000u) != 0 ? ~u : (u | 0x80000000u);
  return (static_cast<uint64_t>(ordered) << 32) | (0xffffffffu - static_cast<uint32_t>(e));
}
__device__ __forceinline__ int KeyExpert(uint64_t key) {
  return static_cast<int>(0xffffffffu - static_cast<uint32_t>(key));
}
__device__ __forceinline__ float KeyScore(uint64_t key) {
  const uint32_t ordered = static_cast<uint32_t>(key >> 32);
  const uint32_t u = (ordered & 0x80000000u) != 0 ? (ordered & 0x7fffffffu) : ~ordered;
  float v;
  memcpy(&v, &u, 4);
  return v;
}

__global__ void MoeRouteKernel(float* logits, int64_t tokens, int32_t experts, bool softmax,
                               int32_t top_k, bool normalize, int32_t* top_expert,
                               float* top_weight) {
  const int lane = static_cast<int>(threadIdx.x) % warpSize;
  const int64_t t =
      static_cast<int64_t>(blockIdx.x) * kRouteWarps + static_cast<int64_t>(threadIdx.x) / warpSize;
  if (t >= tokens) return;  // the whole warp leaves: no shuffle is left waiting
  float* s = logits + t * experts;
  if (softmax) {
    // cpu::Softmax: the row max, e = exp(x - max) with the argument clamped below at
    // -87.3365 as simd::Exp clamps it, their sum, then each e / sum.
    float max = -INFINITY;
    for (int e = lane; e < experts; e += warpSize) max = fmaxf(max, s[e]);
    for (int mask = 16; mask > 0; mask >>= 1) {
      max = fmaxf(max, __shfl_xor_sync(kFullMask, max, mask));
    }
    float sum = 0.0f;
    for (int e = lane; e < experts; e += warpSize) {
      const float v = expf(fmaxf(s[e] - max, -87.3365478515625f));
      s[e] = v;
      sum += v;
    }
    sum = WarpSum(sum);
    for (int e = lane; e < experts; e += warpSize) s[e] = s[e] / sum;
  } else {
    for (int e = lane; e < experts; e += warpSize) s[e] = 1.0f / (1.0f + expf(-s[e]));
  }
  // Pick j is the largest key below pick j - 1's: the order is total, so this is the CPU's
  // "best expert not yet taken" without a taken set. A warp max of the keys per pick.
  uint64_t prev = ~uint64_t{0};
  float weight_sum = 0.0f;
  int32_t* te = top_expert + t * top_k;
  float* tw = top_weight + t * top_k;
  for (int j = 0; j < top_k; ++j) {
    uint64_t best = 0;
    for (int e = lane; e < experts; e += warpSize) {
      const uint64_t key = RankKey(s[e], e);
      if (key < prev && key > best) best = key;
    }
    for (int mask = 16; mask > 0; mask >>= 1) {
      const uint64_t other = __shfl_xor_sync(kFullMask, best, mask);
      best = other > best ? other : best;
    }
    // Every lane holds the same max. The score comes back from the key's bits exactly (a NaN
    // score as -inf, -0 as +0).
    const float score = KeyScore(best);
    if (lane == 0) {
      te[j] = KeyExpert(best);
      tw[j] = score;
    }
    weight_sum += score;
    prev = best;
  }
  if (normalize && lane == 0) {
    for (int j = 0; j < top_k; ++j) tw[j] = tw[j] / weight_sum;
  }
}

}  // namespace ew

void EmbeddingLookup(cudaStream_t stream, const void* table, DType type, int64_t dim,
                     const int32_t* ids, int64_t n, float* out) {
  if (n <= 0 || dim <= 0) return;
  ew::WithDType(type, [&](auto t) {
    auto* kernel = &ew::EmbeddingKernel<decltype(t)::value>;
    SPANSERVE_LAUNCH(kernel, ew::RowGrid(n, dim), ew::kRowThreads, 0, stream, table, dim, ids, out);
  });
}

void RmsNorm(cudaStream_t stream, const float* x, int64_t tokens, int64_t dim, const void* gain,
             DType gain_type, float eps, float* out) {
  if (tokens <= 0 || dim <= 0) return;
  ew::WithDType(gain_type, [&](auto g) {
    auto* kernel = &ew::RmsNormKernel<decltype(g)::value>;
    SPANSERVE_LAUNCH(kernel, static_cast<unsigned>(tokens), ew::NormThreads(dim), 0, stream, x, dim,
                     gain, eps, out);
  });
}

void LayerNorm(cudaStream_t stream, const float* x, int64_t tokens, int64_t dim, const void* gain,
               DType gain_type, const void* bias, DType bias_type, float eps, float* out) {
  if (tokens <= 0 || dim <= 0) return;
  const unsigned grid = static_cast<unsigned>(tokens);
  const int threads = ew::NormThreads(dim);
  ew::WithDType(gain_type, [&](auto g) {
    constexpr DType kG = decltype(g)::value;
    if (bias == nullptr) {
      auto* kernel = &ew::LayerNormKernel<kG, DType::kF32, false>;
      SPANSERVE_LAUNCH(kernel, grid, threads, 0, stream, x, dim, gain, bias, eps, out);
      return;
    }
    ew::WithDType(bias_type, [&](auto b) {
      auto* kernel = &ew::LayerNormKernel<kG, decltype(b)::value, true>;
      SPANSERVE_LAUNCH(kernel, grid, threads, 0, stream, x, dim, gain, bias, eps, out);
    });
  });
}

void ApplyRope(cudaStream_t stream, float* x, int64_t tokens, int64_t heads, int64_t head_dim,
               const int32_t* positions, const float* cos_table, const float* sin_table) {
  const int64_t items = heads * (head_dim / 2);
  if (tokens <= 0 || items <= 0) return;
  const dim3 grid(static_cast<unsigned>(tokens), BlocksFor(items, ew::kRopeThreads));
  SPANSERVE_LAUNCH(&ew::RopeKernel, grid, ew::kRopeThreads, 0, stream, x,
                   static_cast<int32_t>(heads), static_cast<int32_t>(head_dim), positions,
                   cos_table, sin_table);
}

void SiluMul(cudaStream_t stream, const float* gate, const float* up, int64_t n, float* out) {
  if (n <= 0) return;
  SPANSERVE_LAUNCH(&ew::SiluMulKernel, BlocksFor(n, ew::kElementThreads), ew::kElementThreads, 0,
                   stream, gate, up, n, out);
}

void GeluTanhMul(cudaStream_t stream, const float* gate, const float* up, int64_t n, float* out) {
  if (n <= 0) return;
  SPANSERVE_LAUNCH(&ew::GeluTanhMulKernel, BlocksFor(n, ew::kElementThreads), ew::kElementThreads,
                   0, stream, gate, up, n, out);
}

void SoftCap(cudaStream_t stream, float* x, int64_t n, float cap) {
  if (n <= 0) return;
  SPANSERVE_LAUNCH(&ew::SoftCapKernel, BlocksFor(n, ew::kElementThreads), ew::kElementThreads, 0,
                   stream, x, n, cap);
}

void Add(cudaStream_t stream, const float* x, float* y, int64_t n) {
  if (n <= 0) return;
  SPANSERVE_LAUNCH(&ew::AddKernel, BlocksFor(n, ew::kElementThreads), ew::kElementThreads, 0,
                   stream, x, y, n);
}

void Axpby(cudaStream_t stream, float a, const float* x, float b, float* y, int64_t n) {
  if (n <= 0) return;
  SPANSERVE_LAUNCH(&ew::AxpbyKernel, BlocksFor(n, ew::kElementThreads), ew::kElementThreads, 0,
                   stream, a, x, b, y, n);
}

void SumOfSquares(cudaStream_t stream, const float* x, int64_t n, double* out) {
  // n = 0 still launches: *out must become 0.
  SPANSERVE_LAUNCH(&ew::SumOfSquaresKernel, 1, ew::kSumThreads, 0, stream, x, n < 0 ? 0 : n, out);
}

void GatherRows(cudaStream_t stream, const float* src, int64_t width, const int32_t* rows,
                int64_t count, int32_t divisor, float* dst) {
  if (count <= 0 || width <= 0) return;
  SPANSERVE_LAUNCH(&ew::GatherKernel, ew::RowGrid(count, width), ew::kRowThreads, 0, stream, src,
                   width, rows, divisor, dst);
}

void ScatterRows(cudaStream_t stream, const float* src, int64_t width, const int32_t* rows,
                 int64_t count, float* dst) {
  if (count <= 0 || width <= 0) return;
  SPANSERVE_LAUNCH(&ew::ScatterKernel, ew::RowGrid(count, width), ew::kRowThreads, 0, stream, src,
                   width, rows, dst);
}

void MoeRoute(cudaStream_t stream, float* logits, int64_t tokens, int32_t experts,
              RouterScoring scoring, int32_t top_k, bool normalize, int32_t* top_expert,
              float* top_weight) {
  if (tokens <= 0 || experts <= 0) return;
  const unsigned grid = BlocksFor(tokens, ew::kRouteWarps);
  SPANSERVE_LAUNCH(&ew::MoeRouteKernel, grid, ew::kRouteWarps * 32, 0, stream, logits, tokens,
                   experts, scoring == RouterScoring::kSoftmax, top_k, normalize, top_expert,
                   top_weight);
}

void MoeCombine(cudaStream_t stream, const float* slot_out, const float* top_weight, int64_t tokens,
                int32_t top_k, int64_t width, float* out) {
  if (tokens <= 0 || width <= 0) return;
  SPANSERVE_LAUNCH(&ew::MoeCombineKernel, ew::RowGrid(tokens, width), ew::kRowThreads, 0, stream,
                   slot_out, top_weight, top_k, width, out);
}

void GatedAdd(cudaStream_t stream, const float* gate_logits, const float* x, int64_t tokens,
              int64_t width, float* y) {
  if (tokens <= 0 || width <= 0) return;
  SPANSERVE_LAUNCH(&ew::GatedAddKernel, ew::RowGrid(tokens, width), ew::kRowThreads, 0, stream,
                   gate_logits, x, width, y);
}

}  // namespace spanserve::kernels::cuda
