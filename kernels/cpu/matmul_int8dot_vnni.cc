// The VNNI kernels of the integer dot-product MatMul (matmul_int8dot.h). Compiled with
// AVX512_VNNI and entered only where the CPU has it; 256-bit VPDPBUSD (with AVX-512 VL), which
// adds each group of four u8·s8 products into its int32 lane exactly as the AVX2 kernels'
// VPMADDUBSW + VPMADDWD do, so both give the same bits.
#include "kernels/cpu/matmul_int8dot_kernels.h"  // first: it includes <immintrin.h>

namespace spanserve::kernels::cpu::internal {
namespace {

struct DotVnni {
  static constexpr int kMaxMr = 4;
  // Within 32 ymm registers: MR·NR accumulators (and as many xmm min sums for Q4_1).
  static constexpr int Nr(int mr) { return mr == 1 ? 4 : mr == 2 ? 4 : 3; }
  [[gnu::always_inline]] static __m256i Dot(__m256i u, __m256i s) {
    return _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s);
  }
};

}  // namespace

void Int8DotRowsVnni(const Int8DotArgs& a, int64_t n0, int64_t n1) {
  int8dot::RowsOfAnyFormat<DotVnni>(a, n0, n1);
}

}  // namespace spanserve::kernels::cpu::internal
