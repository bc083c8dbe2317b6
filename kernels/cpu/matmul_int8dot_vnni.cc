// The VNNI micro-kernels of the integer dot-product MatMul (matmul_int8dot.h). Compiled with
// AVX512_VNNI and entered only where the CPU has it. A zmm register holds a quad's 16 lanes as
// the AVX2 kernels hold them in two ymm registers, and VPDPBUSD adds each group of four
// u8·s8 products into its int32 lane exactly as VPMADDUBSW + VPMADDWD do, so both give the
// same bits. The weights go in as unsigned bytes offset by o (Q8_0: w + 128 = w ^ 0x80;
// Q4_0: the nibble, w + 8; Q5_0: the nibble and the fifth bit, w + 16; Q6_K: q6, w + 32), the
// dot starting from the record's base −o·Σq; no sign juggling.
#include "kernels/cpu/matmul_int8dot_kernels.h"  // first: it includes <immintrin.h>

namespace spanserve::kernels::cpu::internal {
namespace {

struct KernelVnni {
  static constexpr int kMaxMr = 4;
  // Within 32 registers: per dot product a zmm accumulator and (Q4_1 / Q5_1) a ymm min sum.
  static constexpr int Nr(int mr) { return mr == 1 ? 4 : mr == 2 ? 4 : 2; }

  template <QuantType kQ, int MR, int NR>
  static void Micro(const int8dot::MicroArgs& a);

  // Q4_1 / Q5_1 / Q4_K / Q5_K: weight rows 2p and 2p + 1 share one zmm of min sums, their
  // eight lanes side by side (the same lane-wise FMA as one ymm each, half the instructions).
  static constexpr int Pairs(int nr) { return (nr + 1) / 2; }

  // k_scales: Q4_K / Q5_K, the quad's scales of each weight row (Q4KSuperScales), computed
  // once per super-block by the caller; unused otherwise.
  template <QuantType kQ, int MR, int NR, bool kFull>
  [[gnu::always_inline]] static void Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                                          const __m256 (&k_scales)[NR], __m512 (&acc)[MR][NR],
                                          __m512 (&mins)[MR][Pairs(NR)]);
};

// Four 16-byte pieces as one register: [p0 | p1 | p2 | p3].
[[gnu::always_inline]] inline __m512i Join4(__m128i p0, __m128i p1, __m128i p2, __m128i p3) {
  return _mm512_inserti64x4(
      _mm512_castsi256_si512(_mm256_inserti128_si256(_mm256_castsi128_si256(p0), p1, 1)),
      _mm256_inserti128_si256(_mm256_castsi128_si256(p2), p3, 1), 1);
}

// A full Q4_1 quad: four 20-byte blocks back to back, every field 32-bit aligned to the
// quad's start (block t's f16 pair (d, m) is dword 5t, its 16 quant bytes dwords 5t + 1 ..
// 5t + 4). Two overlapping 64-byte loads, a: dwords 0-15 and b: dwords 4-19 (quad dword 16 + j
// is b's 12 + j, index 28 + j), and one two-source permute give the quant bytes that Join4
// assembles from four loads and three inserts, and one permute the pairs QuadScales gathers
// from four scalar loads: the same bytes, so the same bits, in about half the instructions
// (a decode step's matrix-vector products unpack each quad for a single activation row).
[[gnu::always_inline]] inline void Q41Quad(const uint8_t* block, __m256* ws, __m512i* ulo,
                                           __m512i* uhi) {
  const __m512i a = _mm512_loadu_si512(block);
  const __m512i b = _mm512_loadu_si512(block + 16);
  const __m512i qs = _mm512_permutex2var_epi32(
      a, _mm512_setr_epi32(1, 2, 3, 4, 6, 7, 8, 9, 11, 12, 13, 14, 28, 29, 30, 31), b);
  *ws = _mm256_cvtph_ps(_mm512_castsi512_si128(
      _mm512_permutexvar_epi32(_mm512_castsi128_si512(_mm_setr_epi32(0, 5, 10, 15)), a)));
  const __m512i mask = _mm512_set1_epi8(0x0f);
  *ulo = _mm512_and_si512(qs, mask);
  *uhi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), mask);
}

// One quad (or the last, partial one: `count` blocks) of MR × NR dot products.
template <QuantType kQ, int MR, int NR, bool kFull>
inline void KernelVnni::Step(const int8dot::MicroArgs& a, int64_t quad, int count,
                             const __m256 (&k_scales)[NR], __m512 (&acc)[MR][NR],
                             __m512 (&mins)[MR][Pairs(NR)]) {
  const auto load = [&](const uint8_t* block, int t, int offset) __attribute__((always_inline)) {
    return int8dot::Load16<KernelVnni, kQ, kFull>(block, t, offset, count);
  };
  // Q6_K: lane 4c + l takes sub-block 2β + η, β = c / 2 + 2(l / 2), η = c % 2
  // (matmul_int8dot.h).
  const __m512i lanes_d = kQ == QuantType::kQ6_K
                              ? _mm512_setr_epi32(0, 0, 4, 4, 1, 1, 5, 5, 2, 2, 6, 6, 3, 3, 7, 7)
                              : _mm512_setr_epi32(0, 0, 0, 0, 2, 2, 2, 2, 4, 4, 4, 4, 6, 6, 6, 6);
  __m256 scales[NR];
#pragma GCC unroll 8
  for (int r = 0; r < NR; ++r) {
    const uint8_t* block = int8dot::QuadAt<kQ>(a.w + r * a.row_bytes, quad);
    __m256 ws;
    // Elements 0-15 (ulo) and 16-31 (uhi) of the four blocks as unsigned bytes.
    __m512i ulo, uhi;
    if constexpr (kFull && kQ == QuantType::kQ4_1) {
      Q41Quad(block, &ws, &ulo, &uhi);
    } else {
      if constexpr (kQ == QuantType::kQ6_K) {
        ws = int8dot::Q6KQuadScales<KernelVnni>(block, quad);
      } else if constexpr (int8dot::IsK(kQ)) {
        ws = k_scales[r];
      } else {
        ws = int8dot::QuadScales<KernelVnni, kQ, kFull>(block, count);
      }
      if constexpr (kQ == QuantType::kQ8_0) {
        const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
        ulo = _mm512_xor_si512(
            Join4(load(block, 0, 2), load(block, 1, 2), load(block, 2, 2), load(block, 3, 2)),
            flip);
        uhi = _mm512_xor_si512(
            Join4(load(block, 0, 18), load(block, 1, 18), load(block, 2, 18), load(block, 3, 18)),
            flip);
      } else if constexpr (kQ == QuantType::kQ6_K) {
        // 256-bit halves of the 64 ql bytes: blocks 0 and 1 in the low nibbles, 2 and 3 in the
        // high ones; block β's high bits are bits 2β, 2β + 1 of the 32 qh bytes, moved to bits
        // 4, 5 (the 16-bit shifts' spill across bytes falls outside 0x30). The 8-byte pieces
        // interleaved as the record's activations are.
        const __m512i ql = _mm512_loadu_si512(int8dot::Q6KLow(block, quad));
        const __m512i qh = _mm512_broadcast_i64x4(
            _mm256_loadu_si256(reinterpret_cast<const __m256i*>(int8dot::Q6KHigh(block, quad))));
        const __m512i mask = _mm512_set1_epi8(0x0f);
        const __m512i bits = _mm512_set1_epi8(0x30);
        const __m512i low_shift = _mm512_inserti64x4(_mm512_set1_epi16(4), _mm256_set1_epi16(2), 1);
        const __m512i high_shift =
            _mm512_inserti64x4(_mm512_setzero_si512(), _mm256_set1_epi16(2), 1);
        const __m512i ua = _mm512_or_si512(
            _mm512_and_si512(ql, mask), _mm512_and_si512(_mm512_sllv_epi16(qh, low_shift), bits));
        const __m512i ub =
            _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), mask),
                            _mm512_and_si512(_mm512_srlv_epi16(qh, high_shift), bits));
        ulo = _mm512_unpacklo_epi64(ua, ub);
        uhi = _mm512_unpackhi_epi64(ua, ub);
      } else if constexpr (int8dot::IsK(kQ)) {
        // Sub-blocks 2c and 2c + 1: the low and the high nibbles of the same 32 bytes, the
        // quad's 64 bytes [c0 0-15 | c0 16-31 | c1 0-15 | c1 16-31] (128-bit lanes). Each half
        // of the elements is one lane shuffle and a per-lane shift (0 or 4) away.
        const __m512i q = _mm512_loadu_si512(int8dot::Q4KQuants<kQ>(block, quad, 0));
        const __m512i mask = _mm512_set1_epi8(0x0f);
        const __m512i nibble = _mm512_inserti64x4(
            _mm512_castsi256_si512(
                _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4)),
            _mm256_setr_epi16(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4), 1);
        ulo = _mm512_and_si512(
            _mm512_srlv_epi16(_mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(2, 2, 0, 0)), nibble), mask);
        uhi = _mm512_and_si512(
            _mm512_srlv_epi16(_mm512_shuffle_i64x2(q, q, _MM_SHUFFLE(3, 3, 1, 1)), nibble), mask);
        if constexpr (kQ == QuantType::kQ5_K) {
          const auto bytes16 = [](const uint8_t* p) __attribute__((always_inline)) {
            return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
          };
          // Sub-block s0 + t's fifth bits: bit s0 + t of qh[0..31], for the 16 bytes of block t
          // in ulo (elements 0-15) and uhi (16-31).
          const uint8_t* qh = int8dot::Q5KHighBits(block);
          const int s0 = static_cast<int>(quad % 2) * 4;
          const __m512i sel = Join4(
              _mm_set1_epi8(static_cast<char>(1 << s0)), _mm_set1_epi8(static_cast<char>(2 << s0)),
              _mm_set1_epi8(static_cast<char>(4 << s0)), _mm_set1_epi8(static_cast<char>(8 << s0)));
          const __m512i sixteen = _mm512_set1_epi8(0x10);
          const __m512i h0 = _mm512_broadcast_i32x4(bytes16(qh));
          const __m512i h1 = _mm512_broadcast_i32x4(bytes16(qh + 16));
          ulo =
              _mm512_or_si512(ulo, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(h0, sel), sixteen));
          uhi =
              _mm512_or_si512(uhi, _mm512_maskz_mov_epi8(_mm512_test_epi8_mask(h1, sel), sixteen));
        }
      } else {
        constexpr int kQs = int8dot::QsOffset(kQ);
        const __m512i qs = Join4(load(block, 0, kQs), load(block, 1, kQs), load(block, 2, kQs),
                                 load(block, 3, kQs));
        const __m512i mask = _mm512_set1_epi8(0x0f);
        ulo = _mm512_and_si512(qs, mask);
        uhi = _mm512_and_si512(_mm512_srli_epi16(qs, 4), mask);
        if constexpr (kQ == QuantType::kQ5_0 || kQ == QuantType::kQ5_1) {
          // Bit p of block t's qh is its element p's fifth bit: byte 16t + p of ulo (p < 16) or
          // of uhi (p - 16), as a byte mask.
          uint64_t lo_bits = 0, hi_bits = 0;
#pragma GCC unroll 4
          for (int t = 0; t < 4; ++t) {
            const uint64_t qh = int8dot::FifthBitsOf<KernelVnni, kQ, kFull>(block, t, count);
            lo_bits |= (qh & 0xffff) << (16 * t);
            hi_bits |= (qh >> 16) << (16 * t);
          }
          const __m512i sixteen = _mm512_set1_epi8(0x10);
          ulo = _mm512_or_si512(ulo, _mm512_maskz_mov_epi8(lo_bits, sixteen));
          uhi = _mm512_or_si512(uhi, _mm512_maskz_mov_epi8(hi_bits, sixteen));
        }
      }
    }
    scales[r] = ws;
    const __m512 wd = _mm512_permutexvar_ps(lanes_d, _mm512_castps256_ps512(ws));
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const uint8_t* record = int8dot::Record<KernelVnni>(a, i, quad);
      __m512i dot = _mm512_load_si512(int8dot::RecordBase<KernelVnni>(record));
      dot = _mm512_dpbusd_epi32(dot, ulo, _mm512_load_si512(record));
      dot = _mm512_dpbusd_epi32(dot, uhi, _mm512_load_si512(record + 64));
      const __m512 c = _mm512_mul_ps(wd, _mm512_load_ps(int8dot::RecordDc<KernelVnni>(record)));
      acc[i][r] = _mm512_fmadd_ps(c, _mm512_cvtepi32_ps(dot), acc[i][r]);
    }
  }
  if constexpr (int8dot::HasMin(kQ)) {
    __m512 pair_scales[Pairs(NR)];
    for (int p = 0; p < Pairs(NR); ++p) {
      const __m512 low = _mm512_castps256_ps512(scales[2 * p]);
      pair_scales[p] = 2 * p + 1 < NR
                           ? _mm512_castpd_ps(_mm512_insertf64x4(
                                 _mm512_castps_pd(low), _mm256_castps_pd(scales[2 * p + 1]), 1))
                           : low;
    }
#pragma GCC unroll 4
    for (int i = 0; i < MR; ++i) {
      const __m512 ds =
          _mm512_castpd_ps(_mm512_broadcast_f64x4(_mm256_load_pd(reinterpret_cast<const double*>(
              int8dot::RecordDs<KernelVnni>(int8dot::Record<KernelVnni>(a, i, quad))))));
      for (int p = 0; p < Pairs(NR); ++p) {
        mins[i][p] = _mm512_fmadd_ps(pair_scales[p], ds, mins[i][p]);
      }
    }
  }
}

template <QuantType kQ, int MR, int NR>
void KernelVnni::Micro(const int8dot::MicroArgs& a) {
  constexpr int64_t kQuadBytes = int8dot::QuadBytes(kQ);
  __m512 acc[MR][NR];
  __m512 mins[MR][Pairs(NR)];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) acc[i][r] = _mm512_setzero_ps();
    for (int p = 0; p < Pairs(NR); ++p) mins[i][p] = _mm512_setzero_ps();
  }
  const int64_t quads = a.k / 128;
  const char* next = reinterpret_cast<const char*>(a.w) + NR * a.row_bytes;
  __m256 k_scales[2][NR];  // Q4_K / Q5_K: the current super-block's two halves per row
  for (int64_t quad = 0; quad < quads; ++quad) {
    if (a.prefetch) {
      // The rows after these, into L1 at the rate these are consumed.
#pragma GCC unroll 8
      for (int64_t o = 0; o < NR * kQuadBytes; o += 64) _mm_prefetch(next + o, _MM_HINT_T0);
      next += NR * kQuadBytes;
    }
    if constexpr (int8dot::IsK(kQ)) {
      if (quad % 2 == 0) {
#pragma GCC unroll 8
        for (int r = 0; r < NR; ++r) {
          int8dot::Q4KSuperScales(int8dot::QuadAt<kQ>(a.w + r * a.row_bytes, quad), &k_scales[0][r],
                                  &k_scales[1][r]);
        }
      }
    }
    Step<kQ, MR, NR, true>(a, quad, 4, k_scales[quad % 2], acc, mins);
  }
  if (const int rest = static_cast<int>(a.k / 32 % 4); rest != 0) {
    // Never a K-quant (k is a multiple of 256 there): k_scales is not read.
    Step<kQ, MR, NR, false>(a, quads, rest, k_scales[0], acc, mins);
  }
  __m256 lo[MR][NR], hi[MR][NR], row_mins[MR][NR];
#pragma GCC unroll 4
  for (int i = 0; i < MR; ++i) {
#pragma GCC unroll 8
    for (int r = 0; r < NR; ++r) {
      lo[i][r] = _mm512_castps512_ps256(acc[i][r]);
      hi[i][r] = _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(acc[i][r]), 1));
      const __m512 pair = mins[i][r / 2];
      row_mins[i][r] = r % 2 == 0
                           ? _mm512_castps512_ps256(pair)
                           : _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(pair), 1));
    }
  }
  int8dot::Finish<KernelVnni, kQ, MR, NR>(a, lo, hi, row_mins);
}

}  // namespace

void Int8DotRowsVnni(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  int8dot::RowsOfAnyFormat<KernelVnni>(a, n0, n1);
}

}  // namespace spanserve::kernels::cpu::internal
