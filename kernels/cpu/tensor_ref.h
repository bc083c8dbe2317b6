// The weight views the CPU kernels take: kernels/types.h, named here in kernels::cpu too.
#pragma once

#include "kernels/types.h"

namespace spanserve::kernels::cpu {

using kernels::MatMulPrecision;
using kernels::QuantBlockBytes;
using kernels::QuantType;
using kernels::WeightAt;
using kernels::WeightMatrix;
using kernels::WeightVector;

}  // namespace spanserve::kernels::cpu
