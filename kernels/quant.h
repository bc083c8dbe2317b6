// Host-side dequantization of ggml block formats to f32 (the layouts GGUF files store). Results are
// bit-identical to ggml's and to the Python `gguf` package's reference: each value is
// computed as that reference does (d·q; d·q + m for Q4_1 / Q5_1; (d·sc)·q − (dmin·m) for the
// K-quants, each product and sum rounded to f32 in that order), with no fused multiply-add.
//
// Block layouts (32 elements each, little-endian, no padding):
//   Q8_0: f16 d, int8 q[32]                  x[i] = d·q[i]                        (34 bytes)
//   Q4_0: f16 d, u8 qs[16]                   x[i] = d·(nib(i) − 8)                (18 bytes)
//   Q4_1: f16 d, f16 m, u8 qs[16]            x[i] = d·nib(i) + m                  (20 bytes)
//   Q5_0: f16 d, u32 qh, u8 qs[16]           x[i] = d·(q5(i) − 16)                (22 bytes)
//   Q5_1: f16 d, f16 m, u32 qh, u8 qs[16]    x[i] = d·q5(i) + m                   (24 bytes)
// where nib(i) is the low nibble of qs[i] for i < 16 and the high nibble of qs[i − 16]
// for i ≥ 16, and q5(i) = nib(i) | (bit i of qh) << 4.
//
// K-quant super-blocks (256 elements each, in sub-blocks of 16 or 32 with their own scales;
// below e is the element 0..255, h = e / 128, r = e % 128, j = e % 32, s the sub-block):
//   Q2_K: u8 scales[16], u8 qs[64], f16 d, f16 dmin                            (84 bytes)
//         s = e / 16; q = qs[32h + j] >> 2·(r / 32) & 3;
//         x = (d·(scales[s] & 15))·q − dmin·(scales[s] >> 4)
//   Q3_K: u8 hmask[32], u8 qs[64], u8 scales[12], f16 d                       (110 bytes)
//         s = e / 16; sc[s] = (scales[s % 8] >> 4·(s / 8) & 15
//                              | (scales[8 + s % 4] >> 2·(s / 4) & 3) << 4) − 32;
//         q = (qs[32h + j] >> 2·(r / 32) & 3) − (bit e / 32 of hmask[j] ? 0 : 4);
//         x = (d·sc[s])·q
//   Q4_K: f16 d, f16 dmin, u8 scales[12], u8 qs[128]                         (144 bytes)
//         s = e / 32 (8 sub-blocks); sc[s], m[s] = 6-bit pairs packed in scales[12] as
//         ggml's get_scale_min_k4; q = qs[32·(s / 2) + j] >> 4·(s % 2) & 15;
//         x = (d·sc[s])·q − dmin·m[s]
//   Q5_K: f16 d, f16 dmin, u8 scales[12], u8 qh[32], u8 qs[128]              (176 bytes)
//         as Q4_K with q |= (bit s of qh[j]) << 4
//   Q6_K: u8 ql[128], u8 qh[64], int8 scales[16], f16 d                      (210 bytes)
//         s = e / 16; q = (ql[64h + r % 64] >> 4·(r / 64) & 15
//                          | (qh[32h + j] >> 2·(r / 32) & 3) << 4) − 32;
//         x = (d·scales[s])·q
//   Q8_K: f32 d, int8 q[256], int16 bsums[16] (unused here)                   (292 bytes)
//         x = d·q[e]
//
// Non-linear 4-bit formats (each 4-bit code indexes kIq4NlValues):
//   IQ4_NL: f16 d, u8 qs[16] (32 elements)    x[i] = d·kIq4NlValues[nib(i)]        (18 bytes)
//   IQ4_XS: f16 d, u16 scales_h, u8 scales_l[4], u8 qs[128] (256 elements)    (136 bytes)
//         s = e / 32; ls = (scales_l[s / 2] >> 4·(s % 2) & 15 | (scales_h >> 2·s & 3) << 4);
//         x = (d·(ls − 32))·kIq4NlValues[nib], nib = qs[16s + j] & 15 for j = e % 32 < 16,
//         else qs[16s + j − 16] >> 4
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/types.h"

namespace spanserve::kernels {

inline constexpr int64_t kQuantBlock = 32;
// The 16 values IQ4_NL / IQ4_XS codes stand for (ggml's kvalues_iq4nl).
inline constexpr int8_t kIq4NlValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};
inline constexpr int64_t kQuantSuperBlock = 256;  // the K-quants' block

// `n` elements (a multiple of kQuantBlock) from n / 32 consecutive blocks at `blocks` (no
// alignment needed) into out[0, n).
void DequantizeQ8_0(const void* blocks, int64_t n, float* out);
void DequantizeQ4_0(const void* blocks, int64_t n, float* out);
void DequantizeQ4_1(const void* blocks, int64_t n, float* out);
void DequantizeQ5_0(const void* blocks, int64_t n, float* out);
void DequantizeQ5_1(const void* blocks, int64_t n, float* out);

// `n` elements (a multiple of kQuantSuperBlock) from n / 256 consecutive super-blocks at
// `blocks` (no alignment needed) into out[0, n).
void DequantizeQ2_K(const void* blocks, int64_t n, float* out);
void DequantizeQ3_K(const void* blocks, int64_t n, float* out);
void DequantizeQ4_K(const void* blocks, int64_t n, float* out);
void DequantizeQ5_K(const void* blocks, int64_t n, float* out);
void DequantizeQ6_K(const void* blocks, int64_t n, float* out);
void DequantizeQ8_K(const void* blocks, int64_t n, float* out);
void DequantizeIQ4_XS(const void* blocks, int64_t n, float* out);
// As the 32-element formats above.
void DequantizeIQ4_NL(const void* blocks, int64_t n, float* out);

// `n` elements of format `q` (a multiple of its block, QuantBlockElems) from consecutive
// blocks at `blocks` into out[0, n): the function above for `q`. kNone writes nothing and
// returns false; every block format returns true.
bool Dequantize(QuantType q, const void* blocks, int64_t n, float* out);

// Exact re-encodings for the integer dot products (kernels/types.h, Int8DotFormat): `n`
// elements of `blocks` written to `out` in another format whose dequantization gives the same
// f32 values bit for bit. IQ4_NL → Q8_0: d kept, q = kIq4NlValues[code]. Q3_K → Q6_K: d kept,
// scales[s] = sc[s] (6-bit, signed), q6 = q + 32.
void ConvertIQ4_NLToQ8_0(const void* blocks, int64_t n, void* out);
void ConvertQ3_KToQ6_K(const void* blocks, int64_t n, void* out);

// out[0, n) = src widened from f32 / bf16 / f16 (exact).
void WidenToF32(const void* src, DType dtype, int64_t n, float* out);

}  // namespace spanserve::kernels
