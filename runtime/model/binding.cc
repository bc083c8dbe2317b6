// Weight naming and binding: which tensors a config implies, with which shapes, bound
// from a WeightStore and uploaded to the backend (docs/MODEL_FORMAT.md).
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status.h"
#include "runtime/model/model_impl.h"

namespace spanserve::model {
namespace {

// The block norms' tensor names by role N1..N4 (docs/MODEL_FORMAT.md).
std::vector<const char*> NormNames(NormPlacement p) {
  switch (p) {
    case NormPlacement::kPre:
      return {"input_layernorm", "post_attention_layernorm"};
    case NormPlacement::kPost:
    case NormPlacement::kB2t:
    case NormPlacement::kDeepNorm:
      return {"post_attention_layernorm", "output_layernorm"};
    case NormPlacement::kSpan:
      return {"input_layernorm", "post_attention_layernorm", "output_layernorm"};
    case NormPlacement::kSandwich:
      return {"input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"};
    case NormPlacement::kMix:
      break;  // resolved per layer by ModelConfig::LayerPlacement
  }
  SPANSERVE_CHECK(false);
  return {};
}

// Binds tensors from the store with the shapes the config implies. Without a store it
// only records the names and shapes (ExpectedTensors).
class Binder {
 public:
  Binder(WeightStore* store, kernels::Backend* backend, TensorShapes* record,
         const MatrixPrecisions& precisions, float gain_offset,
         std::vector<std::unique_ptr<float[]>>* folded)
      : store_(store),
        backend_(backend),
        record_(record),
        precisions_(precisions),
        gain_offset_(gain_offset),
        folded_(folded) {}

  bool Has(const std::string& name) const { return store_ == nullptr || store_->Has(name); }

  absl::StatusOr<kernels::WeightMatrix> Matrix(const std::string& name, int64_t rows,
                                               int64_t cols) {
    return MatrixRows(name, rows, cols, 0, rows);
  }
  // Rows [first_row, first_row + rows) of the matrix `name` of shape [total_rows, cols], in
  // place (a fused projection's part; the rows of a matrix are contiguous). Recorded once,
  // with its full shape, by the slice starting at row 0.
  absl::StatusOr<kernels::WeightMatrix> MatrixRows(const std::string& name, int64_t total_rows,
                                                   int64_t cols, int64_t first_row, int64_t rows) {
    SPANSERVE_CHECK(first_row >= 0 && rows > 0 && first_row + rows <= total_rows);
    count_ += rows * cols;
    if (store_ == nullptr) {
      if (record_ != nullptr && first_row == 0) record_->push_back({name, {total_rows, cols}});
      return kernels::WeightMatrix{nullptr, DType::kF32, rows, cols};
    }
    const int64_t shape[2] = {total_rows, cols};
    ASSIGN_OR_RETURN(TensorView t, store_->Get(name, shape));
    if (first_row > 0) {
      const int64_t row_bytes =
          t.quant != kernels::QuantType::kNone
              ? cols / kernels::QuantBlockElems(t.quant) * kernels::QuantBlockBytes(t.quant)
              : cols * static_cast<int64_t>(DTypeSize(t.dtype));
      t.data = static_cast<const uint8_t*>(t.data) + first_row * row_bytes;
    }
    if (t.quant != kernels::QuantType::kNone && cols % kernels::QuantBlockElems(t.quant) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is block-quantized but its rows (", cols,
                       " elements) are not whole blocks of ", kernels::QuantBlockElems(t.quant)));
    }
    kernels::WeightMatrix w{t.data, t.dtype, rows, cols, t.quant};
    if (t.quant != kernels::QuantType::kNone) {
      // Formats the int8 dot products do not take multiply exactly.
      w.precision = precisions_.quantized == kernels::MatMulPrecision::kInt8Dot &&
                            !kernels::Int8DotSupports(t.quant)
                        ? kernels::MatMulPrecision::kExact
                        : precisions_.quantized;
    } else if (t.dtype == DType::kBF16) {
      w.precision = precisions_.bf16;
    }
    return backend_->UploadMatrix(w);
  }
  absl::StatusOr<kernels::WeightVector> Vector(const std::string& name, int64_t size) {
    count_ += size;
    if (store_ == nullptr) {
      if (record_ != nullptr) record_->push_back({name, {size}});
      return kernels::WeightVector{nullptr, DType::kF32, size};
    }
    const int64_t shape[1] = {size};
    ASSIGN_OR_RETURN(TensorView t, store_->Get(name, shape));
    if (t.quant != kernels::QuantType::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is a vector stored block-quantized"));
    }
    return backend_->UploadVector(kernels::WeightVector{t.data, t.dtype, size});
  }
  // A norm gain plus the config's gain offset (Gemma: offset + w, widened to f32 first, as
  // transformers' `1.0 + self.weight.float()`), kept in memory the model owns.
  absl::StatusOr<kernels::WeightVector> Gain(const std::string& name, int64_t size) {
    if (gain_offset_ == 0.0f || store_ == nullptr) return Vector(name, size);
    count_ += size;
    const int64_t shape[1] = {size};
    ASSIGN_OR_RETURN(TensorView t, store_->Get(name, shape));
    if (t.quant != kernels::QuantType::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is a vector stored block-quantized"));
    }
    auto gain = std::make_unique<float[]>(size);
    for (int64_t i = 0; i < size; ++i) {
      gain[i] = gain_offset_ + kernels::WeightAt(t.data, t.dtype, i);
    }
    const kernels::WeightVector host{gain.get(), DType::kF32, size};
    folded_->push_back(std::move(gain));
    return backend_->UploadVector(host);
  }
  absl::StatusOr<NormWeights> Norm(const std::string& prefix, int64_t size, bool with_bias) {
    NormWeights w;
    ASSIGN_OR_RETURN(w.gain, Gain(prefix + ".weight", size));
    if (with_bias) {
      ASSIGN_OR_RETURN(w.bias, Vector(prefix + ".bias", size));
      w.has_bias = true;
    }
    return w;
  }
  // Phi-3's gate_up_proj [2·inter, hidden]: gate rows first, then up.
  absl::StatusOr<FfnWeights> FusedFfn(const std::string& prefix, int64_t hidden, int64_t inter) {
    FfnWeights w;
    const std::string gate_up = prefix + "gate_up_proj.weight";
    ASSIGN_OR_RETURN(w.gate, MatrixRows(gate_up, 2 * inter, hidden, 0, inter));
    ASSIGN_OR_RETURN(w.up, MatrixRows(gate_up, 2 * inter, hidden, inter, inter));
    ASSIGN_OR_RETURN(w.down, Matrix(prefix + "down_proj.weight", hidden, inter));
    return w;
  }
  absl::StatusOr<FfnWeights> Ffn(const std::string& prefix, const char* gate, const char* up,
                                 const char* down, int64_t hidden, int64_t inter) {
    FfnWeights w;
    ASSIGN_OR_RETURN(w.gate, Matrix(absl::StrCat(prefix, gate, ".weight"), inter, hidden));
    ASSIGN_OR_RETURN(w.up, Matrix(absl::StrCat(prefix, up, ".weight"), inter, hidden));
    ASSIGN_OR_RETURN(w.down, Matrix(absl::StrCat(prefix, down, ".weight"), hidden, inter));
    return w;
  }
  int64_t count() const { return count_; }

 private:
  WeightStore* store_;
  kernels::Backend* backend_;
  TensorShapes* record_;
  MatrixPrecisions precisions_;
  float gain_offset_;
  std::vector<std::unique_ptr<float[]>>* folded_;
  int64_t count_ = 0;
};

}  // namespace

absl::StatusOr<int64_t> BindWeights(const ModelConfig& c, WeightStore* store,
                                    kernels::Backend* backend, const MatrixPrecisions& precisions,
                                    ModelWeights* weights, ExpertLoad* expert_load,
                                    TensorShapes* record) {
  Binder bind(store, backend, record, precisions, c.norm_gain_offset, &weights->folded);
  kernels::WeightMatrix& embed = weights->embed;
  kernels::WeightMatrix& lm_head = weights->lm_head;
  NormWeights& final_norm = weights->final_norm;
  std::vector<LayerWeights>& layers = weights->layers;
  const int64_t H = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const bool norm_bias = c.norm_type == NormType::kLayerNorm && c.norm_bias;

  // A multimodal checkpoint's text model sits under weights_prefix (Gemma 3: P =
  // language_model.): P + model.* and P + lm_head.weight, as transformers 4.50 / 4.51 save
  // it, or model. + P + * with lm_head.weight, as later releases do.
  std::string body = "model.";
  std::string head = "lm_head.weight";
  if (const std::string& pre = c.weights_prefix; !pre.empty()) {
    const bool later = store != nullptr && !store->Has(pre + "model.embed_tokens.weight") &&
                       store->Has("model." + pre + "embed_tokens.weight");
    body = later ? "model." + pre : pre + "model.";
    if (!later) head = pre + head;
  }
  ASSIGN_OR_RETURN(embed, bind.Matrix(body + "embed_tokens.weight", c.vocab_size, H));
  if (c.tie_word_embeddings) {
    lm_head = embed;
  } else {
    ASSIGN_OR_RETURN(lm_head, bind.Matrix(head, c.vocab_size, H));
  }
  if (c.final_norm) {
    ASSIGN_OR_RETURN(final_norm, bind.Norm(body + "norm", H, norm_bias));
  }
  int moe_index = 0;
  layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = layers[l];
    const std::string p = absl::StrCat(body, "layers.", l, ".");
    lw.placement = c.LayerPlacement(l);
    const std::vector<const char*> names = NormNames(lw.placement);
    for (size_t i = 0; i < names.size(); ++i) {
      ASSIGN_OR_RETURN(lw.norms[i], bind.Norm(p + names[i], H, norm_bias));
    }
    if (c.fused_qkv) {
      // Phi-3's qkv_proj: q rows, then k, then v.
      const std::string qkv = p + "self_attn.qkv_proj.weight";
      const int64_t total = q_dim + 2 * kv_dim;
      ASSIGN_OR_RETURN(lw.q, bind.MatrixRows(qkv, total, H, 0, q_dim));
      ASSIGN_OR_RETURN(lw.k, bind.MatrixRows(qkv, total, H, q_dim, kv_dim));
      ASSIGN_OR_RETURN(lw.v, bind.MatrixRows(qkv, total, H, q_dim + kv_dim, kv_dim));
    } else {
      ASSIGN_OR_RETURN(lw.q, bind.Matrix(p + "self_attn.q_proj.weight", q_dim, H));
      ASSIGN_OR_RETURN(lw.k, bind.Matrix(p + "self_attn.k_proj.weight", kv_dim, H));
      ASSIGN_OR_RETURN(lw.v, bind.Matrix(p + "self_attn.v_proj.weight", kv_dim, H));
    }
    ASSIGN_OR_RETURN(lw.o, bind.Matrix(p + "self_attn.o_proj.weight", H, q_dim));
    if (c.attention_bias) {
      lw.has_qkv_bias = true;
      ASSIGN_OR_RETURN(lw.qb, bind.Vector(p + "self_attn.q_proj.bias", q_dim));
      ASSIGN_OR_RETURN(lw.kb, bind.Vector(p + "self_attn.k_proj.bias", kv_dim));
      ASSIGN_OR_RETURN(lw.vb, bind.Vector(p + "self_attn.v_proj.bias", kv_dim));
    }
    if (c.o_proj_bias) {
      lw.has_o_bias = true;
      ASSIGN_OR_RETURN(lw.ob, bind.Vector(p + "self_attn.o_proj.bias", H));
    }
    if (c.qk_norm) {
      lw.has_qk_norm = true;
      // Qwen3: one gain of head_dim shared by every head; OLMoE: the whole projection.
      const int64_t q_norm_dim = c.qk_norm_per_head ? c.head_dim : q_dim;
      const int64_t k_norm_dim = c.qk_norm_per_head ? c.head_dim : kv_dim;
      ASSIGN_OR_RETURN(lw.q_norm, bind.Norm(p + "self_attn.q_norm", q_norm_dim, false));
      ASSIGN_OR_RETURN(lw.k_norm, bind.Norm(p + "self_attn.k_norm", k_norm_dim, false));
    }
    lw.is_moe = c.LayerIsMoe(l);
    if (!lw.is_moe) {
      if (c.fused_gate_up) {
        ASSIGN_OR_RETURN(lw.mlp, bind.FusedFfn(p + "mlp.", H, c.intermediate_size));
      } else {
        ASSIGN_OR_RETURN(lw.mlp, bind.Ffn(p + "mlp.", "gate_proj", "up_proj", "down_proj", H,
                                          c.intermediate_size));
      }
      continue;
    }
    const MoeConfig& m = c.moe;
    MoeWeights& mw = lw.moe;
    mw.moe_index = moe_index++;
    const bool mixtral = m.layout == MoeLayout::kMixtral;
    const std::string mp = p + (mixtral ? "block_sparse_moe." : "mlp.");
    ASSIGN_OR_RETURN(mw.router, bind.Matrix(mp + "gate.weight", m.num_experts, H));
    mw.experts.resize(m.num_experts);
    for (int e = 0; e < m.num_experts; ++e) {
      const std::string ep = absl::StrCat(mp, "experts.", e, ".");
      if (mixtral) {
        ASSIGN_OR_RETURN(mw.experts[e], bind.Ffn(ep, "w1", "w3", "w2", H, m.moe_intermediate_size));
      } else {
        ASSIGN_OR_RETURN(mw.experts[e], bind.Ffn(ep, "gate_proj", "up_proj", "down_proj", H,
                                                 m.moe_intermediate_size));
      }
    }
    if (m.shared_expert_intermediate_size > 0) {
      mw.has_shared = true;
      ASSIGN_OR_RETURN(mw.shared, bind.Ffn(mp + "shared_expert.", "gate_proj", "up_proj",
                                           "down_proj", H, m.shared_expert_intermediate_size));
      if (bind.Has(mp + "shared_expert_gate.weight")) {
        mw.has_shared_gate = true;
        ASSIGN_OR_RETURN(mw.shared_gate, bind.Matrix(mp + "shared_expert_gate.weight", 1, H));
      }
    }
    expert_load->layer_ids.push_back(l);
    expert_load->tokens.emplace_back(m.num_experts, 0);
  }
  if (store != nullptr) RETURN_IF_ERROR(store->CheckAllUsed(c.ignored_prefixes));
  return bind.count();
}

}  // namespace spanserve::model
