// The two ceilings a CPU step runs against, measured on the spot so that a benchmark can
// print its figures next to them: the rate of fused multiply-adds and the rate of reading
// memory, both with every thread of the pool installed on the calling thread
// (common/thread_pool.h; the calling thread alone without one).
#pragma once

#include <cstdint>

namespace spanserve::bench {

// Sums data[0, n) with every pool thread (AVX2 loads, four add chains per thread).
float ParallelSum(const float* data, int64_t n);

// Bytes per second of ParallelSum over a 256 MiB buffer (larger than any last-level cache
// here), best of `reps` sweeps.
double MeasureMemoryReadBytesPerSecond(int reps = 5);

// FLOP/s (an FMA counts 2) of 24 independent FMA chains per pool thread, zmm registers
// if `avx512` (the CPU must have AVX-512F) else ymm; best of `reps` runs of ~0.1 s.
double MeasureFmaPeakFlops(bool avx512, int reps = 5);

// The same with VDPBF16PS (bf16 pairs into f32, 4 FLOP per lane); the CPU must have
// AVX512_BF16.
double MeasureBf16DotPeakFlops(int reps = 5);

// Integer multiply-adds per second (u8 × s8 products, 64 per instruction) of 24
// independent VPDPBUSD zmm chains per pool thread; the CPU must have AVX512_VNNI.
double MeasureVnniPeakMacs(int reps = 5);

}  // namespace spanserve::bench
