// Host-side dequantization of ggml block formats to f32 (the layouts GGUF files store). Results are
// bit-identical to ggml's and to the Python `gguf` package's reference: each value is
// computed as that reference does (d·q, then + m for Q4_1), with no fused multiply-add.
//
// Block layouts (32 elements each, little-endian, no padding):
//   Q8_0: f16 d, int8 q[32]            x[i] = d·q[i]                        (34 bytes)
//   Q4_0: f16 d, u8 qs[16]             x[i] = d·(nib(i) − 8)                (18 bytes)
//   Q4_1: f16 d, f16 m, u8 qs[16]      x[i] = d·nib(i) + m                  (20 bytes)
// where nib(i) is the low nibble of qs[i] for i < 16 and the high nibble of qs[i − 16]
// for i ≥ 16.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace spanserve::kernels {

inline constexpr int64_t kQuantBlock = 32;

// `n` elements (a multiple of kQuantBlock) from n / 32 consecutive blocks at `blocks` (no
// alignment needed) into out[0, n).
void DequantizeQ8_0(const void* blocks, int64_t n, float* out);
void DequantizeQ4_0(const void* blocks, int64_t n, float* out);
void DequantizeQ4_1(const void* blocks, int64_t n, float* out);

// out[0, n) = src widened from f32 / bf16 / f16 (exact).
void WidenToF32(const void* src, DType dtype, int64_t n, float* out);

}  // namespace spanserve::kernels
