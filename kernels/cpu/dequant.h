// The dequantization the CPU kernels use: kernels/quant.h (host code, implemented here
// in kernels/cpu/dequant.cc), named in kernels::cpu too.
#pragma once

#include "kernels/quant.h"

namespace spanserve::kernels::cpu {

using kernels::DequantizeQ4_0;
using kernels::DequantizeQ4_1;
using kernels::DequantizeQ8_0;
using kernels::kQuantBlock;
using kernels::WidenToF32;

}  // namespace spanserve::kernels::cpu
