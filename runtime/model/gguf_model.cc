#include "runtime/model/gguf_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <optional>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/meminfo.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/dequantize.h"

namespace spanserve::model {
namespace {

using json = nlohmann::json;
using gguf::GgufFile;
using gguf::TensorInfo;
using gguf::TensorType;

constexpr char kArch[] = "llama";
// The llama3 RoPE divisors (in the config, not a weight).
constexpr char kRopeFreqs[] = "rope_freqs.weight";

// A bad file is INVALID_ARGUMENT, whatever the accessor's code for a missing key.
absl::Status AsInvalid(const absl::Status& s) {
  if (s.ok() || absl::IsInvalidArgument(s)) return s;
  if (absl::IsNotFound(s)) {
    return absl::InvalidArgumentError(
        absl::StrCat(s.message(), " (required for a ", kArch, " model)"));
  }
  return s;
}

absl::StatusOr<int64_t> RequiredPositive(const GgufFile& f, const std::string& key) {
  absl::StatusOr<int64_t> v = f.GetInt(key);
  if (!v.ok()) return AsInvalid(v.status());
  if (*v <= 0 || *v > (1 << 30)) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": metadata key '", key, "' = ", *v, ", expected a positive size"));
  }
  return *v;
}

absl::StatusOr<std::optional<int64_t>> OptionalPositive(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(const int64_t v, RequiredPositive(f, key));
  return std::optional<int64_t>(v);
}

absl::StatusOr<std::optional<int64_t>> OptionalTokenId(const GgufFile& f, const std::string& key) {
  if (!f.Has(key)) return std::optional<int64_t>();
  ASSIGN_OR_RETURN(const int64_t v, f.GetInt(key));
  return std::optional<int64_t>(v);
}

// GGUF tensor name -> the runtime's name; empty if the architecture has no such tensor.
std::string RuntimeName(const std::string& name) {
  if (name == "token_embd.weight") return "model.embed_tokens.weight";
  if (name == "output_norm.weight") return "model.norm.weight";
  if (name == "output.weight") return "lm_head.weight";
  if (!absl::StartsWith(name, "blk.")) return "";
  const size_t dot = name.find('.', 4);
  int layer = 0;
  if (dot == std::string::npos || !absl::SimpleAtoi(name.substr(4, dot - 4), &layer) || layer < 0) {
    return "";
  }
  std::string rest = name.substr(dot + 1);
  std::string suffix;
  for (const char* s : {".weight", ".bias"}) {
    if (absl::EndsWith(rest, s)) suffix = s;
  }
  if (suffix.empty()) return "";
  rest.resize(rest.size() - suffix.size());
  static constexpr std::pair<const char*, const char*> kBlock[] = {
      {"attn_norm", "input_layernorm"}, {"ffn_norm", "post_attention_layernorm"},
      {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},
      {"attn_v", "self_attn.v_proj"},   {"attn_output", "self_attn.o_proj"},
      {"ffn_gate", "mlp.gate_proj"},    {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"},
  };
  for (const auto& [from, to] : kBlock) {
    if (rest == from) return absl::StrCat("model.layers.", layer, ".", to, suffix);
  }
  return "";
}

// Undoes llama.cpp's rotary permutation of Q/K rows in place: within each head of `dim`
// rows, GGUF row 2i + j holds Hugging Face row j·dim/2 + i (j ∈ {0, 1}).
void UnpermuteRows(void* data, int64_t rows, int64_t row_bytes, int64_t heads) {
  const int64_t dim = rows / heads;
  const int64_t half = dim / 2;
  auto* bytes = static_cast<uint8_t*>(data);
  std::vector<uint8_t> head(static_cast<size_t>(dim * row_bytes));
  for (int64_t h = 0; h < heads; ++h) {
    uint8_t* base = bytes + h * dim * row_bytes;
    std::memcpy(head.data(), base, head.size());
    for (int64_t i = 0; i < half; ++i) {
      for (int64_t j = 0; j < 2; ++j) {
        std::memcpy(base + (j * half + i) * row_bytes, head.data() + (2 * i + j) * row_bytes,
                    row_bytes);
      }
    }
  }
}

// The block format a GGUF tensor type keeps in memory, or kNone.
kernels::QuantType KeptQuant(TensorType type) {
  switch (type) {
    case TensorType::kQ8_0:
      return kernels::QuantType::kQ8_0;
    case TensorType::kQ4_0:
      return kernels::QuantType::kQ4_0;
    case TensorType::kQ4_1:
      return kernels::QuantType::kQ4_1;
    default:
      return kernels::QuantType::kNone;
  }
}

}  // namespace

bool IsGgufPath(const std::string& path) {
  std::error_code ec;
  return absl::EndsWith(path, ".gguf") || std::filesystem::is_regular_file(path, ec);
}

absl::StatusOr<ModelConfig> GgufModelConfig(const GgufFile& f) {
  absl::StatusOr<std::string_view> arch = f.GetString("general.architecture");
  if (!arch.ok()) return AsInvalid(arch.status());
  if (*arch != kArch) {
    return absl::UnimplementedError(absl::StrCat(f.path(), ": general.architecture '",
                                                 std::string(*arch),
                                                 "' is not supported (supported: llama)"));
  }
  const std::string a = kArch;
  if (f.Has(a + ".expert_count")) {
    ASSIGN_OR_RETURN(const int64_t experts, f.GetInt(a + ".expert_count"));
    if (experts > 0) {
      return absl::UnimplementedError(absl::StrCat(f.path(), ": ", a, ".expert_count = ", experts,
                                                   ": MoE GGUF models are not supported yet"));
    }
  }
  ASSIGN_OR_RETURN(const int64_t hidden, RequiredPositive(f, a + ".embedding_length"));
  ASSIGN_OR_RETURN(const int64_t ffn, RequiredPositive(f, a + ".feed_forward_length"));
  ASSIGN_OR_RETURN(const int64_t layers, RequiredPositive(f, a + ".block_count"));
  ASSIGN_OR_RETURN(const int64_t context, RequiredPositive(f, a + ".context_length"));
  ASSIGN_OR_RETURN(const int64_t heads, RequiredPositive(f, a + ".attention.head_count"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> kv_heads,
                   OptionalPositive(f, a + ".attention.head_count_kv"));
  if (kv_heads.has_value() && heads % *kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".attention.head_count (",
                                                   heads, ") is not divisible by ", a,
                                                   ".attention.head_count_kv (", *kv_heads, ")"));
  }
  ASSIGN_OR_RETURN(const std::optional<int64_t> key_length,
                   OptionalPositive(f, a + ".attention.key_length"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> value_length,
                   OptionalPositive(f, a + ".attention.value_length"));
  if (!key_length.has_value() && hidden % heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".embedding_length (", hidden,
                                                   ") is not divisible by ", a,
                                                   ".attention.head_count (", heads, ")"));
  }
  const int64_t head_dim = key_length.value_or(hidden / heads);
  if (value_length.has_value() && *value_length != head_dim) {
    return absl::UnimplementedError(absl::StrCat(
        f.path(), ": ", a, ".attention.value_length (", *value_length,
        ") differs from the key length (", head_dim, "), which the runtime does not support"));
  }
  absl::StatusOr<double> eps = f.GetFloat(a + ".attention.layer_norm_rms_epsilon");
  if (!eps.ok()) return AsInvalid(eps.status());
  // Finite too: the config below is JSON, where inf and NaN become null, i.e. "use the
  // default", and the eps is then taken from here as it is.
  if (!(*eps > 0) || !std::isfinite(*eps)) {
    return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                   ".attention.layer_norm_rms_epsilon = ", *eps,
                                                   ", expected a positive finite number"));
  }
  double theta = 10000.0;
  if (f.Has(a + ".rope.freq_base")) {
    ASSIGN_OR_RETURN(theta, f.GetFloat(a + ".rope.freq_base"));
    if (!(theta > 0) || !std::isfinite(theta)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, ".rope.freq_base = ", theta,
                                                     ", expected a positive finite number"));
    }
  }
  if (f.Has(a + ".rope.dimension_count")) {
    ASSIGN_OR_RETURN(const int64_t rot, f.GetInt(a + ".rope.dimension_count"));
    if (rot != head_dim) {
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": ", a, ".rope.dimension_count = ", rot, " but the head size is ",
                       head_dim, ": partial rotary embeddings are not supported"));
    }
  }
  // rope.scaling.*: none, linear or yarn, mapped onto config.json's rope_scaling.
  json rope_scaling;  // null: unscaled
  auto scaling_factor = [&]() -> absl::StatusOr<double> {
    absl::StatusOr<double> factor = f.GetFloat(a + ".rope.scaling.factor");
    if (!factor.ok()) return AsInvalid(factor.status());
    if (!(*factor > 0) || !std::isfinite(*factor)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                     ".rope.scaling.factor = ", *factor,
                                                     ", expected a positive finite number"));
    }
    return *factor;
  };
  if (f.Has(a + ".rope.scaling.type")) {
    ASSIGN_OR_RETURN(const std::string_view type, f.GetString(a + ".rope.scaling.type"));
    if (type == "linear") {
      ASSIGN_OR_RETURN(const double factor, scaling_factor());
      if (factor != 1.0) rope_scaling = {{"type", "linear"}, {"factor", factor}};
    } else if (type == "yarn") {
      ASSIGN_OR_RETURN(const double factor, scaling_factor());
      rope_scaling = {{"type", "yarn"}, {"factor", factor}};
      if (f.Has(a + ".rope.scaling.original_context_length")) {
        ASSIGN_OR_RETURN(rope_scaling["original_max_position_embeddings"],
                         RequiredPositive(f, a + ".rope.scaling.original_context_length"));
      }
      for (const auto& [gguf_key, config_key] :
           {std::pair<const char*, const char*>{".rope.scaling.yarn_beta_fast", "beta_fast"},
            std::pair<const char*, const char*>{".rope.scaling.yarn_beta_slow", "beta_slow"}}) {
        if (!f.Has(a + gguf_key)) continue;
        absl::StatusOr<double> v = f.GetFloat(a + gguf_key);
        if (!v.ok()) return AsInvalid(v.status());
        if (!(*v > 0) || !std::isfinite(*v)) {
          return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a, gguf_key, " = ", *v,
                                                         ", expected a positive finite number"));
        }
        rope_scaling[config_key] = *v;
      }
      // llama.cpp's other YaRN knobs have no transformers counterpart: only their neutral
      // values are accepted.
      for (const auto& [gguf_key, neutral] :
           {std::pair<const char*, double>{".rope.scaling.attn_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_attn_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_ext_factor", 1.0},
            std::pair<const char*, double>{".rope.scaling.yarn_log_multiplier", 0.0}}) {
        if (!f.Has(a + gguf_key)) continue;
        absl::StatusOr<double> v = f.GetFloat(a + gguf_key);
        if (!v.ok()) return AsInvalid(v.status());
        if (*v != neutral) {
          return absl::UnimplementedError(
              absl::StrCat(f.path(), ": ", a, gguf_key, " = ", *v, " is not supported (only ",
                           neutral, "): transformers' YaRN has no such parameter"));
        }
      }
    } else if (type != "none") {
      return absl::UnimplementedError(
          absl::StrCat(f.path(), ": ", a, ".rope.scaling.type '", std::string(type),
                       "' is not supported (supported: none, linear, yarn)"));
    }
  } else if (f.Has(a + ".rope.scale_linear")) {  // the older spelling
    ASSIGN_OR_RETURN(const double factor, f.GetFloat(a + ".rope.scale_linear"));
    if (!(factor > 0) || !std::isfinite(factor)) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": ", a,
                                                     ".rope.scale_linear = ", factor,
                                                     ", expected a positive finite number"));
    }
    if (factor != 1.0) rope_scaling = {{"type", "linear"}, {"factor", factor}};
  }

  // Llama 3.1+: llama.cpp's converter stores the llama3 scheme's per-frequency divisors as
  // tensor rope_freqs.weight (ggml divides each frequency by its value).
  std::vector<float> freq_divisors;
  if (const TensorInfo* t = f.FindTensor(kRopeFreqs); t != nullptr) {
    if (t->type != TensorType::kF32 || t->numel() != head_dim / 2 || t->data == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(
          f.path(), ": tensor '", kRopeFreqs, "' must be F32 with head_dim / 2 = ", head_dim / 2,
          " values, got type ", static_cast<int>(t->type), " and ", t->numel(), " values"));
    }
    if (!rope_scaling.is_null()) {
      return absl::UnimplementedError(absl::StrCat(
          f.path(), ": tensor '", kRopeFreqs, "' together with ", a, ".rope.scaling.type '",
          rope_scaling["type"].get<std::string>(), "' is not supported"));
    }
    freq_divisors.resize(static_cast<size_t>(head_dim / 2));
    std::memcpy(freq_divisors.data(), t->data, freq_divisors.size() * sizeof(float));
    for (size_t i = 0; i < freq_divisors.size(); ++i) {
      if (!(freq_divisors[i] > 0) || !std::isfinite(freq_divisors[i])) {
        return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", kRopeFreqs,
                                                       "' value ", i, " is ", freq_divisors[i],
                                                       ", expected a positive finite number"));
      }
    }
  }

  int64_t vocab = 0;
  if (const gguf::Value* tokens = f.Find("tokenizer.ggml.tokens"); tokens != nullptr) {
    vocab = static_cast<int64_t>(tokens->count);
  } else if (f.Has(a + ".vocab_size")) {
    ASSIGN_OR_RETURN(vocab, RequiredPositive(f, a + ".vocab_size"));
  } else if (const TensorInfo* embd = f.FindTensor("token_embd.weight");
             embd != nullptr && embd->ne.size() == 2) {
    vocab = embd->ne[1];
  }
  if (vocab <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(f.path(), ": no vocabulary size: tokenizer.ggml.tokens, ", a,
                     ".vocab_size and tensor 'token_embd.weight' are all missing"));
  }

  json j = {{"model_type", "llama"},
            {"hidden_size", hidden},
            {"intermediate_size", ffn},
            {"num_hidden_layers", layers},
            {"num_attention_heads", heads},
            {"num_key_value_heads", kv_heads.value_or(heads)},
            {"head_dim", head_dim},
            {"rms_norm_eps", *eps},
            {"rope_theta", theta},
            {"max_position_embeddings", context},
            {"vocab_size", vocab},
            {"tie_word_embeddings", f.FindTensor("output.weight") == nullptr}};
  if (!rope_scaling.is_null()) j["rope_scaling"] = rope_scaling;
  ASSIGN_OR_RETURN(const std::optional<int64_t> bos,
                   OptionalTokenId(f, "tokenizer.ggml.bos_token_id"));
  ASSIGN_OR_RETURN(const std::optional<int64_t> eos,
                   OptionalTokenId(f, "tokenizer.ggml.eos_token_id"));
  if (bos.has_value()) j["bos_token_id"] = *bos;
  if (eos.has_value()) j["eos_token_id"] = *eos;
  absl::StatusOr<ModelConfig> config = ParseModelConfig(j.dump());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(f.path(), ": the metadata makes an invalid config: ",
                                     config.status().message()));
  }
  // The norm eps is f32 in the file: keep it bit-exact.
  config->norm_eps = static_cast<float>(*eps);
  if (!freq_divisors.empty()) {
    config->rope_scaling.type = RopeScalingType::kFreqDivisors;
    config->rope_scaling.freq_divisors = std::move(freq_divisors);
  }
  return config;
}

namespace {

// How a tensor is held: its blocks as stored (Q8_0 / Q4_0 / Q4_1 matrices), its values in
// place (F32 / F16 / BF16 not permuted), or widened to an owned f32 copy (anything else).
enum class Holding { kBlocks, kInPlace, kWidened };

struct TensorPlan {
  Holding holding = Holding::kWidened;
  bool permute = false;
  int64_t heads = 0;
};

TensorPlan PlanTensor(const TensorInfo& t, const ModelConfig& config) {
  TensorPlan plan;
  const std::vector<int64_t> shape = t.TorchShape();
  const bool is_q = absl::StrContains(t.name, ".attn_q.");
  const bool is_k = absl::StrContains(t.name, ".attn_k.");
  plan.heads = is_q ? config.num_heads : config.num_kv_heads;
  // Permute only what has the expected row count; a misshapen tensor is reported by Model.
  plan.permute = (is_q || is_k) && shape[0] == plan.heads * config.head_dim;
  if (KeptQuant(t.type) != kernels::QuantType::kNone && shape.size() == 2 && shape[1] % 32 == 0) {
    plan.holding = Holding::kBlocks;
  } else if (!plan.permute && (t.type == TensorType::kF32 || t.type == TensorType::kF16 ||
                               t.type == TensorType::kBF16)) {
    plan.holding = Holding::kInPlace;
  }
  return plan;
}

// RESOURCE_EXHAUSTED when the f32 copies of the widened tensors would not fit in what the
// process can still take: a K-quant file of a large model widens to 4 bytes per weight, and
// the kernel's OOM killer would otherwise end the load without a word.
absl::Status CheckWidenedBytes(const GgufFile& f, const ModelConfig& config, int64_t limit_bytes) {
  int64_t widened = 0;
  std::vector<std::string> types;
  for (const TensorInfo& t : f.tensors()) {
    if (t.name == kRopeFreqs || PlanTensor(t, config).holding != Holding::kWidened) continue;
    widened += t.numel() * static_cast<int64_t>(sizeof(float));
    const std::string type(TensorTypeName(t.type));
    if (std::find(types.begin(), types.end(), type) == types.end()) types.push_back(type);
  }
  const std::optional<int64_t> limit =
      limit_bytes >= 0 ? std::optional<int64_t>(limit_bytes) : AvailableMemoryBytes();
  if (!limit.has_value() || widened <= *limit) return absl::OkStatus();
  constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;
  return absl::ResourceExhaustedError(absl::StrFormat(
      "%s: its %s tensors are widened to f32 at load, which needs %.2f GiB; this process can "
      "take %.2f GiB (MemAvailable, and the cgroup's memory limit). SpanServe computes in "
      "place on F32, F16, BF16, Q8_0, Q4_0 and Q4_1 only: use such a file, or more memory",
      f.path(), absl::StrJoin(types, ", "), static_cast<double>(widened) / kGiB,
      static_cast<double>(*limit) / kGiB));
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightStore>> GgufWeights(std::shared_ptr<const GgufFile> file,
                                                         const ModelConfig& config,
                                                         int64_t widen_limit_bytes) {
  const GgufFile& f = *file;
  RETURN_IF_ERROR(CheckWidenedBytes(f, config, widen_limit_bytes));
  // Widening runs on every CPU the process may use (one pool for the whole load).
  const std::shared_ptr<ThreadPool> pool = SharedThreadPool(AvailableCpus());
  UsePool use(pool.get());
  std::unique_ptr<WeightStore> store = WeightStore::CreateEmpty(f.path());
  for (const TensorInfo& t : f.tensors()) {
    if (t.name == kRopeFreqs) continue;  // read by GgufModelConfig
    const std::string name = RuntimeName(t.name);
    if (name.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(f.path(), ": tensor '", t.name,
                                                     "' is not a tensor of a ", kArch,
                                                     " model this runtime knows"));
    }
    const std::string origin = absl::StrCat(f.path(), " as '", t.name, "'");
    TensorView view;
    view.shape = t.TorchShape();
    const TensorPlan plan = PlanTensor(t, config);
    const bool permute = plan.permute;
    const int64_t heads = plan.heads;
    // Matrices in Q8_0 / Q4_0 / Q4_1 stay in their blocks (the kernels compute with exactly
    // the dequantized values); Q and K rows are reordered as whole rows of blocks.
    if (plan.holding == Holding::kBlocks) {
      view.quant = KeptQuant(t.type);
      view.data = t.data;
      if (permute) {
        const int64_t bytes = view.bytes();
        std::unique_ptr<uint8_t[]> copy(new uint8_t[bytes]);
        std::memcpy(copy.get(), t.data, bytes);
        UnpermuteRows(copy.get(), view.shape[0], bytes / view.shape[0], heads);
        f.ReleasePages(t);
        view.data = copy.get();
        store->Own(std::move(copy));
      }
      RETURN_IF_ERROR(store->AddTensor(name, std::move(view), origin));
      continue;
    }
    if (plan.holding == Holding::kInPlace) {
      view.dtype = t.type == TensorType::kF32   ? DType::kF32
                   : t.type == TensorType::kF16 ? DType::kF16
                                                : DType::kBF16;
      view.data = t.data;
      RETURN_IF_ERROR(store->AddTensor(name, std::move(view), origin));
      continue;
    }
    const int64_t n = t.numel();
    std::unique_ptr<float[]> buffer(new float[n]);
    RETURN_IF_ERROR(gguf::DequantizeToF32(f, t, std::span<float>(buffer.get(), n)));
    f.ReleasePages(t);
    if (permute) {
      const int64_t cols = view.shape.size() == 2 ? view.shape[1] : 1;
      UnpermuteRows(buffer.get(), view.shape[0], cols * static_cast<int64_t>(sizeof(float)), heads);
    }
    view.dtype = DType::kF32;
    view.data = buffer.get();
    store->Own(std::move(buffer));
    RETURN_IF_ERROR(store->AddTensor(name, std::move(view), origin));
  }
  store->KeepAlive(std::move(file));
  return store;
}

}  // namespace spanserve::model
