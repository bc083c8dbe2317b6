// MatMul for batches of at most 4 rows on the 4- and 5-bit formats of blocks of 32 (Q4_0,
// Q4_1, Q5_0, Q5_1, IQ4_NL) and Q4_K / Q5_K where the CPU has AVX-512: matmul.cc's kernels
// (matmul_rows.inc), compiled here with AVX-512, where DecodeGroup decodes each group of 32 by
// table look-ups (DecodeGroupByTable, DecodeGroupByTableK) and the micro-kernels hold two weight
// rows' 8-lane accumulators in one 512-bit register (MicroPaired). The weights it produces are
// the AVX2 decoding's to the bit and each dot product's FMAs run in the same order, so the
// results are bit-identical (QuantMatMulTest and KQuantMatMulTest, whose avx512 cases at m <= 4
// run this path).
#include "kernels/cpu/matmul_avx512.h"  // first: it includes <immintrin.h> (see there)

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "common/check.h"
#include "kernels/cpu/simd.h"
#include "kernels/quant.h"

namespace spanserve::kernels::cpu {
namespace {

#include "kernels/cpu/matmul_rows.inc"

}  // namespace

namespace internal {

void MatMulRowsGemvAvx512(const float* x, int64_t m, const WeightMatrix& w,
                          const WeightVector* bias, float* y, int64_t n0, int64_t n1) {
  SPANSERVE_CHECK_LE(m, kMaxMr);
  WithFormat(FormatOf(w), [&](auto f) {
    constexpr WFmt kW = decltype(f)::value;
    if constexpr (PairsRows(kW)) {
      MatMulRows<kW>(x, m, w, bias, y, n0, n1, /*x_tile=*/kMaxMr, /*widen=*/false);
    } else {
      SPANSERVE_CHECK(PairsRows(kW));  // MatMulTypedPart sends only these
    }
  });
}

}  // namespace internal
}  // namespace spanserve::kernels::cpu
