// A compute backend: device memory and every op a forward pass needs, behind one table of
// virtual calls (DESIGN.md §3, shaped like ggml's ggml_backend_i). The model, its KV cache
// and its workspace hold a Backend& and never name a device; the CPU backend
// (kernels/cpu/cpu_backend.h) implements it over the CPU kernels, and is the oracle every
// other backend is tested against (tests/unit/kernels/backend_ops_test.cc).
//
// Memory. Pointers the ops take are device memory (Allocate), except where an op says
// "host": descriptors the backend reads on the host side (and uploads if it must). A
// backend whose device memory is the host's (host_memory()) lets callers skip copies.
//
// Ordering. Ops run in the order they are called; results reach the host through
// CopyToHost (or directly, when host_memory()), after Synchronize.
//
// Results. Every op documents its arithmetic; the CPU backend's is the reference, and the
// model's batch invariance (a row's result never depends on the rest of the batch) is a
// property every backend must keep.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "kernels/types.h"

namespace spanserve::kernels {

enum class Device : uint8_t { kCpu, kCuda };
std::string_view DeviceName(Device device);  // "cpu", "cuda"

struct BackendOptions {
  // CPU: compute threads, at most the CPUs the process may use (0: all of those).
  int num_threads = 0;
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  // E.g. "cpu (avx512, 2 threads)", for logs.
  virtual std::string description() const = 0;
  // Whether device memory is host memory (the CPU backend): pointers may be shared.
  virtual bool host_memory() const = 0;
  // Whether MatMulPrecision::kBf16Dot may run here.
  virtual bool SupportsBf16Dot() const = 0;
  // Bytes of device memory free now (what a KV pool may take), or -1 where device memory is
  // host memory (the caller reads MemAvailable).
  virtual int64_t FreeDeviceMemoryBytes() const { return -1; }
  // Whether MatMulPrecision::kInt8Dot (weights of a format Int8DotSupports) may run here.
  virtual bool SupportsInt8Dot() const { return false; }

  // ---- Memory
  // `bytes` of zeroed device memory, aligned to at least 64 bytes; pages never touched cost
  // no resident memory where the device allows it (the KV pool). RESOURCE_EXHAUSTED naming
  // the size when it cannot; nullptr for 0 bytes.
  virtual absl::StatusOr<void*> Allocate(int64_t bytes) = 0;
  virtual void Free(void* p, int64_t bytes) = 0;
  // A weight the ops can read, from its host view (usually a memory-mapped file). The CPU
  // backend reads it in place; a device backend copies it. The host view must outlive the
  // returned one when the backend reads in place. A device copy lives as long as the backend.
  virtual absl::StatusOr<WeightMatrix> UploadMatrix(const WeightMatrix& host) = 0;
  virtual absl::StatusOr<WeightVector> UploadVector(const WeightVector& host) = 0;
  virtual void CopyToDevice(const void* host_src, int64_t bytes, void* dst) = 0;
  virtual void CopyToHost(const void* src, int64_t bytes, void* host_dst) = 0;

  // ---- Steps
  // Before a forward pass's first op (the CPU backend sets its thread count here).
  virtual void BeginStep() = 0;
  // Waits for every op called so far; the first error of any of them.
  virtual absl::Status Synchronize() = 0;

  // ---- Dense ops (activations f32, row-major)
  // y[m, n] = x[m, k] · W[n, k]ᵀ + bias[n]; bias may be null; y must not alias x.
  virtual void MatMul(const float* x, int64_t m, const WeightMatrix& w, const WeightVector* bias,
                      float* y) = 0;
  // MatMul of one x by `count` matrices of its width (attention's Q, K and V; the FFN's gate
  // and up): each outs[i].y exactly as MatMul gives it, bit for bit. A backend may compute
  // them together (the CPU backend quantizes x once and runs them in one job); by default,
  // one MatMul each.
  virtual void MatMulShared(const float* x, int64_t m, const MatMulOutput* outs, int32_t count) {
    for (int32_t i = 0; i < count; ++i) MatMul(x, m, *outs[i].w, outs[i].bias, outs[i].y);
  }
  // out[t, :] = row ids[t] of `table` widened to f32. ids: device memory, in range.
  virtual void EmbeddingLookup(const WeightMatrix& table, const int32_t* ids, int64_t n,
                               float* out) = 0;
  // out[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * gain; out may alias x.
  virtual void RmsNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
                       float eps, float* out) = 0;
  // out[t, :] = (x - mean) / sqrt(var + eps) * gain + bias (bias may be null); may alias.
  virtual void LayerNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
                         const WeightVector* bias, float eps, float* out) = 0;
  // cos/sin tables [max_positions, head_dim / 2] as transformers computes them in f32,
  // frequencies scaled as `scaling` says (types.h). Host memory for the divisors.
  virtual void RopeTables(int64_t max_positions, int64_t head_dim, double theta,
                          const RopeScaling& scaling, float* cos_table, float* sin_table) = 0;
  // Rotates x [tokens, heads, head_dim] in place ("rotate_half"); token t at positions[t].
  virtual void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim,
                         const int32_t* positions, const float* cos_table,
                         const float* sin_table) = 0;
  // out[i] = silu(gate[i]) * up[i]; out may alias gate or up.
  virtual void SiluMul(const float* gate, const float* up, int64_t n, float* out) = 0;
  // out[i] = gelu_tanh(gate[i]) * up[i] (Gemma's GeGLU); out may alias gate or up.
  // gelu_tanh(g) = (0.5·g)·(1 + tanh(√(2/π)·(g + 0.044715·(g·g·g)))) in f32, in PyTorch's
  // order (gelu with approximate='tanh').
  virtual void GeluTanhMul(const float* gate, const float* up, int64_t n, float* out) = 0;
  // x[i] = cap · tanh(x[i] / cap) in f32 (s / cap, tanhf, times cap: transformers' order for
  // Gemma 2's final_logit_softcapping); cap > 0.
  virtual void SoftCap(float* x, int64_t n, float cap) = 0;
  // y[i] += x[i]
  virtual void Add(const float* x, float* y, int64_t n) = 0;
  // y[i] = a * x[i] + b * y[i]
  virtual void Axpby(float a, const float* x, float b, float* y, int64_t n) = 0;
  // dst[0, n) = src[0, n)
  virtual void Copy(const float* src, int64_t n, float* dst) = 0;
  // Σ x[i]² over [0, n) in double (the residual-RMS metric). The CPU backend sums in index
  // order; another backend may order the sum its own way (within 1e-12 relative).
  virtual double SumOfSquares(const float* x, int64_t n) = 0;

  // ---- Attention over the paged KV pool (kernels/types.h). seqs, and the block tables they
  // point to: host (a device backend uploads them).
  // Stores rows of k and v ([rows, kv_heads, head_dim]) into their sequences' blocks.
  virtual void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                            const float* k, const float* v) = 0;
  // Causal grouped-query attention of q [rows, heads, head_dim] over each row's sequence.
  virtual void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                              const float* q, int32_t heads, float scale, float* out) = 0;

  // ---- Rows
  // dst[r, :] = src[rows[r] / divisor, :] for r in [0, count); rows: device memory.
  virtual void GatherRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                          int32_t divisor, float* dst) = 0;
  // dst[rows[r], :] = src[r, :] for r in [0, count); rows: device memory.
  virtual void ScatterRows(const float* src, int64_t width, const int32_t* rows, int64_t count,
                           float* dst) = 0;

  // ---- Mixture of experts
  // Per token t of logits [tokens, experts] (overwritten with the scores): scores by
  // `scoring`, the top_k experts by score (ties to the lower id) into
  // top_expert/top_weight [tokens, top_k], their weights divided by their sum when
  // `normalize`.
  virtual void MoeRoute(float* logits, int64_t tokens, int32_t experts, RouterScoring scoring,
                        int32_t top_k, bool normalize, int32_t* top_expert, float* top_weight) = 0;
  // Groups the slots i = t·top_k + j by expert, stably: expert e's slots are
  // rows[offsets[e], offsets[e+1]) in increasing i. offsets [experts + 1]: host, complete
  // when the call returns (the host sizes each expert's GEMM from them).
  virtual void MoeGroup(const int32_t* top_expert, int64_t slots, int32_t experts, int32_t* offsets,
                        int32_t* rows) = 0;
  // out[t, :] = Σ_j top_weight[t, j] · slot_out[t·top_k + j, :], j in order from 0.
  virtual void MoeCombine(const float* slot_out, const float* top_weight, int64_t tokens,
                          int32_t top_k, int64_t width, float* out) = 0;
  // y[t, :] += g_t · x[t, :] with g_t = sigmoid(gate_logits[t]), or 1 when gate_logits is
  // null (the shared expert).
  virtual void GatedAdd(const float* gate_logits, const float* x, int64_t tokens, int64_t width,
                        float* y) = 0;
};

// The backend for `device`. The CPU backend is part of every build; the CUDA backend is
// the plugin libspanserve_cuda.so, loaded on first use from (in order) $SPANSERVE_CUDA_PLUGIN,
// the executable's folder, ../lib beside it, the build tree that made this binary, then the
// dynamic linker's search path. FAILED_PRECONDITION naming what is missing when the plugin,
// the CUDA libraries it needs, the driver or a device is absent.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(Device device,
                                                       const BackendOptions& options = {});

// The backend a --device setting names: "cpu", "cuda", or "auto" (CUDA when a CUDA backend
// can be made here, else the CPU). INVALID_ARGUMENT for another name.
absl::StatusOr<std::unique_ptr<Backend>> CreateBackend(std::string_view device,
                                                       const BackendOptions& options = {});

}  // namespace spanserve::kernels
