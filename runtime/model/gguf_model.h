// A GGUF file as a model: its metadata as a ModelConfig, its tensors as a WeightStore under
// the runtime's (Hugging Face) names. general.architecture "llama", "qwen2", "qwen3",
// "qwen2moe", "qwen3moe", "phi3", "gemma", "gemma2" and "gemma3" are supported, each as the
// config.json model_type of that name (llama with experts: mixtral; qwen2moe / qwen3moe:
// qwen2_moe / qwen3_moe; gemma3: gemma3_text, with llama.cpp's fixed layer pattern, local
// RoPE base and query scale: docs/MODEL_FORMAT.md).
//
// Metadata keys (A = the architecture prefix: "llama", "qwen2", "qwen3", ...):
//   A.embedding_length → hidden_size        A.feed_forward_length → intermediate_size
//   A.block_count → num_hidden_layers       A.context_length → max_position_embeddings
//   A.attention.head_count(_kv)             A.attention.key_length → head_dim (optional)
//   A.attention.layer_norm_rms_epsilon      A.rope.freq_base → rope_theta (default 1e4)
//   A.rope.dimension_count (must be head_dim)
//   A.rope.scaling.type (none, linear, yarn), .factor, .original_context_length,
//   .yarn_beta_fast/.yarn_beta_slow → rope_scaling; tensor rope_freqs.weight (F32,
//   head_dim/2: llama3's per-frequency divisors, as llama.cpp's converter writes for
//   Llama 3.1+) → rope_scaling type kFreqDivisors: inv_freq[i] / rope_freqs[i].
//   vocab size: the length of tokenizer.ggml.tokens (else A.vocab_size, else token_embd)
//   tied embeddings iff output.weight is absent; BOS/EOS from tokenizer.ggml.*_token_id.
//   llama MoE (Mixtral): A.expert_count → num_local_experts, A.expert_used_count →
//   num_experts_per_tok, A.expert_feed_forward_length → moe_intermediate_size (optional).
//   qwen2moe / qwen3moe: the same keys (num_experts), A.expert_shared_feed_forward_length →
//   shared_expert_intermediate_size (qwen2moe), A.expert_weights_norm → norm_topk_prob
//   (default as llama.cpp: true for qwen3moe, false for qwen2moe); layers without
//   blk.N.ffn_gate_inp → mlp_only_layers.
// Tensors: token_embd, output_norm, output, blk.N.{attn_norm, attn_q, attn_k, attn_v,
// attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down} (.weight, .bias: qwen2's q/k/v biases),
// blk.N.attn_q_norm / attn_k_norm (qwen3), and for a llama MoE blk.N.ffn_gate_inp plus the
// stacked blk.N.ffn_{gate,down,up}_exps [experts, rows, cols], each expert's slice becoming
// block_sparse_moe.experts.E.{w1,w2,w3} (or the older per-expert blk.N.ffn_gate.E); for
// qwen2moe / qwen3moe the same tensors become mlp.gate and mlp.experts.E.{gate,down,up}_proj,
// and qwen2moe's blk.N.ffn_{gate,down,up}_shexp / ffn_gate_inp_shexp ([hidden] or
// [1, hidden]) become mlp.shared_expert.{gate,down,up}_proj / mlp.shared_expert_gate. GGUF
// dims are innermost-first, so a [ne0, ne1] matrix is the runtime's [ne1 rows, ne0 cols]. For
// llama only, llama.cpp's converter interleaves the rows of each Q and K head for its rotary
// layout; they are put back in the Hugging Face order here, so the runtime's rotary embedding
// gives the same result. Quantized (and permuted) tensors are dequantized to f32 at load;
// F32/F16/BF16 ones are used in place.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/gguf/gguf_file.h"
#include "runtime/model/config.h"
#include "runtime/model/weights.h"

namespace spanserve::model {

// Whether `path` names a GGUF file rather than a model directory: it ends in ".gguf" or is a
// regular file (whose magic the reader then checks).
bool IsGgufPath(const std::string& path);

// INVALID_ARGUMENT naming the key for a missing or ill-typed key or inconsistent values;
// UNIMPLEMENTED naming general.architecture for another architecture, or the key of a
// feature the runtime lacks (partial rotary, other RoPE scaling, shared experts, sigmoid
// routing, experts outside llama).
[[nodiscard]] absl::StatusOr<ModelConfig> GgufModelConfig(const gguf::GgufFile& file);

// The tensors of `file` for `config`, renamed, reshaped, un-permuted and dequantized. The
// store keeps `file` alive. UNIMPLEMENTED naming the tensor and its type for a type with no
// dequantizer; INVALID_ARGUMENT naming a tensor the architecture does not have. Shapes are
// checked later, against the config, by Model (the message then names the GGUF tensor).
// RESOURCE_EXHAUSTED, before anything is allocated, when the tensors widened to f32 (types
// the kernels cannot compute on in place, e.g. Q2_K, Q3_K, or a K-quant matrix whose rows
// are not whole super-blocks of 256) would need more than
// `widen_limit_bytes` (negative: what the process can still take, common/meminfo.h).
[[nodiscard]] absl::StatusOr<std::unique_ptr<WeightStore>> GgufWeights(
    std::shared_ptr<const gguf::GgufFile> file, const ModelConfig& config,
    int64_t widen_limit_bytes = -1);

}  // namespace spanserve::model
