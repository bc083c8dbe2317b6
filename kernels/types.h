// The types every compute backend's ops take (kernels/backend.h): borrowed views of
// weights, their quantization and precision, one layer's paged KV pool, the attention
// descriptors of a batch, and the MoE router's scoring. Activations are always f32; weights
// may be f32, bf16, f16 or ggml block-quantized. Names no device.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace spanserve::kernels {

// Block-quantized weight formats (ggml's, as GGUF files store them; kernels/quant.h): blocks
// of 32 elements (Q8_0 .. Q5_1, IQ4_NL) or super-blocks of 256 (the K-quants Q2_K .. Q6_K,
// IQ4_XS).
enum class QuantType : uint8_t {
  kNone,
  kQ8_0,
  kQ4_0,
  kQ4_1,
  kQ5_0,
  kQ5_1,
  kQ4_K,
  kQ5_K,
  kQ6_K,
  kQ2_K,
  kQ3_K,
  kIQ4_NL,
  kIQ4_XS
};

// Bytes of one block of a quantized format (0 for kNone).
constexpr int64_t QuantBlockBytes(QuantType q) {
  switch (q) {
    case QuantType::kNone:
      return 0;
    case QuantType::kQ8_0:
      return 34;
    case QuantType::kQ4_0:
      return 18;
    case QuantType::kQ4_1:
      return 20;
    case QuantType::kQ5_0:
      return 22;
    case QuantType::kQ5_1:
      return 24;
    case QuantType::kQ4_K:
      return 144;
    case QuantType::kQ5_K:
      return 176;
    case QuantType::kQ6_K:
      return 210;
    case QuantType::kQ2_K:
      return 84;
    case QuantType::kQ3_K:
      return 110;
    case QuantType::kIQ4_NL:
      return 18;
    case QuantType::kIQ4_XS:
      return 136;
  }
  return 0;
}

// The format's name as ggml spells it ("Q4_K"); "none" for kNone.
constexpr const char* QuantTypeName(QuantType q) {
  switch (q) {
    case QuantType::kNone:
      return "none";
    case QuantType::kQ8_0:
      return "Q8_0";
    case QuantType::kQ4_0:
      return "Q4_0";
    case QuantType::kQ4_1:
      return "Q4_1";
    case QuantType::kQ5_0:
      return "Q5_0";
    case QuantType::kQ5_1:
      return "Q5_1";
    case QuantType::kQ4_K:
      return "Q4_K";
    case QuantType::kQ5_K:
      return "Q5_K";
    case QuantType::kQ6_K:
      return "Q6_K";
    case QuantType::kQ2_K:
      return "Q2_K";
    case QuantType::kQ3_K:
      return "Q3_K";
    case QuantType::kIQ4_NL:
      return "IQ4_NL";
    case QuantType::kIQ4_XS:
      return "IQ4_XS";
  }
  return "none";
}

// Elements of one block of a quantized format: 32, or 256 for the K-quants (0 for kNone).
constexpr int64_t QuantBlockElems(QuantType q) {
  switch (q) {
    case QuantType::kNone:
      return 0;
    case QuantType::kQ2_K:
    case QuantType::kQ3_K:
    case QuantType::kQ4_K:
    case QuantType::kQ5_K:
    case QuantType::kQ6_K:
    case QuantType::kIQ4_XS:
      return 256;
    default:
      return 32;
  }
}

// The format the integer dot products compute on for weights of format q: q itself, or for
// IQ4_NL and Q3_K an exact re-encoding the backend makes at upload (Q8_0, Q6_K: the same f32
// values bit for bit; kernels/quant.h, ConvertIQ4_NLToQ8_0 / ConvertQ3_KToQ6_K).
constexpr QuantType Int8DotFormat(QuantType q) {
  return q == QuantType::kIQ4_NL ? QuantType::kQ8_0 : q == QuantType::kQ3_K ? QuantType::kQ6_K : q;
}

// Whether MatMulPrecision::kInt8Dot takes matrices of this format (others multiply exactly).
constexpr bool Int8DotSupports(QuantType q) {
  const QuantType f = Int8DotFormat(q);
  return f == QuantType::kQ8_0 || f == QuantType::kQ4_0 || f == QuantType::kQ4_1 ||
         f == QuantType::kQ5_0 || f == QuantType::kQ5_1 || f == QuantType::kQ4_K ||
         f == QuantType::kQ5_K || f == QuantType::kQ6_K;
}

// How MatMul multiplies a matrix. kExact: f32 activations times the weights widened to f32,
// every product exact. kBf16Dot (bf16 weights only, CPUs with AVX512_BF16): the activations
// are rounded to bf16 and multiplied with the CPU's bf16 dot products, accumulating in f32:
// about twice the arithmetic rate, at a relative error of up to 2^-9 per activation
// (kernels/cpu/matmul_bf16dot.h). kInt8Dot (Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q4_K/Q5_K/Q6_K
// weights, and IQ4_NL/Q3_K re-encoded at upload: Int8DotSupports, Int8DotFormat): each row of
// activations is quantized once per call to blocks of 32 int8 (per block d = max|x| / 127, values
// rounded to nearest) and each output is Σ over blocks of d_w·d_x·(exact integer dot) (+ the Q4_1 /
// Q5_1 / Q4_K / Q5_K min times d_x·Σq), with integer dot products (VNNI where the CPU has it, AVX2
// otherwise, the same bits either way): about twice the exact path's speed for quantized decode, at
// a relative error of about 1e-3 of Σ|x·w| (kernels/cpu/matmul_int8dot.h). Either way a row's
// result never depends on the batch.
enum class MatMulPrecision : uint8_t { kExact, kBf16Dot, kInt8Dot };

// A row-major matrix in PyTorch nn.Linear layout: [rows = out_features, cols = in_features].
// `data` is borrowed (usually points into a memory-mapped weight file) and need only be
// aligned to its element size. With `quant` set, each row is cols / QuantBlockElems(quant)
// blocks of that format (cols must be a multiple of it; `dtype` is then ignored) and the
// kernels compute with exactly the f32 values dequantization gives, so the results equal
// those on a dequantized copy bit for bit.
struct WeightMatrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  QuantType quant = QuantType::kNone;
  MatMulPrecision precision = MatMulPrecision::kExact;
  // CPU, kInt8Dot: a repacked copy of the weights the integer kernels read instead of data
  // (kernels/cpu/matmul_int8dot.h, "Packed weights"), owned by the backend; data stays the
  // weights as stored (the embedding lookup reads its rows). Null: none.
  const void* packed = nullptr;
};

// A vector of `size` elements (a norm gain, a bias).
struct WeightVector {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t size = 0;
};

// One of the products of a shared input (Backend::MatMulShared): y = x · wᵀ + bias, bias
// may be null.
struct MatMulOutput {
  const WeightMatrix* w = nullptr;
  const WeightVector* bias = nullptr;
  float* y = nullptr;
};

// Element i of a weight vector or matrix, widened to f32 (for scalar code paths).
inline float WeightAt(const void* data, DType dtype, int64_t i) {
  switch (dtype) {
    case DType::kF32:
      return static_cast<const float*>(data)[i];
    case DType::kBF16:
      return Bf16ToF32(static_cast<const uint16_t*>(data)[i]);
    case DType::kF16:
      return F16ToF32(static_cast<const uint16_t*>(data)[i]);
  }
  return 0.0f;
}

// One layer's slice of the paged KV pool. Block b holds tokens [b*block_size, ...) of
// whatever sequence owns it; layout of k and v: [num_blocks, block_size, kv_heads, head_dim],
// elements of `dtype`: f32 (exact), or bf16 (half the bytes; PagedKvWrite rounds each value
// to nearest-even and attention widens it back exactly).
struct PagedKvLayer {
  void* k = nullptr;
  void* v = nullptr;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;  // kF32 or kBF16
  // 0: full causal attention; else the row at position p attends to positions k with
  // p - sliding_window < k <= p (transformers' sliding window: Mistral, Qwen2).
  int32_t sliding_window = 0;
  // 0: none; else each scaled score s becomes cap · tanh(s / cap) before the softmax (Gemma
  // 2's attn_logit_softcapping), in f32: s / cap, tanhf, then times cap.
  float logit_softcap = 0.0f;
};

// One sequence's share of a batch. Its new tokens are rows [row_begin, row_begin +
// num_new) of q/k/v/out and sit at positions [cached, cached + num_new); the cache already
// holds its first `cached` tokens. block_table[i] is the physical block of logical block i
// and must cover cached + num_new tokens.
struct AttentionSeq {
  const int32_t* block_table = nullptr;
  int32_t cached = 0;
  int32_t num_new = 0;
  int64_t row_begin = 0;
};

// How an MoE router turns its logits into expert scores.
enum class RouterScoring : uint8_t {
  kSoftmax,  // softmax over the experts (Mixtral, Qwen2-MoE)
  kSigmoid,  // an independent sigmoid per expert
};

// How RopeTables scales the rotary frequencies; the arithmetic of transformers 4.46.3's
// ROPE_INIT_FUNCTIONS, described without any model knowledge (the model layer maps its
// config onto it). inv_freq[i] = 1 / theta^(2i/head_dim) in f32 before scaling.
enum class RopeScalingType : uint8_t {
  kNone,          // angle = pos * inv_freq
  kLinear,        // angle = (pos / factor) * inv_freq
  kLlama3,        // inv_freq divided by factor below a band of wavelengths, smoothly
                  // interpolated inside it (transformers' _compute_llama3_parameters)
  kYarn,          // NTK-by-parts ramp between inv_freq and inv_freq / factor, cos and sin
                  // times attention_factor (transformers' _compute_yarn_parameters)
  kFreqDivisors,  // inv_freq[i] / freq_divisors[i] (ggml's rope freq_factors)
  kDynamic,   // dynamic NTK: theta' = theta · ((factor · L / context_length) − (factor − 1))
              // ^ (head_dim / (head_dim − 2)) for a sequence length L > context_length,
              // theta itself up to it (transformers' _compute_dynamic_ntk_parameters).
              // L is the row's position + 1 (the rotation a token gets as the last of
              // its forward), or dynamic_length for every row when that is set.
  kLongRope,  // LongRoPE (Phi-3): inv_freq[i] = 1 / (ext[i] · theta^(2i/head_dim)) with ext =
              // long_factor for a sequence length L > context_length, short_factor up to
              // it (transformers 4.46.3's Phi3LongRoPEScaledRotaryEmbedding); cos and sin
              // times attention_factor. L as for kDynamic.
};

struct RopeScaling {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;  // kLinear, kLlama3, kYarn
  // kLlama3: the low/high frequency factors and the original context length.
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  // kLlama3: original_max_position_embeddings. kYarn: the length find_correction_range
  // uses (transformers 4.46.3 passes max_position_embeddings). kDynamic:
  // max_position_embeddings, the length up to which theta is not scaled. kLongRope:
  // original_max_position_embeddings, the longest length that uses short_factor.
  double context_length = 8192.0;
  double beta_fast = 32.0;        // kYarn
  double beta_slow = 1.0;         // kYarn
  double attention_factor = 1.0;  // kYarn, kLongRope: multiplies cos and sin (rounded to f32)
  const float* freq_divisors = nullptr;  // kFreqDivisors: head_dim / 2 values, borrowed
  // kLongRope: head_dim / 2 values each (f32), borrowed.
  const float* short_factor = nullptr;
  const float* long_factor = nullptr;
  // kDynamic, kLongRope: > 0: every row is rotated for the sequence length dynamic_length
  // (a prompt token of a forward over dynamic_length tokens); 0: row by row, position + 1.
  int64_t dynamic_length = 0;
  // Every type: table row r holds position first_position + r (a slice of the table).
  int64_t first_position = 0;
};

}  // namespace spanserve::kernels
