// MatMul for Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K weights with integer dot products,
// internal to kernels/cpu: the path of WeightMatrix::precision == MatMulPrecision::kInt8Dot.
//
// Activations. Each row of x is quantized once per call into blocks of 32 (llama.cpp's q8_1):
//   amax = max |x[p]| over the block, d = amax / 127, q[p] = round_nearest_even(x[p] · id)
//   with id = 127 / amax (0 when amax is 0), s = d · Σ q[p]    (f32 arithmetic throughout)
// Weights stay in their GGUF blocks (kernels/quant.h; on a VNNI CPU, see "Packed weights"
// below): w[p] = d_w·w_q[p] (Q8_0; Q4_0 with
// w_q = nibble − 8; Q5_0 with w_q = q5 − 16), or d_w·w_q[p] + m_w (Q4_1, w_q = nibble; Q5_1,
// w_q = q5: the nibble plus 16 × the fifth bit). A Q4_K / Q5_K super-block is eight such
// blocks of 32 (its sub-blocks) with d_w = d·sc and m_w = −(dmin·m), each product rounded to
// f32 as the dequantization rounds it, and w_q the nibble (Q5_K: plus 16 × the fifth bit).
// A Q6_K super-block is eight blocks of 32 too, its block j the halves η = 0, 1 of 16 elements
// (sub-blocks 2j + η), each with its own int8 scale: in half η, w[p] = d_w,η·w_q[p] with
// d_w,η = d·sc[2j + η] (one f32 product, as the dequantization rounds it) and w_q = q6 − 32
// (q6: 4 bits of ql and 2 of qh, decoded as kernels/cpu/dequant.cc decodes them).
//
// Arithmetic of y[i, j], the same for every row of every batch on every instruction set.
// Blocks go in quads (b .. b + 3, b = 0, 4, ...), a last partial quad filled up with zero
// blocks (zero quants and scales on both sides). With c_t = d_w,b+t · d_x,b+t (one f32
// product) for t = 0..3:
//   L: 16 int32 lanes; lane 4t + l = the exact Σ w_q[p]·q[p] of block b + t over its elements
//      4l .. 4l + 3 and 16 + 4l .. 16 + 4l + 3 (two VPDPBUSD, or VPMADDUBSW + VPMADDWD
//      without VNNI: the same integers)
//      Q6_K, whose lanes must stay within a half: lane 4c + l = that Σ over the elements
//      16η + 4(l % 2) + 0..3 and 16η + 8 + 4(l % 2) + 0..3 of block b + t, t = c / 2 + 2(l / 2)
//      and η = c % 2 (so lanes 0-7 hold blocks b and b + 2, 8-15 blocks b + 1 and b + 3: each
//      quad's ql bytes give blocks t and t + 2 as their low and high nibbles)
//   C: lane 4t + l = c_t (Q6_K: lane 4c + l = d_w,b+t,η · d_x,b+t, t and η as in L, one f32
//      product);  A = fma(C, f32(L), A) lane by lane (f32(L) is exact: |L| < 2^17)
//   Q4_1 / Q5_1 / Q4_K / Q5_K: M = fma([d_w,b, m_w,b, d_w,b+1, m_w,b+1, ...],
//         [d_x,b, s_x,b, d_x,b+1, s_x,b+1, ...], M), 8 lanes
// Then y = simd::HSum(A[0:8] + A[8:16]) (+ ((M[1] + M[3]) + (M[5] + M[7])) for Q4_1,
// Q5_1, Q4_K and Q5_K) (+ bias[j]); A and M start at 0.
// So a row's result never depends on the batch, the tiling or the threads, and the VNNI and
// AVX2 kernels agree bit for bit. Against the exact path the error is that of rounding x to
// 8 bits per block: about 1e-3 of Σ|x·w| for typical activations.
//
// Threads: the output features are split over the current pool (common/thread_pool.h). Small
// batches (m·k <= kInt8DotSharedQuantElements) are quantized by every thread for itself,
// saving a second pool job per call; larger ones once, rows split over the threads, into a
// buffer the threads share. Allocates nothing after the first call of the largest shape.
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu::internal {

inline constexpr int64_t kInt8DotSharedQuantElements = 16384;

// Whether this CPU has AVX512_VNNI (and the AVX-512 F/BW/VL it builds on).
bool CpuHasAvx512Vnni();

// y = x·Wᵀ (+ bias) for a Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K `w` as described above
// (w.cols whole blocks). vnni: use the VNNI kernels (the CPU must have them); otherwise AVX2.
void MatMulInt8Dot(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                   float* y, bool vnni);

// Packed weights (VNNI CPUs; matmul_int8packed.cc). A Q4_0 / Q4_1 / Q5_0 / Q5_1 / Q8_0 / Q4_K /
// Q5_K / Q6_K matrix whose WeightMatrix::packed is set (the CPU backend's UploadMatrix does so
// for kInt8Dot matrices where Int8DotUsesVnni()) holds a copy of its weights repacked by
// PackInt8: per group of 16 rows and block of 32 (a K-quant's sub-block), a record of
//   the rows' d_w side by side: f16 as stored (32 bytes), or for the K-quants f32 (64 bytes)
//   as above (Q6_K: d_w,0, the first half's);
//   then Q4_1 / Q5_1 / Q4_K / Q5_K's m_w, or Q6_K's d_w,1, the same way;
//   for Q5_0 / Q5_1 / Q5_K, eight 64-bit masks, bit 4r + e of mask j = the fifth bit of row r's
//   element 4j + e; for Q6_K, eight such masks of the fifth bits, then eight of the sixth;
//   the quants, byte 4r + e of 64-byte vector j holding row r's element 4j + e (Q8_0: eight
//   vectors, each quant + 128; the others four, element 4j + e in the low nibble and
//   16 + 4j + e in the high one; Q6_K's quants are q6 = w_q + 32).
// Such a matrix takes another arithmetic than the one above, for every m: x is quantized as
// above; for each block b the exact integer dot D_b = Σ_p q[p]·w_q[p] over its 32 elements
// (16 rows at once, in a vector's lanes), and, sequentially over b in one f32 chain each,
//   A = fma(f32(d_w,b · d_x,b), f32(D_b), A);   with mins: M = fma(m_w,b, s_x,b, M)
// (Q6_K: D_b,0 and D_b,1 over the block's halves, A = fma(f32(d_w,b,0 · d_x,b), f32(D_b,0), A),
// then the same with d_w,b,1 and D_b,1), then y = A (with mins: A + M) (+ bias[j]), A and M
// starting at 0. A row's result depends on nothing but the row, as above; which arithmetic a
// matrix takes depends only on its format and the CPU (on a CPU without VNNI the matrix is not
// packed).
// IQ4_NL packs as Q4_0 does (d, the 4-bit codes in nibbles); the kernel maps each code to its
// value + 128 (a byte shuffle), and from there computes as for Q8_0: the same integers and
// f32 chain as Q8_0 blocks holding those values (kernels/quant.h, ConvertIQ4_NLToQ8_0).
constexpr bool Int8PackedSupports(QuantType q) {
  return q == QuantType::kQ8_0 || q == QuantType::kQ4_0 || q == QuantType::kQ4_1 ||
         q == QuantType::kQ5_0 || q == QuantType::kQ5_1 || q == QuantType::kQ4_K ||
         q == QuantType::kQ5_K || q == QuantType::kQ6_K || q == QuantType::kIQ4_NL;
}
// Whether a packed format keeps f32 scales (the K-quants' d·sc products).
constexpr bool Int8PackedHasF32Scales(QuantType q) {
  return q == QuantType::kQ4_K || q == QuantType::kQ5_K || q == QuantType::kQ6_K;
}
// Whether a packed format has per-block mins m_w (w = d_w·w_q + m_w).
constexpr bool Int8PackedHasMins(QuantType q) {
  return q == QuantType::kQ4_1 || q == QuantType::kQ5_1 || q == QuantType::kQ4_K ||
         q == QuantType::kQ5_K;
}
// Bits of the quants above the nibble, each kept as eight masks at Int8PackedHighBitsAt.
constexpr int Int8PackedHighBitPlanes(QuantType q) {
  return q == QuantType::kQ6_K                                                     ? 2
         : q == QuantType::kQ5_0 || q == QuantType::kQ5_1 || q == QuantType::kQ5_K ? 1
                                                                                   : 0;
}
// Bytes of one region of the 16 rows' scales (d_w, m_w or Q6_K's d_w,1).
constexpr int64_t Int8PackedScaleBytes(QuantType q) { return Int8PackedHasF32Scales(q) ? 64 : 32; }
constexpr int64_t Int8PackedHighBitsAt(QuantType q) {
  return Int8PackedScaleBytes(q) * (Int8PackedHasMins(q) || q == QuantType::kQ6_K ? 2 : 1);
}
constexpr int64_t Int8PackedQuantsAt(QuantType q) {
  return Int8PackedHighBitsAt(q) + 64 * Int8PackedHighBitPlanes(q);
}
// Bytes of one packed record (16 rows, one block).
constexpr int64_t Int8PackedRecordBytes(QuantType q) {
  return Int8PackedQuantsAt(q) + (q == QuantType::kQ8_0 ? 512 : 256);
}
// Bytes of the packed copy of an [n, k] matrix of format q.
int64_t Int8PackedBytes(QuantType q, int64_t n, int64_t k);
// Writes w's packed copy (Int8PackedBytes) to out.
void PackInt8(const WeightMatrix& w, uint8_t* out);
// y = x·Wᵀ (+ bias) for a matrix with its packed copy; the CPU must have AVX512_VNNI. Calls of
// at least kInt8AmxMinRows rows of a Q8_0 / Q4_0 / Q4_1 matrix (Int8PackedAmxSupports) on a
// CPU with AMX-INT8 (CpuHasAmxInt8) take the integer dots from TDPBSSD / TDPBSUD tiles instead
// (matmul_amx_int8.cc): the same integers and the same f32 chains, so the same bits.
void MatMulInt8Packed(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y);
// MatMulInt8Packed of one x by `count` packed matrices of the same cols: x quantized once, and
// one job for all of them (calls that take the AMX tiles run one matrix at a time); each y
// bit for bit as MatMulInt8Packed gives it.
void MatMulInt8PackedShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count);
inline constexpr int64_t kInt8AmxMinRows = 32;
constexpr bool Int8PackedAmxSupports(QuantType q) {
  return q == QuantType::kQ8_0 || q == QuantType::kQ4_0 || q == QuantType::kQ4_1;
}
// Whether this CPU has AMX-TILE and AMX-INT8 (and AVX512_VNNI) and the OS grants this process
// the tile state; false when SPANSERVE_MAX_ISA caps the instruction sets.
bool CpuHasAmxInt8();
// The tile path of MatMulInt8Packed (x quantized as there, with QuantizeRowsPlain).
void MatMulInt8PackedAmx(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                         float* y);
// x rows quantized as above into plain arrays: q [rows, k] int8, d and sums [rows, k / 32]
// (d_x and Σq of each block).
void QuantizeRowsPlain(const float* x, int64_t rows, int64_t k, int8_t* q, float* d, int32_t* sums);

// The quantized activations' layout: per row of x, one 320-byte record (five cache lines, the
// last 32 bytes unused) per quad of blocks, the last one zero-filled past the row's last block:
//   int8 q[128]:    elements 0-15 of blocks b, b+1, b+2, b+3, then their elements 16-31;
//                   for Q6_K weights the bytes 4L .. 4L + 3 (first 64) and 64 + 4L .. (last 64)
//                   are lane L's elements in order, as L above says: 16-byte piece c of each
//                   64 is [8 elements of block b + c / 2, 8 of block b + c / 2 + 2], elements
//                   16(c % 2) + 0..7 in the first 64 bytes and 16(c % 2) + 8..15 in the last
//   int32 base[16]: lane L: −o · Σ q over lane L's eight elements, o = 128 for Q8_0 weights, 8
//                   for Q4_0, 16 for Q5_0, 32 for Q6_K, 0 for Q4_1 / Q5_1 / Q4_K / Q5_K: where
//                   an integer dot whose weights go in offset by o (w_q + o ≥ 0, as VPDPBUSD
//                   wants them) starts
//   f32 dc[16]:     lane L: d_x of lane L's block (so that C is one multiply)
//   f32 ds[8]:      d_x,b+t and s_x,b+t for t = 0..3
inline constexpr int64_t kInt8QuadBytes = 320;
inline constexpr int64_t kInt8QuadBase = 128;  // byte offsets in a record
inline constexpr int64_t kInt8QuadDc = 192;
inline constexpr int64_t kInt8QuadDs = 256;
constexpr int64_t Int8RowBytes(int64_t k) { return kInt8QuadBytes * ((k / 32 + 3) / 4); }

// x[rows, k] (k a multiple of 32) quantized as described above for products with `weights`
// (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4_K, Q5_K or Q6_K) into out[rows, Int8RowBytes(k)] (bytes;
// the kernels want it 64-byte aligned).
void QuantizeRowsInt8(const float* x, int64_t rows, int64_t k, QuantType weights, uint8_t* out);

}  // namespace spanserve::kernels::cpu::internal
