#include "kernels/cpu/dequant.h"

#include <immintrin.h>

#include <cstring>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels {
using cpu::simd::HalfAt;
using cpu::simd::I8x8ToF32;
using cpu::simd::Nibbles;
using cpu::simd::ScaleIQ4XS;
using cpu::simd::ScaleK3;
using cpu::simd::ScaleMinK4;
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

void DequantizeQ5_0(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 22, out += kQuantBlock) {
    const float d = HalfAt(b);
    uint32_t qh;
    std::memcpy(&qh, b + 2, 4);
    const uint8_t* qs = b + 6;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1) << 4;
      const int hi = (qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1) << 4;
      out[j] = d * static_cast<float>(lo - 16);
      out[j + 16] = d * static_cast<float>(hi - 16);
    }
  }
}

void DequantizeQ5_1(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 24, out += kQuantBlock) {
    const float d = HalfAt(b);
    const float m = HalfAt(b + 2);
    uint32_t qh;
    std::memcpy(&qh, b + 4, 4);
    const uint8_t* qs = b + 8;
    for (int j = 0; j < 16; ++j) {
      const int lo = (qs[j] & 0x0f) | static_cast<int>((qh >> j) & 1) << 4;
      const int hi = (qs[j] >> 4) | static_cast<int>((qh >> (j + 16)) & 1) << 4;
      out[j] = d * static_cast<float>(lo) + m;  // (d·q) + m, two roundings
      out[j + 16] = d * static_cast<float>(hi) + m;
    }
  }
}

// The K-quants, as the reference computes them: a sub-block's scale d·sc (and min dmin·m) is
// rounded to f32 first, then x = scale·q (− min), each operation rounded.

void DequantizeQ2_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 84, out += kQuantSuperBlock) {
    const uint8_t* scales = b;
    const uint8_t* qs = b + 16;
    const float d = HalfAt(b + 80);
    const float dmin = HalfAt(b + 82);
    for (int s = 0; s < 16; ++s) {  // sub-blocks of 16
      const float dl = d * static_cast<float>(scales[s] & 0x0f);
      const float ml = dmin * static_cast<float>(scales[s] >> 4);
      const int e0 = 16 * s;  // the sub-block's first element
      const uint8_t* q = qs + 32 * (e0 / 128) + e0 % 32;
      const int shift = 2 * ((e0 % 128) / 32);
      for (int t = 0; t < 16; ++t) {
        out[e0 + t] = dl * static_cast<float>((q[t] >> shift) & 3) - ml;
      }
    }
  }
}

void DequantizeQ3_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 110, out += kQuantSuperBlock) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* scales = b + 96;
    const float d = HalfAt(b + 108);
    for (int s = 0; s < 16; ++s) {
      const int sc = ScaleK3(scales, s);
      const float dl = d * static_cast<float>(sc);
      const int e0 = 16 * s;
      const uint8_t* q = qs + 32 * (e0 / 128) + e0 % 32;
      const uint8_t* hm = hmask + e0 % 32;
      const int shift = 2 * ((e0 % 128) / 32);
      const int bit = e0 / 32;
      for (int t = 0; t < 16; ++t) {
        const int v = ((q[t] >> shift) & 3) - (((hm[t] >> bit) & 1) != 0 ? 0 : 4);
        out[e0 + t] = dl * static_cast<float>(v);
      }
    }
  }
}

void DequantizeQ4_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 144, out += kQuantSuperBlock) {
    const float d = HalfAt(b);
    const float dmin = HalfAt(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qs = b + 16;
    for (int s = 0; s < 8; ++s) {  // sub-blocks of 32
      int sc, m;
      ScaleMinK4(scales, s, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      const uint8_t* q = qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int j = 0; j < 32; ++j) {
        out[32 * s + j] = dl * static_cast<float>((q[j] >> shift) & 0x0f) - ml;
      }
    }
  }
}

void DequantizeQ5_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 176, out += kQuantSuperBlock) {
    const float d = HalfAt(b);
    const float dmin = HalfAt(b + 2);
    const uint8_t* scales = b + 4;
    const uint8_t* qh = b + 16;
    const uint8_t* qs = b + 48;
    for (int s = 0; s < 8; ++s) {
      int sc, m;
      ScaleMinK4(scales, s, &sc, &m);
      const float dl = d * static_cast<float>(sc);
      const float ml = dmin * static_cast<float>(m);
      const uint8_t* q = qs + 32 * (s / 2);
      const int shift = 4 * (s % 2);
      for (int j = 0; j < 32; ++j) {
        const int v = ((q[j] >> shift) & 0x0f) | ((qh[j] >> s) & 1) << 4;
        out[32 * s + j] = dl * static_cast<float>(v) - ml;
      }
    }
  }
}

void DequantizeQ6_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 210, out += kQuantSuperBlock) {
    const uint8_t* ql = b;
    const uint8_t* qh = b + 128;
    const int8_t* scales = reinterpret_cast<const int8_t*>(b + 192);
    const float d = HalfAt(b + 208);
    for (int s = 0; s < 16; ++s) {
      const float dl = d * static_cast<float>(scales[s]);
      const int e0 = 16 * s;
      const int h = e0 / 128, r = e0 % 128;
      const uint8_t* lo = ql + 64 * h + r % 64;
      const uint8_t* hi = qh + 32 * h + r % 32;
      const int lo_shift = 4 * (r / 64);
      const int hi_shift = 2 * (r / 32);
      for (int t = 0; t < 16; ++t) {
        const int v = (((lo[t] >> lo_shift) & 0x0f) | ((hi[t] >> hi_shift) & 3) << 4) - 32;
        out[e0 + t] = dl * static_cast<float>(v);
      }
    }
  }
}

void DequantizeQ8_K(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 292, out += kQuantSuperBlock) {
    float d;
    std::memcpy(&d, b, 4);
    const __m256 vd = _mm256_set1_ps(d);
    const uint8_t* q = b + 4;
    for (int j = 0; j < 256; j += 8) {
      const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(q + j));
      _mm256_storeu_ps(out + j, _mm256_mul_ps(I8x8ToF32(bytes), vd));
    }
  }
}

void DequantizeIQ4_NL(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 18, out += kQuantBlock) {
    const float d = HalfAt(b);
    for (int j = 0; j < 16; ++j) {
      out[j] = d * static_cast<float>(kIq4NlValues[b[2 + j] & 0x0f]);
      out[j + 16] = d * static_cast<float>(kIq4NlValues[b[2 + j] >> 4]);
    }
  }
}

void DequantizeIQ4_XS(const void* blocks, int64_t n, float* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 136, out += kQuantSuperBlock) {
    const float d = HalfAt(b);
    for (int s = 0; s < 8; ++s) {  // sub-blocks of 32
      const int ls = ScaleIQ4XS(b, s);
      const float dl = d * static_cast<float>(ls - 32);
      const uint8_t* qs = b + 8 + 16 * s;
      for (int j = 0; j < 16; ++j) {
        out[32 * s + j] = dl * static_cast<float>(kIq4NlValues[qs[j] & 0x0f]);
        out[32 * s + j + 16] = dl * static_cast<float>(kIq4NlValues[qs[j] >> 4]);
      }
    }
  }
}

bool Dequantize(QuantType q, const void* blocks, int64_t n, float* out) {
  switch (q) {
    case QuantType::kNone:
      return false;
    case QuantType::kQ8_0:
      DequantizeQ8_0(blocks, n, out);
      return true;
    case QuantType::kQ4_0:
      DequantizeQ4_0(blocks, n, out);
      return true;
    case QuantType::kQ4_1:
      DequantizeQ4_1(blocks, n, out);
      return true;
    case QuantType::kQ5_0:
      DequantizeQ5_0(blocks, n, out);
      return true;
    case QuantType::kQ5_1:
      DequantizeQ5_1(blocks, n, out);
      return true;
    case QuantType::kQ4_K:
      DequantizeQ4_K(blocks, n, out);
      return true;
    case QuantType::kQ5_K:
      DequantizeQ5_K(blocks, n, out);
      return true;
    case QuantType::kQ6_K:
      DequantizeQ6_K(blocks, n, out);
      return true;
    case QuantType::kQ2_K:
      DequantizeQ2_K(blocks, n, out);
      return true;
    case QuantType::kQ3_K:
      DequantizeQ3_K(blocks, n, out);
      return true;
    case QuantType::kIQ4_NL:
      DequantizeIQ4_NL(blocks, n, out);
      return true;
    case QuantType::kIQ4_XS:
      DequantizeIQ4_XS(blocks, n, out);
      return true;
  }
  return false;
}

void ConvertIQ4_NLToQ8_0(const void* blocks, int64_t n, void* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  uint8_t* o = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n; i += kQuantBlock, b += 18, o += 34) {
    std::memcpy(o, b, 2);  // d
    for (int j = 0; j < 16; ++j) {
      o[2 + j] = static_cast<uint8_t>(kIq4NlValues[b[2 + j] & 0x0f]);
      o[2 + j + 16] = static_cast<uint8_t>(kIq4NlValues[b[2 + j] >> 4]);
    }
  }
}

void ConvertQ3_KToQ6_K(const void* blocks, int64_t n, void* out) {
  const uint8_t* b = static_cast<const uint8_t*>(blocks);
  uint8_t* o = static_cast<uint8_t*>(out);
  for (int64_t i = 0; i < n; i += kQuantSuperBlock, b += 110, o += 210) {
    const uint8_t* hmask = b;
    const uint8_t* qs = b + 32;
    const uint8_t* scales = b + 96;
    std::memset(o, 0, 192);  // ql[128], qh[64]
    for (int s = 0; s < 16; ++s) {
      const int sc = ScaleK3(scales, s);
      o[192 + s] = static_cast<uint8_t>(static_cast<int8_t>(sc));
    }
    std::memcpy(o + 208, b + 108, 2);  // d
    for (int e = 0; e < 256; ++e) {
      const int h = e / 128, r = e % 128, j = e % 32;
      const int q =
          ((qs[32 * h + j] >> (2 * (r / 32))) & 3) - (((hmask[j] >> (e / 32)) & 1) != 0 ? 0 : 4);
      const int u = q + 32;  // Q6_K's 6-bit code
      o[64 * h + r % 64] |= static_cast<uint8_t>((u & 0x0f) << (4 * (r / 64)));
      o[128 + 32 * h + j] |= static_cast<uint8_t>((u >> 4) << (2 * (r / 32)));
    }
  }
}

void WidenToF32(const void* src, DType dtype, int64_t n, float* out) {
  cpu::simd::Widen(src, dtype, n, out);
}

}  // namespace spanserve::kernels
