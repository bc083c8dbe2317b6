// The CUDA kernels built for the CPU emulation (kernels/cuda/compat.h): the same sources as
// the plugin's, compiled by the host compiler with SPANSERVE_CUDA_EMULATION.
#include "kernels/cuda/attention.cu"    // NOLINT(bugprone-suspicious-include)
#include "kernels/cuda/bias.cu"         // NOLINT(bugprone-suspicious-include)
#include "kernels/cuda/elementwise.cu"  // NOLINT(bugprone-suspicious-include)
#include "kernels/cuda/matmul.cu"       // NOLINT(bugprone-suspicious-include)
