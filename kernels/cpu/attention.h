// Causal grouped-query attention that reads and writes a paged KV cache directly.
#pragma once

#include <cstdint>

#include "common/dtype.h"

namespace spanserve::kernels::cpu {

// One layer's slice of the paged KV pool. Block b holds tokens [b*block_size, ...) of
// whatever sequence owns it; layout of k and v: [num_blocks, block_size, kv_heads, head_dim],
// elements of `dtype`: f32 (exact), or bf16 (half the bytes; PagedKvWrite rounds each value
// to nearest-even and attention widens it back exactly).
struct PagedKvLayer {
  void* k = nullptr;
  void* v = nullptr;
  int32_t num_blocks = 0;
  int32_t block_size = 0;
  int32_t kv_heads = 0;
  int32_t head_dim = 0;
  DType dtype = DType::kF32;  // kF32 or kBF16
};

// One sequence's share of a batch. Its new tokens are rows [row_begin, row_begin +
// num_new) of q/k/v/out and sit at positions [cached, cached + num_new); the cache already
// holds its first `cached` tokens. block_table[i] is the physical block of logical block i
// and must cover cached + num_new tokens.
struct AttentionSeq {
  const int32_t* block_table = nullptr;
  int32_t cached = 0;
  int32_t num_new = 0;
  int64_t row_begin = 0;
};

// Stores rows of k and v ([rows, kv_heads, head_dim]) into their sequences' blocks.
void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                  const float* k, const float* v);

// out[r, h, :] = softmax(scale · q[r, h, :] · Kᵀ) · V over the positions 0..p of row r's
// sequence (p = its position), with K/V of kv head h / (heads / kv_heads), read from the
// cache (call PagedKvWrite first). q, out: [rows, heads, head_dim]; head_dim <= 512 and
// heads a multiple of kv_heads.
// Each output row is computed in one fixed order over positions, so it does not depend on
// the batch, on chunking of the prompt, or on thread count. No heap allocation.
void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                    const float* q, int32_t heads, float scale, float* out);

}  // namespace spanserve::kernels::cpu
