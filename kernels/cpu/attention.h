// Causal grouped-query attention that reads and writes a paged KV cache directly.
#pragma once

#include <cstdint>

#include "common/dtype.h"
#include "kernels/types.h"

namespace spanserve::kernels::cpu {

using kernels::AttentionSeq;
using kernels::PagedKvLayer;

// Stores rows of k and v ([rows, kv_heads, head_dim]) into their sequences' blocks.
void PagedKvWrite(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                  const float* k, const float* v);

// out[r, h, :] = softmax(scale · q[r, h, :] · Kᵀ) · V over the positions 0..p of row r's
// sequence (p = its position; positions p - layer.sliding_window + 1..p when the window is
// set), with K/V of kv head h / (heads / kv_heads), read from the cache (call PagedKvWrite
// first). With layer.logit_softcap = c > 0 each score s = scale · q·k becomes c · tanh(s / c)
// before the softmax. q, out: [rows, heads, head_dim]; head_dim <= 512 and heads a multiple
// of kv_heads.
// Each output row is computed in one fixed order over positions, so it does not depend on
// the batch, on chunking of the prompt, or on thread count: tiles of 32 positions and
// partitions of 512 at absolute positions, an online softmax per partition and the
// partitions folded in increasing order (as the CUDA kernels do, so the backends agree bit
// for bit). A batch with fewer items than threads can use deals its long rows out by
// partition. No heap allocation once the scratch for that has grown to the largest call.
void PagedAttention(const PagedKvLayer& layer, const AttentionSeq* seqs, int32_t num_seqs,
                    const float* q, int32_t heads, float scale, float* out);

}  // namespace spanserve::kernels::cpu
