// GGUF tensor data to f32: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1 and the K-quants Q2_K,
// Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS (kernels/quant.h), bit-exact against the
// `gguf` package.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "runtime/gguf/gguf_file.h"

namespace spanserve::gguf {

// Whether DequantizeToF32 handles `type`.
bool CanDequantize(TensorType type);

// Writes the tensor's numel() values to `out` in storage order (ne[0] fastest).
// UNIMPLEMENTED naming the file, the tensor and its type for any other type;
// INVALID_ARGUMENT if `out` is not numel() long. Runs on the calling thread's pool
// (common/thread_pool.h: UsePool), if one is installed.
[[nodiscard]] absl::Status DequantizeToF32(const GgufFile& file, const TensorInfo& tensor,
                                           std::span<float> out);

}  // namespace spanserve::gguf
