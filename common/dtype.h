// Element types of stored weights, and scalar conversions to and from f32.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string_view>

#include "absl/status/statusor.h"

namespace spanserve {

enum class DType : uint8_t { kF32, kBF16, kF16 };

// Bytes per element.
constexpr size_t DTypeSize(DType t) {
  switch (t) {
    case DType::kF32:
      return 4;
    case DType::kBF16:
      return 2;
    case DType::kF16:
      return 2;
  }
  return 0;
}

// The safetensors spelling: "F32", "BF16", "F16".
std::string_view DTypeName(DType t);

inline float Bf16ToF32(uint16_t h) {
  uint32_t bits = static_cast<uint32_t>(h) << 16;
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

// Round-to-nearest-even, as PyTorch's .to(torch.bfloat16); NaN stays NaN.
inline uint16_t F32ToBf16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<uint16_t>(bits >> 16);
}

// IEEE half, exact (subnormals, inf, NaN).
float F16ToF32(uint16_t h);
// Round-to-nearest-even.
uint16_t F32ToF16(float f);

// The spelling of a setting that is f32 or bf16 (a model's compute dtype, the KV cache's
// element type): "auto", "f32", "float32" -> kF32; "bf16", "bfloat16" -> kBF16; anything
// else is INVALID_ARGUMENT "<setting> must be auto, f32 or bf16, got ...".
[[nodiscard]] absl::StatusOr<DType> ParseF32OrBf16(std::string_view name, std::string_view setting);
std::string_view F32OrBf16Name(DType dtype);  // "bf16" or "f32"

}  // namespace spanserve
