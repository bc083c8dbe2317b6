// MatMul and RoundToBf16 of kernels/cuda/ops.h: y[m, n] = x[m, k] · W[n, k]ᵀ + bias on CUDA
// cores, f32 accumulation, with one reduction order per output that depends only on k.
//
// The reduction order (every kernel variant below keeps exactly this one):
//   k is cut into groups of 4 consecutive elements, group g = [4g, 4g + 4); the last group is
//   partial when k % 4 != 0. Lane l of a warp owns the groups g ≡ l (mod 32) and accumulates
//   them into one f32 partial sum, in increasing g and inside a group in increasing k, each
//   term with fmaf(x, w, acc) from acc = 0 (so every product is exact, as on the CPU). The
//   32 lane partials are then summed by a fixed tree: pairs of lanes at xor-distance 16, then
//   8, 4, 2, 1 (a butterfly; a + b == b + a in IEEE arithmetic, so whichever lane computes a
//   node computes the same bits). Finally y = sum + bias (the CPU adds the bias after the
//   reduction too).
// The variants differ only in how many dot products a warp runs side by side (a tile of R
// rows × C columns: each loaded weight vector serves R rows, each loaded activation vector C
// columns) and in how the tile's R·C partial sums are spread over lanes while they go through
// the same tree, so y[i, j] is bit-identical whatever m is, whichever variant ran, and whether
// the 16-byte-vector or the scalar load path ran.
//
// Loads: a warp step covers 128 consecutive elements of k (32 lanes × one group), so each
// load instruction of a warp reads one contiguous 512-byte run of x (a float4 per lane) and
// one contiguous run of each weight row (a float4 per lane for f32, 8 bytes per lane for
// bf16/f16). The vector path needs k % 4 == 0 and 16-byte-aligned x and 4-element-aligned w;
// otherwise the scalar path does the same arithmetic one element at a time.
#include <cstdint>
#include <cstdlib>

#include "kernels/cuda/ops.h"

namespace spanserve::kernels::cuda {
// Internal names live in their own namespace (mm): kernels_emu.cc compiles every .cu of this
// directory into one translation unit.
namespace mm {

// Full unrolling of the small compile-time loops (register arrays need constant indices).
#if defined(SPANSERVE_CUDA_EMULATION)
#define MM_UNROLL _Pragma("GCC unroll 64")
#else
#define MM_UNROLL _Pragma("unroll")
#endif

constexpr unsigned kFullMask = 0xffffffffu;
constexpr int kLanes = 32;              // threads of a warp
constexpr int kWarps = 4;               // warps per MatMul block (128 threads)
constexpr int kGroup = 4;               // consecutive k elements of one lane's group
constexpr int kStep = kGroup * kLanes;  // k elements one warp step covers
constexpr int kMaxGridY = 65535;        // the device's limit on gridDim.y
constexpr int kRoundThreads = 256;
constexpr unsigned kMaxRoundBlocks = 1u << 16;

#if defined(SPANSERVE_CUDA_EMULATION)
struct alignas(16) Vec4f {
  float x, y, z, w;
};
struct alignas(8) Vec2u {
  uint32_t x, y;
};
template <class V>
__device__ __forceinline__ V LoadVec(const void* p) {
  V v;
  memcpy(&v, p, sizeof(V));
  return v;
}
__device__ __forceinline__ float HalfToF32(uint16_t h) { return F16BitsToF32(h); }
#else
using Vec4f = float4;
using Vec2u = uint2;
template <class V>
__device__ __forceinline__ V LoadVec(const void* p) {
  return __ldg(static_cast<const V*>(p));
}
// The hardware conversion: f16 -> f32 is exact (subnormals included), as F16BitsToF32.
__device__ __forceinline__ float HalfToF32(uint16_t h) {
  float f;
  asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
  return f;
}
#endif

__device__ __forceinline__ float RoundedToBf16(float v) { return Bf16BitsToF32(F32ToBf16Bits(v)); }

// How one weight element type loads: Raw is one lane's group as loaded (16 or 8 bytes).
template <DType kW>
struct Weights;

template <>
struct Weights<DType::kF32> {
  using Raw = Vec4f;
  static constexpr int64_t kBytes = 4;
  static __device__ __forceinline__ Raw Load(const char* row, int64_t p) {
    return LoadVec<Vec4f>(row + p * kBytes);
  }
  static __device__ __forceinline__ void Widen(const Raw& v, float out[kGroup]) {
    out[0] = v.x;
    out[1] = v.y;
    out[2] = v.z;
    out[3] = v.w;
  }
  static __device__ __forceinline__ float Load1(const char* row, int64_t p) {
    return reinterpret_cast<const float*>(row)[p];
  }
};

// bf16 and f16: two 16-bit values to a 32-bit word, each widened exactly by Bits::ToF32.
struct Bf16Bits {
  static __device__ __forceinline__ float ToF32(uint16_t h) { return Bf16BitsToF32(h); }
};
struct F16Bits {
  static __device__ __forceinline__ float ToF32(uint16_t h) { return HalfToF32(h); }
};

template <class Bits>
struct HalfWeights {
  using Raw = Vec2u;
  static constexpr int64_t kBytes = 2;
  static __device__ __forceinline__ Raw Load(const char* row, int64_t p) {
    return LoadVec<Vec2u>(row + p * kBytes);
  }
  static __device__ __forceinline__ void Widen(const Raw& v, float out[kGroup]) {
    out[0] = Bits::ToF32(static_cast<uint16_t>(v.x & 0xffffu));
    out[1] = Bits::ToF32(static_cast<uint16_t>(v.x >> 16));
    out[2] = Bits::ToF32(static_cast<uint16_t>(v.y & 0xffffu));
    out[3] = Bits::ToF32(static_cast<uint16_t>(v.y >> 16));
  }
  static __device__ __forceinline__ float Load1(const char* row, int64_t p) {
    return Bits::ToF32(reinterpret_cast<const uint16_t*>(row)[p]);
  }
};

template <>
struct Weights<DType::kBF16> : HalfWeights<Bf16Bits> {};
template <>
struct Weights<DType::kF16> : HalfWeights<F16Bits> {};

// U consecutive warp steps of the vector path, starting at element p of this lane's first
// group: all loads first (so U·(R + C) loads are in flight), then the FMAs, step by step in
// increasing k for every accumulator.
template <DType kW, int R, int C, int U>
__device__ __forceinline__ void VecSteps(const float* const (&xrow)[R],
                                         const char* const (&wrow)[C], int64_t p, bool round_x,
                                         float (&acc)[R][C]) {
  using WT = Weights<kW>;
  Vec4f xv[U][R];
  typename WT::Raw wv[U][C];
  MM_UNROLL
  for (int u = 0; u < U; ++u) {
    MM_UNROLL
    for (int c = 0; c < C; ++c) wv[u][c] = WT::Load(wrow[c], p + u * kStep);
    MM_UNROLL
    for (int r = 0; r < R; ++r) xv[u][r] = LoadVec<Vec4f>(xrow[r] + p + u * kStep);
  }
  MM_UNROLL
  for (int u = 0; u < U; ++u) {
    float wf[C][kGroup];
    MM_UNROLL
    for (int c = 0; c < C; ++c) WT::Widen(wv[u][c], wf[c]);
    MM_UNROLL
    for (int r = 0; r < R; ++r) {
      float xf[kGroup] = {xv[u][r].x, xv[u][r].y, xv[u][r].z, xv[u][r].w};
      if (round_x) {
        MM_UNROLL
        for (int e = 0; e < kGroup; ++e) xf[e] = RoundedToBf16(xf[e]);
      }
      MM_UNROLL
      for (int c = 0; c < C; ++c) {
        MM_UNROLL
        for (int e = 0; e < kGroup; ++e) acc[r][c] = fmaf(xf[e], wf[c][e], acc[r][c]);
      }
    }
  }
}

// Elements [p, p + count) of this lane, one at a time (the scalar path and the k-tail).
template <DType kW, int R, int C>
__device__ __forceinline__ void ScalarElements(const float* const (&xrow)[R],
                                               const char* const (&wrow)[C], int64_t p, int count,
                                               bool round_x, float (&acc)[R][C]) {
  using WT = Weights<kW>;
  for (int e = 0; e < count; ++e) {
    float wf[C];
    MM_UNROLL
    for (int c = 0; c < C; ++c) wf[c] = WT::Load1(wrow[c], p + e);
    MM_UNROLL
    for (int r = 0; r < R; ++r) {
      float xf = xrow[r][p + e];
      if (round_x) xf = RoundedToBf16(xf);
      MM_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = fmaf(xf, wf[c], acc[r][c]);
    }
  }
}

// The lane-partial tree over the N values v[0..N) of every lane: levels at xor-distance 16,
// 8, 4, 2, 1. The first H levels (H = min(5, the power of 2 in N)) halve the values a lane
// holds (a lane keeps one half, sends the other to its partner, adds what it receives), the
// rest are full butterflies; either way each node adds the same two values as the plain
// butterfly would. Afterwards v[i], i < N >> H, holds the total of value
// (N >> H) · (lane >> (5 - H)) + i, duplicated over 2^(5 - H) consecutive lanes.
template <int N, int kLevel, int kH>
__device__ __forceinline__ void ReduceLevels(float* v, int lane) {
  if constexpr (kLevel < 5) {
    constexpr int kOffset = 16 >> kLevel;
    if constexpr (kLevel < kH) {
      constexpr int kHalf = N / 2;
      const bool upper = (lane & kOffset) != 0;
      MM_UNROLL
      for (int i = 0; i < kHalf; ++i) {
        const float send = upper ? v[i] : v[i + kHalf];
        const float keep = upper ? v[i + kHalf] : v[i];
        v[i] = keep + __shfl_xor_sync(kFullMask, send, kOffset);
      }
      ReduceLevels<kHalf, kLevel + 1, kH>(v, lane);
    } else {
      MM_UNROLL
      for (int i = 0; i < N; ++i) v[i] = v[i] + __shfl_xor_sync(kFullMask, v[i], kOffset);
      ReduceLevels<N, kLevel + 1, kH>(v, lane);
    }
  }
}

SPANSERVE_HD constexpr int HalvingLevels(int n) {
  int h = 0;
  while (h < 5 && n % 2 == 0) {
    n /= 2;
    ++h;
  }
  return h;
}

// y tile [R rows × C columns] per warp, kWarps warps per block side by side along n:
// block (bx, by) covers columns [(bx·kWarps + warp)·C, +C) and row tiles by, by + gridDim.y,
// ... of R rows. Each lane accumulates its own groups of k for all R·C outputs (see the top of
// the file), then ReduceLevels combines the lanes and the lanes holding a total store it.
// Rows past m and columns past n are clamped for loading and never stored.
// kVec: 16-byte (f32) / 8-byte (bf16, f16) vector loads (k % 4 == 0, aligned pointers).
// U: warp steps whose loads are issued together (memory-level parallelism for small m).
template <DType kW, int R, int C, int U, bool kVec>
__global__ void MatMulKernel(const float* x, int64_t m, int64_t k, const void* w, int64_t n,
                             const void* bias, DType bias_type, bool round_x, float* y) {
  const int lane = static_cast<int>(threadIdx.x) & (kLanes - 1);
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * kWarps + (threadIdx.x / kLanes)) * C;
  if (col0 >= n) return;  // a whole warp: no shuffle is left waiting
  const char* wrow[C];
  MM_UNROLL
  for (int c = 0; c < C; ++c) {
    const int64_t col = col0 + c < n ? col0 + c : n - 1;
    wrow[c] = static_cast<const char*>(w) + col * k * Weights<kW>::kBytes;
  }
  const int64_t groups = k / kGroup;
  const int64_t full_steps = groups / kLanes;             // steps every lane has
  const int partial = static_cast<int>(groups % kLanes);  // lanes < partial have one more
  const int tail = static_cast<int>(k % kGroup);          // elements of the partial group `groups`
  const int64_t row_tiles = (m + R - 1) / R;

  for (int64_t tile = blockIdx.y; tile < row_tiles; tile += gridDim.y) {
    const int64_t row0 = tile * R;
    const float* xrow[R];
    MM_UNROLL
    for (int r = 0; r < R; ++r) xrow[r] = x + (row0 + r < m ? row0 + r : m - 1) * k;
    float acc[R][C];
    MM_UNROLL
    for (int r = 0; r < R; ++r) {
      MM_UNROLL
      for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
    }

    int64_t p = static_cast<int64_t>(kGroup) * lane;  // this lane's next group
    int64_t s = 0;
    if constexpr (kVec) {
      for (; s + U <= full_steps; s += U, p += U * kStep) {
        VecSteps<kW, R, C, U>(xrow, wrow, p, round_x, acc);
      }
      // The remainder (< U steps) as a sum of powers of two, in order.
      if constexpr (U >= 8) {
        if (s + 4 <= full_steps) {
          VecSteps<kW, R, C, 4>(xrow, wrow, p, round_x, acc);
          s += 4;
          p += 4 * kStep;
        }
      }
      if constexpr (U >= 4) {
        if (s + 2 <= full_steps) {
          VecSteps<kW, R, C, 2>(xrow, wrow, p, round_x, acc);
          s += 2;
          p += 2 * kStep;
        }
      }
      if constexpr (U >= 2) {
        if (s < full_steps) {
          VecSteps<kW, R, C, 1>(xrow, wrow, p, round_x, acc);
          s += 1;
          p += kStep;
        }
      }
      if (lane < partial) VecSteps<kW, R, C, 1>(xrow, wrow, p, round_x, acc);
    } else {
      for (; s < full_steps; ++s, p += kStep) {
        ScalarElements<kW, R, C>(xrow, wrow, p, kGroup, round_x, acc);
      }
      if (lane < partial) ScalarElements<kW, R, C>(xrow, wrow, p, kGroup, round_x, acc);
    }
    // The partial group `groups` belongs to lane groups % 32 = partial, after its full
    // groups; that lane took no partial step, so p is 4·groups there.
    if (tail != 0 && lane == partial) {
      ScalarElements<kW, R, C>(xrow, wrow, p, tail, round_x, acc);
    }

    constexpr int kN = R * C;
    constexpr int kH = HalvingLevels(kN);
    constexpr int kQ = kN >> kH;    // totals each lane ends with
    constexpr int kShift = 5 - kH;  // 2^kShift lanes hold the same totals
    float v[kN];
    MM_UNROLL
    for (int r = 0; r < R; ++r) {
      MM_UNROLL
      for (int c = 0; c < C; ++c) v[r * C + c] = acc[r][c];
    }
    ReduceLevels<kN, 0, kH>(v, lane);
    if ((lane & ((1 << kShift) - 1)) == 0) {
      const int base = kQ * (lane >> kShift);
      MM_UNROLL
      for (int i = 0; i < kQ; ++i) {
        const int a = base + i;
        const int64_t row = row0 + a / C;
        const int64_t col = col0 + a % C;
        if (row < m && col < n) {
          y[row * n + col] = bias != nullptr ? v[i] + LoadWeight(bias, bias_type, col) : v[i];
        }
      }
    }
  }
}

template <DType kW, int R, int C, int U>
void LaunchTile(cudaStream_t stream, bool vec, const float* x, int64_t m, int64_t k, const void* w,
                int64_t n, const void* bias, DType bias_type, bool round_x, float* y) {
  const int64_t col_blocks = (n + kWarps * C - 1) / (kWarps * C);
  const int64_t row_tiles = (m + R - 1) / R;
  const dim3 grid(static_cast<unsigned>(col_blocks),
                  static_cast<unsigned>(row_tiles < kMaxGridY ? row_tiles : kMaxGridY));
  const dim3 block(kWarps * kLanes);
  if (vec) {
    auto* kernel = &MatMulKernel<kW, R, C, U, true>;
    SPANSERVE_LAUNCH(kernel, grid, block, 0, stream, x, m, k, w, n, bias, bias_type, round_x, y);
  } else {
    auto* kernel = &MatMulKernel<kW, R, C, 1, false>;
    SPANSERVE_LAUNCH(kernel, grid, block, 0, stream, x, m, k, w, n, bias, bias_type, round_x, y);
  }
}

// The variant for m (each keeps the same per-output order):
//   m = 1        1 row × 2 columns per warp, 8 (f32: 4) steps of loads in flight: decode is
//                bandwidth-bound, so many warps (n / 2) each stream two weight rows;
//   m = 2..4     4 rows × 2 columns, 2 steps in flight (weights read once for all rows);
//   m = 5..32    8 rows × 2 columns, 2 steps in flight;
//   m > 32       8 rows × 8 columns, 64 accumulators per lane (prefill: each weight vector
//                serves 8 rows, each activation vector 8 columns).
template <DType kW>
void LaunchTyped(cudaStream_t stream, bool vec, const float* x, int64_t m, int64_t k, const void* w,
                 int64_t n, const void* bias, DType bias_type, bool round_x, float* y) {
  if (m == 1) {
    constexpr int kU = kW == DType::kF32 ? 4 : 8;
    LaunchTile<kW, 1, 2, kU>(stream, vec, x, m, k, w, n, bias, bias_type, round_x, y);
  } else if (m <= 4) {
    LaunchTile<kW, 4, 2, 2>(stream, vec, x, m, k, w, n, bias, bias_type, round_x, y);
  } else if (m <= 32) {
    LaunchTile<kW, 8, 2, 2>(stream, vec, x, m, k, w, n, bias, bias_type, round_x, y);
  } else {
    LaunchTile<kW, 8, 8, 1>(stream, vec, x, m, k, w, n, bias, bias_type, round_x, y);
  }
}

// One thread per element, grid-stride.
__global__ void RoundToBf16Kernel(const float* x, int64_t n, uint16_t* out) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += stride) {
    out[i] = F32ToBf16Bits(x[i]);
  }
}

}  // namespace mm

#undef MM_UNROLL

void MatMul(cudaStream_t stream, const float* x, int64_t m, int64_t k, const void* w, DType w_type,
            int64_t n, const void* bias, DType bias_type, bool round_x_to_bf16, float* y) {
  if (m <= 0 || n <= 0) return;
  const int64_t elem = static_cast<int64_t>(DTypeSize(w_type));
  const bool vec = k % mm::kGroup == 0 && reinterpret_cast<uintptr_t>(x) % 16 == 0 &&
                   reinterpret_cast<uintptr_t>(w) % (mm::kGroup * elem) == 0;
  switch (w_type) {
    case DType::kF32:
      mm::LaunchTyped<DType::kF32>(stream, vec, x, m, k, w, n, bias, bias_type, round_x_to_bf16, y);
      return;
    case DType::kBF16:
      mm::LaunchTyped<DType::kBF16>(stream, vec, x, m, k, w, n, bias, bias_type, round_x_to_bf16,
                                    y);
      return;
    case DType::kF16:
      mm::LaunchTyped<DType::kF16>(stream, vec, x, m, k, w, n, bias, bias_type, round_x_to_bf16, y);
      return;
  }
  std::abort();  // not a weight type
}

void RoundToBf16(cudaStream_t stream, const float* x, int64_t n, uint16_t* out) {
  if (n <= 0) return;
  unsigned blocks = BlocksFor(n, mm::kRoundThreads);
  if (blocks > mm::kMaxRoundBlocks) blocks = mm::kMaxRoundBlocks;
  auto* kernel = &mm::RoundToBf16Kernel;
  SPANSERVE_LAUNCH(kernel, dim3(blocks), dim3(mm::kRoundThreads), 0, stream, x, n, out);
}

}  // namespace spanserve::kernels::cuda
