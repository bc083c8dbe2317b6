// Borrowed views of weights as the CPU kernels take them. Activations are always f32;
// weights may be f32, bf16 or f16 and are widened to f32 inside the kernels.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace spanserve::kernels::cpu {

// Block-quantized weight formats (ggml's, as GGUF files store them; kernels/cpu/dequant.h).
enum class QuantType : uint8_t { kNone, kQ8_0, kQ4_0, kQ4_1 };

// Bytes of one 32-element block of a quantized format (0 for kNone).
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
  }
  return 0;
}

// How MatMul multiplies a matrix. kExact: f32 activations times the weights widened to f32,
// every product exact. kBf16Dot (bf16 weights only, CPUs with AVX512_BF16): the activations
// are rounded to bf16 and multiplied with the CPU's bf16 dot products, accumulating in f32:
// about twice the arithmetic rate, at a relative error of up to 2^-9 per activation
// (kernels/cpu/matmul_bf16dot.h). Either way a row's result never depends on the batch.
enum class MatMulPrecision : uint8_t { kExact, kBf16Dot };

// A row-major matrix in PyTorch nn.Linear layout: [rows = out_features, cols = in_features].
// `data` is borrowed (usually points into a memory-mapped weight file) and need only be
// aligned to its element size. With `quant` set, each row is cols / 32 blocks of that format
// (cols must be a multiple of 32; `dtype` is then ignored) and the kernels compute with
// exactly the f32 values dequantization gives, so the results equal those on a dequantized
// copy bit for bit.
struct WeightMatrix {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t rows = 0;
  int64_t cols = 0;
  QuantType quant = QuantType::kNone;
  MatMulPrecision precision = MatMulPrecision::kExact;
};

// A vector of `size` elements (a norm gain, a bias).
struct WeightVector {
  const void* data = nullptr;
  DType dtype = DType::kF32;
  int64_t size = 0;
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

}  // namespace spanserve::kernels::cpu
