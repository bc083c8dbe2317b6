// Rotary position embedding, Hugging Face Llama ("rotate_half") pairing: element i is
// rotated with element i + head_dim/2.
#pragma once

#include <cstdint>

#include "kernels/types.h"

namespace spanserve::kernels::cpu {

// Fills cos/sin tables [max_positions, head_dim/2] the way transformers 4.46.3 does in f32:
// inv_freq[i] = 1 / theta^(2i/head_dim) (f32), scaled as `scaling` says with the f32 steps
// of transformers' rope init functions; angle = pos * inv_freq[i] (kLinear: (pos / factor)
// * inv_freq[i]) rounded to f32, then cos/sin of that angle, times the attention factor.
// Row r holds position scaling.first_position + r; kDynamic and kLongRope compute each
// row's inv_freq for its own sequence length (types.h).
void RopeTables(int64_t max_positions, int64_t head_dim, double theta, const RopeScaling& scaling,
                float* cos_table, float* sin_table);

// The scaled inv_freq[head_dim / 2] RopeTables uses (exposed for tests). kDynamic: those of
// the sequence length max(dynamic_length, context_length); kLongRope: of dynamic_length.
void RopeInvFreq(int64_t head_dim, double theta, const RopeScaling& scaling, float* inv_freq);

// Rotates x [tokens, heads, head_dim] in place; token t sits at positions[t].
void ApplyRope(float* x, int64_t tokens, int64_t heads, int64_t head_dim, const int32_t* positions,
               const float* cos_table, const float* sin_table);

}  // namespace spanserve::kernels::cpu
