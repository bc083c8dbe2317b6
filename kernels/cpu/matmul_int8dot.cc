// Integer dot-product MatMul (see matmul_int8dot.h): the activations' quantization, the split
// over threads, and the AVX2 kernels (VPMADDUBSW + VPMADDWD). The VNNI kernels are in
// matmul_int8dot_vnni.cc.
#include "kernels/cpu/matmul_int8dot.h"

#include "kernels/cpu/matmul_int8dot_kernels.h"  // first: it includes <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>

#include "common/check.h"
#include "common/thread_pool.h"

namespace spanserve::kernels::cpu::internal {
namespace {

struct KernelAvx2 {
  // Per dot product two accumulators and (formats with mins) a min sum. Four x rows share each
  // unpacked weight quad: at 4 × 1, the formats with mins hold 12 accumulators and spill a
  // little of the 16 ymm registers, and are still faster than 2 × 1 (Zen 3, one thread,
  // 576 × 1536, m = 16: Q4_1 480 → 352 µs, Q4_K 707 → 516, Q8_0 548 → 464); 6 × 1 is
  // slower again (Q4_1 600 µs).
  static constexpr int kMaxMr = 4;
  static constexpr int Nr(int mr) { return mr == 1 ? 3 : 1; }

  // Lane l: Σ u[p]·s[p] over bytes 4l .. 4l + 3. A pair's sum never saturates 16 bits: u is
  // at most 128 (|w| of Q8_0; a Q4 nibble at most 15, a Q5 quant 31, a Q6 one 63) and |s|
  // at most 127.
  [[gnu::always_inline]] static __m256i Dot(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
  }

  template <QuantType kQ, int MR, int NR>
  static void Micro(const int8dot::MicroArgs& a);

  template <QuantType kQ, int MR, int NR, bool kFull>
  [[gnu::always_inline]] static void Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                                          __m256 (&lo)[MR][NR], __m256 (&hi)[MR][NR],
                                          __m256 (&mins)[MR][NR]);
};

// 32 bytes: 0x10 in byte p (< 16) where bit p of `a` is set, in byte 16 + p where bit p of `b`
// is (a and b: 16 bits of two blocks' qh).
[[gnu::always_inline]] inline __m256i FifthBits(uint32_t a, uint32_t b) {
  const __m256i v = _mm256_setr_epi32(static_cast<int>(a), 0, 0, 0, static_cast<int>(b), 0, 0, 0);
  const __m256i spread =
      _mm256_shuffle_epi8(v, _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0,
                                              0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1));
  const __m256i sel = _mm256_setr_epi8(1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128,
                                       1, 2, 4, 8, 16, 32, 64, -128, 1, 2, 4, 8, 16, 32, 64, -128);
  return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(spread, sel), sel),
                          _mm256_set1_epi8(0x10));
}

// 16 × bits s, s + 1 of each byte of qh (s = 0, 2, 4, 6): a Q6_K quant's high bits in place.
[[gnu::always_inline]] inline __m256i Q6HighBits(__m256i qh, int s) {
  const __m256i v = s <= 4 ? _mm256_slli_epi16(qh, 4 - s) : _mm256_srli_epi16(qh, s - 4);
  return _mm256_and_si256(v, _mm256_set1_epi8(0x30));
}

// One quad (or the last, partial one: `count` blocks) of MR × NR dot products. The 16 lanes of
// the quad are two ymm halves: blocks 0-1 (into `lo`) and blocks 2-3 (into `hi`).
template <QuantType kQ, int MR, int NR, bool kFull>
inline void KernelAvx2::Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                             __m256 (&lo)[MR][NR], __m256 (&hi)[MR][NR], __m256 (&mins)[MR][NR]) {
  using int8dot::Load16;
  const __m256i mask = _mm256_set1_epi8(0x0f);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const uint8_t* block = int8dot::QuadAt<kQ>(a.w + r * a.row_bytes, quad);
    __m256 ws;
    if constexpr (kQ == QuantType::kQ6_K) {
      ws = int8dot::Q6KQuadScales<KernelAvx2>(block, quad);
    } else if constexpr (int8dot::IsK(kQ)) {
      ws = int8dot::Q4KQuadScales<KernelAvx2>(block, quad);
    } else {
      ws = int8dot::QuadScales<KernelAvx2, kQ, kFull>(block, count);
    }
#pragma GCC unroll 2
    for (int half = 0; half < 2; ++half) {
      const int t = 2 * half;  // the half's first block
      // The half's weights as unsigned operands: elements 0-15 of its two blocks (ulo) and
      // 16-31 (uhi). Q8_0: |w|, with w's signs (`slo`, `shi`) moved onto x, so the record's
      // base (for VPDPBUSD's offset weights) is not used; Q4_0: the nibble, offset by 8; Q5_0 /
      // Q5_1: the nibble plus the fifth bit (Q5_0 offset by 16).
      __m256i ulo, uhi, slo, shi;
      if constexpr (kQ == QuantType::kQ8_0) {
        slo = _mm256_set_m128i(Load16<KernelAvx2, kQ, kFull>(block, t + 1, 2, count),
                               Load16<KernelAvx2, kQ, kFull>(block, t, 2, count));
        shi = _mm256_set_m128i(Load16<KernelAvx2, kQ, kFull>(block, t + 1, 18, count),
                               Load16<KernelAvx2, kQ, kFull>(block, t, 18, count));
        ulo = _mm256_sign_epi8(slo, slo);
        uhi = _mm256_sign_epi8(shi, shi);
      } else if constexpr (kQ == QuantType::kQ6_K) {
        // Blocks `half` and half + 2 (lanes 0-7 or 8-15, matmul_int8dot.h): the low and the
        // high nibbles of the same 32 ql bytes, with bits 2β, 2β + 1 of qh; their 8-byte
        // pieces interleaved as the record's activations are.
        const __m256i ql = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(int8dot::Q6KLow(block, quad) + 32 * half));
        const __m256i qh =
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(int8dot::Q6KHigh(block, quad)));
        const __m256i ua = _mm256_or_si256(_mm256_and_si256(ql, mask), Q6HighBits(qh, 2 * half));
        const __m256i ub = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(ql, 4), mask),
                                           Q6HighBits(qh, 2 * half + 4));
        ulo = _mm256_unpacklo_epi64(ua, ub);
        uhi = _mm256_unpackhi_epi64(ua, ub);
      } else if constexpr (int8dot::IsK(kQ)) {
        // Sub-blocks t, t + 1: the low and the high nibbles of the same 32 bytes.
        const __m256i qs = _mm256_loadu_si256(
            reinterpret_cast<const __m256i*>(int8dot::Q4KQuants<kQ>(block, quad, half)));
        const __m256i low = _mm256_and_si256(qs, mask);
        const __m256i high = _mm256_and_si256(_mm256_srli_epi16(qs, 4), mask);
        ulo = _mm256_permute2x128_si256(low, high, 0x20);
        uhi = _mm256_permute2x128_si256(low, high, 0x31);
        if constexpr (kQ == QuantType::kQ5_K) {
          // Sub-block s's fifth bits: bit s of qh[0..31] (elements 0-15 in ulo, 16-31 in uhi).
          const uint8_t* qh = int8dot::Q5KHighBits(block);
          const int s = static_cast<int>(quad % 2) * 4 + t;
          const __m256i sel = _mm256_set_m128i(_mm_set1_epi8(static_cast<char>(2 << s)),
                                               _mm_set1_epi8(static_cast<char>(1 << s)));
          const __m256i sixteen = _mm256_set1_epi8(0x10);
          const __m256i h0 =
              _mm256_broadcastsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(qh)));
          const __m256i h1 = _mm256_broadcastsi128_si256(
              _mm_loadu_si128(reinterpret_cast<const __m128i*>(qh + 16)));
          ulo = _mm256_or_si256(
              ulo, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h0, sel), sel), sixteen));
          uhi = _mm256_or_si256(
              uhi, _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(h1, sel), sel), sixteen));
        }
      } else {
        constexpr int kQs = int8dot::QsOffset(kQ);
        const __m256i qs = _mm256_set_m128i(Load16<KernelAvx2, kQ, kFull>(block, t + 1, kQs, count),
                                            Load16<KernelAvx2, kQ, kFull>(block, t, kQs, count));
        ulo = _mm256_and_si256(qs, mask);
        uhi = _mm256_and_si256(_mm256_srli_epi16(qs, 4), mask);
        if constexpr (kQ == QuantType::kQ5_0 || kQ == QuantType::kQ5_1) {
          // Bit p of a block's qh is element p's fifth bit: 16 in its unsigned quant.
          const uint32_t h0 = int8dot::FifthBitsOf<KernelAvx2, kQ, kFull>(block, t, count);
          const uint32_t h1 = int8dot::FifthBitsOf<KernelAvx2, kQ, kFull>(block, t + 1, count);
          ulo = _mm256_or_si256(ulo, FifthBits(h0 & 0xffff, h1 & 0xffff));
          uhi = _mm256_or_si256(uhi, FifthBits(h0 >> 16, h1 >> 16));
        }
      }
      // Q6_K: lane 4c + l takes sub-block 2β + η, β = c / 2 + 2(l / 2), η = c % 2.
      const __m256i lanes_d =
          kQ == QuantType::kQ6_K ? _mm256_setr_epi32(t, t, t + 4, t + 4, t + 1, t + 1, t + 5, t + 5)
                                 : _mm256_setr_epi32(2 * t, 2 * t, 2 * t, 2 * t, 2 * t + 2,
                                                     2 * t + 2, 2 * t + 2, 2 * t + 2);
      const __m256 wd = _mm256_permutevar8x32_ps(ws, lanes_d);
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const uint8_t* record = int8dot::Record<KernelAvx2>(a, i, quad);
        __m256i xlo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + 32 * half));
        __m256i xhi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + 64 + 32 * half));
        if constexpr (kQ == QuantType::kQ8_0) {
          xlo = _mm256_sign_epi8(xlo, slo);
          xhi = _mm256_sign_epi8(xhi, shi);
        }
        __m256i dot = _mm256_add_epi32(Dot(ulo, xlo), Dot(uhi, xhi));
        if constexpr (kQ == QuantType::kQ4_0 || kQ == QuantType::kQ5_0 || kQ == QuantType::kQ6_K) {
          // the quants went in offset by 8 (Q4_0), 16 (Q5_0) or 32 (Q6_K)
          dot = _mm256_add_epi32(dot, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(
                                          int8dot::RecordBase<KernelAvx2>(record) + 8 * half)));
        }
        const __m256 c =
            _mm256_mul_ps(wd, _mm256_loadu_ps(int8dot::RecordDc<KernelAvx2>(record) + 8 * half));
        __m256& acc = half == 0 ? lo[i][r] : hi[i][r];
        acc = _mm256_fmadd_ps(c, _mm256_cvtepi32_ps(dot), acc);
      }
    }
    if constexpr (int8dot::HasMin(kQ)) {
#pragma GCC unroll 4
      for (int i = 0; i < MR; ++i) {
        const uint8_t* record = int8dot::Record<KernelAvx2>(a, i, quad);
        mins[i][r] =
            _mm256_fmadd_ps(ws, _mm256_loadu_ps(int8dot::RecordDs<KernelAvx2>(record)), mins[i][r]);
      }
    }
  }
}

template <QuantType kQ, int MR, int NR>
void KernelAvx2::Micro(const int8dot::MicroArgs& a) {
  constexpr int64_t kQuadBytes = int8dot::QuadBytes(kQ);
  __m256 lo[MR][NR], hi[MR][NR], mins[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      lo[i][r] = _mm256_setzero_ps();
      hi[i][r] = _mm256_setzero_ps();
      mins[i][r] = _mm256_setzero_ps();
    }
  }
  const int64_t quads = a.k / 128;
  const char* next = reinterpret_cast<const char*>(a.w) + NR * a.row_bytes;
  for (int64_t quad = 0; quad < quads; ++quad) {
    if (a.prefetch) {
      // The rows after these, into L1 at the rate these are consumed.
#pragma GCC unroll 8
      for (int64_t o = 0; o < NR * kQuadBytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
      next += NR * kQuadBytes;
    }
    Step<kQ, MR, NR, true>(a, quad, 4, lo, hi, mins);
  }
  if (const int rest = static_cast<int>(a.k / 32 % 4); rest != 0) {
    Step<kQ, MR, NR, false>(a, quads, rest, lo, hi, mins);
  }
  int8dot::Finish<KernelAvx2, kQ, MR, NR>(a, lo, hi, mins);
}

// Quantized activations of one call (64-byte aligned), grown to the largest call and then
// reused.
class QuantBuffer {
 public:
  uint8_t* Reserve(int64_t bytes) {
    if (size_ < bytes) {
      storage_.reset(new uint8_t[bytes + 63]);
      size_ = bytes;
    }
    const auto address = reinterpret_cast<uintptr_t>(storage_.get());
    return reinterpret_cast<uint8_t*>((address + 63) & ~uintptr_t{63});
  }

 private:
  std::unique_ptr<uint8_t[]> storage_;
  int64_t size_ = 0;
};

// One block of x (32 values) quantized: q in element order as four vectors of 8 int32, d and
// Σq.
inline void QuantizeBlock(const float* x, __m256i (&n)[4], float* d, int32_t* sum) {
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 v[4];
  __m256 amax = _mm256_setzero_ps();
  for (int c = 0; c < 4; ++c) {
    v[c] = _mm256_loadu_ps(x + 8 * c);
    amax = _mm256_max_ps(amax, _mm256_and_ps(v[c], abs_mask));
  }
  const float max_abs = simd::HMax(amax);
  *d = max_abs / 127.0f;
  const __m256 id = _mm256_set1_ps(max_abs != 0.0f ? 127.0f / max_abs : 0.0f);
  for (int c = 0; c < 4; ++c) {
    n[c] = _mm256_cvtps_epi32(
        _mm256_round_ps(_mm256_mul_ps(v[c], id), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
  }
  const __m256i s8 = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
  __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(1, 0, 3, 2)));
  s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, _MM_SHUFFLE(2, 3, 0, 1)));
  *sum = _mm_cvtsi128_si32(s4);
}

// Four int32 lanes of 4 values each summed: lane l = Σ v[4l .. 4l + 3].
inline __m128i SumsOfFour(__m256i a, __m256i b) {
  const __m256i pairs = _mm256_hadd_epi32(a, b);  // a0+a1, a2+a3, b0+b1, b2+b3 | high halves
  const __m256i fours = _mm256_hadd_epi32(pairs, pairs);
  // fours: [A0, B0, A0, B0 | A1, B1, A1, B1], A0 = Σ a[0..3], A1 = Σ a[4..7]: [A0, A1, B0, B1].
  return _mm_unpacklo_epi32(_mm256_castsi256_si128(fours), _mm256_extracti128_si256(fours, 1));
}

// One row (k / 32 blocks) into its quad records (matmul_int8dot.h); `offset` is the weights'
// o (128 for Q8_0, 8 for Q4_0, 16 for Q5_0, 32 for Q6_K, 0 for Q4_1, Q5_1, Q4_K and Q5_K) and
// `halves` whether the lanes keep to 16-element halves (Q6_K's order).
void QuantizeRow(const float* x, int64_t k, int32_t offset, bool halves, uint8_t* out) {
  const int64_t blocks = k / 32;
  // A last partial quad's missing blocks are zeros.
  if (blocks % 4 != 0) std::memset(out + (blocks / 4) * kInt8QuadBytes, 0, kInt8QuadBytes);
  for (int64_t b = 0; b < blocks; ++b) {
    __m256i n[4];
    float d;
    int32_t sum;
    QuantizeBlock(x + 32 * b, n, &d, &sum);
    uint8_t* record = out + b / 4 * kInt8QuadBytes;
    const int t = static_cast<int>(b % 4);
    // |q| <= 127: the packs do not saturate; the permute puts the bytes in element order.
    const __m256i bytes =
        _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
    const __m256i q = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    // Sums of elements 4l .. 4l + 3: of 0-15 (s0) and of 16-31 (s1).
    const __m128i s0 = SumsOfFour(n[0], n[1]), s1 = SumsOfFour(n[2], n[3]);
    const __m128i minus_o = _mm_set1_epi32(-offset);
    int32_t* base = reinterpret_cast<int32_t*>(record + kInt8QuadBase);
    float* dc = reinterpret_cast<float*>(record + kInt8QuadDc);
    if (!halves) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(record + 16 * t), _mm256_castsi256_si128(q));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(record + 64 + 16 * t),
                       _mm256_extracti128_si256(q, 1));
      // Lane l's eight elements: 4l .. 4l + 3 (in s0) and 16 + 4l .. (in s1).
      _mm_storeu_si128(reinterpret_cast<__m128i*>(base + 4 * t),
                       _mm_mullo_epi32(_mm_add_epi32(s0, s1), minus_o));
      _mm_storeu_ps(dc + 4 * t, _mm_set1_ps(d));
    } else {
      // Elements 8g .. 8g + 7 (g = 2η + h) go to piece 2(t % 2) + η, half 8(t / 2) of its
      // 16 bytes, in the first 64 bytes (h = 0) or the last; lane 4(2(t % 2) + η) + 2(t / 2)
      // + i covers elements 16η + 4i + 0..3 and 16η + 8 + 4i + 0..3.
      alignas(32) uint8_t e[32];
      _mm256_store_si256(reinterpret_cast<__m256i*>(e), q);
      // [Σ 0-3 + Σ 8-11, Σ 4-7 + Σ 12-15] of each half, the lanes' sums.
      const __m128i pairs0 = _mm_add_epi32(s0, _mm_shuffle_epi32(s0, _MM_SHUFFLE(1, 0, 3, 2)));
      const __m128i pairs1 = _mm_add_epi32(s1, _mm_shuffle_epi32(s1, _MM_SHUFFLE(1, 0, 3, 2)));
      alignas(16) int32_t lanes[2][4];
      _mm_store_si128(reinterpret_cast<__m128i*>(lanes[0]), _mm_mullo_epi32(pairs0, minus_o));
      _mm_store_si128(reinterpret_cast<__m128i*>(lanes[1]), _mm_mullo_epi32(pairs1, minus_o));
      for (int eta = 0; eta < 2; ++eta) {
        const int piece = 2 * (t % 2) + eta;
        std::memcpy(record + 16 * piece + 8 * (t / 2), e + 16 * eta, 8);
        std::memcpy(record + 64 + 16 * piece + 8 * (t / 2), e + 16 * eta + 8, 8);
        const int lane = 4 * piece + 2 * (t / 2);
        base[lane] = lanes[eta][0];
        base[lane + 1] = lanes[eta][1];
        dc[lane] = d;
        dc[lane + 1] = d;
      }
    }
    float* ds = reinterpret_cast<float*>(record + kInt8QuadDs) + 2 * t;
    ds[0] = d;
    ds[1] = d * static_cast<float>(sum);
  }
}

}  // namespace

bool CpuHasAvx512Vnni() {
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                          __builtin_cpu_supports("avx512vl") &&
                          __builtin_cpu_supports("avx512vnni");
  return has;
}

void QuantizeRowsInt8(const float* x, int64_t rows, int64_t k, QuantType weights, uint8_t* out) {
  // Q4_1, Q5_1, Q4_K, Q5_K: unsigned quants, no offset.
  const int32_t offset = weights == QuantType::kQ8_0   ? 128
                         : weights == QuantType::kQ4_0 ? 8
                         : weights == QuantType::kQ5_0 ? 16
                         : weights == QuantType::kQ6_K ? 32
                                                       : 0;
  const bool halves = weights == QuantType::kQ6_K;
  for (int64_t i = 0; i < rows; ++i) {
    QuantizeRow(x + i * k, k, offset, halves, out + i * Int8RowBytes(k));
  }
}

void QuantizeRowsPlain(const float* x, int64_t rows, int64_t k, int8_t* q, float* d,
                       int32_t* sums) {
  const int64_t blocks = k / 32;
  for (int64_t i = 0; i < rows; ++i) {
    for (int64_t b = 0; b < blocks; ++b) {
      __m256i n[4];
      QuantizeBlock(x + i * k + 32 * b, n, &d[i * blocks + b], &sums[i * blocks + b]);
      // |q| <= 127: the packs do not saturate; the permute puts the bytes in element order.
      const __m256i bytes =
          _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
      _mm256_storeu_si256(
          reinterpret_cast<__m256i*>(q + i * k + 32 * b),
          _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
    }
  }
}

void Int8DotRowsAvx2(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  int8dot::RowsOfAnyFormat<KernelAvx2>(a, n0, n1);
}

void MatMulInt8Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y, bool vnni) {
  SPANSERVE_CHECK(Int8DotSupports(w.quant));
  SPANSERVE_CHECK_EQ(w.cols % QuantBlockElems(w.quant), 0);
  if (vnni) SPANSERVE_CHECK(CpuHasAvx512Vnni());
  const int64_t n = w.rows;
  const int64_t k = w.cols;
  const auto rows_fn = vnni ? Int8DotRowsVnni : Int8DotRowsAvx2;
  // Each thread its own contiguous, 8-aligned range of output features.
  const auto range = [n](int64_t t, int64_t threads, int64_t* n0, int64_t* n1) {
    const int64_t per_thread = ((n + threads - 1) / threads + 7) & ~int64_t{7};
    *n0 = std::min(n, t * per_thread);
    *n1 = std::min(n, *n0 + per_thread);
  };
  const int64_t ldx = Int8RowBytes(k);
  if (m * k <= kInt8DotSharedQuantElements) {
    // Every thread quantizes the few rows itself: cheaper than a second job's barrier.
    Parallel([&](int64_t t, int64_t threads) {
      int64_t n0, n1;
      range(t, threads, &n0, &n1);
      if (n0 >= n1) return;
      thread_local QuantBuffer own;
      uint8_t* xq = own.Reserve(m * ldx);
      QuantizeRowsInt8(x, m, k, w.quant, xq);
      rows_fn(Int8DotArgs{xq, m, &w, bias, y}, n0, n1);
    });
    return;
  }
  // Quantized once, rows split over the threads (the first job's end is the barrier). The
  // pointer, not `shared`, goes into the jobs: there that name would be each worker's own.
  thread_local QuantBuffer shared;
  uint8_t* xq = shared.Reserve(m * ldx);
  ParallelFor(m, 2, [&](int64_t begin, int64_t end) {
    QuantizeRowsInt8(x + begin * k, end - begin, k, w.quant, xq + begin * ldx);
  });
  const Int8DotArgs args{xq, m, &w, bias, y};
  Parallel([&](int64_t t, int64_t threads) {
    int64_t n0, n1;
    range(t, threads, &n0, &n1);
    if (n0 < n1) rows_fn(args, n0, n1);
  });
}

}  // namespace spanserve::kernels::cpu::internal
