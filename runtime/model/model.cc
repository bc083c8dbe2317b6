#include "runtime/model/model.h"

#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/elementwise.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/norm.h"
#include "kernels/cpu/rope.h"
#include "runtime/gguf/gguf_file.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/weights.h"

namespace spanserve::model {

namespace k = kernels::cpu;

// ---------------------------------------------------------------------------------------
// KvCache

int64_t KvCache::BytesPerBlock(const ModelConfig& c, int32_t block_size, DType dtype) {
  return 2LL * c.num_layers * block_size * c.num_kv_heads * c.head_dim *
         static_cast<int64_t>(DTypeSize(dtype));
}

absl::StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelConfig& config,
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
  cache->block_size_ = block_size;
  cache->num_blocks_ = num_blocks;
  cache->dtype_ = dtype;
  cache->bytes_ = BytesPerBlock(config, block_size, dtype) * num_blocks;
  cache->layer_bytes_ = cache->bytes_ / (2 * config.num_layers);  // one layer's K (or V)
  void* p =
      ::mmap(nullptr, cache->bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", cache->bytes_, " bytes for the KV cache"));
  }
  cache->base_ = static_cast<char*>(p);
  return cache;
}

KvCache::~KvCache() {
  if (base_ != nullptr) ::munmap(base_, bytes_);
}

// ---------------------------------------------------------------------------------------
// Workspace

struct ForwardWorkspace::Buffers {
  std::vector<float> x, t, n, a, f, q, kk, v, att, g, u, sel;
  // MoE
  std::vector<float> router, slot_out, ein, eout, eg, eu;
  std::vector<int32_t> topk_expert, expert_offset, expert_fill, expert_rows;
  std::vector<float> topk_weight;
  std::vector<int32_t> positions;
  std::vector<k::AttentionSeq> seqs;
  std::vector<int64_t> logit_rows;
};

ForwardWorkspace::ForwardWorkspace() : buffers_(std::make_unique<Buffers>()) {}
ForwardWorkspace::~ForwardWorkspace() = default;

namespace {

template <typename T>
T* Grow(std::vector<T>& v, int64_t n) {
  if (static_cast<int64_t>(v.size()) < n) v.resize(n);
  return v.data();
}

struct NormWeights {
  k::WeightVector gain;
  k::WeightVector bias;
  bool has_bias = false;
};

struct FfnWeights {
  k::WeightMatrix gate, up, down;
};

struct MoeWeights {
  k::WeightMatrix router;
  std::vector<FfnWeights> experts;
  bool has_shared = false;
  FfnWeights shared;
  bool has_shared_gate = false;
  k::WeightMatrix shared_gate;
  int moe_index = 0;  // index into ExpertLoad
};

struct LayerWeights {
  NormPlacement placement = NormPlacement::kPre;
  NormWeights norms[4];
  k::WeightMatrix q, k, v, o;
  k::WeightVector qb, kb, vb, ob;
  bool has_qkv_bias = false;
  bool has_o_bias = false;
  bool has_qk_norm = false;
  NormWeights q_norm, k_norm;
  bool is_moe = false;
  FfnWeights mlp;
  MoeWeights moe;
};

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
  using Shapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;
  explicit Binder(WeightStore* store, Shapes* record = nullptr,
                  k::MatMulPrecision bf16_precision = k::MatMulPrecision::kExact)
      : store_(store), record_(record), bf16_precision_(bf16_precision) {}

  bool Has(const std::string& name) const { return store_ == nullptr || store_->Has(name); }

  absl::StatusOr<k::WeightMatrix> Matrix(const std::string& name, int64_t rows, int64_t cols) {
    count_ += rows * cols;
    if (store_ == nullptr) {
      if (record_ != nullptr) record_->push_back({name, {rows, cols}});
      return k::WeightMatrix{nullptr, DType::kF32, rows, cols};
    }
    const int64_t shape[2] = {rows, cols};
    ASSIGN_OR_RETURN(TensorView t, store_->Get(name, shape));
    if (t.quant != k::QuantType::kNone && cols % 32 != 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name,
                                                     "' is block-quantized but its rows (", cols,
                                                     " elements) are not whole blocks of 32"));
    }
    k::WeightMatrix w{t.data, t.dtype, rows, cols, t.quant};
    if (t.dtype == DType::kBF16 && t.quant == k::QuantType::kNone) w.precision = bf16_precision_;
    return w;
  }
  absl::StatusOr<k::WeightVector> Vector(const std::string& name, int64_t size) {
    count_ += size;
    if (store_ == nullptr) {
      if (record_ != nullptr) record_->push_back({name, {size}});
      return k::WeightVector{nullptr, DType::kF32, size};
    }
    const int64_t shape[1] = {size};
    ASSIGN_OR_RETURN(TensorView t, store_->Get(name, shape));
    if (t.quant != k::QuantType::kNone) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is a vector stored block-quantized"));
    }
    return k::WeightVector{t.data, t.dtype, size};
  }
  absl::StatusOr<NormWeights> Norm(const std::string& prefix, int64_t size, bool with_bias) {
    NormWeights w;
    ASSIGN_OR_RETURN(w.gain, Vector(prefix + ".weight", size));
    if (with_bias) {
      ASSIGN_OR_RETURN(w.bias, Vector(prefix + ".bias", size));
      w.has_bias = true;
    }
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
  Shapes* record_;
  k::MatMulPrecision bf16_precision_;
  int64_t count_ = 0;
};

}  // namespace

// ---------------------------------------------------------------------------------------
// Model

struct Model::Impl {
  ModelConfig config;
  std::unique_ptr<WeightStore> store;
  k::WeightMatrix embed;
  k::WeightMatrix lm_head;
  NormWeights final_norm;
  std::vector<LayerWeights> layers;
  std::vector<float> rope_cos, rope_sin;
  int64_t num_parameters = 0;
  int num_threads = 0;
  DType compute_dtype = DType::kF32;
  ExpertLoad expert_load;

  // Binds every tensor from `store`; with no store, records names and shapes only.
  absl::Status Bind(WeightStore* store, Binder::Shapes* record = nullptr);
  void Norm(const NormWeights& w, const float* in, int64_t tokens, int64_t dim, float* out) const;
  void Attention(const LayerWeights& lw, const float* in, int64_t tokens, KvCache& cache, int layer,
                 ForwardWorkspace::Buffers& b, float* out) const;
  void DenseFfn(const FfnWeights& w, const float* in, int64_t tokens, ForwardWorkspace::Buffers& b,
                float* out) const;
  void MoeFfn(const MoeWeights& w, const float* in, int64_t tokens, ForwardWorkspace::Buffers& b,
              float* out);
  void Ffn(const LayerWeights& lw, const float* in, int64_t tokens, ForwardWorkspace::Buffers& b,
           float* out) {
    if (lw.is_moe) {
      MoeFfn(lw.moe, in, tokens, b, out);
    } else {
      DenseFfn(lw.mlp, in, tokens, b, out);
    }
  }
  void Block(int layer, int64_t tokens, KvCache& cache, ForwardWorkspace::Buffers& b);
};

absl::Status Model::Impl::Bind(WeightStore* store, Binder::Shapes* record) {
  const ModelConfig& c = config;
  Binder bind(
      store, record,
      compute_dtype == DType::kBF16 ? k::MatMulPrecision::kBf16Dot : k::MatMulPrecision::kExact);
  const int64_t H = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  const bool norm_bias = c.norm_type == NormType::kLayerNorm && c.norm_bias;

  ASSIGN_OR_RETURN(embed, bind.Matrix("model.embed_tokens.weight", c.vocab_size, H));
  if (c.tie_word_embeddings) {
    lm_head = embed;
  } else {
    ASSIGN_OR_RETURN(lm_head, bind.Matrix("lm_head.weight", c.vocab_size, H));
  }
  if (c.final_norm) {
    ASSIGN_OR_RETURN(final_norm, bind.Norm("model.norm", H, norm_bias));
  }
  int moe_index = 0;
  layers.resize(c.num_layers);
  for (int l = 0; l < c.num_layers; ++l) {
    LayerWeights& lw = layers[l];
    const std::string p = absl::StrCat("model.layers.", l, ".");
    lw.placement = c.LayerPlacement(l);
    const std::vector<const char*> names = NormNames(lw.placement);
    for (size_t i = 0; i < names.size(); ++i) {
      ASSIGN_OR_RETURN(lw.norms[i], bind.Norm(p + names[i], H, norm_bias));
    }
    ASSIGN_OR_RETURN(lw.q, bind.Matrix(p + "self_attn.q_proj.weight", q_dim, H));
    ASSIGN_OR_RETURN(lw.k, bind.Matrix(p + "self_attn.k_proj.weight", kv_dim, H));
    ASSIGN_OR_RETURN(lw.v, bind.Matrix(p + "self_attn.v_proj.weight", kv_dim, H));
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
      ASSIGN_OR_RETURN(lw.q_norm, bind.Norm(p + "self_attn.q_norm", q_dim, false));
      ASSIGN_OR_RETURN(lw.k_norm, bind.Norm(p + "self_attn.k_norm", kv_dim, false));
    }
    lw.is_moe = c.LayerIsMoe(l);
    if (!lw.is_moe) {
      ASSIGN_OR_RETURN(lw.mlp, bind.Ffn(p + "mlp.", "gate_proj", "up_proj", "down_proj", H,
                                        c.intermediate_size));
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
    expert_load.layer_ids.push_back(l);
    expert_load.tokens.emplace_back(m.num_experts, 0);
  }
  if (store != nullptr) RETURN_IF_ERROR(store->CheckAllUsed());
  num_parameters = bind.count();
  return absl::OkStatus();
}

void Model::Impl::Norm(const NormWeights& w, const float* in, int64_t tokens, int64_t dim,
                       float* out) const {
  switch (config.norm_type) {
    case NormType::kRmsNorm:
      k::RmsNorm(in, tokens, dim, w.gain, config.norm_eps, out);
      return;
    case NormType::kLayerNorm:
      k::LayerNorm(in, tokens, dim, w.gain, w.has_bias ? &w.bias : nullptr, config.norm_eps, out);
      return;
  }
}

void Model::Impl::Attention(const LayerWeights& lw, const float* in, int64_t tokens, KvCache& cache,
                            int layer, ForwardWorkspace::Buffers& b, float* out) const {
  const ModelConfig& c = config;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  float* q = b.q.data();
  float* kk = b.kk.data();
  float* v = b.v.data();
  k::MatMul(in, tokens, lw.q, lw.has_qkv_bias ? &lw.qb : nullptr, q);
  k::MatMul(in, tokens, lw.k, lw.has_qkv_bias ? &lw.kb : nullptr, kk);
  k::MatMul(in, tokens, lw.v, lw.has_qkv_bias ? &lw.vb : nullptr, v);
  if (lw.has_qk_norm) {
    k::RmsNorm(q, tokens, q_dim, lw.q_norm.gain, c.norm_eps, q);
    k::RmsNorm(kk, tokens, kv_dim, lw.k_norm.gain, c.norm_eps, kk);
  }
  k::ApplyRope(q, tokens, c.num_heads, c.head_dim, b.positions.data(), rope_cos.data(),
               rope_sin.data());
  k::ApplyRope(kk, tokens, c.num_kv_heads, c.head_dim, b.positions.data(), rope_cos.data(),
               rope_sin.data());
  const k::PagedKvLayer kv{cache.k(layer), cache.v(layer), cache.num_blocks(), cache.block_size(),
                           c.num_kv_heads, c.head_dim,     cache.dtype()};
  const int32_t num_seqs = static_cast<int32_t>(b.seqs.size());
  k::PagedKvWrite(kv, b.seqs.data(), num_seqs, kk, v);
  k::PagedAttention(kv, b.seqs.data(), num_seqs, q, c.num_heads,
                    1.0f / std::sqrt(static_cast<float>(c.head_dim)), b.att.data());
  k::MatMul(b.att.data(), tokens, lw.o, lw.has_o_bias ? &lw.ob : nullptr, out);
}

void Model::Impl::DenseFfn(const FfnWeights& w, const float* in, int64_t tokens,
                           ForwardWorkspace::Buffers& b, float* out) const {
  const int64_t inter = w.gate.rows;
  float* g = Grow(b.g, tokens * inter);
  float* u = Grow(b.u, tokens * inter);
  k::MatMul(in, tokens, w.gate, nullptr, g);
  k::MatMul(in, tokens, w.up, nullptr, u);
  k::SiluMul(g, u, tokens * inter, g);
  k::MatMul(g, tokens, w.down, nullptr, out);
}

// Tokens are grouped by expert (counting sort, stable in token order); each expert runs one
// GEMM over its rows; each token then sums its top-k outputs in its own slot order, so the
// result does not depend on the batch.
void Model::Impl::MoeFfn(const MoeWeights& w, const float* in, int64_t tokens,
                         ForwardWorkspace::Buffers& b, float* out) {
  const MoeConfig& m = config.moe;
  const int64_t H = config.hidden_size;
  const int E = m.num_experts;
  const int K = m.top_k;
  float* logits = Grow(b.router, tokens * E);
  k::MatMul(in, tokens, w.router, nullptr, logits);
  int32_t* top_e = Grow(b.topk_expert, tokens * K);
  float* top_w = Grow(b.topk_weight, tokens * K);
  const bool normalize = m.norm_topk_prob || m.layout == MoeLayout::kMixtral;
  for (int64_t t = 0; t < tokens; ++t) {
    float* s = logits + t * E;
    switch (m.scoring) {
      case RouterScoring::kSoftmax:
        k::Softmax(s, 1, E);
        break;
      case RouterScoring::kSigmoid:
        for (int e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
        break;
    }
    // Top-k by score, lower expert id first on ties (as torch.topk on CPU in practice).
    for (int j = 0; j < K; ++j) {
      int best = -1;
      for (int e = 0; e < E; ++e) {
        bool taken = false;
        for (int i = 0; i < j; ++i) taken |= top_e[t * K + i] == e;
        if (taken) continue;
        if (best < 0 || s[e] > s[best]) best = e;
      }
      top_e[t * K + j] = best;
      top_w[t * K + j] = s[best];
    }
    if (normalize) {
      float sum = 0.0f;
      for (int j = 0; j < K; ++j) sum += top_w[t * K + j];
      for (int j = 0; j < K; ++j) top_w[t * K + j] /= sum;
    }
  }
  // Group (token, slot) pairs by expert.
  int32_t* offset = Grow(b.expert_offset, E + 1);
  std::fill(offset, offset + E + 1, 0);
  for (int64_t i = 0; i < tokens * K; ++i) offset[top_e[i] + 1]++;
  std::vector<int64_t>& load = expert_load.tokens[w.moe_index];
  for (int e = 0; e < E; ++e) load[e] += offset[e + 1];
  for (int e = 0; e < E; ++e) offset[e + 1] += offset[e];
  int32_t* rows = Grow(b.expert_rows, tokens * K);
  // Fill in a stable order: slot index i = t*K + j, increasing.
  int32_t* fill = Grow(b.expert_fill, E);
  std::copy(offset, offset + E, fill);
  for (int64_t i = 0; i < tokens * K; ++i) rows[fill[top_e[i]]++] = static_cast<int32_t>(i);

  float* slot_out = Grow(b.slot_out, tokens * K * H);
  for (int e = 0; e < E; ++e) {
    const int64_t begin = offset[e], count = offset[e + 1] - offset[e];
    if (count == 0) continue;
    float* ein = Grow(b.ein, count * H);
    for (int64_t r = 0; r < count; ++r) {
      const int64_t tok = rows[begin + r] / K;
      std::copy(in + tok * H, in + (tok + 1) * H, ein + r * H);
    }
    const FfnWeights& ew = w.experts[e];
    const int64_t inter = ew.gate.rows;
    float* g = Grow(b.eg, count * inter);
    float* u = Grow(b.eu, count * inter);
    float* eout = Grow(b.eout, count * H);
    k::MatMul(ein, count, ew.gate, nullptr, g);
    k::MatMul(ein, count, ew.up, nullptr, u);
    k::SiluMul(g, u, count * inter, g);
    k::MatMul(g, count, ew.down, nullptr, eout);
    for (int64_t r = 0; r < count; ++r) {
      std::copy(eout + r * H, eout + (r + 1) * H,
                slot_out + static_cast<int64_t>(rows[begin + r]) * H);
    }
  }
  for (int64_t t = 0; t < tokens; ++t) {
    float* o = out + t * H;
    std::fill(o, o + H, 0.0f);
    for (int j = 0; j < K; ++j) {
      k::Axpby(top_w[t * K + j], slot_out + (t * K + j) * H, 1.0f, o, H);
    }
  }
  if (w.has_shared) {
    float* shared = Grow(b.eout, tokens * H);
    DenseFfn(w.shared, in, tokens, b, shared);
    float* gate = Grow(b.eg, tokens);
    if (w.has_shared_gate) k::MatMul(in, tokens, w.shared_gate, nullptr, gate);
    for (int64_t t = 0; t < tokens; ++t) {
      const float s = w.has_shared_gate ? 1.0f / (1.0f + std::exp(-gate[t])) : 1.0f;
      k::Axpby(s, shared + t * H, 1.0f, out + t * H, H);
    }
  }
}

// One block; the residual stream b.x [tokens, hidden] is updated in place.
void Model::Impl::Block(int layer, int64_t tokens, KvCache& cache, ForwardWorkspace::Buffers& b) {
  const LayerWeights& lw = layers[layer];
  const int64_t H = config.hidden_size;
  const int64_t size = tokens * H;
  float* x = b.x.data();
  float* t = b.t.data();
  float* n = b.n.data();
  float* a = b.a.data();
  float* f = b.f.data();
  const float alpha = config.skip_scale;
  const float beta = config.branch_scale;
  switch (lw.placement) {
    case NormPlacement::kPre:  // h = x + A(N1(x)); y = h + F(N2(h))
      Norm(lw.norms[0], x, tokens, H, n);
      Attention(lw, n, tokens, cache, layer, b, a);
      k::Add(a, x, size);
      Norm(lw.norms[1], x, tokens, H, n);
      Ffn(lw, n, tokens, b, f);
      k::Add(f, x, size);
      return;
    case NormPlacement::kPost:  // h = N1(x + A(x)); y = N2(h + F(h))
      Attention(lw, x, tokens, cache, layer, b, a);
      k::Add(a, x, size);
      Norm(lw.norms[0], x, tokens, H, x);
      Ffn(lw, x, tokens, b, f);
      k::Add(f, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return;
    case NormPlacement::kSpan:  // a = A(N1(x)); f = F(N2(x + a)); y = N3(α·x + β·(a + f))
      Norm(lw.norms[0], x, tokens, H, n);
      Attention(lw, n, tokens, cache, layer, b, a);
      std::copy(x, x + size, t);
      k::Add(a, t, size);
      Norm(lw.norms[1], t, tokens, H, n);
      Ffn(lw, n, tokens, b, f);
      k::Add(a, f, size);                 // f = a + f
      k::Axpby(beta, f, alpha, x, size);  // x = α·x + β·(a + f)
      Norm(lw.norms[2], x, tokens, H, x);
      return;
    case NormPlacement::kB2t:  // h = N1(x + A(x)); y = N2(x + h + F(h))
      Attention(lw, x, tokens, cache, layer, b, a);
      std::copy(x, x + size, t);
      k::Add(a, t, size);
      Norm(lw.norms[0], t, tokens, H, t);  // t = h
      Ffn(lw, t, tokens, b, f);
      k::Add(t, x, size);
      k::Add(f, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return;
    case NormPlacement::kDeepNorm:  // h = N1(α·x + A(x)); y = N2(α·h + F(h))
      Attention(lw, x, tokens, cache, layer, b, a);
      k::Axpby(1.0f, a, alpha, x, size);
      Norm(lw.norms[0], x, tokens, H, x);
      Ffn(lw, x, tokens, b, f);
      k::Axpby(1.0f, f, alpha, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return;
    case NormPlacement::kSandwich:  // h = x + N2(A(N1(x))); y = h + N4(F(N3(h)))
      Norm(lw.norms[0], x, tokens, H, n);
      Attention(lw, n, tokens, cache, layer, b, a);
      Norm(lw.norms[1], a, tokens, H, a);
      k::Add(a, x, size);
      Norm(lw.norms[2], x, tokens, H, n);
      Ffn(lw, n, tokens, b, f);
      Norm(lw.norms[3], f, tokens, H, f);
      k::Add(f, x, size);
      return;
    case NormPlacement::kMix:
      break;  // resolved to kPost/kPre at load
  }
  SPANSERVE_CHECK(false);
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

namespace {

absl::StatusOr<std::unique_ptr<Model::Impl>> BindModel(ModelConfig config,
                                                       std::unique_ptr<WeightStore> store,
                                                       const Model::Options& options) {
  if (options.compute_dtype == DType::kF16) {
    return absl::InvalidArgumentError("compute_dtype must be f32 or bf16, got f16");
  }
  if (options.compute_dtype == DType::kBF16 && !k::CpuHasBf16Dot()) {
    return absl::FailedPreconditionError(
        "compute_dtype bf16 needs the AVX512_BF16 dot products, which this CPU lacks (or "
        "SPANSERVE_MAX_ISA=avx2 forbids); use f32");
  }
  auto impl = std::make_unique<Model::Impl>();
  impl->config = std::move(config);
  impl->store = std::move(store);
  impl->compute_dtype = options.compute_dtype;
  RETURN_IF_ERROR(impl->Bind(impl->store.get()));
  const ModelConfig& c = impl->config;
  const int64_t half = c.head_dim / 2;
  impl->rope_cos.resize(static_cast<size_t>(c.max_position_embeddings) * half);
  impl->rope_sin.resize(impl->rope_cos.size());
  k::RopeTables(c.max_position_embeddings, c.head_dim, c.rope_theta, c.rope_linear_factor,
                impl->rope_cos.data(), impl->rope_sin.data());
  impl->num_threads = options.num_threads > 0 ? options.num_threads : omp_get_max_threads();
  return impl;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& path,
                                                   const Options& options) {
  if (IsGgufPath(path)) {
    ASSIGN_OR_RETURN(std::unique_ptr<gguf::GgufFile> file, gguf::GgufFile::Open(path));
    return LoadGguf(std::move(file), options);
  }
  ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig(path));
  ASSIGN_OR_RETURN(std::unique_ptr<WeightStore> store, WeightStore::OpenDirectory(path));
  ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl,
                   BindModel(std::move(config), std::move(store), options));
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

absl::StatusOr<std::unique_ptr<Model>> Model::LoadGguf(std::shared_ptr<const gguf::GgufFile> file,
                                                       const Options& options) {
  ASSIGN_OR_RETURN(ModelConfig config, GgufModelConfig(*file));
  ASSIGN_OR_RETURN(std::unique_ptr<WeightStore> store, GgufWeights(std::move(file), config));
  ASSIGN_OR_RETURN(std::unique_ptr<Impl> impl,
                   BindModel(std::move(config), std::move(store), options));
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& config) {
  Model::Impl impl;
  impl.config = config;
  Binder::Shapes shapes;
  const absl::Status st = impl.Bind(nullptr, &shapes);
  SPANSERVE_CHECK(st.ok());
  return shapes;
}

const ModelConfig& Model::config() const { return impl_->config; }
DType Model::compute_dtype() const { return impl_->compute_dtype; }

absl::StatusOr<DType> ParseF32OrBf16(std::string_view name, std::string_view setting) {
  if (name == "auto" || name == "f32" || name == "float32") return DType::kF32;
  if (name == "bf16" || name == "bfloat16") return DType::kBF16;
  return absl::InvalidArgumentError(absl::StrCat(
      std::string(setting), " must be auto, f32 or bf16, got \"", std::string(name), "\""));
}

std::string_view F32OrBf16Name(DType dtype) { return dtype == DType::kBF16 ? "bf16" : "f32"; }
int64_t Model::weight_bytes() const { return impl_->store->total_bytes(); }
int64_t Model::num_parameters() const { return impl_->num_parameters; }
const ExpertLoad& Model::expert_load() const { return impl_->expert_load; }
void Model::ResetExpertLoad() {
  for (auto& layer : impl_->expert_load.tokens) std::fill(layer.begin(), layer.end(), 0);
}

int64_t Model::LogitRows(std::span<const SequenceInput> batch) {
  int64_t rows = 0;
  for (const SequenceInput& s : batch) {
    switch (s.logits) {
      case LogitsMode::kNone:
        break;
      case LogitsMode::kLast:
        rows += 1;
        break;
      case LogitsMode::kAll:
        rows += static_cast<int64_t>(s.tokens.size());
        break;
    }
  }
  return rows;
}

absl::Status Model::Forward(std::span<const SequenceInput> batch, KvCache& cache,
                            ForwardWorkspace& workspace, float* logits) {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  ForwardWorkspace::Buffers& b = workspace.buffers();
  // Validate the whole batch before touching the cache.
  int64_t tokens = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceInput& s = batch[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has no tokens"));
    if (s.cached < 0 || s.cached + n > c.max_position_embeddings) {
      return absl::InvalidArgumentError(
          absl::StrCat("sequence ", i, " reaches position ", s.cached + n,
                       ", past max_position_embeddings ", c.max_position_embeddings));
    }
    if (static_cast<int64_t>(s.block_table.size()) * cache.block_size() < s.cached + n) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table of ",
                                                     s.block_table.size(), " blocks cannot hold ",
                                                     s.cached + n, " tokens"));
    }
    for (int32_t blk : s.block_table) {
      if (blk < 0 || blk >= cache.num_blocks()) {
        return absl::InvalidArgumentError(
            absl::StrCat("sequence ", i, ": block ", blk, " is outside the KV pool"));
      }
    }
    for (int32_t id : s.tokens) {
      if (id < 0 || id >= c.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": token id ", id,
                                                       " is outside the vocabulary [0, ",
                                                       c.vocab_size, ")"));
      }
    }
    tokens += n;
  }
  const int64_t H = c.hidden_size;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  Grow(b.x, tokens * H);
  Grow(b.t, tokens * H);
  Grow(b.n, tokens * H);
  Grow(b.a, tokens * H);
  Grow(b.f, tokens * H);
  Grow(b.q, tokens * q_dim);
  Grow(b.kk, tokens * kv_dim);
  Grow(b.v, tokens * kv_dim);
  Grow(b.att, tokens * q_dim);
  Grow(b.positions, tokens);
  b.seqs.clear();
  b.logit_rows.clear();
  int64_t row = 0;
  for (const SequenceInput& s : batch) {
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    b.seqs.push_back(k::AttentionSeq{s.block_table.data(), s.cached, n, row});
    for (int32_t j = 0; j < n; ++j) b.positions[row + j] = s.cached + j;
    k::EmbeddingLookup(m.embed, s.tokens.data(), n, b.x.data() + row * H);
    switch (s.logits) {
      case LogitsMode::kNone:
        break;
      case LogitsMode::kLast:
        b.logit_rows.push_back(row + n - 1);
        break;
      case LogitsMode::kAll:
        for (int32_t j = 0; j < n; ++j) b.logit_rows.push_back(row + j);
        break;
    }
    row += n;
  }
  omp_set_num_threads(m.num_threads);
  double* rms = nullptr;
  if (workspace.record_residual_rms()) {
    std::vector<double>& out = workspace.mutable_residual_rms();
    if (static_cast<int>(out.size()) != c.num_layers) out.resize(c.num_layers);
    rms = out.data();
  }
  for (int l = 0; l < c.num_layers; ++l) {
    m.Block(l, tokens, cache, b);
    if (rms != nullptr) {
      // Block l's output, the residual stream leaving the block (read only).
      double sum = 0;
      const float* x = b.x.data();
      for (int64_t i = 0; i < tokens * H; ++i) sum += static_cast<double>(x[i]) * x[i];
      rms[l] = std::sqrt(sum / static_cast<double>(tokens * H));
    }
  }

  const int64_t rows = static_cast<int64_t>(b.logit_rows.size());
  if (rows == 0) return absl::OkStatus();
  float* sel = Grow(b.sel, rows * H);
  for (int64_t r = 0; r < rows; ++r) {
    const float* src = b.x.data() + b.logit_rows[r] * H;
    std::copy(src, src + H, sel + r * H);
  }
  if (c.final_norm) m.Norm(m.final_norm, sel, rows, H, sel);
  k::MatMul(sel, rows, m.lm_head, nullptr, logits);
  return absl::OkStatus();
}

}  // namespace spanserve::model
