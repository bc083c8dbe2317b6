#include "kernels/cpu/cpu_backend.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_int8dot.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "kernels/quant.h"

namespace spanserve::kernels::cpu {
namespace {

// An anonymous read-write mapping of `bytes` (zeroed), or nullptr for none. One of 2 MiB or
// more asks for transparent huge pages (where the kernel offers them only on request): the
// KV cache, the step's activations and the repacked weights are read through every step,
// the KV cache at scattered blocks, and on 4 KiB pages the TLB misses were a large part of
// a decode step's attention (docs/KERNELS.md, "Attention from memory").
absl::StatusOr<void*> MapAnonymous(int64_t bytes) {
  if (bytes <= 0) return nullptr;
  constexpr size_t kHugePage = size_t{2} << 20;
  const size_t size = static_cast<size_t>(bytes);
  // Huge pages cover only aligned 2 MiB ranges: a large mapping is made 2 MiB longer and its
  // ends cut so that it starts on a boundary (munmap of [p, p + bytes) still frees it all).
  const size_t slack = size >= kHugePage ? kHugePage : 0;
  void* raw =
      ::mmap(nullptr, size + slack, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) {
    return absl::ResourceExhaustedError(absl::StrCat("cannot map ", bytes, " bytes"));
  }
  if (slack == 0) return raw;
  const uintptr_t begin = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t aligned = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const auto round_up = [page](uintptr_t n) { return (n + page - 1) & ~(page - 1); };
  const uintptr_t end = aligned + round_up(size);
  const uintptr_t mapped_end = begin + round_up(size + slack);
  if (aligned > begin) ::munmap(raw, aligned - begin);
  if (mapped_end > end) ::munmap(reinterpret_cast<void*>(end), mapped_end - end);
  void* p = reinterpret_cast<void*>(aligned);
  // Advice only: a kernel without transparent huge pages refuses it, and 4 KiB pages serve.
  ::madvise(p, size, MADV_HUGEPAGE);
  return p;
}

// A mapping MapAnonymous made, unmapped with its owner.
struct Mapping {
  void* p = nullptr;
  int64_t bytes = 0;
  Mapping(void* p, int64_t bytes) : p(p), bytes(bytes) {}
  Mapping(Mapping&& o) noexcept : p(std::exchange(o.p, nullptr)), bytes(o.bytes) {}
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  Mapping& operator=(Mapping&&) = delete;
  ~Mapping() {
    if (p != nullptr) ::munmap(p, static_cast<size_t>(bytes));
  }
};

class CpuBackend final : public Backend {
 public:
  // --threads beyond the cores the process may use would only make threads wait for each
  // other: the pool is never larger than AvailableCpus().
  explicit CpuBackend(const BackendOptions& options)
      : requested_threads_(options.num_threads),
        pool_(SharedThreadPool(UsableThreads(options.num_threads))) {}

  Device device() const override { return Device::kCpu; }
  std::string description() const override {
    std::string threads = absl::StrCat(pool_->threads(), " threads");
    if (requested_threads_ > pool_->threads()) {
      absl::StrAppend(&threads, ": ", requested_threads_, " asked, ", AvailableCpus(),
                      " CPUs available");
    }
    return absl::StrCat("cpu (", IsaName(ActiveIsa()), ", ", threads, ")");
  }
  bool host_memory() const override { return true; }
  bool SupportsBf16Dot() const override { return CpuHasBf16Dot(); }
  // The AVX2 kernels run wherever this build does (VNNI ones where the CPU has them).
  bool SupportsInt8Dot() const override { return true; }

  // Anonymous mappings: zeroed, and a page costs resident memory only once touched (the
  // KV pool is mostly untouched blocks; the block manager hands out the lowest free blocks
  // first, so the touched part of each layer's K and V stays compact). On huge pages a page
  // is 2 MiB: each layer's K and V then hold up to 2 MiB more than their blocks in use.
  absl::StatusOr<void*> Allocate(int64_t bytes) override { return MapAnonymous(bytes); }
  void Free(void* p, int64_t bytes) override {
    if (p != nullptr) ::munmap(p, static_cast<size_t>(bytes));
  }
  // Weights stay where they are (a memory-mapped file, the model's own memory); a quantized
  // matrix that asks for integer dot products gets a repacked copy besides on a CPU with VNNI
  // (matmul_int8dot.h, "Packed weights"), which this backend keeps. IQ4_NL and Q3_K matrices
  // that ask for them are first re-encoded, exactly, to the format the integer kernels take
  // (Int8DotFormat: Q8_0, Q6_K), a copy this backend keeps too.
  absl::StatusOr<WeightMatrix> UploadMatrix(const WeightMatrix& in) override {
    WeightMatrix host = in;
    // (IQ4_NL packs as it is where the packed kernels run.)
    if (in.precision == MatMulPrecision::kInt8Dot && in.data != nullptr &&
        Int8DotFormat(in.quant) != in.quant &&
        !(Int8DotUsesVnni() && internal::Int8PackedSupports(in.quant))) {
      host.quant = Int8DotFormat(in.quant);
      const int64_t bytes =
          in.rows * in.cols / QuantBlockElems(host.quant) * QuantBlockBytes(host.quant);
      absl::StatusOr<void*> copy = MapAnonymous(bytes);
      if (!copy.ok()) {
        return absl::ResourceExhaustedError(absl::StrCat(
            "cannot allocate ", bytes, " bytes for a ", QuantTypeName(in.quant),
            " matrix re-encoded as ", QuantTypeName(host.quant), ": ", copy.status().message()));
      }
      packed_.emplace_back(*copy, bytes);
      const int64_t in_row = in.cols / QuantBlockElems(in.quant) * QuantBlockBytes(in.quant);
      const int64_t out_row = bytes / in.rows;
      UsePool use(pool_.get());
      ParallelFor(in.rows, 2, [&](int64_t r0, int64_t r1) {
        const auto* src = static_cast<const uint8_t*>(in.data) + r0 * in_row;
        uint8_t* dst = static_cast<uint8_t*>(*copy) + r0 * out_row;
        if (in.quant == QuantType::kIQ4_NL) {
          ConvertIQ4_NLToQ8_0(src, (r1 - r0) * in.cols, dst);
        } else {
          ConvertQ3_KToQ6_K(src, (r1 - r0) * in.cols, dst);
        }
      });
      host.data = *copy;
    }
    if (host.precision != MatMulPrecision::kInt8Dot || !internal::Int8PackedSupports(host.quant) ||
        !Int8DotUsesVnni() || host.data == nullptr) {
      return host;
    }
    const int64_t bytes = internal::Int8PackedBytes(host.quant, host.rows, host.cols);
    absl::StatusOr<void*> copy = MapAnonymous(bytes);
    if (!copy.ok()) {
      return absl::ResourceExhaustedError(
          absl::StrCat("cannot allocate ", bytes,
                       " bytes for a repacked int8 matrix: ", copy.status().message()));
    }
    packed_.emplace_back(*copy, bytes);
    internal::PackInt8(host, static_cast<uint8_t*>(*copy));
    WeightMatrix packed = host;
    packed.packed = *copy;
    return packed;
  }
  absl::StatusOr<WeightVector> UploadVector(const WeightVector& host) override { return host; }
  void CopyToDevice(const void* src, int64_t bytes, void* dst) override {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  }
  void CopyToHost(const void* src, int64_t bytes, void* dst) override {
    if (bytes > 0) std::memcpy(dst, src, static_cast<size_t>(bytes));
  }

  void BeginStep() override {}
  absl::Status Synchronize() override { return absl::OkStatus(); }

  void MatMul(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
              float* y) override {
    UsePool use(pool_.get());
    cpu::MatMul(x, m, w, bias, y);
  }
  void MatMulShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count) override {
    UsePool use(pool_.get());
    cpu::MatMulShared(x, m, outs, count);
  }
  void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t n,
                       float* out) override {
    cpu::EmbeddingLookup(table, ids, n, out);
  }
  void RmsNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain, float eps,
               float* out) override {
    UsePool use(pool_.get());
    cpu::RmsNorm(x, tokens, dim, gain, eps, out);
  }
  void LayerNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
                 const WeightVector* bias, float eps, float* out) override {
    UsePool use(pool_.get());
    cpu::LayerNorm(x, tokens, dim, gain, bias, eps, out);
  }
  void RopeTables(int64_t max_positions, int64_t head_dim, double theta, const RopeScaling& scaling,
                  float* cos_table, float* sin_table) override {
    cpu::RopeTables(max_positions, head_dim, theta, scaling, cos_table, sin_table);
  }
  void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim,
                 const int32_t* positions, const float* cos_table,
                 const float* sin_table) override {
    cpu::ApplyRope(x, tokens, heads, head_dim, positions, cos_table, sin_table);
  }
  void SiluMul(const float* gate, const float* up, int64_t n, float* out) override {
    cpu::SiluMul(gate, up, n, out);
  }
  void GeluTanhMul(const float* gate, const float* up, int64_t n, float* out) override {
    cpu::GeluTanhMul(gate, up, n, out);
  }
  void SoftCap(float* x, int64_t n, float cap) override { cpu::SoftCap(x, n, cap); }
  void Add(const float* x, float* y, int64_t n) override { cpu::Add(x, y, n); }
  void Axpby(float a, const float* x, float b, float* y, int64_t n) override {
    cpu::Axpby(a, x, b, y, n);
  }
  void Copy(const float* src, int64_t n, float* dst) override { std::copy(src, src + n, dst); }
  double SumOfSquares(const float* x, int64_t n) override {
    double sum = 0;
    for (int64_t i = 0; i < n; ++i) sum += static_cast<double>(x[i]) * x[i];
    return sum;
  }

  void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                    const float* k, const float* v) override {
    cpu::PagedKvWrite(layer, seqs, num_seqs, k, v);
  }
  void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                      const float* q, int32_t heads, float scale, float* out) override {
    UsePool use(pool_.get());
    cpu::PagedAttention(layer, seqs, num_seqs, q, heads, scale, out);
  }

  void GatherRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                  int32_t divisor, float* dst) override {
    for (int64_t r = 0; r < count; ++r) {
      const float* from = src + static_cast<int64_t>(rows[r] / divisor) * width;
      std::copy(from, from + width, dst + r * width);
    }
  }
  void ScatterRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                   float* dst) override {
    for (int64_t r = 0; r < count; ++r) {
      std::copy(src + r * width, src + (r + 1) * width,
                dst + static_cast<int64_t>(rows[r]) * width);
    }
  }

  void MoeRoute(float* logits, int64_t tokens, int32_t experts, RouterScoring scoring,
                int32_t top_k, bool normalize, int32_t* top_e, float* top_w) override {
    const int E = experts;
    const int K = top_k;
    for (int64_t t = 0; t < tokens; ++t) {
      float* s = logits + t * E;
      switch (scoring) {
        case RouterScoring::kSoftmax:
          cpu::Softmax(s, 1, E);
          break;
        case RouterScoring::kSigmoid:
          for (int e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
          break;
      }
      // Top-k by score, lower expert id first on ties (as torch.topk on CPU in practice).
      for (int j = 0; j < K; ++j) {
        int best = -1;
        for (int e = 0; e < E; ++e) {
          bool taken = false;
          for (int i = 0; i < j; ++i) taken |= top_e[t * K + i] == e;
          if (taken) continue;
          if (best < 0 || s[e] > s[best]) best = e;
        }
        top_e[t * K + j] = best;
        top_w[t * K + j] = s[best];
      }
      if (normalize) {
        float sum = 0.0f;
        for (int j = 0; j < K; ++j) sum += top_w[t * K + j];
        for (int j = 0; j < K; ++j) top_w[t * K + j] /= sum;
      }
    }
  }
  void MoeGroup(const int32_t* top_e, int64_t slots, int32_t experts, int32_t* offset,
                int32_t* rows) override {
    const int E = experts;
    std::fill(offset, offset + E + 1, 0);
    for (int64_t i = 0; i < slots; ++i) offset[top_e[i] + 1]++;
    for (int e = 0; e < E; ++e) offset[e + 1] += offset[e];
    // Fill in a stable order: slot index i increasing.
    fill_.assign(offset, offset + E);
    for (int64_t i = 0; i < slots; ++i) rows[fill_[top_e[i]]++] = static_cast<int32_t>(i);
  }
  void MoeCombine(const float* slot_out, const float* top_w, int64_t tokens, int32_t top_k,
                  int64_t width, float* out) override {
    for (int64_t t = 0; t < tokens; ++t) {
      float* o = out + t * width;
      std::fill(o, o + width, 0.0f);
      for (int j = 0; j < top_k; ++j) {
        cpu::Axpby(top_w[t * top_k + j], slot_out + (t * top_k + j) * width, 1.0f, o, width);
      }
    }
  }
  void GatedAdd(const float* gate, const float* x, int64_t tokens, int64_t width,
                float* y) override {
    for (int64_t t = 0; t < tokens; ++t) {
      const float s = gate != nullptr ? 1.0f / (1.0f + std::exp(-gate[t])) : 1.0f;
      cpu::Axpby(s, x + t * width, 1.0f, y + t * width, width);
    }
  }

 private:
  const int requested_threads_;
  // The process's pool of this size, shared with every other CPU backend that asks it; the
  // parallel ops install it on the calling thread.
  const std::shared_ptr<ThreadPool> pool_;
  std::vector<int32_t> fill_;    // MoeGroup's cursors; grows once
  std::vector<Mapping> packed_;  // UploadMatrix's repacked and re-encoded int8 matrices
};

}  // namespace

std::unique_ptr<Backend> CreateCpuBackend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options);
}

}  // namespace spanserve::kernels::cpu
