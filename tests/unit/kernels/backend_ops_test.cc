// Every op of kernels::Backend (kernels/backend.h) on every device, in the manner of
// llama.cpp's test-backend-ops and CTranslate2's per-device test instantiations (DESIGN.md
// §3). Each op runs on the backend under test with its inputs in that backend's memory
// (Allocate + CopyToDevice, results back through CopyToHost after Synchronize), and its
// results are checked twice:
//   1. against a naive double-precision reference written here, at a tolerance that follows
//      the op's documented arithmetic: bit-exact where the op only moves values or rounds
//      once exactly, else relative to the magnitude each element's rounding error scales
//      with (Σ|terms| for a sum that may cancel, |value| otherwise);
//   2. against the CPU backend (the oracle) on the same inputs: bit-identical when the
//      backend under test is the CPU one (a check that a run is deterministic), else within
//      1e-5 relative for f32 arithmetic and 1e-2 for bf16 data.
// A device this build lacks skips its instantiation, visibly (CreateBackend's error is in
// the skip message). The CUDA backend also runs as "cuda_emu": its kernels and host code
// compiled against the CPU emulation of kernels/cuda/compat.h, so every op of it is checked
// on machines without a GPU. A new backend gets all of this once CreateBackend returns it (a new
// Device also joins ::testing::Values at the end of this file).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <ostream>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "kernels/quant.h"
#include "kernels/types.h"

namespace spanserve::kernels {

// So gtest names a device parameter "cpu", not a byte.
void PrintTo(Device device, std::ostream* os) { *os << DeviceName(device); }

namespace {

constexpr uint32_t kSeed = 20240611;

// ---- Tolerances

struct Tol {
  // Against the double-precision reference, times each element's scale; 0: bit-exact.
  double ref;
  // Against the CPU backend, for another backend (the CPU backend must match bit for bit).
  double cross;
};
constexpr Tol kExact{0.0, 0.0};
// The same value, the sign of a zero aside (a sum of exact products that may be ±0).
constexpr Tol kSameValue{1e-30, 1e-30};
constexpr Tol kF32{1e-5, 1e-5};
// bf16 data (a bf16 KV cache, bf16 dot products). The references model the rounding to
// bf16 exactly, so they keep f32's tolerance; another backend against the CPU one: 1e-2.
constexpr Tol kBf16{1e-5, 1e-2};

// What an op should give: each element's value, and the magnitude its rounding error
// scales with.
struct Expected {
  std::vector<double> value;
  std::vector<double> scale;

  void Push(double v, double s) {
    value.push_back(v);
    scale.push_back(s);
  }
  void Push(double v) { Push(v, std::abs(v)); }
};

// |got[i] - want[i]| <= tol · scale[i] for every i; tol == 0: got[i] is want[i] rounded to
// f32, bit for bit (so the sign of a zero counts).
::testing::AssertionResult Within(const std::vector<float>& got, const std::vector<double>& want,
                                  const std::vector<double>& scale, double tol) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << got.size() << " elements, want " << want.size();
  }
  std::ostringstream first;
  first.precision(9);
  int64_t bad = 0;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    bool ok;
    if (tol == 0.0) {
      const float w = static_cast<float>(want[i]);
      ok = std::memcmp(&got[i], &w, sizeof(float)) == 0;
    } else {
      const double err = std::abs(static_cast<double>(got[i]) - want[i]);
      ok = err <= tol * scale[i];  // false for NaN
      if (scale[i] > 0.0) worst = std::max(worst, err / scale[i]);
    }
    if (!ok && ++bad <= 6) {
      first << "\n  [" << i << "] got " << got[i] << ", want " << want[i] << " (scale " << scale[i]
            << ")";
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  ::testing::AssertionResult failure = ::testing::AssertionFailure();
  failure << bad << " of " << got.size() << " elements off ";
  if (tol == 0.0) {
    failure << "(bit-exact)";
  } else {
    failure << "at tolerance " << tol << " x scale (worst error/scale " << worst << ")";
  }
  return failure << first.str();
}

template <typename T>
::testing::AssertionResult SameBits(const std::vector<T>& got, const std::vector<T>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << got.size() << " elements, want " << want.size();
  }
  std::ostringstream first;
  first.precision(9);
  int64_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(T)) != 0 && ++bad <= 6) {
      first << "\n  [" << i << "] got " << +got[i] << ", want " << +want[i];
    }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << bad << " of " << got.size() << " elements differ" << first.str();
}

// ---- Inputs

std::vector<float> Uniform(std::mt19937& rng, int64_t n, float lo = -1.0f, float hi = 1.0f) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

float RoundToBf16(float f) { return Bf16ToF32(F32ToBf16(f)); }

// A weight as a file stores it (f32, bf16, f16 or ggml blocks) and the f32 values the ops
// must compute with (widened exactly, or dequantized as kernels/quant.h defines).
struct HostWeight {
  DType dtype = DType::kF32;
  QuantType quant = QuantType::kNone;
  int64_t rows = 0;
  int64_t cols = 0;
  std::vector<uint8_t> bytes;
  std::vector<float> values;  // [rows, cols]

  WeightMatrix Matrix(MatMulPrecision precision = MatMulPrecision::kExact) const {
    return {bytes.data(), dtype, rows, cols, quant, precision};
  }
  WeightVector Vector() const { return {bytes.data(), dtype, rows * cols}; }
  float at(int64_t r, int64_t c) const { return values[r * cols + c]; }
};

HostWeight MakeDense(std::mt19937& rng, int64_t rows, int64_t cols, DType dtype, float lo = -1.0f,
                     float hi = 1.0f) {
  HostWeight w;
  w.dtype = dtype;
  w.rows = rows;
  w.cols = cols;
  const std::vector<float> v = Uniform(rng, rows * cols, lo, hi);
  w.values.resize(v.size());
  w.bytes.resize(v.size() * DTypeSize(dtype));
  for (size_t i = 0; i < v.size(); ++i) {
    if (dtype == DType::kF32) {
      w.values[i] = v[i];
      std::memcpy(&w.bytes[i * 4], &v[i], 4);
      continue;
    }
    const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(v[i]) : F32ToF16(v[i]);
    w.values[i] = dtype == DType::kBF16 ? Bf16ToF32(h) : F16ToF32(h);
    std::memcpy(&w.bytes[i * 2], &h, 2);
  }
  return w;
}

void PutHalf(uint8_t* p, float f) {
  const uint16_t h = F32ToF16(f);
  std::memcpy(p, &h, 2);  // little-endian, as the host
}
float GetHalf(const uint8_t* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return F16ToF32(h);
}

// Q4_K / Q5_K's 6-bit scale and min of sub-block s, as kernels/quant.h describes them.
void ScaleMinK4(const uint8_t* q, int s, int* sc, int* m) {
  if (s < 4) {
    *sc = q[s] & 63;
    *m = q[s + 4] & 63;
  } else {
    *sc = (q[s + 4] & 0x0f) | ((q[s - 4] >> 6) << 4);
    *m = (q[s + 4] >> 4) | ((q[s] >> 6) << 4);
  }
}

// Random valid blocks of `quant`, every quant value of the format reachable; `values` is
// their dequantization as kernels/quant.h writes it (d·q, then + m for Q4_1 / Q5_1;
// (d·sc)·q − dmin·m for the K-quants; f32, no FMA).
HostWeight MakeQuant(std::mt19937& rng, int64_t rows, int64_t cols, QuantType quant) {
  HostWeight w;
  w.quant = quant;
  w.rows = rows;
  w.cols = cols;
  const int64_t elems = QuantBlockElems(quant);
  const int64_t blocks = rows * cols / elems;
  w.bytes.resize(blocks * QuantBlockBytes(quant));
  w.values.resize(rows * cols);
  std::uniform_real_distribution<float> scale(0.002f, 0.03f);
  std::uniform_real_distribution<float> minimum(-0.25f, 0.0f);
  std::uniform_int_distribution<int> byte(0, 255);
  uint8_t* b = w.bytes.data();
  float* out = w.values.data();
  for (int64_t blk = 0; blk < blocks; ++blk, b += QuantBlockBytes(quant), out += elems) {
    // Q5 and K-quant blocks start random (quants, high bits, sub-block scales).
    const bool random_bytes =
        quant != QuantType::kQ8_0 && quant != QuantType::kQ4_0 && quant != QuantType::kQ4_1;
    for (int64_t i = 0; random_bytes && i < QuantBlockBytes(quant); ++i) {
      b[i] = static_cast<uint8_t>(byte(rng));
    }
    switch (quant) {
      case QuantType::kQ8_0: {
        PutHalf(b, scale(rng));
        const float d = GetHalf(b);
        for (int i = 0; i < 32; ++i) {
          const int8_t q = static_cast<int8_t>(byte(rng) - 128);
          std::memcpy(b + 2 + i, &q, 1);
          out[i] = d * static_cast<float>(q);
        }
        break;
      }
      case QuantType::kQ4_0: {
        PutHalf(b, byte(rng) < 128 ? scale(rng) : -scale(rng));  // ggml's d may be negative
        const float d = GetHalf(b);
        for (int i = 0; i < 16; ++i) b[2 + i] = static_cast<uint8_t>(byte(rng));
        for (int i = 0; i < 32; ++i) {
          const int nib = i < 16 ? b[2 + i] & 15 : b[2 + i - 16] >> 4;
          out[i] = d * static_cast<float>(nib - 8);
        }
        break;
      }
      case QuantType::kQ4_1: {
        PutHalf(b, scale(rng));
        PutHalf(b + 2, minimum(rng));
        const float d = GetHalf(b);
        const float m = GetHalf(b + 2);
        for (int i = 0; i < 16; ++i) b[4 + i] = static_cast<uint8_t>(byte(rng));
        for (int i = 0; i < 32; ++i) {
          const int nib = i < 16 ? b[4 + i] & 15 : b[4 + i - 16] >> 4;
          const float dq = d * static_cast<float>(nib);
          out[i] = dq + m;
        }
        break;
      }
      case QuantType::kQ5_0:
      case QuantType::kQ5_1: {
        const bool q5_1 = quant == QuantType::kQ5_1;
        PutHalf(b, q5_1 ? scale(rng) : (byte(rng) < 128 ? scale(rng) : -scale(rng)));
        if (q5_1) PutHalf(b + 2, minimum(rng));
        const float d = GetHalf(b);
        const float m = q5_1 ? GetHalf(b + 2) : 0.0f;
        uint32_t qh;
        std::memcpy(&qh, b + (q5_1 ? 4 : 2), 4);
        const uint8_t* qs = b + (q5_1 ? 8 : 6);
        for (int i = 0; i < 32; ++i) {
          const int nib = i < 16 ? qs[i] & 15 : qs[i - 16] >> 4;
          const int q = nib | static_cast<int>((qh >> i) & 1) << 4;
          if (q5_1) {
            const float dq = d * static_cast<float>(q);
            out[i] = dq + m;
          } else {
            out[i] = d * static_cast<float>(q - 16);
          }
        }
        break;
      }
      case QuantType::kQ4_K:
      case QuantType::kQ5_K: {
        const bool q5 = quant == QuantType::kQ5_K;
        PutHalf(b, 0.1f * scale(rng));
        PutHalf(b + 2, -0.1f * minimum(rng));
        const float d = GetHalf(b), dmin = GetHalf(b + 2);
        const uint8_t* qh = b + 16;
        const uint8_t* qs = b + (q5 ? 48 : 16);
        for (int e = 0; e < 256; ++e) {
          const int s = e / 32, j = e % 32;
          int sc, mn;
          ScaleMinK4(b + 4, s, &sc, &mn);
          int q = (qs[32 * (s / 2) + j] >> (4 * (s % 2))) & 15;
          if (q5) q |= ((qh[j] >> s) & 1) << 4;
          const float dl = d * static_cast<float>(sc);
          const float ml = dmin * static_cast<float>(mn);
          const float dq = dl * static_cast<float>(q);
          out[e] = dq - ml;
        }
        break;
      }
      case QuantType::kQ6_K: {
        PutHalf(b + 208, 0.1f * scale(rng));
        const float d = GetHalf(b + 208);
        for (int e = 0; e < 256; ++e) {
          const int s = e / 16, h = e / 128, r = e % 128, j = e % 32;
          const int q = (((b[64 * h + r % 64] >> (4 * (r / 64))) & 15) |
                         ((b[128 + 32 * h + j] >> (2 * (r / 32))) & 3) << 4) -
                        32;
          const float dl = d * static_cast<float>(static_cast<int8_t>(b[192 + s]));
          out[e] = dl * static_cast<float>(q);
        }
        break;
      }
      case QuantType::kQ2_K: {
        PutHalf(b + 80, 0.1f * scale(rng));
        PutHalf(b + 82, -0.1f * minimum(rng));
        const float d = GetHalf(b + 80), dmin = GetHalf(b + 82);
        for (int e = 0; e < 256; ++e) {
          const int s = e / 16, h = e / 128, r = e % 128, j = e % 32;
          const int q = (b[16 + 32 * h + j] >> (2 * (r / 32))) & 3;
          const float dl = d * static_cast<float>(b[s] & 15);
          const float ml = dmin * static_cast<float>(b[s] >> 4);
          const float dq = dl * static_cast<float>(q);
          out[e] = dq - ml;
        }
        break;
      }
      case QuantType::kQ3_K: {
        PutHalf(b + 108, 0.1f * scale(rng));
        const float d = GetHalf(b + 108);
        const uint8_t* sc = b + 96;
        for (int e = 0; e < 256; ++e) {
          const int s = e / 16, h = e / 128, r = e % 128, j = e % 32;
          const int scale6 =
              (((sc[s % 8] >> (4 * (s / 8))) & 15) | ((sc[8 + s % 4] >> (2 * (s / 4))) & 3) << 4) -
              32;
          const int q = ((b[32 + 32 * h + j] >> (2 * (r / 32))) & 3) -
                        (((b[j] >> (e / 32)) & 1) != 0 ? 0 : 4);
          const float dl = d * static_cast<float>(scale6);
          out[e] = dl * static_cast<float>(q);
        }
        break;
      }
      case QuantType::kIQ4_NL:
      case QuantType::kIQ4_XS: {
        static constexpr int kValues[16] = {-127, -104, -83, -65, -49, -35, -22, -10,
                                            1,    13,   25,  38,  53,  69,  89,  113};
        const bool xs = quant == QuantType::kIQ4_XS;
        PutHalf(b, (xs ? 0.05f : 1.0f) * scale(rng) / 16.0f);
        const float d = GetHalf(b);
        for (int e = 0; e < elems; ++e) {
          const int s = e / 32, j = e % 32;
          const uint8_t* qs = b + (xs ? 8 + 16 * s : 2);
          const int code = j < 16 ? qs[j] & 15 : qs[j - 16] >> 4;
          float dl = d;
          if (xs) {
            const int ls =
                ((b[4 + s / 2] >> (4 * (s % 2))) & 15) | (((b[2] | b[3] << 8) >> (2 * s)) & 3) << 4;
            dl = d * static_cast<float>(ls - 32);
          }
          out[e] = dl * static_cast<float>(kValues[code]);
        }
        break;
      }
      case QuantType::kNone:
        break;
    }
  }
  return w;
}

std::string FormatName(const HostWeight& w) {
  if (w.quant != QuantType::kNone) return QuantTypeName(w.quant);
  return std::string(DTypeName(w.dtype));
}

// ---- Device memory of one run

// One run's device memory on one backend: inputs copied in, outputs copied back after
// Synchronize, everything freed when it goes.
class Mem {
 public:
  explicit Mem(Backend& be) : be_(be) {}
  ~Mem() {
    for (auto [p, bytes] : owned_) be_.Free(p, bytes);
  }
  Mem(const Mem&) = delete;
  Mem& operator=(const Mem&) = delete;

  template <typename T>
  T* Zeros(int64_t n) {
    const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
    absl::StatusOr<void*> p = be_.Allocate(bytes);
    if (!p.ok()) throw std::runtime_error(p.status().ToString());
    owned_.emplace_back(*p, bytes);
    return static_cast<T*>(*p);
  }
  template <typename T>
  T* In(const std::vector<T>& host) {
    T* p = Zeros<T>(static_cast<int64_t>(host.size()));
    be_.CopyToDevice(host.data(), static_cast<int64_t>(host.size() * sizeof(T)), p);
    return p;
  }
  template <typename T>
  std::vector<T> Get(const T* p, int64_t n) {
    const absl::Status status = be_.Synchronize();
    EXPECT_TRUE(status.ok()) << status;
    std::vector<T> host(n);
    be_.CopyToHost(p, n * static_cast<int64_t>(sizeof(T)), host.data());
    return host;
  }
  WeightMatrix Matrix(const HostWeight& w,
                      MatMulPrecision precision = MatMulPrecision::kExact) const {
    absl::StatusOr<WeightMatrix> m = be_.UploadMatrix(w.Matrix(precision));
    if (!m.ok()) throw std::runtime_error(m.status().ToString());
    return *m;
  }
  WeightVector Vector(const HostWeight& w) const {
    absl::StatusOr<WeightVector> v = be_.UploadVector(w.Vector());
    if (!v.ok()) throw std::runtime_error(v.status().ToString());
    return *v;
  }

 private:
  Backend& be_;
  std::vector<std::pair<void*, int64_t>> owned_;
};

// ---- The fixture

// A backend under test: a device, or the CUDA backend on the CPU emulation.
struct Target {
  Device device;
  bool emulated;
};
void PrintTo(const Target& t, std::ostream* os) {
  *os << DeviceName(t.device) << (t.emulated ? "_emu" : "");
}

class BackendOpsTest : public ::testing::TestWithParam<Target> {
 protected:
  void SetUp() override {
    const Target target = GetParam();
    absl::StatusOr<std::unique_ptr<Backend>> be =
        target.emulated ? cuda::CreateCudaBackend({.num_threads = 2})
                        : CreateBackend(target.device, {.num_threads = 2});
    if (!be.ok()) {
      if (target.device == Device::kCpu || target.emulated) {
        FAIL() << "this backend is always built: " << be.status();
      }
      GTEST_SKIP() << "no " << DeviceName(target.device) << " backend here: " << be.status();
    }
    backend_ = *std::move(be);
    ASSERT_EQ(backend_->device(), target.device) << backend_->description();
    absl::StatusOr<std::unique_ptr<Backend>> cpu = CreateBackend(Device::kCpu, {.num_threads = 2});
    ASSERT_TRUE(cpu.ok()) << cpu.status();
    oracle_ = *std::move(cpu);
  }

  bool on_cpu() const { return GetParam().device == Device::kCpu; }

  // op(backend, mem) places its inputs, runs the op and fetches its outputs, on `be`.
  template <typename Op>
  static auto RunOn(Backend& be, const Op& op) {
    Mem mem(be);
    be.BeginStep();
    return op(be, mem);
  }
  // {under test, CPU oracle}.
  template <typename Op>
  auto RunBoth(const Op& op) {
    auto got = RunOn(*backend_, op);
    auto oracle = RunOn(*oracle_, op);
    return std::pair(std::move(got), std::move(oracle));
  }

  // `got` (the backend under test) against the reference `want` and against `oracle` (the
  // CPU backend's result; null: none to compare with).
  void ExpectOp(std::string_view what, const std::vector<float>& got,
                const std::vector<float>* oracle, const Expected& want, Tol tol) const {
    const double ref_tol = on_cpu() ? tol.ref : std::max(tol.ref, tol.cross);
    EXPECT_TRUE(Within(got, want.value, want.scale, ref_tol))
        << what << " on " << backend_->description() << " vs the double-precision reference";
    if (oracle == nullptr) return;
    if (on_cpu() || tol.cross == 0.0) {
      EXPECT_TRUE(SameBits(got, *oracle)) << what << " vs the CPU oracle (bit for bit)";
    } else {
      std::vector<double> o(oracle->begin(), oracle->end());
      EXPECT_TRUE(Within(got, o, want.scale, tol.cross)) << what << " vs the CPU oracle";
    }
  }
  void ExpectOp(std::string_view what, const std::vector<float>& got,
                const std::vector<float>& oracle, const Expected& want, Tol tol) const {
    ExpectOp(what, got, &oracle, want, tol);
  }
  // Integer (or raw) results: exact, on every backend.
  template <typename T>
  void ExpectSame(std::string_view what, const std::vector<T>& got, const std::vector<T>& oracle,
                  const std::vector<T>& want) const {
    EXPECT_TRUE(SameBits(got, want)) << what << " vs the reference";
    EXPECT_TRUE(SameBits(got, oracle)) << what << " vs the CPU oracle";
  }

  void CheckMatMul(const HostWeight& w, const HostWeight& bias, MatMulPrecision precision, Tol tol);
  void CheckPagedAttention(DType kv_dtype, Tol tol, float softcap = 0.0f, int32_t window = 0);
  void CheckMoeRoute(RouterScoring scoring, const std::vector<float>& logits, int64_t tokens,
                     int32_t experts, std::vector<int32_t> top_ks);

  std::mt19937 rng_{kSeed};
  std::unique_ptr<Backend> backend_;
  std::unique_ptr<Backend> oracle_;
};

// ---- Memory

TEST_P(BackendOpsTest, AllocateCopyRoundTrip) {
  // The last two sizes take the CPU backend's huge-page path (2 MiB and more: a longer
  // mapping trimmed to a 2 MiB boundary), which the full-length copies below read and write
  // end to end.
  constexpr int64_t kHugePage = int64_t{2} << 20;
  for (int64_t bytes :
       {int64_t{1}, int64_t{100}, int64_t{4099}, int64_t{1} << 20, kHugePage, kHugePage + 4099}) {
    SCOPED_TRACE(bytes);
    absl::StatusOr<void*> p = backend_->Allocate(bytes);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_NE(*p, nullptr);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % 64, 0u) << "aligned to at least 64 bytes";
    if (on_cpu() && bytes >= kHugePage) {
      EXPECT_EQ(reinterpret_cast<uintptr_t>(*p) % kHugePage, 0u) << "on a 2 MiB boundary";
    }
    std::vector<uint8_t> back(bytes, 0xAB);
    backend_->CopyToHost(*p, bytes, back.data());
    EXPECT_TRUE(std::all_of(back.begin(), back.end(), [](uint8_t b) { return b == 0; }))
        << "fresh memory is zeroed";

    std::vector<uint8_t> want(bytes);
    std::uniform_int_distribution<int> byte(0, 255);
    for (uint8_t& b : want) b = static_cast<uint8_t>(byte(rng_));
    backend_->CopyToDevice(want.data(), bytes, *p);
    if (bytes > 40) {  // a copy into the middle, at an odd offset
      std::vector<uint8_t> patch(23, 0x5C);
      backend_->CopyToDevice(patch.data(), 23, static_cast<uint8_t*>(*p) + 7);
      std::copy(patch.begin(), patch.end(), want.begin() + 7);
    }
    ASSERT_TRUE(backend_->Synchronize().ok());
    backend_->CopyToHost(*p, bytes, back.data());
    EXPECT_TRUE(SameBits(back, want));
    if (bytes > 40) {  // a copy out of the middle
      std::vector<uint8_t> part(31);
      backend_->CopyToHost(static_cast<const uint8_t*>(*p) + 5, 31, part.data());
      EXPECT_TRUE(SameBits(part, std::vector<uint8_t>(want.begin() + 5, want.begin() + 36)));
    }
    backend_->Free(*p, bytes);
  }
}

TEST_P(BackendOpsTest, AllocateTooMuchIsResourceExhaustedNamingTheSize) {
  const int64_t bytes = int64_t{1} << 60;
  absl::StatusOr<void*> p = backend_->Allocate(bytes);
  ASSERT_FALSE(p.ok());
  EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted) << p.status();
  EXPECT_NE(p.status().message().find(std::to_string(bytes)), std::string_view::npos) << p.status();
}

// Every weight format through UploadMatrix: the view keeps its shape and format, and the
// values read through it are the host's, exactly (every row by EmbeddingLookup; every column
// by MatMul with one-hot rows, whose products and sums are exact).
TEST_P(BackendOpsTest, UploadMatrix) {
  const int64_t rows = 11, cols = 64;
  std::vector<HostWeight> weights;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    weights.push_back(MakeDense(rng_, rows, cols, dt));
  }
  for (QuantType q : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_1}) {
    weights.push_back(MakeQuant(rng_, rows, cols, q));
  }
  std::vector<int32_t> ids(rows);
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng_);
  std::vector<float> one_hot(cols * cols, 0.0f);
  for (int64_t i = 0; i < cols; ++i) one_hot[i * cols + i] = 1.0f;

  for (const HostWeight& w : weights) {
    SCOPED_TRACE(FormatName(w));
    {
      Mem mem(*backend_);
      const WeightMatrix up = mem.Matrix(w);
      EXPECT_EQ(up.rows, rows);
      EXPECT_EQ(up.cols, cols);
      if (w.quant == QuantType::kNone) {
        EXPECT_EQ(up.quant, QuantType::kNone);
        EXPECT_EQ(up.dtype, w.dtype);
      } else if (on_cpu()) {
        EXPECT_EQ(up.quant, w.quant);
      } else {
        // A device may keep the blocks or dequantize them once, to their exact f32 values
        // (the values are checked below).
        EXPECT_TRUE(up.quant == w.quant ||
                    (up.quant == QuantType::kNone && up.dtype == DType::kF32));
      }
      EXPECT_EQ(up.precision, MatMulPrecision::kExact);
    }
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      const WeightMatrix m = mem.Matrix(w);
      float* table_rows = mem.Zeros<float>(rows * cols);
      be.EmbeddingLookup(m, mem.In(ids), rows, table_rows);
      float* columns = mem.Zeros<float>(cols * rows);
      be.MatMul(mem.In(one_hot), cols, m, nullptr, columns);
      return std::pair(mem.Get(table_rows, rows * cols), mem.Get(columns, cols * rows));
    });
    Expected by_row, by_col;
    for (int32_t id : ids) {
      for (int64_t c = 0; c < cols; ++c) by_row.Push(w.at(id, c));
    }
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < rows; ++r) by_col.Push(w.at(r, c));
    }
    ExpectOp("rows by EmbeddingLookup", got.first, oracle.first, by_row, kExact);
    ExpectOp("columns by MatMul", got.second, oracle.second, by_col, kSameValue);
  }
}

// Every vector dtype through UploadVector, read back as MatMul's bias over zero activations.
TEST_P(BackendOpsTest, UploadVector) {
  const int64_t n = 37, k = 16, m = 2;
  const HostWeight w = MakeDense(rng_, n, k, DType::kF32);
  const std::vector<float> zeros(m * k, 0.0f);
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    SCOPED_TRACE(DTypeName(dt));
    const HostWeight bias = MakeDense(rng_, 1, n, dt);
    {
      Mem mem(*backend_);
      const WeightVector up = mem.Vector(bias);
      EXPECT_EQ(up.size, n);
      EXPECT_EQ(up.dtype, dt);
    }
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      const WeightVector b = mem.Vector(bias);
      float* y = mem.Zeros<float>(m * n);
      be.MatMul(mem.In(zeros), m, mem.Matrix(w), &b, y);
      return mem.Get(y, m * n);
    });
    Expected want;
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < n; ++r) want.Push(bias.values[r]);
    }
    ExpectOp("bias read back", got, oracle, want, kExact);
  }
}

// ---- MatMul

// y = x·Wᵀ (+ bias) for m = 1, 5, 17 (the m = 1 and m = 5 inputs are the first rows of the
// m = 17 one, so batch invariance is checked too: their rows must be the same bits).
void BackendOpsTest::CheckMatMul(const HostWeight& w, const HostWeight& bias,
                                 MatMulPrecision precision, Tol tol) {
  const int64_t n = w.rows, k = w.cols;
  const bool bf16_dot = precision == MatMulPrecision::kBf16Dot;
  const std::vector<float> x17 = Uniform(rng_, 17 * k);
  for (bool with_bias : {false, true}) {
    std::vector<std::vector<float>> by_m;
    for (int64_t m : {1, 5, 17}) {
      SCOPED_TRACE(::testing::Message() << FormatName(w) << (bf16_dot ? " bf16-dot" : "")
                                        << " m=" << m << (with_bias ? " with bias" : ""));
      const std::vector<float> x(x17.begin(), x17.begin() + m * k);
      const auto run = [&](Backend& be, Mem& mem) {
        float* y = mem.Zeros<float>(m * n);
        WeightVector b;
        if (with_bias) b = mem.Vector(bias);
        be.MatMul(mem.In(x), m, mem.Matrix(w, precision), with_bias ? &b : nullptr, y);
        return mem.Get(y, m * n);
      };
      const std::vector<float> got = RunOn(*backend_, run);
      std::vector<float> oracle;
      const bool have_oracle = !bf16_dot || oracle_->SupportsBf16Dot();
      if (have_oracle) oracle = RunOn(*oracle_, run);

      Expected want;
      for (int64_t i = 0; i < m; ++i) {
        for (int64_t r = 0; r < n; ++r) {
          double sum = 0.0, mag = 0.0;
          for (int64_t c = 0; c < k; ++c) {
            // kBf16Dot rounds the activations to bf16; the products are exact either way.
            const float xv = bf16_dot ? RoundToBf16(x[i * k + c]) : x[i * k + c];
            const double p = static_cast<double>(xv) * w.at(r, c);
            sum += p;
            mag += std::abs(p);
          }
          if (with_bias) {
            sum += bias.values[r];
            mag += std::abs(bias.values[r]);
          }
          want.Push(sum, mag);
        }
      }
      ExpectOp("MatMul", got, have_oracle ? &oracle : nullptr, want, tol);
      by_m.push_back(got);
    }
    const std::vector<float>& all = by_m[2];
    EXPECT_TRUE(SameBits(by_m[0], std::vector<float>(all.begin(), all.begin() + n)))
        << "batch invariance: m=1 vs the first row of m=17";
    EXPECT_TRUE(SameBits(by_m[1], std::vector<float>(all.begin(), all.begin() + 5 * n)))
        << "batch invariance: m=5 vs the first rows of m=17";
  }
}

// Dense weights: n = 37, k = 70 (neither a multiple of a SIMD width); quantized: k = 96.
TEST_P(BackendOpsTest, MatMulF32) {
  const HostWeight w = MakeDense(rng_, 37, 70, DType::kF32);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF32), MatMulPrecision::kExact, kF32);
}

TEST_P(BackendOpsTest, MatMulBf16Weights) {
  const HostWeight w = MakeDense(rng_, 37, 70, DType::kBF16);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kBF16), MatMulPrecision::kExact, kF32);
}

TEST_P(BackendOpsTest, MatMulF16Weights) {
  const HostWeight w = MakeDense(rng_, 37, 70, DType::kF16);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF16), MatMulPrecision::kExact, kF32);
}

TEST_P(BackendOpsTest, MatMulQ8_0) {
  const HostWeight w = MakeQuant(rng_, 37, 96, QuantType::kQ8_0);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF32), MatMulPrecision::kExact, kF32);
}

TEST_P(BackendOpsTest, MatMulQ4_0) {
  const HostWeight w = MakeQuant(rng_, 37, 96, QuantType::kQ4_0);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF32), MatMulPrecision::kExact, kF32);
}

TEST_P(BackendOpsTest, MatMulQ4_1) {
  const HostWeight w = MakeQuant(rng_, 37, 96, QuantType::kQ4_1);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF32), MatMulPrecision::kExact, kF32);
}

// Q5_0, Q5_1, the K-quants and IQ4_NL / IQ4_XS: MatMul and EmbeddingLookup compute with
// exactly the dequantized values (a device may dequantize them once at upload).
TEST_P(BackendOpsTest, MatMulAndEmbeddingOnQ5AndKQuants) {
  for (QuantType q :
       {QuantType::kQ5_0, QuantType::kQ5_1, QuantType::kQ2_K, QuantType::kQ3_K, QuantType::kQ4_K,
        QuantType::kQ5_K, QuantType::kQ6_K, QuantType::kIQ4_NL, QuantType::kIQ4_XS}) {
    const HostWeight w = MakeQuant(rng_, 37, QuantBlockElems(q) == 256 ? 512 : 96, q);
    SCOPED_TRACE(FormatName(w));
    CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kF32), MatMulPrecision::kExact, kF32);
    const std::vector<int32_t> ids = {3, 0, 36, 3, 7};
    const int64_t n = static_cast<int64_t>(ids.size()), dim = w.cols;
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* out = mem.Zeros<float>(n * dim);
      be.EmbeddingLookup(mem.Matrix(w), mem.In(ids), n, out);
      return mem.Get(out, n * dim);
    });
    Expected want;
    for (int32_t id : ids) {
      for (int64_t c = 0; c < dim; ++c) want.Push(w.at(id, c));
    }
    ExpectOp("EmbeddingLookup", got, oracle, want, kExact);
  }
}

TEST_P(BackendOpsTest, MatMulBf16Dot) {
  if (!backend_->SupportsBf16Dot()) {
    GTEST_SKIP() << backend_->description() << " has no bf16 dot products";
  }
  const HostWeight w = MakeDense(rng_, 37, 70, DType::kBF16);
  CheckMatMul(w, MakeDense(rng_, 1, 37, DType::kBF16), MatMulPrecision::kBf16Dot, kBf16);
}

// MatMulShared (Q, K and V; gate and up): every output bit for bit as MatMul gives it, for
// matrices that all multiply exactly, that all take the integer kernels (formats of
// different offsets and Q6_K's halves in one call), and a mix of paths; m from decode sizes
// to a prefill tile.
TEST_P(BackendOpsTest, MatMulSharedGivesEachMatMulsBits) {
  using Weights = std::vector<std::pair<HostWeight, MatMulPrecision>>;
  const int64_t k = 256;
  const MatMulPrecision exact = MatMulPrecision::kExact, int8 = MatMulPrecision::kInt8Dot;
  std::vector<std::pair<std::string, Weights>> cases;
  cases.push_back({"exact",
                   {{MakeDense(rng_, 37, k, DType::kF32), exact},
                    {MakeDense(rng_, 24, k, DType::kBF16), exact},
                    {MakeQuant(rng_, 16, k, QuantType::kQ4_K), exact},
                    {MakeQuant(rng_, 40, k, QuantType::kQ5_0), exact}}});
  if (backend_->SupportsInt8Dot()) {
    cases.push_back({"int8",
                     {{MakeQuant(rng_, 40, k, QuantType::kQ8_0), int8},
                      {MakeQuant(rng_, 24, k, QuantType::kQ6_K), int8},
                      {MakeQuant(rng_, 37, k, QuantType::kIQ4_NL), int8},
                      {MakeQuant(rng_, 16, k, QuantType::kQ4_K), int8}}});
    cases.push_back({"int8 and exact",
                     {{MakeQuant(rng_, 40, k, QuantType::kQ8_0), int8},
                      {MakeDense(rng_, 24, k, DType::kF32), exact}}});
  }
  const std::vector<float> x40 = Uniform(rng_, 40 * k);
  for (const auto& [name, weights] : cases) {
    std::vector<HostWeight> biases;
    for (const auto& [w, precision] : weights) {
      biases.push_back(MakeDense(rng_, 1, w.rows, DType::kF32));
    }
    for (int64_t m : {1, 3, 5, 17, 40}) {
      SCOPED_TRACE(::testing::Message() << name << " m=" << m);
      const std::vector<float> x(x40.begin(), x40.begin() + m * k);
      // Both on the backend under test, the outputs concatenated.
      const auto run = [&](bool shared) {
        return RunOn(*backend_, [&](Backend& be, Mem& mem) {
          std::vector<WeightMatrix> ws;
          std::vector<WeightVector> bs;
          std::vector<float*> ys;
          for (size_t i = 0; i < weights.size(); ++i) {
            ws.push_back(mem.Matrix(weights[i].first, weights[i].second));
            bs.push_back(mem.Vector(biases[i]));
            ys.push_back(mem.Zeros<float>(m * weights[i].first.rows));
          }
          const float* xd = mem.In(x);
          std::vector<MatMulOutput> outs;
          for (size_t i = 0; i < weights.size(); ++i) {
            const WeightVector* b = i == 0 ? nullptr : &bs[i];  // the first without a bias
            outs.push_back({&ws[i], b, ys[i]});
          }
          if (shared) {
            be.MatMulShared(xd, m, outs.data(), static_cast<int32_t>(outs.size()));
          } else {
            for (const MatMulOutput& o : outs) be.MatMul(xd, m, *o.w, o.bias, o.y);
          }
          std::vector<float> all;
          for (size_t i = 0; i < weights.size(); ++i) {
            const std::vector<float> y = mem.Get(ys[i], m * weights[i].first.rows);
            all.insert(all.end(), y.begin(), y.end());
          }
          return all;
        });
      };
      EXPECT_TRUE(SameBits(run(true), run(false))) << "MatMulShared vs one MatMul each";
    }
  }
}

// ---- Embedding, norms, RoPE

TEST_P(BackendOpsTest, EmbeddingLookup) {
  std::vector<HostWeight> tables;
  for (DType dt : {DType::kF32, DType::kBF16, DType::kF16}) {
    tables.push_back(MakeDense(rng_, 13, 70, dt));
  }
  for (QuantType q : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_1}) {
    tables.push_back(MakeQuant(rng_, 13, 64, q));
  }
  const std::vector<int32_t> ids = {3, 0, 12, 3, 7, 1};  // out of order, repeated, both ends
  const int64_t n = static_cast<int64_t>(ids.size());
  for (const HostWeight& table : tables) {
    SCOPED_TRACE(FormatName(table));
    const int64_t dim = table.cols;
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* out = mem.Zeros<float>(n * dim);
      be.EmbeddingLookup(mem.Matrix(table), mem.In(ids), n, out);
      return mem.Get(out, n * dim);
    });
    Expected want;
    for (int32_t id : ids) {
      for (int64_t c = 0; c < dim; ++c) want.Push(table.at(id, c));
    }
    ExpectOp("EmbeddingLookup", got, oracle, want, kExact);
  }
}

// Rows of very different magnitudes (the third one small enough for eps to matter).
std::vector<float> NormInput(std::mt19937& rng, int64_t tokens, int64_t dim) {
  std::vector<float> x = Uniform(rng, tokens * dim, -2.0f, 2.0f);
  const float row_scale[] = {1.0f, 100.0f, 1e-3f, 0.5f};
  for (int64_t t = 0; t < tokens; ++t) {
    for (int64_t c = 0; c < dim; ++c) x[t * dim + c] *= row_scale[t % 4];
  }
  for (int64_t c = 0; c < dim; ++c) x[3 * dim + c] += 3.0f;  // a mean far from 0
  return x;
}

TEST_P(BackendOpsTest, RmsNorm) {
  const int64_t tokens = 4, dim = 75, n = tokens * dim;
  const float eps = 1e-6f;
  const std::vector<float> x = NormInput(rng_, tokens, dim);
  for (DType dt : {DType::kF32, DType::kBF16}) {
    SCOPED_TRACE(DTypeName(dt));
    const HostWeight gain = MakeDense(rng_, 1, dim, dt, 0.5f, 1.5f);
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* in = mem.In(x);
      float* out = mem.Zeros<float>(n);
      const WeightVector g = mem.Vector(gain);
      be.RmsNorm(in, tokens, dim, g, eps, out);
      be.RmsNorm(in, tokens, dim, g, eps, in);  // in place
      return std::pair(mem.Get(out, n), mem.Get(in, n));
    });
    Expected want;
    for (int64_t t = 0; t < tokens; ++t) {
      double ms = 0.0;
      for (int64_t c = 0; c < dim; ++c) ms += static_cast<double>(x[t * dim + c]) * x[t * dim + c];
      const double inv = 1.0 / std::sqrt(ms / dim + static_cast<double>(eps));
      for (int64_t c = 0; c < dim; ++c) want.Push(x[t * dim + c] * inv * gain.values[c]);
    }
    ExpectOp("RmsNorm", got.first, oracle.first, want, kF32);
    EXPECT_TRUE(SameBits(got.second, got.first)) << "RmsNorm in place vs out of place";
  }
}

TEST_P(BackendOpsTest, LayerNorm) {
  const int64_t tokens = 4, dim = 75, n = tokens * dim;
  const float eps = 1e-5f;
  const std::vector<float> x = NormInput(rng_, tokens, dim);
  struct Case {
    DType dtype;
    bool with_bias;
  };
  for (Case cs : {Case{DType::kF32, true}, Case{DType::kF32, false}, Case{DType::kBF16, true}}) {
    SCOPED_TRACE(::testing::Message() << DTypeName(cs.dtype) << (cs.with_bias ? " with bias" : ""));
    const HostWeight gain = MakeDense(rng_, 1, dim, cs.dtype, 0.5f, 1.5f);
    const HostWeight bias = MakeDense(rng_, 1, dim, cs.dtype, -1.0f, 1.0f);
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* in = mem.In(x);
      float* out = mem.Zeros<float>(n);
      const WeightVector g = mem.Vector(gain);
      WeightVector b;
      if (cs.with_bias) b = mem.Vector(bias);
      const WeightVector* bp = cs.with_bias ? &b : nullptr;
      be.LayerNorm(in, tokens, dim, g, bp, eps, out);
      be.LayerNorm(in, tokens, dim, g, bp, eps, in);  // in place
      return std::pair(mem.Get(out, n), mem.Get(in, n));
    });
    Expected want;
    for (int64_t t = 0; t < tokens; ++t) {
      const float* xt = &x[t * dim];
      double mean = 0.0, var = 0.0;
      for (int64_t c = 0; c < dim; ++c) mean += xt[c];
      mean /= dim;
      for (int64_t c = 0; c < dim; ++c) var += (xt[c] - mean) * (xt[c] - mean);
      const double inv = 1.0 / std::sqrt(var / dim + static_cast<double>(eps));
      for (int64_t c = 0; c < dim; ++c) {
        const double b = cs.with_bias ? bias.values[c] : 0.0;
        // x - mean cancels: its error scales with |x| + |mean|.
        want.Push(
            (xt[c] - mean) * inv * gain.values[c] + b,
            (std::abs(xt[c]) + std::abs(mean)) * inv * std::abs(gain.values[c]) + std::abs(b));
      }
    }
    ExpectOp("LayerNorm", got.first, oracle.first, want, kF32);
    EXPECT_TRUE(SameBits(got.second, got.first)) << "LayerNorm in place vs out of place";
  }
}

// angle = pos / factor · theta^(-2i/d); its error in f32 grows with its size.
double RopeAngle(int64_t pos, int64_t i, int64_t head_dim, double theta, double factor) {
  return static_cast<double>(pos) / factor *
         std::pow(theta, -2.0 * static_cast<double>(i) / static_cast<double>(head_dim));
}

// The scaled inverse frequency in double, straight from the formulas (transformers'
// _compute_llama3_parameters, _compute_yarn_parameters and _compute_dynamic_ntk_parameters,
// without the f32 steps), for table row `row`.
double ScaledInvFreq(int64_t i, int64_t head_dim, double theta, const RopeScaling& s, int64_t row) {
  constexpr double kPi = 3.14159265358979323846;
  const double d = static_cast<double>(head_dim);
  const double inv = std::pow(theta, -2.0 * static_cast<double>(i) / d);
  switch (s.type) {
    case RopeScalingType::kDynamic: {
      const double length =
          static_cast<double>(s.dynamic_length > 0 ? s.dynamic_length : s.first_position + row + 1);
      if (length <= s.context_length) return inv;
      const double base =
          theta * std::pow(s.factor * length / s.context_length - (s.factor - 1), d / (d - 2));
      return std::pow(base, -2.0 * static_cast<double>(i) / d);
    }
    case RopeScalingType::kLongRope: {
      const double length =
          static_cast<double>(s.dynamic_length > 0 ? s.dynamic_length : s.first_position + row + 1);
      return inv / (length > s.context_length ? s.long_factor[i] : s.short_factor[i]);
    }
    case RopeScalingType::kNone:
    case RopeScalingType::kLinear:
      return inv;
    case RopeScalingType::kLlama3: {
      const double wavelen = 2 * kPi / inv;
      if (wavelen < s.context_length / s.high_freq_factor) return inv;
      if (wavelen > s.context_length / s.low_freq_factor) return inv / s.factor;
      const double smooth = (s.context_length / wavelen - s.low_freq_factor) /
                            (s.high_freq_factor - s.low_freq_factor);
      return (1 - smooth) * inv / s.factor + smooth * inv;
    }
    case RopeScalingType::kYarn: {
      auto dim_of = [&](double rotations) {
        return d * std::log(s.context_length / (rotations * 2 * kPi)) / (2 * std::log(theta));
      };
      const double low = std::max(std::floor(dim_of(s.beta_fast)), 0.0);
      double high = std::min(std::ceil(dim_of(s.beta_slow)), d - 1);
      if (high == low) high += 0.001;
      const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
      return inv / s.factor * ramp + inv * (1 - ramp);
    }
    case RopeScalingType::kFreqDivisors:
      return inv / s.freq_divisors[i];
  }
  return inv;
}

TEST_P(BackendOpsTest, RopeTables) {
  struct Case {
    int64_t head_dim, max_positions;
    double theta;
    RopeScaling scaling;
  };
  RopeScaling linear4{.type = RopeScalingType::kLinear, .factor = 4.0};
  RopeScaling linear25{.type = RopeScalingType::kLinear, .factor = 2.5};
  // Llama 3.1's parameters with an original context short enough that the table crosses it
  // and the three bands (kept, smoothed, divided) all hold frequencies.
  RopeScaling llama3{.type = RopeScalingType::kLlama3,
                     .factor = 8.0,
                     .low_freq_factor = 1.0,
                     .high_freq_factor = 4.0,
                     .context_length = 64.0};
  RopeScaling yarn{.type = RopeScalingType::kYarn,
                   .factor = 4.0,
                   .context_length = 256.0,
                   .attention_factor = 0.1 * std::log(4.0) + 1.0};
  RopeScaling yarn_betas = yarn;
  yarn_betas.beta_fast = 8.0;
  yarn_betas.beta_slow = 2.0;
  yarn_betas.attention_factor = 1.25;
  const std::vector<float> divisors = {1.0f, 1.5f, 3.0f, 8.0f, 8.0f, 2.0f, 1.0f, 5.5f};
  RopeScaling by_divisors{.type = RopeScalingType::kFreqDivisors, .freq_divisors = divisors.data()};
  // Dynamic NTK: row by row past the context of 32 (a decoded token at each position), and a
  // slice of the prompt rows of a 150-token forward (every row rotated for that length).
  RopeScaling dynamic{.type = RopeScalingType::kDynamic, .factor = 4.0, .context_length = 32.0};
  RopeScaling dynamic_prompt{.type = RopeScalingType::kDynamic,
                             .factor = 2.0,
                             .context_length = 64.0,
                             .dynamic_length = 150,
                             .first_position = 80};
  // LongRoPE: short factors up to the context of 32, long ones past it (a decoded token at
  // each position), and the prompt rows of a 40-token forward (long factors throughout).
  const std::vector<float> short_factor = {1.0f, 1.1f, 1.25f, 1.5f, 1.75f, 2.0f, 2.5f, 3.0f};
  const std::vector<float> long_factor = {1.0f, 1.5f, 2.5f, 4.0f, 6.5f, 9.0f, 12.0f, 16.0f};
  RopeScaling longrope{.type = RopeScalingType::kLongRope,
                       .context_length = 32.0,
                       .attention_factor = std::sqrt(1 + std::log(4.0) / std::log(32.0)),
                       .short_factor = short_factor.data(),
                       .long_factor = long_factor.data()};
  RopeScaling longrope_prompt = longrope;
  longrope_prompt.dynamic_length = 40;
  longrope_prompt.first_position = 3;
  for (Case cs : {Case{16, 100, 10000.0, {}}, Case{24, 64, 1e6, linear4},
                  Case{64, 33, 500.0, linear25}, Case{32, 300, 10000.0, llama3},
                  Case{128, 80, 500000.0, llama3}, Case{32, 300, 10000.0, yarn},
                  Case{64, 200, 1e6, yarn_betas}, Case{16, 50, 10000.0, by_divisors},
                  Case{16, 100, 10000.0, dynamic}, Case{64, 50, 1e6, dynamic_prompt},
                  Case{16, 80, 10000.0, longrope}, Case{16, 30, 10000.0, longrope_prompt}}) {
    const RopeScaling& sc = cs.scaling;
    SCOPED_TRACE(::testing::Message()
                 << "head_dim " << cs.head_dim << " theta " << cs.theta << " scaling "
                 << static_cast<int>(sc.type) << " factor " << sc.factor);
    const int64_t half = cs.head_dim / 2, n = cs.max_positions * half;
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* cos_table = mem.Zeros<float>(n);
      float* sin_table = mem.Zeros<float>(n);
      be.RopeTables(cs.max_positions, cs.head_dim, cs.theta, sc, cos_table, sin_table);
      return std::pair(mem.Get(cos_table, n), mem.Get(sin_table, n));
    });
    const bool linear = sc.type == RopeScalingType::kLinear;
    Expected want_cos, want_sin;
    for (int64_t pos = 0; pos < cs.max_positions; ++pos) {
      for (int64_t i = 0; i < half; ++i) {
        const double a = static_cast<double>(sc.first_position + pos) / (linear ? sc.factor : 1.0) *
                         ScaledInvFreq(i, cs.head_dim, cs.theta, sc, pos);
        want_cos.Push(std::cos(a) * sc.attention_factor, (1.0 + a) * sc.attention_factor);
        want_sin.Push(std::sin(a) * sc.attention_factor, (1.0 + a) * sc.attention_factor);
      }
    }
    ExpectOp("RopeTables cos", got.first, oracle.first, want_cos, kF32);
    ExpectOp("RopeTables sin", got.second, oracle.second, want_sin, kF32);
  }
}

TEST_P(BackendOpsTest, ApplyRope) {
  const int64_t tokens = 5, heads = 3, head_dim = 24, half = head_dim / 2, positions_max = 64;
  std::vector<float> cos_table(positions_max * half), sin_table(positions_max * half);
  for (int64_t pos = 0; pos < positions_max; ++pos) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = RopeAngle(pos, i, head_dim, 10000.0, 1.0);
      cos_table[pos * half + i] = static_cast<float>(std::cos(a));
      sin_table[pos * half + i] = static_cast<float>(std::sin(a));
    }
  }
  const std::vector<int32_t> positions = {5, 0, 63, 5, 17};  // out of order, repeated
  const int64_t n = tokens * heads * head_dim;
  const std::vector<float> x = Uniform(rng_, n, -3.0f, 3.0f);
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    float* xd = mem.In(x);
    be.ApplyRope(xd, tokens, heads, head_dim, mem.In(positions), mem.In(cos_table),
                 mem.In(sin_table));
    return mem.Get(xd, n);
  });
  Expected want;
  for (int64_t t = 0; t < tokens; ++t) {
    const float* c = &cos_table[positions[t] * half];
    const float* s = &sin_table[positions[t] * half];
    for (int64_t h = 0; h < heads; ++h) {
      const float* x1 = &x[(t * heads + h) * head_dim];
      const float* x2 = x1 + half;
      for (int64_t i = 0; i < half; ++i) {  // first halves
        want.Push(static_cast<double>(x1[i]) * c[i] - static_cast<double>(x2[i]) * s[i],
                  std::abs(x1[i] * c[i]) + std::abs(x2[i] * s[i]));
      }
      for (int64_t i = 0; i < half; ++i) {  // second halves
        want.Push(static_cast<double>(x2[i]) * c[i] + static_cast<double>(x1[i]) * s[i],
                  std::abs(x2[i] * c[i]) + std::abs(x1[i] * s[i]));
      }
    }
  }
  ExpectOp("ApplyRope", got, oracle, want, kF32);
}

// ---- Element-wise

TEST_P(BackendOpsTest, SiluMul) {
  const int64_t n = 203;  // not a multiple of a SIMD width
  std::vector<float> gate = Uniform(rng_, n, -10.0f, 10.0f);
  gate[0] = 0.0f;
  gate[1] = -30.0f;
  gate[2] = 30.0f;
  const std::vector<float> up = Uniform(rng_, n, -2.0f, 2.0f);
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    const float* g = mem.In(gate);
    float* u = mem.In(up);
    float* out = mem.Zeros<float>(n);
    be.SiluMul(g, u, n, out);
    be.SiluMul(g, u, n, u);  // in place, over `up`
    return std::pair(mem.Get(out, n), mem.Get(u, n));
  });
  Expected want;
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    want.Push(g / (1.0 + std::exp(-g)) * up[i]);
  }
  ExpectOp("SiluMul", got.first, oracle.first, want, kF32);
  EXPECT_TRUE(SameBits(got.second, got.first)) << "SiluMul in place vs out of place";
}

TEST_P(BackendOpsTest, GeluTanhMul) {
  const int64_t n = 203;  // not a multiple of a SIMD width
  std::vector<float> gate = Uniform(rng_, n, -10.0f, 10.0f);
  gate[0] = 0.0f;
  gate[1] = -30.0f;
  gate[2] = 30.0f;
  gate[3] = -1e-3f;
  const std::vector<float> up = Uniform(rng_, n, -2.0f, 2.0f);
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    const float* g = mem.In(gate);
    float* u = mem.In(up);
    float* out = mem.Zeros<float>(n);
    be.GeluTanhMul(g, u, n, out);
    be.GeluTanhMul(g, u, n, u);  // in place, over `up`
    return std::pair(mem.Get(out, n), mem.Get(u, n));
  });
  // 0.5·g·(1 + tanh(√(2/π)·(g + 0.044715·g³))) in double. The scale is the magnitude of the
  // terms: for g ≪ 0, 1 + tanh cancels and f32's tanh error is relative to |tanh| ≈ 1.
  Expected want;
  const double beta = std::sqrt(2.0 / std::acos(-1.0));
  for (int64_t i = 0; i < n; ++i) {
    const double g = gate[i];
    const double t = std::tanh(beta * (g + 0.044715 * g * g * g));
    want.Push(0.5 * g * (1.0 + t) * up[i],
              0.5 * std::abs(g) * (1.0 + std::abs(t)) * std::abs(up[i]));
  }
  ExpectOp("GeluTanhMul", got.first, oracle.first, want, kF32);
  EXPECT_TRUE(SameBits(got.second, got.first)) << "GeluTanhMul in place vs out of place";
}

// Gemma 2's final_logit_softcapping: cap · tanh(x / cap), in place; values far past the cap
// saturate at ±cap, small ones pass nearly unchanged.
TEST_P(BackendOpsTest, SoftCap) {
  const int64_t n = 203;
  std::vector<float> x = Uniform(rng_, n, -12.0f, 12.0f);
  x[0] = 0.0f;
  x[1] = -1e3f;
  x[2] = 1e3f;
  x[3] = 1e-4f;
  const float cap = 3.0f;
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    float* xd = mem.In(x);
    be.SoftCap(xd, n, cap);
    return mem.Get(xd, n);
  });
  Expected want;
  for (int64_t i = 0; i < n; ++i) {
    const double t = std::tanh(static_cast<double>(x[i]) / cap);
    want.Push(cap * t, cap * std::abs(t));
  }
  ExpectOp("SoftCap", got, oracle, want, kF32);
  EXPECT_EQ(got[1], -cap);
  EXPECT_EQ(got[2], cap);
}

TEST_P(BackendOpsTest, Add) {
  const int64_t n = 203;
  std::vector<float> x = Uniform(rng_, n), y = Uniform(rng_, n);
  for (int64_t i = 0; i < n; i += 3) x[i] *= 1e4f;  // sums that must round
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    float* yd = mem.In(y);
    be.Add(mem.In(x), yd, n);
    return mem.Get(yd, n);
  });
  Expected want;  // one f32 addition: the exact sum rounded once
  for (int64_t i = 0; i < n; ++i) want.Push(static_cast<double>(x[i]) + y[i]);
  ExpectOp("Add", got, oracle, want, kExact);
}

TEST_P(BackendOpsTest, Axpby) {
  const int64_t n = 203;
  // Multiples of 2^-8 in [-8, 8] times dyadic a and b: every product and sum is exact in
  // f32, so any evaluation (fused or not) must give these bits.
  {
    std::uniform_int_distribution<int> q(-2048, 2048);
    std::vector<float> x(n), y(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = std::ldexp(static_cast<float>(q(rng_)), -8);
      y[i] = std::ldexp(static_cast<float>(q(rng_)), -8);
    }
    const float a = -1.5f, b = 0.25f;
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* yd = mem.In(y);
      be.Axpby(a, mem.In(x), b, yd, n);
      return mem.Get(yd, n);
    });
    Expected want;
    for (int64_t i = 0; i < n; ++i) want.Push(static_cast<double>(a) * x[i] + b * y[i]);
    ExpectOp("Axpby (exact inputs)", got, oracle, want, kExact);
  }
  // General values: within two f32 roundings of |a·x| + |b·y|.
  {
    const std::vector<float> x = Uniform(rng_, n), y = Uniform(rng_, n);
    const float a = 0.3f, b = -1.7f;
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* yd = mem.In(y);
      be.Axpby(a, mem.In(x), b, yd, n);
      return mem.Get(yd, n);
    });
    Expected want;
    for (int64_t i = 0; i < n; ++i) {
      const double ax = static_cast<double>(a) * x[i], by = static_cast<double>(b) * y[i];
      want.Push(ax + by, std::abs(ax) + std::abs(by));
    }
    ExpectOp("Axpby", got, oracle, want, Tol{std::ldexp(1.0, -22), 1e-5});
  }
}

TEST_P(BackendOpsTest, Copy) {
  const int64_t n = 200, offset = 3, size = 210;
  std::vector<float> src = Uniform(rng_, n);
  const uint32_t quiet_nan_payload = 0x7fc12345u;
  std::memcpy(&src[0], &quiet_nan_payload, 4);
  src[1] = -0.0f;
  src[2] = std::numeric_limits<float>::infinity();
  src[3] = -std::numeric_limits<float>::infinity();
  src[4] = std::numeric_limits<float>::denorm_min();
  src[5] = std::numeric_limits<float>::max();
  const std::vector<float> dst0(size, 7.0f);
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    float* dst = mem.In(dst0);
    be.Copy(mem.In(src), n, dst + offset);
    return mem.Get(dst, size);
  });
  std::vector<float> want = dst0;
  std::copy(src.begin(), src.end(), want.begin() + offset);
  EXPECT_TRUE(SameBits(got, want)) << "Copy: bits (NaN payload, -0, inf, denormal) and bounds";
  EXPECT_TRUE(SameBits(got, oracle)) << "Copy vs the CPU oracle";
}

TEST_P(BackendOpsTest, SumOfSquares) {
  const int64_t n = 1003;
  std::vector<float> x = Uniform(rng_, n, -3.0f, 3.0f);
  for (int64_t i = 0; i < n; i += 7) x[i] *= 1e3f;
  const auto run = [&](Backend& be, Mem& mem) {
    const float* xd = mem.In(x);
    return std::pair(be.SumOfSquares(xd, n), be.SumOfSquares(xd, 0));
  };
  auto [got, oracle] = RunBoth(run);
  double want = 0.0;  // in double, in index order, as documented
  for (int64_t i = 0; i < n; ++i) want += static_cast<double>(x[i]) * x[i];
  // Any order of summation in double is within n · 2^-53 of it.
  EXPECT_NEAR(got.first, want, 1e-12 * want);
  EXPECT_EQ(got.second, 0.0) << "the empty sum";
  if (on_cpu()) {
    EXPECT_EQ(got.first, want) << "the CPU backend sums in index order";
    EXPECT_EQ(got.first, oracle.first);
  } else {
    EXPECT_NEAR(got.first, oracle.first, 1e-12 * want);
  }
}

// ---- Paged attention

// Two sequences over one paged pool, block tables out of order: A has 37 tokens cached
// (more than one 32-position tile) and 2 new; B has 3 cached and 6 new (its new tokens span
// a block boundary). GQA: 6 query heads over 2 kv heads; head_dim 40 (not a multiple of 32).
// The cache is filled by one PagedKvWrite of every cached token, then one of the new
// tokens, then PagedAttention runs over the new rows; the pool is fetched too and must
// hold exactly the written values (rounded to nearest-even for bf16) in their slots.
// With `softcap` > 0 each score s becomes softcap · tanh(s / softcap) (Gemma 2); with
// `window` > 0 a row at position p attends to positions > p - window only.
void BackendOpsTest::CheckPagedAttention(DType kv_dtype, Tol tol, float softcap, int32_t window) {
  constexpr int32_t kBlockSize = 8, kNumBlocks = 12, kKvHeads = 2, kHeads = 6, kHeadDim = 40;
  constexpr int64_t kKvRow = int64_t{kKvHeads} * kHeadDim;  // floats per token
  struct Seq {
    int32_t cached, num_new;
    std::vector<int32_t> table;
  };
  const std::vector<Seq> seqs = {{37, 2, {9, 2, 11, 4, 0}}, {3, 6, {7, 5}}};
  const int32_t num_seqs = static_cast<int32_t>(seqs.size());

  std::vector<std::vector<float>> k_all, v_all;  // per sequence [tokens, kv_heads, head_dim]
  std::vector<float> k_prefix, v_prefix, k_new, v_new;
  std::vector<AttentionSeq> prefix_seqs, new_seqs;
  int64_t prefix_rows = 0, new_rows = 0;
  for (const Seq& s : seqs) {
    const int64_t len = s.cached + s.num_new;
    k_all.push_back(Uniform(rng_, len * kKvRow));
    v_all.push_back(Uniform(rng_, len * kKvRow, -2.0f, 2.0f));
    const auto split = [&](const std::vector<float>& all, std::vector<float>& prefix,
                           std::vector<float>& fresh) {
      prefix.insert(prefix.end(), all.begin(), all.begin() + s.cached * kKvRow);
      fresh.insert(fresh.end(), all.begin() + s.cached * kKvRow, all.end());
    };
    split(k_all.back(), k_prefix, k_new);
    split(v_all.back(), v_prefix, v_new);
    prefix_seqs.push_back({s.table.data(), 0, s.cached, prefix_rows});
    new_seqs.push_back({s.table.data(), s.cached, s.num_new, new_rows});
    prefix_rows += s.cached;
    new_rows += s.num_new;
  }
  const int64_t q_size = new_rows * kHeads * kHeadDim;
  const std::vector<float> q = Uniform(rng_, q_size, -2.0f, 2.0f);
  const float scale = 1.0f / std::sqrt(static_cast<float>(kHeadDim));
  const int64_t elem = static_cast<int64_t>(DTypeSize(kv_dtype));
  const int64_t pool_bytes = int64_t{kNumBlocks} * kBlockSize * kKvRow * elem;

  struct Result {
    std::vector<float> out;
    std::vector<uint8_t> k_pool, v_pool;
  };
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    const PagedKvLayer layer{mem.Zeros<uint8_t>(pool_bytes),
                             mem.Zeros<uint8_t>(pool_bytes),
                             kNumBlocks,
                             kBlockSize,
                             kKvHeads,
                             kHeadDim,
                             kv_dtype,
                             window,
                             softcap};
    be.PagedKvWrite(layer, prefix_seqs.data(), num_seqs, mem.In(k_prefix), mem.In(v_prefix));
    be.PagedKvWrite(layer, new_seqs.data(), num_seqs, mem.In(k_new), mem.In(v_new));
    float* out = mem.Zeros<float>(q_size);
    be.PagedAttention(layer, new_seqs.data(), num_seqs, mem.In(q), kHeads, scale, out);
    return Result{mem.Get(out, q_size), mem.Get(static_cast<const uint8_t*>(layer.k), pool_bytes),
                  mem.Get(static_cast<const uint8_t*>(layer.v), pool_bytes)};
  });

  // The pool: each token's row in slot table[pos / block_size] · block_size + pos % block_size.
  const auto cached_value = [&](float f) { return kv_dtype == DType::kBF16 ? RoundToBf16(f) : f; };
  std::vector<uint8_t> want_k(pool_bytes, 0), want_v(pool_bytes, 0);
  for (size_t s = 0; s < seqs.size(); ++s) {
    const int64_t len = seqs[s].cached + seqs[s].num_new;
    for (int64_t pos = 0; pos < len; ++pos) {
      const int64_t slot = int64_t{seqs[s].table[pos / kBlockSize]} * kBlockSize + pos % kBlockSize;
      for (int64_t e = 0; e < kKvRow; ++e) {
        const int64_t at = (slot * kKvRow + e) * elem;
        for (auto [all, pool] : {std::pair(&k_all[s], &want_k), std::pair(&v_all[s], &want_v)}) {
          const float f = (*all)[pos * kKvRow + e];
          if (kv_dtype == DType::kBF16) {
            const uint16_t h = F32ToBf16(f);
            std::memcpy(&(*pool)[at], &h, 2);
          } else {
            std::memcpy(&(*pool)[at], &f, 4);
          }
        }
      }
    }
  }
  ExpectSame("PagedKvWrite: the K pool", got.k_pool, oracle.k_pool, want_k);
  ExpectSame("PagedKvWrite: the V pool", got.v_pool, oracle.v_pool, want_v);

  // Attention: row j of sequence s (position cached + j) over positions 0..cached + j.
  Expected want;
  want.value.resize(q_size);
  want.scale.resize(q_size);
  const int64_t group = kHeads / kKvHeads;
  for (size_t s = 0; s < seqs.size(); ++s) {
    for (int64_t j = 0; j < seqs[s].num_new; ++j) {
      const int64_t row = new_seqs[s].row_begin + j;
      const int64_t last = seqs[s].cached + j;
      for (int64_t h = 0; h < kHeads; ++h) {
        const int64_t kvh = h / group;
        const float* qh = &q[(row * kHeads + h) * kHeadDim];
        const int64_t first = window > 0 ? std::max<int64_t>(0, last - window + 1) : 0;
        std::vector<double> score(last + 1, -std::numeric_limits<double>::infinity());
        for (int64_t t = first; t <= last; ++t) {
          double dot = 0.0;
          for (int64_t d = 0; d < kHeadDim; ++d) {
            dot += static_cast<double>(qh[d]) *
                   cached_value(k_all[s][t * kKvRow + kvh * kHeadDim + d]);
          }
          score[t] = static_cast<double>(scale) * dot;
          if (softcap > 0.0f) score[t] = softcap * std::tanh(score[t] / softcap);
        }
        const double max = *std::max_element(score.begin(), score.end());
        double denominator = 0.0;
        for (double& sc : score) denominator += (sc = std::exp(sc - max));
        for (int64_t d = 0; d < kHeadDim; ++d) {
          double sum = 0.0, mag = 0.0;
          for (int64_t t = first; t <= last; ++t) {
            const double v = cached_value(v_all[s][t * kKvRow + kvh * kHeadDim + d]);
            sum += score[t] * v;
            mag += score[t] * std::abs(v);
          }
          want.value[(row * kHeads + h) * kHeadDim + d] = sum / denominator;
          want.scale[(row * kHeads + h) * kHeadDim + d] = mag / denominator;
        }
      }
    }
  }
  ExpectOp("PagedAttention", got.out, oracle.out, want, tol);
}

TEST_P(BackendOpsTest, PagedAttentionF32Kv) { CheckPagedAttention(DType::kF32, kF32); }

TEST_P(BackendOpsTest, PagedAttentionBf16Kv) { CheckPagedAttention(DType::kBF16, kBf16); }

// Gemma 2's attention: scores soft-capped at 0.75 (most scores here exceed it), alone and
// with a sliding window of 5 positions.
TEST_P(BackendOpsTest, PagedAttentionSoftCap) {
  CheckPagedAttention(DType::kF32, kF32, /*softcap=*/0.75f);
  CheckPagedAttention(DType::kBF16, kBf16, /*softcap=*/0.75f, /*window=*/5);
}

// ---- Rows

TEST_P(BackendOpsTest, GatherRows) {
  const int64_t width = 13;
  struct Case {
    int64_t src_rows;
    int32_t divisor;
    std::vector<int32_t> rows;
  };
  for (const Case& cs : {Case{9, 1, {4, 0, 8, 4, 2}},           // logit rows
                         Case{5, 2, {9, 0, 3, 4, 1, 7, 8}}}) {  // MoE slots -> tokens
    SCOPED_TRACE(::testing::Message() << "divisor " << cs.divisor);
    const std::vector<float> src = Uniform(rng_, cs.src_rows * width);
    const int64_t count = static_cast<int64_t>(cs.rows.size());
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* dst = mem.Zeros<float>(count * width);
      be.GatherRows(mem.In(src), width, mem.In(cs.rows), count, cs.divisor, dst);
      return mem.Get(dst, count * width);
    });
    Expected want;
    for (int32_t r : cs.rows) {
      for (int64_t c = 0; c < width; ++c) want.Push(src[(r / cs.divisor) * width + c]);
    }
    ExpectOp("GatherRows", got, oracle, want, kExact);
  }
}

TEST_P(BackendOpsTest, ScatterRows) {
  const int64_t width = 13, dst_rows = 8;
  const std::vector<int32_t> rows = {5, 0, 7, 2};
  const int64_t count = static_cast<int64_t>(rows.size());
  const std::vector<float> src = Uniform(rng_, count * width);
  const std::vector<float> dst0 = Uniform(rng_, dst_rows * width, 10.0f, 20.0f);
  auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
    float* dst = mem.In(dst0);
    be.ScatterRows(mem.In(src), width, mem.In(rows), count, dst);
    return mem.Get(dst, dst_rows * width);
  });
  std::vector<float> want_rows = dst0;  // rows not named keep their values
  for (int64_t r = 0; r < count; ++r) {
    std::copy(&src[r * width], &src[(r + 1) * width], &want_rows[rows[r] * width]);
  }
  Expected want;
  for (float f : want_rows) want.Push(f);
  ExpectOp("ScatterRows", got, oracle, want, kExact);
}

// ---- Mixture of experts

// MoeRoute on `logits` for each top_k, normalized and not, against a reference that scores
// in double and picks the top_k by a stable sort (ties to the lower id).
void BackendOpsTest::CheckMoeRoute(RouterScoring scoring, const std::vector<float>& logits,
                                   int64_t tokens, int32_t experts, std::vector<int32_t> top_ks) {
  const bool softmax = scoring == RouterScoring::kSoftmax;
  // Reference scores.
  std::vector<double> scores(tokens * experts);
  for (int64_t t = 0; t < tokens; ++t) {
    const float* l = &logits[t * experts];
    double* s = &scores[t * experts];
    if (softmax) {
      const double max = *std::max_element(l, l + experts);
      double sum = 0.0;
      for (int e = 0; e < experts; ++e) sum += (s[e] = std::exp(l[e] - max));
      for (int e = 0; e < experts; ++e) s[e] /= sum;
    } else {
      for (int e = 0; e < experts; ++e) s[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(l[e])));
    }
  }
  for (int32_t top_k : top_ks) {
    for (bool normalize : {false, true}) {
      SCOPED_TRACE(::testing::Message() << (softmax ? "softmax" : "sigmoid") << " top_k " << top_k
                                        << (normalize ? " normalized" : ""));
      struct Result {
        std::vector<float> scores, top_weight;
        std::vector<int32_t> top_expert;
      };
      const int64_t slots = tokens * top_k;
      auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
        float* l = mem.In(logits);
        int32_t* top_e = mem.Zeros<int32_t>(slots);
        float* top_w = mem.Zeros<float>(slots);
        be.MoeRoute(l, tokens, experts, scoring, top_k, normalize, top_e, top_w);
        return Result{mem.Get(l, tokens * experts), mem.Get(top_w, slots), mem.Get(top_e, slots)};
      });
      Expected want_scores, want_w;
      std::vector<int32_t> want_e;
      for (double s : scores) want_scores.Push(s);
      for (int64_t t = 0; t < tokens; ++t) {
        const double* s = &scores[t * experts];
        std::vector<int32_t> order(experts);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](int a, int b) { return s[a] > s[b]; });
        double sum = 0.0;
        for (int j = 0; j < top_k; ++j) sum += s[order[j]];
        for (int j = 0; j < top_k; ++j) {
          want_e.push_back(order[j]);
          want_w.Push(normalize ? s[order[j]] / sum : s[order[j]]);
        }
      }
      ExpectOp("MoeRoute scores (over the logits)", got.scores, oracle.scores, want_scores, kF32);
      ExpectSame("MoeRoute top_expert", got.top_expert, oracle.top_expert, want_e);
      ExpectOp("MoeRoute top_weight", got.top_weight, oracle.top_weight, want_w, kF32);
    }
  }
}

// Logits whose scores are at least 0.4 apart (so the order is the same in f32 and double).
std::vector<float> SpacedLogits(std::mt19937& rng, int64_t tokens, int32_t experts) {
  std::vector<float> logits(tokens * experts);
  std::uniform_real_distribution<float> jitter(-0.1f, 0.1f);
  for (int64_t t = 0; t < tokens; ++t) {
    std::vector<int> rank(experts);
    std::iota(rank.begin(), rank.end(), 0);
    std::shuffle(rank.begin(), rank.end(), rng);
    for (int e = 0; e < experts; ++e) {
      logits[t * experts + e] = (static_cast<float>(rank[e]) - 3.5f) * 0.6f + jitter(rng);
    }
  }
  return logits;
}

TEST_P(BackendOpsTest, MoeRouteSoftmax) {
  CheckMoeRoute(RouterScoring::kSoftmax, SpacedLogits(rng_, 5, 8), 5, 8, {1, 3, 8});
}

TEST_P(BackendOpsTest, MoeRouteSigmoid) {
  CheckMoeRoute(RouterScoring::kSigmoid, SpacedLogits(rng_, 5, 8), 5, 8, {1, 3, 8});
}

// Equal logits give equal scores: the lower expert id goes first.
TEST_P(BackendOpsTest, MoeRouteTies) {
  const std::vector<float> logits = {
      0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f, 0.25f,  // all tied: 0, 1, 2
      0.3f,  2.0f,  2.0f,  -1.0f, 2.0f,  2.0f,  0.0f,  0.0f,   // four tied at the top: 1, 2, 4
      -1.0f, -1.0f, 5.0f,  -1.0f, -1.0f, 0.5f,  -1.0f, -1.0f,  // 2, 5, then the lowest tie 0
      1.0f,  0.0f,  0.0f,  0.0f,  1.0f,  0.0f,  0.0f,  1.0f,   // 0, 4, 7
  };
  CheckMoeRoute(RouterScoring::kSoftmax, logits, 4, 8, {3});
  CheckMoeRoute(RouterScoring::kSigmoid, logits, 4, 8, {3});
}

TEST_P(BackendOpsTest, MoeGroup) {
  std::vector<std::pair<std::vector<int32_t>, int32_t>> cases;  // top_expert, experts
  // 7 tokens, top-2, 6 experts: expert 3 unused, expert 5 in many slots.
  cases.push_back({{5, 1, 5, 0, 2, 5, 1, 0, 5, 2, 0, 1, 4, 5}, 6});
  {
    std::uniform_int_distribution<int32_t> e(0, 7);
    std::vector<int32_t> random(64);
    for (int32_t& x : random) x = e(rng_);
    cases.push_back({random, 8});
  }
  for (const auto& c : cases) {
    const std::vector<int32_t>& top_e = c.first;
    const int32_t experts = c.second;
    SCOPED_TRACE(::testing::Message() << top_e.size() << " slots over " << experts << " experts");
    const int64_t slots = static_cast<int64_t>(top_e.size());
    struct Result {
      std::vector<int32_t> offsets, rows;
    };
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      std::vector<int32_t> offsets(experts + 1, -7);  // host
      int32_t* rows = mem.Zeros<int32_t>(slots);
      be.MoeGroup(mem.In(top_e), slots, experts, offsets.data(), rows);
      // The offsets as the call leaves them, before any Synchronize: the model reads them
      // right away (runtime/model/moe_layer.cc).
      std::vector<int32_t> offsets_at_return = offsets;
      return Result{std::move(offsets_at_return), mem.Get(rows, slots)};
    });
    Result want{{0}, {}};
    for (int32_t e = 0; e < experts; ++e) {
      for (int64_t i = 0; i < slots; ++i) {
        if (top_e[i] == e) want.rows.push_back(static_cast<int32_t>(i));
      }
      want.offsets.push_back(static_cast<int32_t>(want.rows.size()));
    }
    ExpectSame("MoeGroup offsets", got.offsets, oracle.offsets, want.offsets);
    ExpectSame("MoeGroup rows", got.rows, oracle.rows, want.rows);
  }
}

TEST_P(BackendOpsTest, MoeCombine) {
  const int64_t tokens = 4, width = 29;
  for (int32_t top_k : {1, 3}) {
    SCOPED_TRACE(::testing::Message() << "top_k " << top_k);
    const std::vector<float> slot_out = Uniform(rng_, tokens * top_k * width, -2.0f, 2.0f);
    const std::vector<float> top_w = Uniform(rng_, tokens * top_k, 0.0f, 1.0f);
    // out is written, not accumulated into: it starts as NaN.
    const std::vector<float> out0(tokens * width, std::numeric_limits<float>::quiet_NaN());
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* out = mem.In(out0);
      be.MoeCombine(mem.In(slot_out), mem.In(top_w), tokens, top_k, width, out);
      return mem.Get(out, tokens * width);
    });
    Expected want;
    for (int64_t t = 0; t < tokens; ++t) {
      for (int64_t c = 0; c < width; ++c) {
        double sum = 0.0, mag = 0.0;
        for (int j = 0; j < top_k; ++j) {
          const double p =
              static_cast<double>(top_w[t * top_k + j]) * slot_out[(t * top_k + j) * width + c];
          sum += p;
          mag += std::abs(p);
        }
        want.Push(sum, mag);
      }
    }
    ExpectOp("MoeCombine", got, oracle, want, kF32);
  }
}

TEST_P(BackendOpsTest, GatedAdd) {
  const int64_t tokens = 4, width = 29, n = tokens * width;
  const std::vector<float> gate = {-4.0f, 0.0f, 1.5f, 9.0f};
  const std::vector<float> x = Uniform(rng_, n, -2.0f, 2.0f), y = Uniform(rng_, n, -2.0f, 2.0f);
  for (bool gated : {true, false}) {
    SCOPED_TRACE(gated ? "with gate" : "without gate (the shared expert)");
    auto [got, oracle] = RunBoth([&](Backend& be, Mem& mem) {
      float* yd = mem.In(y);
      be.GatedAdd(gated ? mem.In(gate) : nullptr, mem.In(x), tokens, width, yd);
      return mem.Get(yd, n);
    });
    Expected want;
    for (int64_t t = 0; t < tokens; ++t) {
      const double g = gated ? 1.0 / (1.0 + std::exp(-static_cast<double>(gate[t]))) : 1.0;
      for (int64_t c = 0; c < width; ++c) {
        const double gx = g * x[t * width + c];
        want.Push(gx + y[t * width + c], std::abs(gx) + std::abs(y[t * width + c]));
      }
    }
    // Without a gate it is y + x, one exact rounding.
    ExpectOp("GatedAdd", got, oracle, want, gated ? kF32 : kExact);
  }
}

INSTANTIATE_TEST_SUITE_P(Devices, BackendOpsTest,
                         ::testing::Values(Target{Device::kCpu, false},
                                           Target{Device::kCuda, false},
                                           Target{Device::kCuda, true}),
                         [](const ::testing::TestParamInfo<Target>& info) {
                           return absl::StrCat(std::string(DeviceName(info.param.device)),
                                               info.param.emulated ? "_emu" : "");
                         });

}  // namespace
}  // namespace spanserve::kernels
