// The CUDA backend's kernels, as host functions that enqueue them on a stream (DESIGN.md §3).
// kernels/cuda/cuda_backend.cc maps each kernels::Backend op onto these; every pointer is
// device memory unless it says "host". Each launcher only enqueues: the caller checks
// cudaGetLastError after it and reports the op's name.
//
// The same sources build two ways (kernels/cuda/compat.h): with nvcc into the plugin
// libspanserve_cuda.so, and with the host compiler against the CPU emulation of
// kernels/cuda/emu.h, so every kernel is tested against the CPU backend on machines without
// a GPU (tests/unit/kernels/backend_ops_test.cc, the "cuda_emu" device).
//
// Arithmetic: f32 throughout (bf16/f16 weights widened exactly), reductions in a fixed order
// that does not depend on the batch, so a row's result never depends on the other rows.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/cuda/compat.h"
#include "kernels/types.h"

namespace spanserve::kernels::cuda {

// ---- Dense products (kernels/cuda/matmul.cu)
// y[m, n] = x[m, k] · W[n, k]ᵀ + bias[n]. w: row-major [n, k] of w_type (f32, bf16, f16);
// bias: n values of bias_type, or null. With round_x_to_bf16, each activation is first
// rounded to bf16 (nearest-even), as MatMulPrecision::kBf16Dot asks. Each y[i, j] is one
// f32 reduction over k whose order depends only on k (never on m, i or the launch shape).
void MatMul(cudaStream_t stream, const float* x, int64_t m, int64_t k, const void* w, DType w_type,
            int64_t n, const void* bias, DType bias_type, bool round_x_to_bf16, float* y);
// y[i, :] += bias (n values of `type`), for products that come back from cuBLAS without it
// (kernels/cuda/bias.cu).
void AddBias(cudaStream_t stream, float* y, int64_t m, int64_t n, const void* bias, DType type);
// out[i] = bf16 bits of x[i], rounded to nearest-even (the cuBLAS bf16 path's activations).
void RoundToBf16(cudaStream_t stream, const float* x, int64_t n, uint16_t* out);

// ---- Embeddings, norms, RoPE (kernels/cuda/elementwise.cu)
// out[t, :] = row ids[t] of table [rows, dim] (f32, bf16 or f16) widened to f32.
void EmbeddingLookup(cudaStream_t stream, const void* table, DType type, int64_t dim,
                     const int32_t* ids, int64_t n, float* out);
// As kernels::Backend::RmsNorm / LayerNorm (the CPU backend's arithmetic, kernels/cpu/norm.cc).
void RmsNorm(cudaStream_t stream, const float* x, int64_t tokens, int64_t dim, const void* gain,
             DType gain_type, float eps, float* out);
void LayerNorm(cudaStream_t stream, const float* x, int64_t tokens, int64_t dim, const void* gain,
               DType gain_type, const void* bias, DType bias_type, float eps, float* out);
// As kernels::Backend::ApplyRope; cos/sin tables [max_positions, head_dim / 2] on the device.
void ApplyRope(cudaStream_t stream, float* x, int64_t tokens, int64_t heads, int64_t head_dim,
               const int32_t* positions, const float* cos_table, const float* sin_table);
void SiluMul(cudaStream_t stream, const float* gate, const float* up, int64_t n, float* out);
void GeluTanhMul(cudaStream_t stream, const float* gate, const float* up, int64_t n, float* out);
// x[i] = cap · tanh(x[i] / cap) (kernels/cpu/elementwise.cc's order).
void SoftCap(cudaStream_t stream, float* x, int64_t n, float cap);
void Add(cudaStream_t stream, const float* x, float* y, int64_t n);
void Axpby(cudaStream_t stream, float a, const float* x, float b, float* y, int64_t n);
// *out = Σ x[i]² in double (one device double), deterministic for a given n.
void SumOfSquares(cudaStream_t stream, const float* x, int64_t n, double* out);

// ---- Rows and mixture of experts (kernels/cuda/elementwise.cu)
void GatherRows(cudaStream_t stream, const float* src, int64_t width, const int32_t* rows,
                int64_t count, int32_t divisor, float* dst);
void ScatterRows(cudaStream_t stream, const float* src, int64_t width, const int32_t* rows,
                 int64_t count, float* dst);
// As kernels::Backend::MoeRoute (kernels/cpu/cpu_backend.cc's arithmetic).
void MoeRoute(cudaStream_t stream, float* logits, int64_t tokens, int32_t experts,
              RouterScoring scoring, int32_t top_k, bool normalize, int32_t* top_expert,
              float* top_weight);
void MoeCombine(cudaStream_t stream, const float* slot_out, const float* top_weight, int64_t tokens,
                int32_t top_k, int64_t width, float* out);
void GatedAdd(cudaStream_t stream, const float* gate_logits, const float* x, int64_t tokens,
              int64_t width, float* y);

// ---- Attention over the paged KV pool (kernels/cuda/attention.cu)
// A sequence's share of the batch, on the device: its block table is
// block_tables[table_offset, ...), the rest as kernels::AttentionSeq.
struct DeviceSeq {
  int32_t table_offset;
  int32_t cached;
  int32_t num_new;
  int32_t unused;
  int64_t row_begin;
};
// The batch's attention descriptors, uploaded by the backend: row_seq[r] is the index in
// seqs of the sequence owning row r, or -1 for a row no sequence owns (left untouched).
struct DeviceBatch {
  const DeviceSeq* seqs;
  int32_t num_seqs;
  const int32_t* block_tables;
  const int32_t* row_seq;
  int64_t rows;
  int32_t max_context;  // the longest cached + num_new over the batch (host-computed)
};
// As kernels::Backend::PagedKvWrite (layer.dtype f32 or bf16, nearest-even).
void PagedKvWrite(cudaStream_t stream, const PagedKvLayer& layer, const DeviceBatch& batch,
                  const float* k, const float* v);
// Device floats PagedAttention needs as scratch for `batch` (0 when it needs none).
int64_t PagedAttentionScratchFloats(const PagedKvLayer& layer, const DeviceBatch& batch,
                                    int32_t heads);
// As kernels::Backend::PagedAttention; scratch holds PagedAttentionScratchFloats floats.
void PagedAttention(cudaStream_t stream, const PagedKvLayer& layer, const DeviceBatch& batch,
                    const float* q, int32_t heads, float scale, float* out, float* scratch);

}  // namespace spanserve::kernels::cuda
