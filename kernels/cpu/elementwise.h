// Small element-wise and row-wise kernels.
#pragma once

#include <cstdint>

namespace spanserve::kernels::cpu {

// out[i] = silu(gate[i]) * up[i]; out may alias gate or up.
void SiluMul(const float* gate, const float* up, int64_t n, float* out);

// out[i] = gelu_tanh(gate[i]) * up[i] (kernels::Backend::GeluTanhMul); out may alias gate or up.
void GeluTanhMul(const float* gate, const float* up, int64_t n, float* out);

// x[i] = cap · tanh(x[i] / cap) (kernels::Backend::SoftCap).
void SoftCap(float* x, int64_t n, float cap);

// y[i] = a * x[i] + b * y[i]
void Axpby(float a, const float* x, float b, float* y, int64_t n);

// y[i] += x[i]
void Add(const float* x, float* y, int64_t n);

// Row-wise softmax in place over x [rows, cols], f32, max-subtracted.
void Softmax(float* x, int64_t rows, int64_t cols);

// Row-wise log-softmax in place.
void LogSoftmax(float* x, int64_t rows, int64_t cols);

// Index of the largest element (the first one on ties).
int64_t ArgMax(const float* x, int64_t n);

}  // namespace spanserve::kernels::cpu
