// Fuzzes GGUF reading: GgufFile::Parse (header, metadata, tensor infos), then what the
// loader reads from a file that parses: the typed metadata accessors, the model config
// (GgufModelConfig), the tokenizer (GgufVocabulary → Tokenizer::FromVocabulary), the
// dequantization of small tensors, and, for a config that loads, the weight store the model
// binds (GgufWeights: names, blocks kept or widened, Q/K rows unpermuted, stacked experts
// split).
//
// Input: the whole file.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "runtime/gguf/dequantize.h"
#include "runtime/gguf/gguf_file.h"
#include "runtime/loader/gguf_tokenizer.h"
#include "runtime/model/gguf_model.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

using spanserve::gguf::GgufFile;
using spanserve::gguf::TensorInfo;

// Bounds that keep one input well under a millisecond (the parser itself has none).
constexpr size_t kMaxTokens = 512;
constexpr int64_t kMaxDequantElements = 1 << 14;
constexpr int64_t kMaxWidenedBytes = 64 << 20;

void ReadMetadata(const GgufFile& file) {
  for (const auto& [key, value] : file.metadata()) {
    SPANSERVE_CHECK(file.Has(key));
    (void)value.TypeName();
    (void)file.GetInt(key);
    (void)file.GetFloat(key);
    (void)file.GetBool(key);
    (void)file.GetString(key);
    (void)file.GetStringArray(key);
    if (value.type != spanserve::gguf::ValueType::kArray || value.count <= (1u << 16)) {
      (void)file.GetIntArray(key);
      (void)file.GetFloatArray(key);
    }
  }
}

void ReadTensors(const GgufFile& file) {
  for (const TensorInfo& t : file.tensors()) {
    SPANSERVE_CHECK(file.FindTensor(t.name) != nullptr);
    SPANSERVE_CHECK(!t.ne.empty() && t.ne.size() <= 4);
    for (const int64_t d : t.ne) SPANSERVE_CHECK(d > 0);
    SPANSERVE_CHECK(t.nbytes >= 0);
    SPANSERVE_CHECK_LE(static_cast<uint64_t>(t.nbytes), file.file_size());
    (void)t.TorchShape();
    (void)spanserve::gguf::TensorTypeName(t.type);
    const int64_t n = t.numel();
    if (spanserve::gguf::CanDequantize(t.type) && n > 0 && n <= kMaxDequantElements) {
      std::vector<float> out(static_cast<size_t>(n));
      SPANSERVE_CHECK(spanserve::gguf::DequantizeToF32(file, t, out).ok());
    }
  }
}

void ReadTokenizer(const GgufFile& file) {
  absl::StatusOr<spanserve::tokenizer::VocabularySpec> spec =
      spanserve::loader::GgufVocabulary(file);
  if (!spec.ok() || spec->tokens.size() > kMaxTokens || spec->merges.size() > kMaxTokens) return;
  absl::StatusOr<std::unique_ptr<spanserve::tokenizer::Tokenizer>> tok =
      spanserve::tokenizer::Tokenizer::FromVocabulary(*spec);
  if (!tok.ok()) return;
  const spanserve::tokenizer::Tokenizer& t = **tok;
  for (const char* text : {"Hello world", " a  b\n\tc", "\xc3\xa9t\xc3\xa9 \xe2\x96\x81x 123"}) {
    absl::StatusOr<std::vector<int32_t>> ids = t.Encode(text, /*add_special_tokens=*/true);
    if (!ids.ok()) continue;
    for (const int32_t id : *ids) {
      SPANSERVE_CHECK(id >= 0 && id < t.vocab_size());
    }
    SPANSERVE_CHECK(spanserve::fuzz::IsValidUtf8(t.Decode(*ids, false)));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<std::unique_ptr<GgufFile>> file =
      GgufFile::Parse(std::span<const uint8_t>(data, size), "fuzz.gguf");
  if (!file.ok()) {
    SPANSERVE_CHECK(file.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  ReadMetadata(**file);
  ReadTensors(**file);
  absl::StatusOr<spanserve::model::ModelConfig> config = spanserve::model::GgufModelConfig(**file);
  if (config.ok()) {
    // What the model builds from: every scalar usable (finite, positive).
    SPANSERVE_CHECK(std::isfinite(config->norm_eps) && config->norm_eps > 0);
    SPANSERVE_CHECK(std::isfinite(config->rope_theta) && config->rope_theta > 0);
    SPANSERVE_CHECK(std::isfinite(config->rope_scaling.factor) && config->rope_scaling.factor > 0);
    SPANSERVE_CHECK(config->hidden_size > 0 && config->num_layers > 0 && config->vocab_size > 0);
    SPANSERVE_CHECK(config->num_heads > 0 && config->num_heads % config->num_kv_heads == 0);
  }
  ReadTokenizer(**file);
  if (config.ok()) {
    // A bad tensor is INVALID_ARGUMENT (or RESOURCE_EXHAUSTED past the widening limit).
    absl::StatusOr<std::unique_ptr<spanserve::model::WeightStore>> weights =
        spanserve::model::GgufWeights(std::shared_ptr<const GgufFile>(std::move(*file)), *config,
                                      kMaxWidenedBytes);
    SPANSERVE_CHECK(weights.ok() || weights.status().code() == absl::StatusCode::kInvalidArgument ||
                    weights.status().code() == absl::StatusCode::kResourceExhausted);
  }
  return 0;
}
