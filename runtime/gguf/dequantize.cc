#include "runtime/gguf/dequantize.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "kernels/quant.h"

namespace spanserve::gguf {
namespace {

namespace k = kernels;

// Elements per parallel chunk: a multiple of every block size, big enough to amortise a task.
constexpr int64_t kChunk = 1 << 16;

}  // namespace

bool CanDequantize(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
      return true;
    default:
      return false;
  }
}

absl::Status DequantizeToF32(const GgufFile& file, const TensorInfo& tensor, std::span<float> out) {
  if (!CanDequantize(tensor.type)) {
    return absl::UnimplementedError(absl::StrCat(
        file.path(), ": tensor '", tensor.name, "' has type ", TensorTypeName(tensor.type),
        ", which this runtime cannot load yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1)"));
  }
  const int64_t n = tensor.numel();
  if (static_cast<int64_t>(out.size()) != n) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", tensor.name, "' has ", n,
                                                   " elements but the output holds ", out.size()));
  }
  TypeTraits traits;
  GetTypeTraits(static_cast<uint32_t>(tensor.type), &traits);
  const TensorType type = tensor.type;
  const uint8_t* src = tensor.data;
  float* dst = out.data();
#pragma omp parallel for schedule(static)
  for (int64_t begin = 0; begin < n; begin += kChunk) {
    const int64_t len = std::min(kChunk, n - begin);
    const uint8_t* in = src + begin / traits.block_size * traits.block_bytes;
    switch (type) {
      case TensorType::kF32:
        k::WidenToF32(in, DType::kF32, len, dst + begin);
        break;
      case TensorType::kF16:
        k::WidenToF32(in, DType::kF16, len, dst + begin);
        break;
      case TensorType::kBF16:
        k::WidenToF32(in, DType::kBF16, len, dst + begin);
        break;
      case TensorType::kQ8_0:
        k::DequantizeQ8_0(in, len, dst + begin);
        break;
      case TensorType::kQ4_0:
        k::DequantizeQ4_0(in, len, dst + begin);
        break;
      case TensorType::kQ4_1:
        k::DequantizeQ4_1(in, len, dst + begin);
        break;
      default:
        break;  // excluded by CanDequantize above
    }
  }
  return absl::OkStatus();
}

}  // namespace spanserve::gguf
