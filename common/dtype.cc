#include "common/dtype.h"

#include <string>

#include "absl/strings/str_cat.h"

#include <cmath>

namespace spanserve {

std::string_view DTypeName(DType t) {
  switch (t) {
    case DType::kF32:
      return "F32";
    case DType::kBF16:
      return "BF16";
    case DType::kF16:
      return "F16";
  }
  return "?";
}

float F16ToF32(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24
      float f = std::ldexp(static_cast<float>(man), -24);
      std::memcpy(&bits, &f, 4);
      bits |= sign;
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112) << 23) | (man << 13);
  }
  float out;
  std::memcpy(&out, &bits, 4);
  return out;
}

uint16_t F32ToF16(float f) {
  uint32_t x;
  std::memcpy(&x, &f, 4);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x > 0x7f800000u) return static_cast<uint16_t>(sign | 0x7e00u);   // NaN
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (x < 0x38800000u) {                                               // subnormal or zero
    float a;
    std::memcpy(&a, &x, 4);
    const float scaled = a * 16777216.0f;  // 2^24: exact, then round-half-even
    return static_cast<uint16_t>(sign | static_cast<uint32_t>(std::nearbyint(scaled)));
  }
  const uint32_t mant_odd = (x >> 13) & 1u;
  x += 0xfffu + mant_odd;
  x -= 112u << 23;
  return static_cast<uint16_t>(sign | (x >> 13));
}

absl::StatusOr<DType> ParseF32OrBf16(std::string_view name, std::string_view setting) {
  if (name == "auto" || name == "f32" || name == "float32") return DType::kF32;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat(
      std::string(setting), " must be auto, f32 or bf16, got \"", std::string(name), "\""));
}

std::string_view F32OrBf16Name(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }

}  // namespace spanserve
