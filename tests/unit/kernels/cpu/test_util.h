// Shared helpers for the CPU kernel tests: random data, weights stored in each dtype, and
// bit-exact comparison.
#pragma once

#include <cstdint>
#include <cstring>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/tensor_ref.h"
#include "kernels/quant.h"
#include "kernels/types.h"

namespace spanserve {

// So gtest prints a dtype parameter as "BF16", not as raw bytes.
inline void PrintTo(DType t, std::ostream* os) { *os << DTypeName(t); }

}  // namespace spanserve

namespace spanserve::kernels::cpu::testing {

// Caps MatMul at one instruction set for a scope, restoring the setting after.
class ScopedIsa {
 public:
  explicit ScopedIsa(Isa isa) : saved_(SetMaxIsa(isa)) {}
  ~ScopedIsa() { SetMaxIsa(saved_); }
  ScopedIsa(const ScopedIsa&) = delete;
  ScopedIsa& operator=(const ScopedIsa&) = delete;

 private:
  Isa saved_;
};

// Whether MatMul may use AVX-512 here (the CPU has it and the environment allows it).
inline bool CpuHasAvx512ForTest() {
  ScopedIsa wide(Isa::kAvx512);
  return ActiveIsa() == Isa::kAvx512;
}

inline std::vector<float> RandomFloats(int64_t n, uint32_t seed, float lo = -1.0f,
                                       float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// `numel` elements of quantized blocks of format `q`, dequantized to f32 by kernels/quant.h.
inline std::vector<float> Dequantized(QuantType q, const std::vector<uint8_t>& bytes,
                                      int64_t numel) {
  std::vector<float> out(numel);
  if (!kernels::Dequantize(q, bytes.data(), numel, out.data())) {
    ADD_FAILURE() << "no dequantizer for this format";
  }
  return out;
}

// Weights stored in `dtype`, plus the same values widened back to f32: references are
// computed on `widened`, so the rounding to bf16/f16 is not part of the kernel's error.
struct StoredWeights {
  DType dtype = DType::kF32;
  std::vector<float> f32;
  std::vector<uint16_t> half;
  std::vector<float> widened;

  const void* data() const {
    return dtype == DType::kF32 ? static_cast<const void*>(f32.data()) : half.data();
  }
  WeightMatrix Matrix(int64_t rows, int64_t cols) const { return {data(), dtype, rows, cols}; }
  WeightVector Vector() const { return {data(), dtype, static_cast<int64_t>(widened.size())}; }
};

inline StoredWeights StoreWeights(const std::vector<float>& values, DType dtype) {
  StoredWeights w;
  w.dtype = dtype;
  w.widened.resize(values.size());
  if (dtype == DType::kF32) {
    w.f32 = values;
    w.widened = values;
    return w;
  }
  w.half.resize(values.size());
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::kBF16) {
      w.half[i] = F32ToBf16(values[i]);
      w.widened[i] = Bf16ToF32(w.half[i]);
    } else {
      w.half[i] = F32ToF16(values[i]);
      w.widened[i] = F16ToF32(w.half[i]);
    }
  }
  return w;
}

inline std::string DTypeParamName(const ::testing::TestParamInfo<DType>& info) {
  return std::string(DTypeName(info.param));
}

// Bitwise equality of two float arrays (so -0.0 vs 0.0 and NaN payloads count too).
inline ::testing::AssertionResult BitIdentical(const float* a, const float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    if (std::memcmp(&a[i], &b[i], sizeof(float)) != 0) {
      return ::testing::AssertionFailure()
             << "element " << i << ": " << a[i] << " vs " << b[i] << " (of " << n << ")";
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace spanserve::kernels::cpu::testing
