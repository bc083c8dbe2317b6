#include "runtime/gguf/dequantize.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/thread_pool.h"
#include "kernels/quant.h"

namespace spanserve::gguf {
namespace {

namespace k = kernels;

// Elements per parallel chunk: a multiple of every block size (so no block, K-quant
// super-blocks included, straddles two chunks), big enough to amortise a task.
constexpr int64_t kChunk = 1 << 16;
static_assert(kChunk % k::kQuantBlock == 0 && kChunk % k::kQuantSuperBlock == 0);

}  // namespace

bool CanDequantize(TensorType type) {
  switch (type) {
    case TensorType::kF32:
    case TensorType::kF16:
    case TensorType::kBF16:
    case TensorType::kQ8_0:
    case TensorType::kQ4_0:
    case TensorType::kQ4_1:
    case TensorType::kQ5_0:
    case TensorType::kQ5_1:
    case TensorType::kQ2_K:
    case TensorType::kQ3_K:
    case TensorType::kQ4_K:
    case TensorType::kQ5_K:
    case TensorType::kQ6_K:
    case TensorType::kQ8_K:
    case TensorType::kIQ4_NL:
    case TensorType::kIQ4_XS:
      return true;
    default:
      return false;
  }
}

absl::Status DequantizeToF32(const GgufFile& file, const TensorInfo& tensor, std::span<float> out) {
  if (!CanDequantize(tensor.type)) {
    return absl::UnimplementedError(absl::StrCat(
        file.path(), ": tensor '", tensor.name, "' has type ", TensorTypeName(tensor.type),
        ", which this runtime cannot load yet (supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, "
        "Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, Q8_K, IQ4_NL, IQ4_XS)"));
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
  // On the pool the caller installed (common/thread_pool.h), if any.
  const int64_t chunks = (n + kChunk - 1) / kChunk;
  ParallelFor(chunks, 2, [&](int64_t chunk_begin, int64_t chunk_end) {
    for (int64_t begin = chunk_begin * kChunk; begin < std::min(n, chunk_end * kChunk);
         begin += kChunk) {
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
        case TensorType::kQ5_0:
          k::DequantizeQ5_0(in, len, dst + begin);
          break;
        case TensorType::kQ5_1:
          k::DequantizeQ5_1(in, len, dst + begin);
          break;
        case TensorType::kQ2_K:
          k::DequantizeQ2_K(in, len, dst + begin);
          break;
        case TensorType::kQ3_K:
          k::DequantizeQ3_K(in, len, dst + begin);
          break;
        case TensorType::kQ4_K:
          k::DequantizeQ4_K(in, len, dst + begin);
          break;
        case TensorType::kQ5_K:
          k::DequantizeQ5_K(in, len, dst + begin);
          break;
        case TensorType::kQ6_K:
          k::DequantizeQ6_K(in, len, dst + begin);
          break;
        case TensorType::kQ8_K:
          k::DequantizeQ8_K(in, len, dst + begin);
          break;
        case TensorType::kIQ4_NL:
          k::DequantizeIQ4_NL(in, len, dst + begin);
          break;
        case TensorType::kIQ4_XS:
          k::DequantizeIQ4_XS(in, len, dst + begin);
          break;
        default:
          break;  // excluded by CanDequantize above
      }
    }
  });
  return absl::OkStatus();
}

}  // namespace spanserve::gguf
