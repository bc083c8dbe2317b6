#include "kernels/cuda/cuda_backend.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dtype.h"
#include "common/status.h"
#include "kernels/cpu/rope.h"
#include "kernels/cuda/ops.h"
#include "kernels/quant.h"

#if defined(SPANSERVE_CUDA_EMULATION)
#include "kernels/cuda/emu_runtime.h"
#else
#include <cublas_v2.h>
#include <cuda_runtime.h>
#endif

namespace spanserve::kernels::cuda {
namespace {

// Products of at least this many rows of bf16-rounded activations (MatMulPrecision::kBf16Dot)
// go to cuBLAS's tensor cores; smaller ones to our kernel (decode reads the weights once at
// HBM speed either way).
constexpr int64_t kCublasMinRows = 16;

std::string CudaError(cudaError_t e) {
  return absl::StrCat(cudaGetErrorName(e), " (", cudaGetErrorString(e), ")");
}

// Returns INTERNAL naming the call when a CUDA runtime call fails.
#define RETURN_IF_CUDA(call, what)                                                           \
  do {                                                                                       \
    if (const cudaError_t spanserve_e = (call); spanserve_e != cudaSuccess) {                \
      cudaGetLastError();                                                                    \
      return absl::InternalError(absl::StrCat("CUDA ", what, ": ", CudaError(spanserve_e))); \
    }                                                                                        \
  } while (false)

// A device buffer that only grows (per-call descriptors and scratch).
struct Scratch {
  void* data = nullptr;
  int64_t bytes = 0;
};

class CudaBackend final : public Backend {
 public:
  CudaBackend() = default;
  ~CudaBackend() override {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (void* p : owned_) cudaFree(p);
    for (Scratch* s : {&seqs_, &tables_, &row_seq_, &attn_scratch_, &bf16_x_, &sumsq_}) {
      if (s->data != nullptr) cudaFree(s->data);
    }
#if !defined(SPANSERVE_CUDA_EMULATION)
    if (cublas_ != nullptr) cublasDestroy(cublas_);
#endif
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init() {
    int count = 0;
    if (cudaError_t e = cudaGetDeviceCount(&count); e != cudaSuccess) {
      cudaGetLastError();
      return absl::FailedPreconditionError(
          absl::StrCat("no usable CUDA device: cudaGetDeviceCount failed with ", CudaError(e),
                       " (is the NVIDIA driver installed and a GPU visible to this process?)"));
    }
    if (count == 0) {
      return absl::FailedPreconditionError("no CUDA device is visible to this process");
    }
    RETURN_IF_CUDA(cudaSetDevice(0), "cudaSetDevice(0)");
    RETURN_IF_CUDA(cudaGetDeviceProperties(&prop_, 0), "cudaGetDeviceProperties");
    RETURN_IF_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                   "cudaStreamCreateWithFlags");
#if !defined(SPANSERVE_CUDA_EMULATION)
    if (cublasStatus_t s = cublasCreate(&cublas_); s != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(absl::StrCat("cublasCreate failed: ", cublasGetStatusString(s)));
    }
    if (cublasStatus_t s = cublasSetStream(cublas_, stream_); s != CUBLAS_STATUS_SUCCESS) {
      return absl::InternalError(
          absl::StrCat("cublasSetStream failed: ", cublasGetStatusString(s)));
    }
    // cuBLAS only multiplies bf16 (kBf16Dot): tensor cores, accumulating in f32 throughout
    // (no reduced-precision split-K reductions). TF32 is never asked for.
    cublasSetMathMode(cublas_,
                      static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                                CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION));
#endif
    return absl::OkStatus();
  }

  Device device() const override { return Device::kCuda; }
  std::string description() const override {
#if defined(SPANSERVE_CUDA_EMULATION)
    return "cuda (CPU emulation)";
#else
    return absl::StrFormat("cuda (%s, sm_%d%d, %.0f GiB)", prop_.name, prop_.major, prop_.minor,
                           static_cast<double>(prop_.totalGlobalMem) / (1 << 30));
#endif
  }
  bool host_memory() const override { return false; }
  bool SupportsBf16Dot() const override { return true; }
  int64_t FreeDeviceMemoryBytes() const override {
    size_t free_bytes = 0, total = 0;
    if (cudaMemGetInfo(&free_bytes, &total) != cudaSuccess) {
      cudaGetLastError();
      return 0;
    }
    return static_cast<int64_t>(free_bytes);
  }

  // ---- Memory

  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    if (bytes <= 0) return nullptr;
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes)); e != cudaSuccess) {
      cudaGetLastError();
      size_t free_bytes = 0, total = 0;
      cudaMemGetInfo(&free_bytes, &total);
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cudaMalloc of %d bytes failed with %s (%.2f GiB of %.2f GiB free on the device)", bytes,
          CudaError(e), free_bytes / 1073741824.0, total / 1073741824.0));
    }
    Check(cudaMemsetAsync(p, 0, static_cast<size_t>(bytes), stream_), "cudaMemsetAsync");
    return p;
  }

  void Free(void* p, int64_t) override {
    if (p == nullptr) return;
    // cudaFree waits for the device; the memory may still be read by queued work otherwise.
    Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    Check(cudaFree(p), "cudaFree");
  }

  absl::StatusOr<WeightMatrix> UploadMatrix(const WeightMatrix& host) override {
    WeightMatrix dev = host;
    const int64_t n = host.rows * host.cols;
    std::vector<float> widened;
    const void* src = host.data;
    if (host.quant != QuantType::kNone) {
      // Block-quantized weights are dequantized once, to the exact f32 values the CPU
      // kernels compute with.
      widened.resize(static_cast<size_t>(n));
      Dequantize(host.quant, host.data, n, widened.data());  // rows are consecutive
      src = widened.data();
      dev.dtype = DType::kF32;
      dev.quant = QuantType::kNone;
    }
    const int64_t bytes = n * static_cast<int64_t>(DTypeSize(dev.dtype));
    ASSIGN_OR_RETURN(void* p, AllocateOwned(bytes));
    // On the backend's stream (a non-blocking one, unordered with the legacy default
    // stream), then waited for: `widened` ends with this call.
    RETURN_IF_CUDA(
        cudaMemcpyAsync(p, src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_),
        "cudaMemcpyAsync of a weight matrix");
    RETURN_IF_CUDA(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after a weight");
    dev.data = p;
    return dev;
  }

  absl::StatusOr<WeightVector> UploadVector(const WeightVector& host) override {
    WeightVector dev = host;
    const int64_t bytes = host.size * static_cast<int64_t>(DTypeSize(host.dtype));
    ASSIGN_OR_RETURN(void* p, AllocateOwned(bytes));
    RETURN_IF_CUDA(
        cudaMemcpyAsync(p, host.data, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_),
        "cudaMemcpyAsync of a weight vector");
    RETURN_IF_CUDA(cudaStreamSynchronize(stream_), "cudaStreamSynchronize after a weight");
    dev.data = p;
    return dev;
  }

  void CopyToDevice(const void* host_src, int64_t bytes, void* dst) override {
    if (bytes <= 0) return;
    // From pageable memory the copy is staged before this returns: the caller may reuse
    // host_src at once.
    Check(
        cudaMemcpyAsync(dst, host_src, static_cast<size_t>(bytes), cudaMemcpyHostToDevice, stream_),
        "CopyToDevice");
  }

  void CopyToHost(const void* src, int64_t bytes, void* host_dst) override {
    if (bytes <= 0) return;
    Check(
        cudaMemcpyAsync(host_dst, src, static_cast<size_t>(bytes), cudaMemcpyDeviceToHost, stream_),
        "CopyToHost");
    Check(cudaStreamSynchronize(stream_), "CopyToHost");
  }

  // ---- Steps

  void BeginStep() override {}

  absl::Status Synchronize() override {
    Check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    absl::Status s = std::move(error_);
    error_ = absl::OkStatus();
    return s;
  }

  // ---- Dense ops

  void MatMul(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
              float* y) override {
    if (m <= 0 || w.rows <= 0) return;
    const bool bf16 = w.precision == MatMulPrecision::kBf16Dot;
#if !defined(SPANSERVE_CUDA_EMULATION)
    if (bf16 && w.dtype == DType::kBF16 && m >= kCublasMinRows) {
      CublasBf16(x, m, w, bias, y);
      return;
    }
#endif
    cuda::MatMul(stream_, x, m, w.cols, w.data, w.dtype, w.rows,
                 bias != nullptr ? bias->data : nullptr,
                 bias != nullptr ? bias->dtype : DType::kF32, bf16, y);
    Launched("MatMul");
  }

  void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t n,
                       float* out) override {
    if (n <= 0) return;
    cuda::EmbeddingLookup(stream_, table.data, table.dtype, table.cols, ids, n, out);
    Launched("EmbeddingLookup");
  }

  void RmsNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain, float eps,
               float* out) override {
    if (tokens <= 0) return;
    cuda::RmsNorm(stream_, x, tokens, dim, gain.data, gain.dtype, eps, out);
    Launched("RmsNorm");
  }

  void LayerNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
                 const WeightVector* bias, float eps, float* out) override {
    if (tokens <= 0) return;
    cuda::LayerNorm(stream_, x, tokens, dim, gain.data, gain.dtype,
                    bias != nullptr ? bias->data : nullptr,
                    bias != nullptr ? bias->dtype : DType::kF32, eps, out);
    Launched("LayerNorm");
  }

  void RopeTables(int64_t max_positions, int64_t head_dim, double theta, const RopeScaling& scaling,
                  float* cos_table, float* sin_table) override {
    // Computed on the host with the CPU backend's arithmetic, once per model.
    const int64_t n = max_positions * (head_dim / 2);
    std::vector<float> c(static_cast<size_t>(n)), s(static_cast<size_t>(n));
    cpu::RopeTables(max_positions, head_dim, theta, scaling, c.data(), s.data());
    // On the stream, after the tables' zeroing by Allocate (cudaMemcpy would run on the
    // legacy default stream, unordered with ours).
    CopyToDevice(c.data(), n * static_cast<int64_t>(sizeof(float)), cos_table);
    CopyToDevice(s.data(), n * static_cast<int64_t>(sizeof(float)), sin_table);
    Check(cudaStreamSynchronize(stream_), "RopeTables");
  }

  void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim,
                 const int32_t* positions, const float* cos_table,
                 const float* sin_table) override {
    if (tokens <= 0) return;
    cuda::ApplyRope(stream_, x, tokens, heads, head_dim, positions, cos_table, sin_table);
    Launched("ApplyRope");
  }

  void SiluMul(const float* gate, const float* up, int64_t n, float* out) override {
    if (n <= 0) return;
    cuda::SiluMul(stream_, gate, up, n, out);
    Launched("SiluMul");
  }

  void GeluTanhMul(const float* gate, const float* up, int64_t n, float* out) override {
    if (n <= 0) return;
    cuda::GeluTanhMul(stream_, gate, up, n, out);
    Launched("GeluTanhMul");
  }

  void SoftCap(float* x, int64_t n, float cap) override {
    if (n <= 0) return;
    cuda::SoftCap(stream_, x, n, cap);
    Launched("SoftCap");
  }

  void Add(const float* x, float* y, int64_t n) override {
    if (n <= 0) return;
    cuda::Add(stream_, x, y, n);
    Launched("Add");
  }

  void Axpby(float a, const float* x, float b, float* y, int64_t n) override {
    if (n <= 0) return;
    cuda::Axpby(stream_, a, x, b, y, n);
    Launched("Axpby");
  }

  void Copy(const float* src, int64_t n, float* dst) override {
    if (n <= 0 || src == dst) return;
    Check(cudaMemcpyAsync(dst, src, static_cast<size_t>(n) * sizeof(float),
                          cudaMemcpyDeviceToDevice, stream_),
          "Copy");
  }

  double SumOfSquares(const float* x, int64_t n) override {
    if (n <= 0) return 0.0;
    double* d = static_cast<double*>(Grow(sumsq_, sizeof(double), "SumOfSquares"));
    if (d == nullptr) return 0.0;
    cuda::SumOfSquares(stream_, x, n, d);
    Launched("SumOfSquares");
    double result = 0.0;
    CopyToHost(d, sizeof(double), &result);
    return result;
  }

  // ---- Attention

  void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                    const float* k, const float* v) override {
    if (num_seqs <= 0) return;
    DeviceBatch batch;
    if (!UploadBatch(layer, seqs, num_seqs, &batch)) return;
    cuda::PagedKvWrite(stream_, layer, batch, k, v);
    Launched("PagedKvWrite");
  }

  void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                      const float* q, int32_t heads, float scale, float* out) override {
    if (num_seqs <= 0) return;
    // The kernels' limits (the model's config checks keep every model inside them).
    if (layer.head_dim > 512 || layer.kv_heads <= 0 || heads % layer.kv_heads != 0) {
      if (error_.ok()) {
        error_ = absl::InvalidArgumentError(absl::StrCat(
            "CUDA PagedAttention: head_dim ", layer.head_dim, " (at most 512) and ", heads,
            " heads over ", layer.kv_heads, " KV heads (a multiple) are outside its limits"));
      }
      return;
    }
    DeviceBatch batch;
    if (!UploadBatch(layer, seqs, num_seqs, &batch)) return;
    const int64_t floats = PagedAttentionScratchFloats(layer, batch, heads);
    float* scratch = nullptr;
    if (floats > 0) {
      scratch = static_cast<float*>(Grow(attn_scratch_, floats * 4, "PagedAttention"));
      if (scratch == nullptr) return;
    }
    cuda::PagedAttention(stream_, layer, batch, q, heads, scale, out, scratch);
    Launched("PagedAttention");
  }

  // ---- Rows

  void GatherRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                  int32_t divisor, float* dst) override {
    if (count <= 0) return;
    cuda::GatherRows(stream_, src, width, rows, count, divisor, dst);
    Launched("GatherRows");
  }

  void ScatterRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                   float* dst) override {
    if (count <= 0) return;
    cuda::ScatterRows(stream_, src, width, rows, count, dst);
    Launched("ScatterRows");
  }

  // ---- Mixture of experts

  void MoeRoute(float* logits, int64_t tokens, int32_t experts, RouterScoring scoring,
                int32_t top_k, bool normalize, int32_t* top_expert, float* top_weight) override {
    if (tokens <= 0) return;
    cuda::MoeRoute(stream_, logits, tokens, experts, scoring, top_k, normalize, top_expert,
                   top_weight);
    Launched("MoeRoute");
  }

  void MoeGroup(const int32_t* top_expert, int64_t slots, int32_t experts, int32_t* offsets,
                int32_t* rows) override {
    // The host sizes each expert's product from the offsets, so the grouping is done here:
    // a stable counting sort of the slots by expert, as the CPU backend does.
    std::fill(offsets, offsets + experts + 1, 0);
    if (slots <= 0) return;
    host_experts_.resize(static_cast<size_t>(slots));
    CopyToHost(top_expert, slots * sizeof(int32_t), host_experts_.data());
    for (int64_t i = 0; i < slots; ++i) {
      const int32_t e = host_experts_[i];
      if (e >= 0 && e < experts) ++offsets[e + 1];
    }
    for (int32_t e = 0; e < experts; ++e) offsets[e + 1] += offsets[e];
    host_rows_.assign(static_cast<size_t>(slots), 0);
    std::vector<int32_t> next(offsets, offsets + experts);
    for (int64_t i = 0; i < slots; ++i) {
      const int32_t e = host_experts_[i];
      if (e >= 0 && e < experts) host_rows_[next[e]++] = static_cast<int32_t>(i);
    }
    CopyToDevice(host_rows_.data(), offsets[experts] * sizeof(int32_t), rows);
  }

  void MoeCombine(const float* slot_out, const float* top_weight, int64_t tokens, int32_t top_k,
                  int64_t width, float* out) override {
    if (tokens <= 0) return;
    cuda::MoeCombine(stream_, slot_out, top_weight, tokens, top_k, width, out);
    Launched("MoeCombine");
  }

  void GatedAdd(const float* gate_logits, const float* x, int64_t tokens, int64_t width,
                float* y) override {
    if (tokens <= 0) return;
    cuda::GatedAdd(stream_, gate_logits, x, tokens, width, y);
    Launched("GatedAdd");
  }

 private:
  // Remembers the first failure of an op; Synchronize returns it.
  void Check(cudaError_t e, const char* op) {
    if (e == cudaSuccess) return;
    cudaGetLastError();
    if (error_.ok()) error_ = absl::InternalError(absl::StrCat("CUDA ", op, ": ", CudaError(e)));
  }
  void Launched(const char* op) { Check(cudaGetLastError(), op); }

  absl::StatusOr<void*> AllocateOwned(int64_t bytes) {
    if (bytes <= 0) return nullptr;
    void* p = nullptr;
    if (cudaError_t e = cudaMalloc(&p, static_cast<size_t>(bytes)); e != cudaSuccess) {
      cudaGetLastError();
      return absl::ResourceExhaustedError(absl::StrFormat(
          "cudaMalloc of %d bytes for a weight failed with %s", bytes, CudaError(e)));
    }
    owned_.push_back(p);
    return p;
  }

  // The buffer, at least `bytes` long; null (and the error remembered) when it cannot grow.
  void* Grow(Scratch& s, int64_t bytes, const char* op) {
    if (s.bytes >= bytes) return s.data;
    if (s.data != nullptr) {
      Check(cudaStreamSynchronize(stream_), op);
      cudaFree(s.data);
      s.data = nullptr;
      s.bytes = 0;
    }
    const int64_t want = std::max<int64_t>(bytes, 256) * 3 / 2;
    if (cudaError_t e = cudaMalloc(&s.data, static_cast<size_t>(want)); e != cudaSuccess) {
      s.data = nullptr;
      Check(e, op);
      return nullptr;
    }
    s.bytes = want;
    return s.data;
  }

  // Uploads the batch's descriptors: the sequences, their block tables (as many blocks as
  // each context spans) and each row's sequence. Every layer of a step passes the same
  // ones, so they are uploaded only when they change.
  bool UploadBatch(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                   DeviceBatch* batch) {
    host_seqs_.clear();
    host_tables_.clear();
    int64_t rows = 0;
    int32_t max_context = 0;
    for (int32_t i = 0; i < num_seqs; ++i) {
      const AttentionSeq& s = seqs[i];
      const int32_t context = s.cached + s.num_new;
      max_context = std::max(max_context, context);
      rows = std::max<int64_t>(rows, s.row_begin + s.num_new);
      DeviceSeq d{};
      d.table_offset = static_cast<int32_t>(host_tables_.size());
      d.cached = s.cached;
      d.num_new = s.num_new;
      d.row_begin = s.row_begin;
      host_seqs_.push_back(d);
      const int32_t blocks = (context + layer.block_size - 1) / layer.block_size;
      host_tables_.insert(host_tables_.end(), s.block_table, s.block_table + blocks);
    }
    host_row_seq_.assign(static_cast<size_t>(rows), -1);
    for (int32_t i = 0; i < num_seqs; ++i) {
      for (int32_t r = 0; r < seqs[i].num_new; ++r) host_row_seq_[seqs[i].row_begin + r] = i;
    }
    const bool same = host_seqs_.size() == last_seqs_.size() && host_tables_ == last_tables_ &&
                      host_row_seq_ == last_row_seq_ &&
                      std::memcmp(host_seqs_.data(), last_seqs_.data(),
                                  host_seqs_.size() * sizeof(DeviceSeq)) == 0;
    if (!same) {
      void* d_seqs = Grow(seqs_, static_cast<int64_t>(host_seqs_.size() * sizeof(DeviceSeq)),
                          "attention descriptors");
      void* d_tables = Grow(tables_, static_cast<int64_t>(host_tables_.size() + 1) * 4,
                            "attention block tables");
      void* d_rows =
          Grow(row_seq_, static_cast<int64_t>(host_row_seq_.size() + 1) * 4, "attention rows");
      if (d_seqs == nullptr || d_tables == nullptr || d_rows == nullptr) {
        last_seqs_.clear();
        return false;
      }
      CopyToDevice(host_seqs_.data(), host_seqs_.size() * sizeof(DeviceSeq), d_seqs);
      CopyToDevice(host_tables_.data(), host_tables_.size() * 4, d_tables);
      CopyToDevice(host_row_seq_.data(), host_row_seq_.size() * 4, d_rows);
      last_seqs_ = host_seqs_;
      last_tables_ = host_tables_;
      last_row_seq_ = host_row_seq_;
    }
    batch->seqs = static_cast<const DeviceSeq*>(seqs_.data);
    batch->num_seqs = num_seqs;
    batch->block_tables = static_cast<const int32_t*>(tables_.data);
    batch->row_seq = static_cast<const int32_t*>(row_seq_.data);
    batch->rows = rows;
    batch->max_context = max_context;
    return true;
  }

  cudaDeviceProp prop_{};
  cudaStream_t stream_ = nullptr;
#if !defined(SPANSERVE_CUDA_EMULATION)
  cublasHandle_t cublas_ = nullptr;
  void CublasBf16(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                  float* y);
#endif
  absl::Status error_;
  std::vector<void*> owned_;
  Scratch seqs_, tables_, row_seq_, attn_scratch_, bf16_x_, sumsq_;
  std::vector<DeviceSeq> host_seqs_;
  std::vector<int32_t> host_tables_;
  std::vector<int32_t> host_row_seq_;
  std::vector<DeviceSeq> last_seqs_;
  std::vector<int32_t> last_tables_;
  std::vector<int32_t> last_row_seq_;
  std::vector<int32_t> host_experts_;
  std::vector<int32_t> host_rows_;
};

#if !defined(SPANSERVE_CUDA_EMULATION)
// y = x · Wᵀ on the tensor cores: x rounded to bf16 (as kBf16Dot asks), W bf16 [n, k]
// row-major, f32 accumulation and output. Column-major, that is yᵀ[n, m] = W · xᵀ.
void CudaBackend::CublasBf16(const float* x, int64_t m, const WeightMatrix& w,
                             const WeightVector* bias, float* y) {
  const int64_t k = w.cols;
  const int64_t n = w.rows;
  auto* xb = static_cast<uint16_t*>(Grow(bf16_x_, m * k * 2, "MatMul"));
  if (xb == nullptr) return;
  cuda::RoundToBf16(stream_, x, m * k, xb);
  Launched("MatMul (rounding to bf16)");
  const float alpha = 1.0f, beta = 0.0f;
  const cublasStatus_t st =
      cublasGemmEx(cublas_, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(n), static_cast<int>(m),
                   static_cast<int>(k), &alpha, w.data, CUDA_R_16BF, static_cast<int>(k), xb,
                   CUDA_R_16BF, static_cast<int>(k), &beta, y, CUDA_R_32F, static_cast<int>(n),
                   CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
  if (st != CUBLAS_STATUS_SUCCESS && error_.ok()) {
    error_ = absl::InternalError(absl::StrCat("cuBLAS MatMul (cublasGemmEx bf16, m=", m, " n=", n,
                                              " k=", k, "): ", cublasGetStatusString(st)));
  }
  if (bias != nullptr) {
    AddBias(stream_, y, m, n, bias->data, bias->dtype);
    Launched("MatMul (bias)");
  }
}
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> CreateCudaBackend(const BackendOptions& options) {
  auto backend = std::make_unique<CudaBackend>();
  RETURN_IF_ERROR(backend->Init());
  return backend;
}

}  // namespace spanserve::kernels::cuda
