// Fuzzes the model-directory parsers of runtime/model: config.json (ParseModelConfig) and
// a safetensors file's header (WeightStore::OpenFile, which validates the header JSON,
// dtypes, shapes, offsets and overlaps).
//
// Input: byte 0 selects the parser (even: config.json, odd: safetensors); the rest is the
// config text or the whole safetensors file. The file lives in a memfd: nothing is written
// to disk.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "runtime/model/config.h"
#include "runtime/model/weights.h"

namespace {

using spanserve::model::ModelConfig;
using spanserve::model::WeightStore;

void FuzzConfig(std::string_view text) {
  absl::StatusOr<ModelConfig> config = spanserve::model::ParseModelConfig(text);
  if (!config.ok()) {
    SPANSERVE_CHECK(config.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  const ModelConfig& c = *config;
  SPANSERVE_CHECK(c.hidden_size > 0 && c.intermediate_size > 0 && c.num_layers > 0);
  SPANSERVE_CHECK(c.num_heads > 0 && c.num_kv_heads > 0 && c.vocab_size > 0);
  SPANSERVE_CHECK_EQ(c.num_heads % c.num_kv_heads, 0);
  SPANSERVE_CHECK(c.head_dim > 0 && c.head_dim % 2 == 0);
  SPANSERVE_CHECK(c.max_position_embeddings > 0);
  // Dynamic NTK reaches past max_position_embeddings, within the bound the parser enforces.
  SPANSERVE_CHECK(c.MaxPositions() >= c.max_position_embeddings &&
                  c.MaxPositions() <= std::max(c.max_position_embeddings, 1 << 24));
  SPANSERVE_CHECK(c.norm_eps > 0 && c.skip_scale > 0 && c.branch_scale > 0);
  SPANSERVE_CHECK(c.mix_post_layers >= 0 && c.mix_post_layers <= c.num_layers);
  if (c.is_moe()) {
    SPANSERVE_CHECK(c.moe.top_k >= 1 && c.moe.top_k <= c.moe.num_experts);
    SPANSERVE_CHECK(c.moe.decoder_sparse_step >= 1);
  }
  // What the model builder asks of every layer (bounded: num_layers may be huge).
  const int layers = c.num_layers < 4096 ? c.num_layers : 4096;
  for (int i = 0; i < layers; ++i) {
    (void)c.LayerIsMoe(i);
    (void)spanserve::model::NormPlacementName(c.LayerPlacement(i));
  }
}

void FuzzSafetensors(const uint8_t* data, size_t size) {
  static spanserve::fuzz::MemFile* const file = new spanserve::fuzz::MemFile();
  file->Write(data, size);
  absl::StatusOr<std::unique_ptr<WeightStore>> store = WeightStore::OpenFile(file->path());
  if (!store.ok()) {
    SPANSERVE_CHECK(store.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  // Tensors are disjoint ranges of the data section, which follows the 8-byte length.
  SPANSERVE_CHECK((*store)->total_bytes() >= 0);
  SPANSERVE_CHECK_LE(static_cast<size_t>((*store)->total_bytes()), size - 8);
  std::vector<std::string> names = (*store)->Names();
  for (const std::string& name : names) {
    SPANSERVE_CHECK((*store)->Has(name));
    // The wrong shape on purpose: the error path formats both shapes.
    const int64_t bogus[] = {-1};
    absl::StatusOr<spanserve::model::TensorView> view = (*store)->Get(name, bogus);
    SPANSERVE_CHECK(!view.ok());
  }
  (void)(*store)->CheckAllUsed();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  if (data[0] % 2 == 0) {
    FuzzConfig(std::string_view(reinterpret_cast<const char*>(data + 1), size - 1));
  } else {
    FuzzSafetensors(data + 1, size - 1);
  }
  return 0;
}
