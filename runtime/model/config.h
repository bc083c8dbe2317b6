// Model configuration, read from a Hugging Face style config.json. Llama, Qwen2, Qwen3, Gemma
// and Mistral configs load unmodified (as PreNorm models), Gemma 2 and Gemma 3 configs as
// SandwichNorm models; SpanServe's keys add the norm placement and its scalars. See
// docs/MODEL_FORMAT.md for every key.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace spanserve::model {

// Where the block puts its norms (DESIGN.md §4). A = attention, F = FFN/MoE, N = norm.
enum class NormPlacement {
  kPre,       // h = x + A(N1(x)); y = h + F(N2(h))
  kPost,      // h = N1(x + A(x)); y = N2(h + F(h))
  kSpan,      // a = A(N1(x)); f = F(N2(x + a)); y = N3(α·x + β·(a + f))
  kB2t,       // h = N1(x + A(x)); y = N2(x + h + F(h))
  kDeepNorm,  // h = N1(α·x + A(x)); y = N2(α·h + F(h))
  kSandwich,  // h = x + N2(A(N1(x))); y = h + N4(F(N3(h)))
  kMix,       // kPost for the first mix_post_layers layers, kPre after
};

enum class NormType { kRmsNorm, kLayerNorm };
// The gated FFN's activation: down(act(gate(x)) ⊙ up(x)).
enum class Activation {
  kSilu,      // "silu": SwiGLU (Llama, Qwen2, Mistral, the MoE families)
  kGeluTanh,  // "gelu_pytorch_tanh": GeGLU (Gemma)
};
enum class RouterScoring { kSoftmax, kSigmoid };
// Which tensor names an MoE checkpoint uses.
enum class MoeLayout { kMixtral, kQwen2Moe, kOlmoe };

// "pre", "post", "span", "b2t", "deepnorm", "sandwich", "mix".
std::string_view NormPlacementName(NormPlacement p);

struct MoeConfig {
  int num_experts = 0;  // 0: dense model
  int top_k = 0;
  bool norm_topk_prob = false;
  int moe_intermediate_size = 0;
  int shared_expert_intermediate_size = 0;  // 0: no shared expert
  RouterScoring scoring = RouterScoring::kSoftmax;
  MoeLayout layout = MoeLayout::kMixtral;
  int decoder_sparse_step = 1;       // layer i is MoE iff (i + 1) % step == 0 ...
  std::vector<int> mlp_only_layers;  // ... and i is not listed here
  int first_k_dense = 0;             // ... and i >= first_k_dense
};

// rope_scaling (or rope_parameters), as transformers 4.46.3 reads it.
enum class RopeScalingType {
  kNone,          // absent, null or "default"
  kLinear,        // positions divided by factor
  kLlama3,        // Llama 3.1+: factor, low/high_freq_factor, original_max_position_embeddings
  kYarn,          // factor; optional attention_factor, beta_fast, beta_slow
  kFreqDivisors,  // GGUF only: the per-frequency divisors of tensor rope_freqs.weight
  // Dynamic NTK: factor. Past max_position_embeddings theta grows with the sequence length
  // L: theta · ((factor · L / max_position_embeddings) − (factor − 1))^(d / (d − 2)). A token
  // at position p of a request whose prompt has n tokens is rotated for L = max(n, p + 1)
  // (transformers' batch-1 generate; docs/MODEL_FORMAT.md).
  kDynamic,
  // LongRoPE (model_type phi3 only): short_factor / long_factor, one per frequency. A token
  // at position p of a request whose prompt has n tokens uses long_factor iff
  // max(n, p + 1) > original_max_position_embeddings (as kDynamic); cos and sin times
  // attention_factor.
  kLongRope,
};

struct RopeScalingConfig {
  RopeScalingType type = RopeScalingType::kNone;
  double factor = 1.0;
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  // llama3: required. yarn: optional and, as in transformers 4.46.3, not used: its
  // correction range uses max_position_embeddings. 0 when absent. longrope: the top-level
  // key (Phi3Config's default 4096).
  int original_max_position_embeddings = 0;
  double beta_fast = 32.0;  // yarn (absent or 0: 32, as transformers' `or 32`)
  double beta_slow = 1.0;   // yarn (absent or 0: 1)
  // yarn: multiplies cos and sin; absent: 0.1 * ln(factor) + 1. longrope: always set,
  // sqrt(1 + ln(s) / ln(original_max_position_embeddings)) with s = max_position_embeddings /
  // original_max_position_embeddings, 1 when s <= 1.
  std::optional<double> attention_factor;
  std::vector<float> short_factor, long_factor;  // longrope: head_dim / 2 values each
  std::vector<float> freq_divisors;              // kFreqDivisors: head_dim / 2 values, each > 0
};

struct ModelConfig {
  // "llama", "qwen2", "mistral", "gemma", "spanserve", "mixtral", ... (a `gemma3` config
  // loads as its text model, "gemma3_text").
  std::string model_type;
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;  // default hidden_size / num_heads
  float norm_eps = 1e-6f;
  double rope_theta = 10000.0;
  RopeScalingConfig rope_scaling;
  int max_position_embeddings = 2048;
  int vocab_size = 0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;  // q/k/v biases (Qwen2 sets this implicitly)
  bool o_proj_bias = false;     // o_proj bias too (Llama/OLMoE with attention_bias)
  bool qk_norm = false;         // RMSNorm over q and k projections (OLMoE, Qwen3)
  // Qwen3: qk_norm is per head (each head's head_dim values, one gain of head_dim shared by
  // all heads); OLMoE: over the whole projection (gains of q_dim / kv_dim).
  bool qk_norm_per_head = false;
  // Phi-3: q, k and v are row ranges of one `self_attn.qkv_proj.weight` [q_dim + 2·kv_dim,
  // hidden] (q, k, v in that order), gate and up of one `mlp.gate_up_proj.weight`
  // [2·intermediate, hidden] (gate first), bound in place.
  bool fused_qkv = false;
  bool fused_gate_up = false;
  // Sliding-window attention (transformers semantics): a row at position p attends to the
  // positions k with p - sliding_window < k <= p. 0: none. Mistral/Mixtral: `sliding_window`
  // (null: none); Qwen2/Qwen2-MoE/Qwen3: `sliding_window` when `use_sliding_window` is true, on
  // the layers >= `max_window_layers` only (as transformers' flash-attention path and later
  // releases; 4.46.3's eager/sdpa path applies it to every layer).
  // Gemma 2: `sliding_window` (absent: 4096, null: none) on the even layers only (layer % 2
  // == 0, as transformers 4.46.3), full attention on the odd ones. Gemma 3: `sliding_window`
  // (absent: 4096) on the layers sliding_layers marks.
  int sliding_window = 0;
  int max_window_layers = 0;  // the first layer the window applies to
  // Gemma 3: one entry per layer, true for a sliding-window ("local") layer: from
  // `layer_types` ("sliding_attention" / "full_attention") when given, else layer i is local
  // unless (i + 1) % `sliding_window_pattern` == 0 (absent: 6). Empty for other model types.
  std::vector<bool> sliding_layers;
  // Gemma 3: the local layers rotate with base `rope_local_base_freq` (absent: 10000) and no
  // scaling, the global ones with rope_theta and rope_scaling. 0: one RoPE for every layer.
  double rope_local_base_freq = 0.0;
  // Gemma 3 multimodal checkpoints (model_type `gemma3`): the text model's tensors carry this
  // prefix P = "language_model." (P + "model.layers..." as transformers 4.50 / 4.51 save them,
  // or "model." + P + "layers..." as later releases do; binding.cc finds which), the vision
  // tower's and projector's (under `ignored_prefixes`) are not read. Empty for a text-only
  // checkpoint.
  std::string weights_prefix;
  std::vector<std::string> ignored_prefixes;
  // Gemma 2: attention scores are scale · q·k = query_pre_attn_scalar^-0.5 · q·k (0: the
  // default head_dim^-0.5), rounded to f32 as transformers multiplies the f32 scores.
  double query_pre_attn_scalar = 0.0;
  // Gemma 2: logit soft-capping, s -> cap · tanh(s / cap) (0: off). attn_logit_softcapping
  // caps each scaled attention score before the causal mask and softmax,
  // final_logit_softcapping the output logits (absent: 50 and 30, null: off). Gemma 3:
  // final_logit_softcapping only (absent or null: off).
  float attn_logit_softcap = 0.0f;
  float final_logit_softcap = 0.0f;
  // The FFN activation: `hidden_act` (absent: silu); Gemma reads `hidden_activation`
  // (absent or null: gelu_pytorch_tanh, whatever hidden_act says, as transformers 4.46.3).
  Activation activation = Activation::kSilu;
  // Gemma: the embedding rows are multiplied by f32(sqrt(hidden_size)) after the lookup
  // (false: not scaled).
  bool scale_embeddings = false;
  // Gemma: RMSNorm multiplies by (norm_gain_offset + weight), folded into the gains at load
  // (1 + w, in f32, as transformers computes it). 0 elsewhere.
  float norm_gain_offset = 0.0f;

  NormPlacement norm_placement = NormPlacement::kPre;
  NormType norm_type = NormType::kRmsNorm;
  bool norm_bias = false;     // LayerNorm with a bias (default true for layernorm)
  float skip_scale = 1.0f;    // α
  float branch_scale = 1.0f;  // β
  bool final_norm = true;
  int mix_post_layers = 0;  // Mix-LN: how many leading layers are PostNorm

  std::vector<int> bos_token_ids;
  std::vector<int> eos_token_ids;

  MoeConfig moe;

  bool is_moe() const { return moe.num_experts > 0; }
  bool LayerIsMoe(int layer) const;
  // The sliding window of layer `layer` (0: full causal attention).
  int LayerSlidingWindow(int layer) const;
  // Whether layer `layer` rotates with the local RoPE (rope_local_base_freq, unscaled).
  bool LayerUsesLocalRope(int layer) const;
  // The factor of the attention scores: query_pre_attn_scalar^-0.5 or head_dim^-0.5, in f32.
  float AttentionScale() const;
  // The positions a sequence may reach: max_position_embeddings, or for dynamic NTK scaling
  // floor(max_position_embeddings × factor) (at least max_position_embeddings), the context
  // the scaling is meant to extend to.
  int MaxPositions() const;
  // The window beyond which no layer reads the KV cache (the widest layer's), or 0 if some
  // layer attends to every position: blocks before it may be given back.
  int KvWindow() const;
  // The placement layer `layer` uses (resolves kMix).
  NormPlacement LayerPlacement(int layer) const;
};

// Parses and validates config.json text. Errors are INVALID_ARGUMENT and name the key.
[[nodiscard]] absl::StatusOr<ModelConfig> ParseModelConfig(std::string_view json_text);

// Reads <dir>/config.json.
[[nodiscard]] absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& dir);

}  // namespace spanserve::model
