#include "kernels/cpu/dequant.h"

#include <immintrin.h>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels {
using cpu::simd::HalfAt;
using cpu::simd::I8x8ToF32;
using cpu::simd::Nibbles;
using cpu::simd::U8x8ToF32;

void DequantizeQ8_0(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 34, out += kQuantBlock) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
    const uint8_t* q = b + 2;
    for (int j = 0; j < 32; j += 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j));
      _mm256_storeu_ps(out + j, _mm256_mul_ps(I8x8ToF32(bytes), d));
    }
  }
}

void DequantizeQ4_0(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  const __m128i eight = _mm_set1_epi8(8);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 18, out += kQuantBlock) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
    __m128i lo, hi;
    Nibbles(b + 2, &lo, &hi);
    lo = _mm_sub_epi8(lo, eight);  // -8..7 as int8
    hi = _mm_sub_epi8(hi, eight);
    _mm256_storeu_ps(out + 0, _mm256_mul_ps(I8x8ToF32(lo), d));
    _mm256_storeu_ps(out + 8, _mm256_mul_ps(I8x8ToF32(_mm_srli_si128(lo, 8)), d));
    _mm256_storeu_ps(out + 16, _mm256_mul_ps(I8x8ToF32(hi), d));
    _mm256_storeu_ps(out + 24, _mm256_mul_ps(I8x8ToF32(_mm_srli_si128(hi, 8)), d));
  }
}

void DequantizeQ4_1(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 20, out += kQuantBlock) {
    const __m256 d = _mm256_set1_ps(HalfAt(b));
    const __m256 m = _mm256_set1_ps(HalfAt(b + 2));
    __m128i lo, hi;
    Nibbles(b + 4, &lo, &hi);
    // (d·q) + m, two roundings, as the reference computes it.
    _mm256_storeu_ps(out + 0, _mm256_add_ps(_mm256_mul_ps(d, U8x8ToF32(lo)), m));
    _mm256_storeu_ps(out + 8, _mm256_add_ps(_mm256_mul_ps(d, U8x8ToF32(_mm_srli_si128(lo, 8))), m));
    _mm256_storeu_ps(out + 16, _mm256_add_ps(_mm256_mul_ps(d, U8x8ToF32(hi)), m));
    _mm256_storeu_ps(out + 24,
                     _mm256_add_ps(_mm256_mul_ps(d, U8x8ToF32(_mm_srli_si128(hi, 8))), m));
  }
}

void WidenToF32(const void* src, DType dtype, int64_t n, float* out) {
  cpu::simd::Widen(src, dtype, n, out);
}

}  // namespace spanserve::kernels
