// kernels/cuda/matmul.cu on the CPU emulation: MatMul against kernels::cpu::MatMul (within
// 1e-5 of Σ|x·w| per output) for f32/bf16/f16 weights, with and without bias, over ragged
// shapes; batch invariance (a row of any batch is bit-identical to that row alone, across
// every kernel variant and both the vector and the scalar load paths); round_x_to_bf16;
// RoundToBf16 bit-exact against common/dtype.h.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cuda/ops.h"
#include "kernels/types.h"

namespace spanserve::kernels::cuda {
namespace {

// A weight array of `type` holding `count` values drawn from [-1, 1], with its f32 widening.
struct Array {
  DType type = DType::kF32;
  std::vector<float> f32;      // type == kF32: the data
  std::vector<uint16_t> bits;  // bf16 / f16: the data
  std::vector<float> widened;  // every type: the exact f32 values

  const void* data() const {
    return type == DType::kF32 ? static_cast<const void*>(f32.data())
                               : static_cast<const void*>(bits.data());
  }
};

Array RandomArray(DType type, int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  Array a;
  a.type = type;
  a.widened.resize(count);
  if (type == DType::kF32) {
    a.f32.resize(count);
    for (int64_t i = 0; i < count; ++i) a.f32[i] = a.widened[i] = dist(rng);
  } else {
    a.bits.resize(count);
    for (int64_t i = 0; i < count; ++i) {
      const float v = dist(rng);
      a.bits[i] = type == DType::kBF16 ? F32ToBf16(v) : F32ToF16(v);
      a.widened[i] = type == DType::kBF16 ? Bf16ToF32(a.bits[i]) : F16ToF32(a.bits[i]);
    }
  }
  return a;
}

std::vector<float> RandomFloats(int64_t count, std::mt19937& rng) {
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(count);
  for (float& f : v) f = dist(rng);
  return v;
}

std::string TypeName(DType t) { return std::string(DTypeName(t)); }

// The CUDA MatMul on the emulation (stream nullptr: device memory is host memory).
std::vector<float> CudaMatMul(const float* x, int64_t m, int64_t k, const void* w, DType w_type,
                              int64_t n, const Array* bias, bool round_x = false) {
  std::vector<float> y(m * n, std::numeric_limits<float>::quiet_NaN());
  MatMul(nullptr, x, m, k, w, w_type, n, bias != nullptr ? bias->data() : nullptr,
         bias != nullptr ? bias->type : DType::kF32, round_x, y.data());
  return y;
}

struct Shape {
  int64_t m, k, n;
};

TEST(CudaMatMulEmuTest, MatchesCpuBackend) {
  const Shape shapes[] = {{1, 64, 48},   {1, 100, 37}, {3, 576, 192}, {17, 96, 130},
                          {33, 128, 64}, {1, 2048, 8}, {2, 7, 5},     {5, 33, 9},
                          {40, 131, 20}, {4, 260, 70}, {1, 1, 3},     {70, 260, 33}};
  std::mt19937 rng(1234);
  for (const Shape& s : shapes) {
    for (DType w_type : {DType::kF32, DType::kBF16, DType::kF16}) {
      for (int bias_kind = 0; bias_kind < 3; ++bias_kind) {
        SCOPED_TRACE("m=" + std::to_string(s.m) + " k=" + std::to_string(s.k) +
                     " n=" + std::to_string(s.n) + " w=" + TypeName(w_type) +
                     " bias=" + std::to_string(bias_kind));
        const std::vector<float> x = RandomFloats(s.m * s.k, rng);
        const Array w = RandomArray(w_type, s.n * s.k, rng);
        Array bias;
        if (bias_kind > 0) {
          bias = RandomArray(bias_kind == 1 ? DType::kF32 : DType::kBF16, s.n, rng);
        }
        const Array* b = bias_kind > 0 ? &bias : nullptr;
        const std::vector<float> got = CudaMatMul(x.data(), s.m, s.k, w.data(), w_type, s.n, b);

        WeightMatrix wm;
        wm.data = w.data();
        wm.dtype = w_type;
        wm.rows = s.n;
        wm.cols = s.k;
        WeightVector bv;
        if (b != nullptr) bv = WeightVector{bias.data(), bias.type, s.n};
        std::vector<float> want(s.m * s.n);
        cpu::MatMul(x.data(), s.m, wm, b != nullptr ? &bv : nullptr, want.data());

        int checked = 0;
        for (int64_t i = 0; i < s.m; ++i) {
          for (int64_t j = 0; j < s.n; ++j) {
            double mag = b != nullptr ? std::fabs(bias.widened[j]) : 0.0;
            for (int64_t p = 0; p < s.k; ++p) {
              mag += std::fabs(static_cast<double>(x[i * s.k + p]) * w.widened[j * s.k + p]);
            }
            const float g = got[i * s.n + j];
            const float e = want[i * s.n + j];
            ASSERT_TRUE(std::isfinite(g)) << "y[" << i << ", " << j << "] not written";
            ASSERT_LE(std::fabs(static_cast<double>(g) - e), 1e-5 * mag + 1e-30)
                << "y[" << i << ", " << j << "] = " << g << ", CPU " << e;
            ++checked;
          }
        }
        EXPECT_EQ(checked, s.m * s.n);
      }
    }
  }
}

// A copy of `v` whose data starts one element past a 16-byte boundary, so MatMul must take
// the scalar load path.
template <class T>
struct Misaligned {
  std::vector<T> buffer;
  const T* data;
  explicit Misaligned(const std::vector<T>& v) : buffer(v.size() + 1) {
    if (!v.empty()) std::memcpy(buffer.data() + 1, v.data(), v.size() * sizeof(T));
    data = buffer.data() + 1;
  }
};

// Row i of a batch of m rows equals the row alone, bit for bit, for m across every variant
// boundary (1 | 2..4 | 5..32 | 33..), and the scalar path (misaligned x or w) gives the
// vector path's bits.
TEST(CudaMatMulEmuTest, BatchInvariant) {
  const int64_t kRows = 48;
  const int64_t batches[] = {1, 2, 3, 4, 5, 8, 9, 31, 32, 33, 40, 48};
  std::mt19937 rng(99);
  for (DType w_type : {DType::kF32, DType::kBF16, DType::kF16}) {
    for (int64_t k : {100, 256, 300, 102}) {
      const int64_t n = 37;
      SCOPED_TRACE("w=" + TypeName(w_type) + " k=" + std::to_string(k));
      const std::vector<float> x = RandomFloats(kRows * k, rng);
      const Array w = RandomArray(w_type, n * k, rng);
      const Array bias = RandomArray(DType::kBF16, n, rng);
      // Each row alone (m = 1).
      std::vector<float> alone(kRows * n);
      for (int64_t i = 0; i < kRows; ++i) {
        const std::vector<float> y = CudaMatMul(x.data() + i * k, 1, k, w.data(), w_type, n, &bias);
        std::memcpy(alone.data() + i * n, y.data(), n * sizeof(float));
      }
      for (int64_t m : batches) {
        SCOPED_TRACE("m=" + std::to_string(m));
        const std::vector<float> y = CudaMatMul(x.data(), m, k, w.data(), w_type, n, &bias);
        ASSERT_EQ(std::memcmp(y.data(), alone.data(), m * n * sizeof(float)), 0);
      }
      // The scalar path: x misaligned, then w misaligned (k = 102 takes it anyway).
      const Misaligned<float> mx(x);
      for (int64_t m : {int64_t{1}, int64_t{4}, int64_t{9}, kRows}) {
        SCOPED_TRACE("misaligned x, m=" + std::to_string(m));
        const std::vector<float> y = CudaMatMul(mx.data, m, k, w.data(), w_type, n, &bias);
        ASSERT_EQ(std::memcmp(y.data(), alone.data(), m * n * sizeof(float)), 0);
      }
      const void* mw = nullptr;
      Misaligned<float> mwf(w.f32);
      Misaligned<uint16_t> mwh(w.bits);
      mw = w_type == DType::kF32 ? static_cast<const void*>(mwf.data)
                                 : static_cast<const void*>(mwh.data);
      for (int64_t m : {int64_t{1}, int64_t{33}}) {
        SCOPED_TRACE("misaligned w, m=" + std::to_string(m));
        const std::vector<float> y = CudaMatMul(x.data(), m, k, mw, w_type, n, &bias);
        ASSERT_EQ(std::memcmp(y.data(), alone.data(), m * n * sizeof(float)), 0);
      }
    }
  }
}

// round_x_to_bf16 gives exactly the results of x rounded to bf16 beforehand.
TEST(CudaMatMulEmuTest, RoundXToBf16) {
  std::mt19937 rng(7);
  for (DType w_type : {DType::kF32, DType::kBF16}) {
    for (const Shape& s : {Shape{1, 300, 21}, Shape{3, 256, 17}, Shape{40, 130, 19}}) {
      SCOPED_TRACE("m=" + std::to_string(s.m) + " k=" + std::to_string(s.k) +
                   " w=" + TypeName(w_type));
      const std::vector<float> x = RandomFloats(s.m * s.k, rng);
      std::vector<float> rounded(x.size());
      for (size_t i = 0; i < x.size(); ++i) rounded[i] = Bf16ToF32(F32ToBf16(x[i]));
      const Array w = RandomArray(w_type, s.n * s.k, rng);
      const Array bias = RandomArray(DType::kF32, s.n, rng);
      const std::vector<float> got =
          CudaMatMul(x.data(), s.m, s.k, w.data(), w_type, s.n, &bias, /*round_x=*/true);
      const std::vector<float> want =
          CudaMatMul(rounded.data(), s.m, s.k, w.data(), w_type, s.n, &bias);
      const std::vector<float> unrounded =
          CudaMatMul(x.data(), s.m, s.k, w.data(), w_type, s.n, &bias);
      EXPECT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0);
      // The flag did something.
      EXPECT_NE(std::memcmp(got.data(), unrounded.data(), got.size() * sizeof(float)), 0);
    }
  }
}

// k = 0: every output is the bias (or 0); m = 0 or n = 0 writes nothing.
TEST(CudaMatMulEmuTest, EmptyShapes) {
  std::mt19937 rng(3);
  const Array bias = RandomArray(DType::kF16, 10, rng);
  const float x_dummy[4] = {1, 2, 3, 4};
  const float w_dummy[4] = {1, 2, 3, 4};
  for (int64_t m : {1, 6, 40}) {
    const std::vector<float> with_bias = CudaMatMul(x_dummy, m, 0, w_dummy, DType::kF32, 10, &bias);
    const std::vector<float> without = CudaMatMul(x_dummy, m, 0, w_dummy, DType::kF32, 10, nullptr);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t j = 0; j < 10; ++j) {
        EXPECT_EQ(with_bias[i * 10 + j], bias.widened[j]);
        EXPECT_EQ(without[i * 10 + j], 0.0f);
      }
    }
  }
  float y[4] = {5, 5, 5, 5};
  MatMul(nullptr, x_dummy, 0, 4, w_dummy, DType::kF32, 1, nullptr, DType::kF32, false, y);
  MatMul(nullptr, x_dummy, 1, 4, w_dummy, DType::kF32, 0, nullptr, DType::kF32, false, y);
  for (float v : y) EXPECT_EQ(v, 5.0f);
}

TEST(CudaMatMulEmuTest, RoundToBf16MatchesDtype) {
  std::vector<uint32_t> bits = {
      0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u,  // ±0, ±inf
      0x7fc00000u, 0xffc00001u, 0x7f800001u, 0x7fbfffffu,  // NaNs (quiet, signalling)
      0x3f808000u, 0x3f818000u, 0xbf808000u, 0xbf818000u,  // ties to even (down, up)
      0x3f808001u, 0x3f807fffu, 0x7f7fffffu, 0xff7fffffu,  // near ties, max finite (-> inf)
      0x00000001u, 0x00008000u, 0x00018000u, 0x807fffffu,  // subnormals
      0x3f800000u, 0x40490fdbu, 0x7f7f8000u, 0x7f7f7fffu,
  };
  std::mt19937 rng(5);
  while (bits.size() < 1000 + 37) bits.push_back(static_cast<uint32_t>(rng()));
  std::vector<float> x(bits.size());
  std::memcpy(x.data(), bits.data(), bits.size() * 4);
  std::vector<uint16_t> out(x.size() + 1, 0xdeadu);
  RoundToBf16(nullptr, x.data(), static_cast<int64_t>(x.size()), out.data());
  for (size_t i = 0; i < x.size(); ++i) {
    EXPECT_EQ(out[i], F32ToBf16(x[i])) << std::hex << "x bits 0x" << bits[i];
  }
  EXPECT_EQ(out[x.size()], 0xdeadu);  // nothing written past n
  // Ties really are ties to even in the reference, so the check above covers them.
  EXPECT_EQ(F32ToBf16(x[8]), 0x3f80u);
  EXPECT_EQ(F32ToBf16(x[9]), 0x3f82u);
}

}  // namespace
}  // namespace spanserve::kernels::cuda
