// Normalisations over the last dimension, computed in f32 as PyTorch does.
#pragma once

#include <cstdint>

#include "kernels/cpu/tensor_ref.h"

namespace spanserve::kernels::cpu {

// out[t, :] = x[t, :] / sqrt(mean(x[t, :]²) + eps) * gain            (x: [tokens, dim])
// out may alias x.
void RmsNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain, float eps,
             float* out);

// out[t, :] = (x - mean) / sqrt(var + eps) * gain + bias    (biased variance; bias may be null)
// out may alias x.
void LayerNorm(const float* x, int64_t tokens, int64_t dim, const WeightVector& gain,
               const WeightVector* bias, float eps, float* out);

}  // namespace spanserve::kernels::cpu
