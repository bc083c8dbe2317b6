// The forward pass: one batched step over the paged KV cache, every norm placement's block
// (DESIGN.md §4) on the model's compute backend. Weight binding is in binding.cc, the MoE
// layer in moe_layer.cc, the KV cache in kv_cache.cc.
#include "runtime/model/model.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "runtime/gguf/gguf_file.h"
#include "runtime/model/gguf_model.h"
#include "runtime/model/model_impl.h"
#include "runtime/model/weights.h"

namespace spanserve::model {

ForwardWorkspace::ForwardWorkspace(kernels::Backend& backend)
    : backend_(&backend), buffers_(std::make_unique<Buffers>()) {}
ForwardWorkspace::~ForwardWorkspace() = default;

struct Model::Impl {
  ModelConfig config;
  std::unique_ptr<WeightStore> store;
  std::unique_ptr<kernels::Backend> owned_backend;  // when Options::backend was null
  kernels::Backend* backend = nullptr;
  ModelWeights weights;
  // RoPE cos/sin tables: rope_rows rows, one per position (config.MaxPositions()), rotated
  // for the sequence length max(p + 1, ...) of a token that ends its sequence; then, for
  // dynamic NTK, rope_step_rows rows each step fills for the prompt tokens of prompts longer
  // than max_position_embeddings (rotated for the prompt's length instead).
  DeviceArray<float> rope_cos, rope_sin;
  // Gemma 3's local layers: rope_rows per-position rows of rope_local_base_freq, unscaled
  // (empty when config.rope_local_base_freq is 0).
  DeviceArray<float> rope_local_cos, rope_local_sin;
  int64_t rope_rows = 0;
  int64_t rope_step_rows = 0;
  int64_t num_parameters = 0;
  DType compute_dtype = DType::kF32;
  bool int8_dot = false;
  ExpertLoad expert_load;

  void Norm(const NormWeights& w, const float* in, int64_t tokens, int64_t dim, float* out) const;
  absl::Status Attention(const LayerWeights& lw, const float* in, int64_t tokens, KvCache& cache,
                         int layer, ForwardWorkspace::Buffers& b, float* out) const;
  absl::Status Ffn(const LayerWeights& lw, const float* in, int64_t tokens,
                   ForwardWorkspace::Buffers& b, float* out) {
    if (lw.is_moe) {
      return MoeFfn(*backend, config.moe, config.hidden_size, lw.moe, in, tokens, b,
                    expert_load.tokens[lw.moe.moe_index], out);
    }
    return DenseFfn(*backend, config.activation, lw.mlp, in, tokens, b, out);
  }
  absl::Status Block(int layer, int64_t tokens, KvCache& cache, ForwardWorkspace::Buffers& b);
  // (Re)allocates the RoPE tables with room for `step_rows` per-step rows and fills the
  // per-position rows. Grows only: the per-position rows are recomputed at each growth.
  absl::Status AllocateRopeTables(int64_t step_rows);
};

absl::Status Model::Impl::AllocateRopeTables(int64_t step_rows) {
  const int64_t half = config.head_dim / 2;
  ASSIGN_OR_RETURN(float* cos, rope_cos.Grow(*backend, (rope_rows + step_rows) * half));
  ASSIGN_OR_RETURN(float* sin, rope_sin.Grow(*backend, (rope_rows + step_rows) * half));
  backend->RopeTables(rope_rows, config.head_dim, config.rope_theta, KernelRopeScaling(config), cos,
                      sin);
  if (config.rope_local_base_freq > 0 && rope_local_cos.data() == nullptr) {
    // No per-step rows: the local RoPE does not depend on the sequence length.
    ASSIGN_OR_RETURN(float* local_cos, rope_local_cos.Grow(*backend, rope_rows * half));
    ASSIGN_OR_RETURN(float* local_sin, rope_local_sin.Grow(*backend, rope_rows * half));
    backend->RopeTables(rope_rows, config.head_dim, config.rope_local_base_freq,
                        kernels::RopeScaling{}, local_cos, local_sin);
  }
  rope_step_rows = step_rows;
  return absl::OkStatus();
}

void Model::Impl::Norm(const NormWeights& w, const float* in, int64_t tokens, int64_t dim,
                       float* out) const {
  switch (config.norm_type) {
    case NormType::kRmsNorm:
      backend->RmsNorm(in, tokens, dim, w.gain, config.norm_eps, out);
      return;
    case NormType::kLayerNorm:
      backend->LayerNorm(in, tokens, dim, w.gain, w.has_bias ? &w.bias : nullptr, config.norm_eps,
                         out);
      return;
  }
}

absl::Status Model::Impl::Attention(const LayerWeights& lw, const float* in, int64_t tokens,
                                    KvCache& cache, int layer, ForwardWorkspace::Buffers& b,
                                    float* out) const {
  const ModelConfig& c = config;
  kernels::Backend& be = *backend;
  const int64_t q_dim = static_cast<int64_t>(c.num_heads) * c.head_dim;
  const int64_t kv_dim = static_cast<int64_t>(c.num_kv_heads) * c.head_dim;
  float* q = b.q.data();
  float* kk = b.kk.data();
  float* v = b.v.data();
  const kernels::MatMulOutput qkv[] = {{&lw.q, lw.has_qkv_bias ? &lw.qb : nullptr, q},
                                       {&lw.k, lw.has_qkv_bias ? &lw.kb : nullptr, kk},
                                       {&lw.v, lw.has_qkv_bias ? &lw.vb : nullptr, v}};
  be.MatMulShared(in, tokens, qkv, 3);
  if (lw.has_qk_norm && c.qk_norm_per_head) {
    // Qwen3: q / k rows are [tokens, heads, head_dim], so each head's values are one row of
    // head_dim for the norm.
    be.RmsNorm(q, tokens * c.num_heads, c.head_dim, lw.q_norm.gain, c.norm_eps, q);
    be.RmsNorm(kk, tokens * c.num_kv_heads, c.head_dim, lw.k_norm.gain, c.norm_eps, kk);
  } else if (lw.has_qk_norm) {
    be.RmsNorm(q, tokens, q_dim, lw.q_norm.gain, c.norm_eps, q);
    be.RmsNorm(kk, tokens, kv_dim, lw.k_norm.gain, c.norm_eps, kk);
  }
  // Gemma 3's local layers rotate with their own (unscaled) table.
  const bool local = c.LayerUsesLocalRope(layer) && rope_local_cos.data() != nullptr;
  const float* cos = local ? rope_local_cos.data() : rope_cos.data();
  const float* sin = local ? rope_local_sin.data() : rope_sin.data();
  be.ApplyRope(q, tokens, c.num_heads, c.head_dim, b.positions.data(), cos, sin);
  be.ApplyRope(kk, tokens, c.num_kv_heads, c.head_dim, b.positions.data(), cos, sin);
  const kernels::PagedKvLayer kv{
      cache.k(layer),      cache.v(layer), cache.num_blocks(), cache.block_size(),
      c.num_kv_heads,      c.head_dim,     cache.dtype(),      c.LayerSlidingWindow(layer),
      c.attn_logit_softcap};
  const int32_t num_seqs = static_cast<int32_t>(b.seqs.size());
  be.PagedKvWrite(kv, b.seqs.data(), num_seqs, kk, v);
  be.PagedAttention(kv, b.seqs.data(), num_seqs, q, c.num_heads, c.AttentionScale(), b.att.data());
  be.MatMul(b.att.data(), tokens, lw.o, lw.has_o_bias ? &lw.ob : nullptr, out);
  return absl::OkStatus();
}

absl::Status DenseFfn(kernels::Backend& be, Activation activation, const FfnWeights& w,
                      const float* in, int64_t tokens, ForwardWorkspace::Buffers& b, float* out) {
  const int64_t inter = w.gate.rows;
  ASSIGN_OR_RETURN(float* g, b.g.Grow(be, tokens * inter));
  ASSIGN_OR_RETURN(float* u, b.u.Grow(be, tokens * inter));
  const kernels::MatMulOutput gate_up[] = {{&w.gate, nullptr, g}, {&w.up, nullptr, u}};
  be.MatMulShared(in, tokens, gate_up, 2);
  switch (activation) {
    case Activation::kSilu:
      be.SiluMul(g, u, tokens * inter, g);
      break;
    case Activation::kGeluTanh:
      be.GeluTanhMul(g, u, tokens * inter, g);
      break;
  }
  be.MatMul(g, tokens, w.down, nullptr, out);
  return absl::OkStatus();
}

// One block; the residual stream b.x [tokens, hidden] is updated in place.
absl::Status Model::Impl::Block(int layer, int64_t tokens, KvCache& cache,
                                ForwardWorkspace::Buffers& b) {
  const LayerWeights& lw = weights.layers[layer];
  kernels::Backend& be = *backend;
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
      RETURN_IF_ERROR(Attention(lw, n, tokens, cache, layer, b, a));
      be.Add(a, x, size);
      Norm(lw.norms[1], x, tokens, H, n);
      RETURN_IF_ERROR(Ffn(lw, n, tokens, b, f));
      be.Add(f, x, size);
      return absl::OkStatus();
    case NormPlacement::kPost:  // h = N1(x + A(x)); y = N2(h + F(h))
      RETURN_IF_ERROR(Attention(lw, x, tokens, cache, layer, b, a));
      be.Add(a, x, size);
      Norm(lw.norms[0], x, tokens, H, x);
      RETURN_IF_ERROR(Ffn(lw, x, tokens, b, f));
      be.Add(f, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return absl::OkStatus();
    case NormPlacement::kSpan:  // a = A(N1(x)); f = F(N2(x + a)); y = N3(α·x + β·(a + f))
      Norm(lw.norms[0], x, tokens, H, n);
      RETURN_IF_ERROR(Attention(lw, n, tokens, cache, layer, b, a));
      be.Copy(x, size, t);
      be.Add(a, t, size);
      Norm(lw.norms[1], t, tokens, H, n);
      RETURN_IF_ERROR(Ffn(lw, n, tokens, b, f));
      be.Add(a, f, size);                 // f = a + f
      be.Axpby(beta, f, alpha, x, size);  // x = α·x + β·(a + f)
      Norm(lw.norms[2], x, tokens, H, x);
      return absl::OkStatus();
    case NormPlacement::kB2t:  // h = N1(x + A(x)); y = N2(x + h + F(h))
      RETURN_IF_ERROR(Attention(lw, x, tokens, cache, layer, b, a));
      be.Copy(x, size, t);
      be.Add(a, t, size);
      Norm(lw.norms[0], t, tokens, H, t);  // t = h
      RETURN_IF_ERROR(Ffn(lw, t, tokens, b, f));
      be.Add(t, x, size);
      be.Add(f, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return absl::OkStatus();
    case NormPlacement::kDeepNorm:  // h = N1(α·x + A(x)); y = N2(α·h + F(h))
      RETURN_IF_ERROR(Attention(lw, x, tokens, cache, layer, b, a));
      be.Axpby(1.0f, a, alpha, x, size);
      Norm(lw.norms[0], x, tokens, H, x);
      RETURN_IF_ERROR(Ffn(lw, x, tokens, b, f));
      be.Axpby(1.0f, f, alpha, x, size);
      Norm(lw.norms[1], x, tokens, H, x);
      return absl::OkStatus();
    case NormPlacement::kSandwich:  // h = x + N2(A(N1(x))); y = h + N4(F(N3(h)))
      Norm(lw.norms[0], x, tokens, H, n);
      RETURN_IF_ERROR(Attention(lw, n, tokens, cache, layer, b, a));
      Norm(lw.norms[1], a, tokens, H, a);
      be.Add(a, x, size);
      Norm(lw.norms[2], x, tokens, H, n);
      RETURN_IF_ERROR(Ffn(lw, n, tokens, b, f));
      Norm(lw.norms[3], f, tokens, H, f);
      be.Add(f, x, size);
      return absl::OkStatus();
    case NormPlacement::kMix:
      break;  // resolved to kPost/kPre at load
  }
  SPANSERVE_CHECK(false);
  return absl::OkStatus();
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
  auto impl = std::make_unique<Model::Impl>();
  if (options.backend != nullptr) {
    impl->backend = options.backend;
  } else {
    ASSIGN_OR_RETURN(
        impl->owned_backend,
        kernels::CreateBackend(options.device,
                               kernels::BackendOptions{.num_threads = options.num_threads}));
    impl->backend = impl->owned_backend.get();
  }
  if (options.compute_dtype == DType::kBF16 && !impl->backend->SupportsBf16Dot()) {
    return absl::FailedPreconditionError(
        "compute_dtype bf16 needs the AVX512_BF16 dot products, which this CPU lacks (or "
        "SPANSERVE_MAX_ISA=avx2 forbids); use f32");
  }
  if (options.int8_dot && !impl->backend->SupportsInt8Dot()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "int8_dot: the ", std::string(kernels::DeviceName(impl->backend->device())),
        " backend has no integer dot-product path for quantized weights; load without it"));
  }
  impl->config = std::move(config);
  impl->store = std::move(store);
  impl->compute_dtype = options.compute_dtype;
  impl->int8_dot = options.int8_dot;
  MatrixPrecisions precisions;
  if (options.compute_dtype == DType::kBF16) precisions.bf16 = kernels::MatMulPrecision::kBf16Dot;
  if (options.int8_dot) precisions.quantized = kernels::MatMulPrecision::kInt8Dot;
  ASSIGN_OR_RETURN(impl->num_parameters,
                   BindWeights(impl->config, impl->store.get(), impl->backend, precisions,
                               &impl->weights, &impl->expert_load));
  impl->rope_rows = impl->config.MaxPositions();
  RETURN_IF_ERROR(impl->AllocateRopeTables(0));
  return impl;
}

}  // namespace

kernels::RopeScaling KernelRopeScaling(const ModelConfig& config) {
  const RopeScalingConfig& rs = config.rope_scaling;
  kernels::RopeScaling k;
  k.factor = rs.factor;
  switch (rs.type) {
    case RopeScalingType::kNone:
      k.type = kernels::RopeScalingType::kNone;
      k.factor = 1.0;
      break;
    case RopeScalingType::kLinear:
      k.type = kernels::RopeScalingType::kLinear;
      break;
    case RopeScalingType::kLlama3:
      k.type = kernels::RopeScalingType::kLlama3;
      k.low_freq_factor = rs.low_freq_factor;
      k.high_freq_factor = rs.high_freq_factor;
      k.context_length = rs.original_max_position_embeddings;
      break;
    case RopeScalingType::kYarn:
      k.type = kernels::RopeScalingType::kYarn;
      k.context_length = config.max_position_embeddings;
      k.beta_fast = rs.beta_fast;
      k.beta_slow = rs.beta_slow;
      k.attention_factor = rs.attention_factor.value_or(0.1 * std::log(rs.factor) + 1.0);
      break;
    case RopeScalingType::kDynamic:
      // Unscaled up to max_position_embeddings (not original_max_position_embeddings, as
      // transformers 4.46.3).
      k.type = kernels::RopeScalingType::kDynamic;
      k.context_length = config.max_position_embeddings;
      break;
    case RopeScalingType::kLongRope:
      // Short factors up to original_max_position_embeddings, long ones past it; the
      // attention factor from max / original (Phi3LongRoPEScaledRotaryEmbedding).
      SPANSERVE_CHECK(static_cast<int64_t>(rs.short_factor.size()) == config.head_dim / 2 &&
                      static_cast<int64_t>(rs.long_factor.size()) == config.head_dim / 2);
      k.type = kernels::RopeScalingType::kLongRope;
      k.context_length = rs.original_max_position_embeddings;
      k.short_factor = rs.short_factor.data();
      k.long_factor = rs.long_factor.data();
      k.attention_factor = rs.attention_factor.value_or(1.0);
      break;
    case RopeScalingType::kFreqDivisors:
      SPANSERVE_CHECK(static_cast<int64_t>(rs.freq_divisors.size()) == config.head_dim / 2);
      k.type = kernels::RopeScalingType::kFreqDivisors;
      k.freq_divisors = rs.freq_divisors.data();
      break;
  }
  return k;
}

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
  ModelWeights weights;
  ExpertLoad load;
  TensorShapes shapes;
  const absl::StatusOr<int64_t> st =
      BindWeights(config, nullptr, nullptr, MatrixPrecisions{}, &weights, &load, &shapes);
  SPANSERVE_CHECK(st.ok());
  return shapes;
}

const ModelConfig& Model::config() const { return impl_->config; }
DType Model::compute_dtype() const { return impl_->compute_dtype; }
bool Model::int8_dot() const { return impl_->int8_dot; }
kernels::Backend& Model::backend() const { return *impl_->backend; }
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
  kernels::Backend& be = *m.backend;
  ForwardWorkspace::Buffers& b = workspace.buffers();
  if (&workspace.backend() != &be) {
    return absl::InvalidArgumentError("the workspace is not on the model's backend");
  }
  // Validate the whole batch before touching the cache.
  const int64_t kv_window = c.KvWindow();
  const int64_t max_positions = c.MaxPositions();
  int64_t tokens = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    const SequenceInput& s = batch[i];
    const int64_t n = static_cast<int64_t>(s.tokens.size());
    if (n == 0) return absl::InvalidArgumentError(absl::StrCat("sequence ", i, " has no tokens"));
    if (s.cached < 0 || s.cached + n > max_positions) {
      return absl::InvalidArgumentError(
          c.rope_scaling.type == RopeScalingType::kDynamic
              ? absl::StrCat("sequence ", i, " reaches position ", s.cached + n, ", past the ",
                             max_positions,
                             " positions of max_position_embeddings × rope_scaling.factor")
              : absl::StrCat("sequence ", i, " reaches position ", s.cached + n,
                             ", past max_position_embeddings ", c.max_position_embeddings));
    }
    if (s.rope_prompt_length < 0 || s.rope_prompt_length > max_positions) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": rope_prompt_length ",
                                                     s.rope_prompt_length, " is outside [0, ",
                                                     max_positions, "]"));
    }
    if (static_cast<int64_t>(s.block_table.size()) * cache.block_size() < s.cached + n) {
      return absl::InvalidArgumentError(absl::StrCat("sequence ", i, ": block table of ",
                                                     s.block_table.size(), " blocks cannot hold ",
                                                     s.cached + n, " tokens"));
    }
    // Blocks wholly before every layer's window of the first new position are never read,
    // and may be marked released (-1) by the caller.
    const int64_t first_read = kv_window > 0 ? s.cached - kv_window + 1 : 0;
    for (size_t b = 0; b < s.block_table.size(); ++b) {
      const int32_t blk = s.block_table[b];
      if (blk == -1 && static_cast<int64_t>(b + 1) * cache.block_size() <= first_read) continue;
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
  for (auto [array, size] : {std::pair{&b.x, tokens * H},
                             {&b.t, tokens * H},
                             {&b.n, tokens * H},
                             {&b.a, tokens * H},
                             {&b.f, tokens * H},
                             {&b.q, tokens * q_dim},
                             {&b.kk, tokens * kv_dim},
                             {&b.v, tokens * kv_dim},
                             {&b.att, tokens * q_dim}}) {
    RETURN_IF_ERROR(array->Grow(be, size).status());
  }
  // The step's host-side description: token ids, positions, attention descriptors and the
  // rows whose logits are wanted; ids and positions then go to the device.
  b.seqs.clear();
  b.host_ids.clear();
  b.host_positions.clear();
  b.host_logit_rows.clear();
  b.rope_runs.clear();
  // Dynamic NTK and LongRoPE rotate a token for a sequence length: prompt tokens of prompts
  // longer than `rope_context` may need other rows than the per-position ones.
  const bool dynamic_rope = c.rope_scaling.type == RopeScalingType::kDynamic;
  const bool longrope = c.rope_scaling.type == RopeScalingType::kLongRope;
  const int64_t rope_context =
      longrope ? c.rope_scaling.original_max_position_embeddings : c.max_position_embeddings;
  int64_t row = 0;
  int64_t rope_step_rows = 0;
  for (const SequenceInput& s : batch) {
    const int32_t n = static_cast<int32_t>(s.tokens.size());
    b.seqs.push_back(kernels::AttentionSeq{s.block_table.data(), s.cached, n, row});
    b.host_ids.insert(b.host_ids.end(), s.tokens.begin(), s.tokens.end());
    // Dynamic NTK: the token at position p is rotated for the length max(prompt, p + 1).
    // The per-position rows hold max(p + 1, max_position_embeddings); prompt tokens with
    // p + 1 < prompt past max_position_embeddings take per-step rows of the prompt's length.
    // LongRoPE likewise past original_max_position_embeddings, where only the positions
    // p < original_max_position_embeddings differ from their per-position (short) rows.
    const int64_t prompt = s.rope_prompt_length > 0 ? s.rope_prompt_length : s.cached + n;
    int32_t step_tokens = 0;
    if ((dynamic_rope || longrope) && prompt > rope_context) {
      const int64_t end = longrope ? std::min(prompt - 1, rope_context) : prompt - 1;
      step_tokens = static_cast<int32_t>(std::clamp<int64_t>(end - s.cached, 0, n));
    }
    if (step_tokens > 0) {
      b.rope_runs.push_back({prompt, s.cached, step_tokens});
      for (int32_t j = 0; j < step_tokens; ++j) {
        b.host_positions.push_back(static_cast<int32_t>(m.rope_rows + rope_step_rows + j));
      }
      rope_step_rows += step_tokens;
    }
    for (int32_t j = step_tokens; j < n; ++j) b.host_positions.push_back(s.cached + j);
    switch (s.logits) {
      case LogitsMode::kNone:
        break;
      case LogitsMode::kLast:
        b.host_logit_rows.push_back(static_cast<int32_t>(row + n - 1));
        break;
      case LogitsMode::kAll:
        for (int32_t j = 0; j < n; ++j) b.host_logit_rows.push_back(static_cast<int32_t>(row + j));
        break;
    }
    row += n;
  }
  ASSIGN_OR_RETURN(int32_t * ids, b.ids.Grow(be, tokens));
  ASSIGN_OR_RETURN(int32_t * positions, b.positions.Grow(be, tokens));
  if (rope_step_rows > m.rope_step_rows) {
    // At least doubling, so that the per-position rows are recomputed a few times at most.
    RETURN_IF_ERROR(m.AllocateRopeTables(std::max(rope_step_rows, 2 * m.rope_step_rows)));
  }
  be.BeginStep();
  be.CopyToDevice(b.host_ids.data(), tokens * sizeof(int32_t), ids);
  be.CopyToDevice(b.host_positions.data(), tokens * sizeof(int32_t), positions);
  if (!b.rope_runs.empty()) {
    kernels::RopeScaling scaling = KernelRopeScaling(c);
    const int64_t half = c.head_dim / 2;
    int64_t next = m.rope_rows;
    for (const ForwardWorkspace::Buffers::RopeRun& run : b.rope_runs) {
      scaling.dynamic_length = run.length;
      scaling.first_position = run.first_position;
      be.RopeTables(run.rows, c.head_dim, c.rope_theta, scaling, m.rope_cos.data() + next * half,
                    m.rope_sin.data() + next * half);
      next += run.rows;
    }
  }
  be.EmbeddingLookup(m.weights.embed, ids, tokens, b.x.data());
  if (c.scale_embeddings) {
    // Gemma: x · f32(sqrt(hidden_size)), as transformers' normalizer in an f32 model. With
    // a = 0 Axpby gives exactly 0·x + s·x = s·x for finite rows (the table's rows are).
    const float normalizer = static_cast<float>(std::sqrt(static_cast<double>(H)));
    be.Axpby(0.0f, b.x.data(), normalizer, b.x.data(), tokens * H);
  }

  double* rms = nullptr;
  if (workspace.record_residual_rms()) {
    std::vector<double>& out = workspace.mutable_residual_rms();
    if (static_cast<int>(out.size()) != c.num_layers) out.resize(c.num_layers);
    rms = out.data();
  }
  for (int l = 0; l < c.num_layers; ++l) {
    RETURN_IF_ERROR(m.Block(l, tokens, cache, b));
    if (rms != nullptr) {
      // Block l's output, the residual stream leaving the block (read only).
      rms[l] = std::sqrt(be.SumOfSquares(b.x.data(), tokens * H) / static_cast<double>(tokens * H));
    }
  }

  const int64_t rows = static_cast<int64_t>(b.host_logit_rows.size());
  if (rows == 0) return be.Synchronize();
  ASSIGN_OR_RETURN(int32_t * logit_rows, b.logit_rows.Grow(be, rows));
  ASSIGN_OR_RETURN(float* sel, b.sel.Grow(be, rows * H));
  be.CopyToDevice(b.host_logit_rows.data(), rows * sizeof(int32_t), logit_rows);
  be.GatherRows(b.x.data(), H, logit_rows, rows, /*divisor=*/1, sel);
  if (c.final_norm) m.Norm(m.weights.final_norm, sel, rows, H, sel);
  // Straight into the caller's rows where device memory is host memory.
  float* out = logits;
  if (!be.host_memory()) {
    ASSIGN_OR_RETURN(out, b.logits.Grow(be, rows * c.vocab_size));
  }
  be.MatMul(sel, rows, m.weights.lm_head, nullptr, out);
  // Gemma 2's (and Gemma 3's, when set) final_logit_softcapping.
  if (c.final_logit_softcap > 0.0f) be.SoftCap(out, rows * c.vocab_size, c.final_logit_softcap);
  if (out != logits) be.CopyToHost(out, rows * c.vocab_size * sizeof(float), logits);
  return be.Synchronize();
}

}  // namespace spanserve::model
