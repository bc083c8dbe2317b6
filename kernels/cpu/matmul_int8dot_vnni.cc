// The VNNI micro-kernels of the integer dot-product MatMul (matmul_int8dot.h). Compiled with
// AVX512_VNNI and entered only where the CPU has it. A zmm register holds a quad's 16 lanes as
// the AVX2 kernels hold them in two ymm registers, and VPDPBUSD adds each group of four
// u8·s8 products into its int32 lane exactly as VPMADDUBSW + VPMADDWD do, so both give the
// same bits. The weights go in as unsigned bytes offset by o (Q8_0: w + 128 = w ^ 0x80;
// Q4_0: the nibble, w + 8), the dot starting from the record's base −o·Σq; no sign juggling.
#include "kernels/cpu/matmul_int8dot_kernels.h"  // first: it includes <immintrin.h>

namespace spanserve::kernels::cpu::internal {
namespace {

struct KernelVnni {
  static constexpr int kMaxMr = 4;
  // Within 32 registers: per dot product a zmm accumulator and (Q4_1) a ymm min sum.
  static constexpr int Nr(int mr) { return mr == 1 ? 4 : mr == 2 ? 4 : 2; }

  template <QuantType kQ, int MR, int NR>
  static void Micro(const int8dot::MicroArgs& a);

  template <QuantType kQ, int MR, int NR, bool kFull>
  [[gnu::always_inline]] static void Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                                          __m512 (&acc)[MR][NR], __m256 (&mins)[MR][NR]);
};

// Four 16-byte pieces as one register: [p0 | p1 | p2 | p3].
[[gnu::always_inline]] inline __m512i Join4(__m128i p0, __m128i p1, __m128i p2, __m128i p3) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(p0), p1, 1)),
      _mm256_inserti128_si256(_mm256_castsi128_si256(p2), p3, 1), 1);
}

// One quad (or the last, partial one: `count` blocks) of MR × NR dot products.
template <QuantType kQ, int MR, int NR, bool kFull>
inline void KernelVnni::Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                             __m512 (&acc)[MR][NR], __m256 (&mins)[MR][NR]) {
  constexpr int64_t kBlockBytes = QuantBlockBytes(kQ);
  const auto load = [&](const uint8_t* block, int t, int offset) __attribute__((always_inline)) {
    return int8dot::Load16<KernelVnni, kQ, kFull>(block, t, offset, count);
  };
  const __m512i lanes_d = _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const uint8_t* block = a.w + r * a.row_bytes + 4 * quad * kBlockBytes;
    const __m256 ws = int8dot::QuadScales<KernelVnni, kQ, kFull>(block, count);
    const __m512 wd = _mm512_permutexvar_ps(lanes_d, _mm512_castps256_ps512(ws));
    // Elements 0-15 (ulo) and 16-31 (uhi) of the four blocks as unsigned bytes.
    __m512i ulo, uhi;
    if constexpr (kQ == QuantType::kQ8_0) {
      const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
      ulo = _mm512_xor_si512(
          Join4(load(block, 0, 2), load(block, 1, 2), load(block, 2, 2), load(block, 3, 2)), flip);
      uhi = _mm512_xor_si512(
          Join4(load(block, 0, 18), load(block, 1, 18), load(block, 2, 18), load(block, 3, 18)),
          flip);
    } else {
      constexpr int kQs = kQ == QuantType::kQ4_1 ? 4 : 2;
      const __m512i qs =
          Join4(load(block, 0, kQs), load(block, 1, kQs), load(block, 2, kQs), load(block, 3, kQs));
      const __m512i mask = _mm512_set1_epi8(0x0f);
      ulo = _mm512_and_si512(qs, mask);
      uhi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), mask);
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const uint8_t* record = int8dot::Record<KernelVnni>(a, i, quad);
      __m512i dot = _mm512_load_si512(int8dot::RecordBase<KernelVnni>(record));
      dot = _mm512_dpbusd_epi32(dot, ulo, _mm512_load_si512(record));
      dot = _mm512_dpbusd_epi32(dot, uhi, _mm512_load_si512(record + 64));
      const __m512 c = _mm512_mul_ps(wd, _mm512_load_ps(int8dot::RecordDc<KernelVnni>(record)));
      acc[i][r] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(dot), acc[i][r]);
      if constexpr (kQ == QuantType::kQ4_1) {
        mins[i][r] =
            _mm256_fmadd_ps(ws, _mm256_load_ps(int8dot::RecordDs<KernelVnni>(record)), mins[i][r]);
      }
    }
  }
}

template <QuantType kQ, int MR, int NR>
void KernelVnni::Micro(const int8dot::MicroArgs& a) {
  constexpr int64_t kBlockBytes = QuantBlockBytes(kQ);
  __m512 acc[MR][NR];
  __m256 mins[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      acc[i][r] = _mm512_setzero_ps();
      mins[i][r] = _mm256_setzero_ps();
    }
  }
  const int64_t quads = a.k / 128;
  const char* next = reinterpret_cast<const char*>(a.w) + NR * a.row_bytes;
  for (int64_t quad = 0; quad < quads; ++quad) {
    if (a.prefetch) {
      // The rows after these, into L1 at the rate these are consumed.
#pragma GCC unroll 8
      for (int64_t o = 0; o < NR * 4 * kBlockBytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
      next += NR * 4 * kBlockBytes;
    }
    Step<kQ, MR, NR, true>(a, quad, 4, acc, mins);
  }
  if (const int rest = static_cast<int>(a.k / 32 % 4); rest != 0) {
    Step<kQ, MR, NR, false>(a, quads, rest, acc, mins);
  }
  __m256 lo[MR][NR], hi[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      lo[i][r] = _mm512_castps512_ps256(acc[i][r]);
      hi[i][r] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][r]), 1));
    }
  }
  int8dot::Finish<KernelVnni, kQ, MR, NR>(a, lo, hi, mins);
}

}  // namespace

void Int8DotRowsVnni(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  int8dot::RowsOfAnyFormat<KernelVnni>(a, n0, n1);
}

}  // namespace spanserve::kernels::cpu::internal
