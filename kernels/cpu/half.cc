// kHalfToFloat (simd.h): the f32 of every f16 bit pattern, computed at compile time, so the
// table is constant-initialized (no start-up code, no initialization order to mind).
#include <array>
#include <bit>
#include <cstdint>

#include "kernels/cpu/simd.h"

namespace spanserve::kernels::cpu::simd {
namespace {

// The conversion VCVTPH2PS does: exact for every finite value (subnormals normalized), ±inf
// kept, and a NaN keeps its sign and payload with the quiet bit set.
constexpr uint32_t HalfBitsToFloatBits(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0x1f) return sign | 0x7f800000u | (mantissa << 13) | (mantissa ? 0x400000u : 0);
  if (exponent != 0) return sign | ((exponent + 112) << 23) | (mantissa << 13);
  if (mantissa == 0) return sign;
  // Subnormal: m · 2^-24, normalized.
  int e = 113;  // the biased f32 exponent of 2^-14, one step per shift below
  while ((mantissa & 0x400u) == 0) {
    mantissa <<= 1;
    --e;
  }
  return sign | (static_cast<uint32_t>(e) << 23) | ((mantissa & 0x3ffu) << 13);
}

constexpr std::array<float, 65536> MakeHalfTable() {
  std::array<float, 65536> t{};
  for (uint32_t h = 0; h < 65536; ++h) {
    t[h] = std::bit_cast<float>(HalfBitsToFloatBits(static_cast<uint16_t>(h)));
  }
  return t;
}

}  // namespace

alignas(64) constinit const std::array<float, 65536> kHalfToFloat = MakeHalfTable();

}  // namespace spanserve::kernels::cpu::simd
