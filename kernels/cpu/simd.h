// AVX2/FMA/F16C building blocks shared by the CPU kernels (internal to kernels/cpu).
// Every reduction here has one fixed order so callers can promise bit-identical results.
#pragma once

#include <immintrin.h>

#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/dtype.h"

namespace spanserve::kernels::cpu::simd {

// Fixed horizontal sum of 8 lanes: ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)).
inline float HSum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// HSum of eight vectors at once: lane j of the result is HSum(v[j]), bit for bit (the same
// additions in the same association; only their operands' order within an addition, which
// IEEE addition does not see, differs).
inline __m256 HSum8(const __m256* v) {
  __m256 t[4];
  for (int p = 0; p < 4; ++p) {  // [v[2p] lo + hi | v[2p+1] lo + hi]: l_j + l_(j+4)
    t[p] = _mm256_add_ps(_mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x20),
                         _mm256_permute2f128_ps(v[2 * p], v[2 * p + 1], 0x31));
  }
  __m256 u[2];
  for (int p = 0; p < 2; ++p) {  // (l0+l4)+(l2+l6) and (l1+l5)+(l3+l7) of four vectors
    u[p] = _mm256_add_ps(_mm256_shuffle_ps(t[2 * p], t[2 * p + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                         _mm256_shuffle_ps(t[2 * p], t[2 * p + 1], _MM_SHUFFLE(3, 2, 3, 2)));
  }
  // The two halves added: lanes hold vectors 0, 2, 4, 6 | 1, 3, 5, 7.
  const __m256 r = _mm256_add_ps(_mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(2, 0, 2, 0)),
                                 _mm256_shuffle_ps(u[0], u[1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm256_permutevar8x32_ps(r, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
}

inline float HMax(__m256 v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}

// Eight consecutive weights starting at element i, widened to f32 (exact for all dtypes).
template <DType kW>
inline __m256 Load8(const void* base, int64_t i) {
  if constexpr (kW == DType::kF32) {
    return _mm256_loadu_ps(static_cast<const float*>(base) + i);
  } else if constexpr (kW == DType::kBF16) {
    // bf16 is the top half of an f32: zero-extend to 32 bits and shift into place.
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  } else {
    const __m128i h =
        _mm_loadu_si128(reinterpret_cast<const __m128i*>(static_cast<const uint16_t*>(base) + i));
    return _mm256_cvtph_ps(h);
  }
}

// One weight, widened; the scalar twin of Load8 for k-tails.
template <DType kW>
inline float Load1(const void* base, int64_t i) {
  if constexpr (kW == DType::kF32) {
    return static_cast<const float*>(base)[i];
  } else if constexpr (kW == DType::kBF16) {
    return Bf16ToF32(static_cast<const uint16_t*>(base)[i]);
  } else {
    return _cvtsh_ss(static_cast<const uint16_t*>(base)[i]);
  }
}

// dst[0, n) = widened src[0, n).
template <DType kW>
inline void Widen(const void* src, int64_t n, float* dst) {
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(dst + i, Load8<kW>(src, i));
  for (; i < n; ++i) dst[i] = Load1<kW>(src, i);
}

inline void Widen(const void* src, DType dtype, int64_t n, float* dst) {
  switch (dtype) {
    case DType::kF32:
      Widen<DType::kF32>(src, n, dst);
      return;
    case DType::kBF16:
      Widen<DType::kBF16>(src, n, dst);
      return;
    case DType::kF16:
      Widen<DType::kF16>(src, n, dst);
      return;
  }
}

// The f32 of every f16 bit pattern, as F16C's VCVTPH2PS gives it (half.cc; 256 KiB, of which
// a model's scales touch a few lines).
extern const std::array<float, 65536> kHalfToFloat;

// An f16 at p (unaligned), widened: a quantized block's scale or min. Read from kHalfToFloat,
// so a broadcast of it is one load: F16C's scalar conversion and the broadcast were two or
// three vector operations per block and row, a third of those of a table-decoded group of 32
// (matmul_rows.inc) on the ports its shuffles need.
inline float HalfAt(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return kHalfToFloat[h];
}

// Eight bytes zero- or sign-extended to eight f32.
inline __m256 U8x8ToF32(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }
inline __m256 I8x8ToF32(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)); }

// The 32 nibbles of a Q4 block as bytes: elements 0..15 (low nibbles) then 16..31 (high).
inline void Nibbles(const uint8_t* qs, __m128i* lo, __m128i* hi) {
  const __m128i q = _mm_loadu_si128(reinterpret_cast<const __m128i*>(qs));
  const __m128i mask = _mm_set1_epi8(0x0f);
  *lo = _mm_and_si128(q, mask);
  *hi = _mm_and_si128(_mm_srli_epi16(q, 4), mask);
}

// Q3_K's signed 6-bit scale of sub-block s (0..15), from the 12 scale bytes at q.
inline int ScaleK3(const uint8_t* q, int s) {
  return (((q[s % 8] >> (4 * (s / 8))) & 0x0f) | ((q[8 + s % 4] >> (2 * (s / 4))) & 3) << 4) - 32;
}

// IQ4_XS's 6-bit scale (before − 32) of sub-block s (0..7) of the super-block at b.
inline int ScaleIQ4XS(const uint8_t* b, int s) {
  const int scales_h = b[2] | b[3] << 8;
  return ((b[4 + s / 2] >> (4 * (s % 2))) & 0x0f) | ((scales_h >> (2 * s)) & 3) << 4;
}

// Q4_K / Q5_K's 6-bit scale and min of sub-block s (0..7), packed in 12 bytes (ggml's
// get_scale_min_k4).
inline void ScaleMinK4(const uint8_t* q, int s, int* sc, int* m) {
  if (s < 4) {
    *sc = q[s] & 63;
    *m = q[s + 4] & 63;
  } else {
    *sc = (q[s + 4] & 0x0f) | ((q[s - 4] >> 6) << 4);
    *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}

// dot(a, b) over n: one 8-lane FMA accumulator over k in order, HSum, then the tail in order.
// MatMul uses the same order, so a row of attention scores and a GEMV agree.
inline float Dot(const float* a, const float* b, int64_t n) {
  __m256 acc = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  }
  float s = HSum(acc);
  for (; i < n; ++i) s = std::fma(a[i], b[i], s);
  return s;
}

// e^x for 8 lanes (Cephes expf: range reduction by ln2, degree-5 polynomial, ~1 ulp).
// Inputs are clamped to [-87.3, 88]; e^-87.3 ≈ 1e-38 stands in for 0 in softmax.
inline __m256 Exp(__m256 x) {
  x = _mm256_min_ps(x, _mm256_set1_ps(88.0f));
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.3365478515625f));
  // n = round(x / ln2); r = x - n·ln2 in two pieces so r stays exact.
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500E-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073E-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894E-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459E-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201E-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0f)));
  // Scale by 2^n through the exponent field; n is in [-126, 127] after the clamp.
  const __m256i e =
      _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

}  // namespace spanserve::kernels::cpu::simd
