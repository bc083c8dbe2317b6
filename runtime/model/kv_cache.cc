// KV storage for every layer, in one allocation of the backend's memory.
#include <string>

#include "absl/strings/str_cat.h"
#include "kernels/backend.h"
#include "runtime/model/model.h"

namespace spanserve::model {

int64_t KvCache::BytesPerBlock(const ModelConfig& c, int32_t block_size, DType dtype) {
  return 2LL * c.num_layers * block_size * c.num_kv_heads * c.head_dim *
         static_cast<int64_t>(DTypeSize(dtype));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(kernels::Backend& backend,
                                                         const ModelConfig& config,
                                                         int32_t block_size, int32_t num_blocks,
                                                         DType dtype) {
  if (block_size <= 0 || num_blocks <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache needs positive block_size and num_blocks, got ", block_size, " and ",
                     num_blocks));
  }
  if (dtype != DType::kF32 && dtype != DType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrCat("KV cache dtype must be f32 or bf16, got ", std::string(DTypeName(dtype))));
  }
  std::unique_ptr<KvCache> cache(new KvCache());
  cache->backend_ = &backend;
  cache->block_size_ = block_size;
  cache->num_blocks_ = num_blocks;
  cache->dtype_ = dtype;
  cache->bytes_ = BytesPerBlock(config, block_size, dtype) * num_blocks;
  cache->layer_bytes_ = cache->bytes_ / (2 * config.num_layers);  // one layer's K (or V)
  absl::StatusOr<void*> p = backend.Allocate(cache->bytes_);
  if (!p.ok()) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "cannot allocate ", cache->bytes_, " bytes for the KV cache: ", p.status().message()));
  }
  cache->base_ = static_cast<char*>(*p);
  return cache;
}

KvCache::~KvCache() {
  if (base_ != nullptr) backend_->Free(base_, bytes_);
}

}  // namespace spanserve::model
