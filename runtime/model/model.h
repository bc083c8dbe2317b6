// The transformer: weights bound to a config, and a batched forward pass over a paged
// KV cache. Dense and MoE FFNs, every norm placement of DESIGN.md §4, f32 compute over
// f32/bf16/f16/quantized weights, on a compute backend (kernels/backend.h) it never names.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "kernels/types.h"
#include "runtime/model/config.h"

namespace spanserve::gguf {
class GgufFile;
}  // namespace spanserve::gguf

namespace spanserve::kernels {
class Backend;
}  // namespace spanserve::kernels

namespace spanserve::model {

// KV storage for every layer: K and V of shape [num_blocks, block_size, kv_heads, head_dim],
// in one allocation of the backend's memory (on the CPU an anonymous mapping, so untouched
// blocks cost no resident memory). Storage only: which block belongs to which sequence is
// the engine's business.
class KvCache {
 public:
  // dtype: the element type of K and V, kF32 (exact) or kBF16 (half the bytes; each value
  // rounded to nearest-even as it is stored).
  // `backend` must outlive the cache (the model's: Model::backend()).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<KvCache>> Create(kernels::Backend& backend,
                                                                       const ModelConfig& config,
                                                                       int32_t block_size,
                                                                       int32_t num_blocks,
                                                                       DType dtype = DType::kF32);
  // Bytes one block costs across all layers, K and V.
  static int64_t BytesPerBlock(const ModelConfig& config, int32_t block_size,
                               DType dtype = DType::kF32);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  int32_t block_size() const { return block_size_; }
  int32_t num_blocks() const { return num_blocks_; }
  int64_t bytes() const { return bytes_; }
  DType dtype() const { return dtype_; }
  // Layer l's K (or V) array.
  void* k(int layer) const { return base_ + (2 * static_cast<int64_t>(layer)) * layer_bytes_; }
  void* v(int layer) const { return base_ + (2 * static_cast<int64_t>(layer) + 1) * layer_bytes_; }

 private:
  KvCache() = default;
  kernels::Backend* backend_ = nullptr;
  char* base_ = nullptr;
  int64_t bytes_ = 0;
  int64_t layer_bytes_ = 0;
  DType dtype_ = DType::kF32;
  int32_t block_size_ = 0;
  int32_t num_blocks_ = 0;
};

// What logits a sequence wants from a step.
enum class LogitsMode {
  kNone,  // a prefill chunk that is not the last one
  kLast,  // the last new token only (decode, end of prefill)
  kAll,   // every new token (prompt logprobs, scoring)
};

// One sequence's share of a forward step.
struct SequenceInput {
  std::span<const int32_t> tokens;       // new tokens, at positions cached .. cached+n-1
  int32_t cached = 0;                    // tokens of this sequence already in the KV cache
  std::span<const int32_t> block_table;  // physical blocks, covering cached + n tokens
  LogitsMode logits = LogitsMode::kLast;
  // Dynamic NTK and LongRoPE only (other models ignore it): the length n of the request's
  // original prompt. The token at position p is rotated (query and key) for the sequence
  // length max(n, p + 1), whatever the step's chunking, batching or recomputation. 0: n is
  // cached + tokens.size(), as if the text up to this step's end were the prompt (a
  // single forward over a text, as transformers scores one; then one token per step
  // reproduces transformers' generate). At most Model::config().MaxPositions().
  int32_t rope_prompt_length = 0;
};

// Scratch buffers of a forward pass, in the backend's memory. Grows to the largest batch
// seen, then is reused, so a steady-state step allocates nothing. One per engine thread;
// not thread-safe.
class ForwardWorkspace {
 public:
  // `backend` must outlive the workspace (the model's: Model::backend()).
  explicit ForwardWorkspace(kernels::Backend& backend);
  ~ForwardWorkspace();
  ForwardWorkspace(const ForwardWorkspace&) = delete;
  ForwardWorkspace& operator=(const ForwardWorkspace&) = delete;
  struct Buffers;
  Buffers& buffers() { return *buffers_; }
  kernels::Backend& backend() const { return *backend_; }

  // Residual-stream health (opt-in, for sampled steps only): while set, Forward records per
  // layer l the RMS of block l's output over every token of the step,
  // sqrt(Σ y² / (tokens · hidden)), in residual_rms()[l]. Reads the hidden states only, so
  // the logits are bit-identical with it on or off; the storage is sized once.
  void set_record_residual_rms(bool on) { record_residual_rms_ = on; }
  bool record_residual_rms() const { return record_residual_rms_; }
  // [num_layers], from the last Forward that recorded; empty before one.
  std::span<const double> residual_rms() const { return residual_rms_; }
  std::vector<double>& mutable_residual_rms() { return residual_rms_; }

 private:
  kernels::Backend* backend_;
  std::unique_ptr<Buffers> buffers_;
  bool record_residual_rms_ = false;
  std::vector<double> residual_rms_;
};

// Tokens routed to each expert, per MoE layer (once per top-k slot), accumulated by
// Forward. Indexed [moe_layer_index][expert]; layer_ids maps to the model's layer index.
struct ExpertLoad {
  std::vector<int> layer_ids;
  std::vector<std::vector<int64_t>> tokens;
};

// Parsed in common/dtype.h; named here for the model's and the KV cache's settings.
using ::spanserve::F32OrBf16Name;
using ::spanserve::ParseF32OrBf16;

// Every tensor a checkpoint of `config` must hold, with its shape, in load order (for
// tools that write checkpoints, e.g. random models for benchmarks).
std::vector<std::pair<std::string, std::vector<int64_t>>> ExpectedTensors(
    const ModelConfig& config);

// The RoPE scaling the kernels get for `config` (transformers 4.46.3's rope init functions:
// yarn's correction range uses max_position_embeddings, its attention factor defaults to
// 0.1 * ln(factor) + 1). Borrows config.rope_scaling.freq_divisors.
kernels::RopeScaling KernelRopeScaling(const ModelConfig& config);

class Model {
 public:
  struct Options {
    // The backend to compute on; not owned, must outlive the model. Null: a backend of
    // `device` (cpu, cuda or auto: kernels::CreateBackend) owned by the model.
    kernels::Backend* backend = nullptr;
    std::string device = "cpu";
    int num_threads = 0;  // the CPU backend's; 0: every CPU the process may use
    // The activations' type in products with bf16 weight matrices. kF32 (default): every
    // product exact, the PyTorch f32 reference's results. kBF16: activations rounded to bf16
    // and multiplied with the CPU's bf16 dot products (AVX512_BF16; loading fails on a CPU
    // without them), about twice the arithmetic rate for batched decode and prefill. Other
    // weight types, norms, attention and the KV cache are unaffected.
    DType compute_dtype = DType::kF32;
    // Products with Q8_0/Q4_0/Q4_1/Q5_0/Q5_1/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL weight matrices
    // (Int8DotSupports).
    // false (default): exact, the results of their dequantized f32 copy. true: activations
    // quantized to 8-bit blocks of 32 for integer dot products
    // (kernels::MatMulPrecision::kInt8Dot; loading fails on a backend without them): faster
    // quantized decode, at about 1e-3 relative error per product. Other weight types are
    // unaffected.
    bool int8_dot = false;
  };
  // Loads <dir>/config.json and its safetensors, or a .gguf file (gguf_model.h). Every
  // tensor the config implies must be present with its exact shape, and no other tensor
  // may be: errors name the tensor.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& path,
                                                                   const Options& options);
  // Loads a GGUF file already opened (the caller may read its tokenizer from it too).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Model>> LoadGguf(
      std::shared_ptr<const gguf::GgufFile> file, const Options& options);
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Model>> Load(const std::string& dir) {
    return Load(dir, Options{});
  }
  ~Model();

  const ModelConfig& config() const;
  DType compute_dtype() const;
  bool int8_dot() const;  // Options::int8_dot
  // What the model computes on: its KV caches and workspaces take it too.
  kernels::Backend& backend() const;
  // Bytes of weights (as stored), and parameter count.
  int64_t weight_bytes() const;
  int64_t num_parameters() const;

  // Runs one step over a batch. Writes each new token's K/V into `cache` and, per
  // sequence in order, 0, 1 or n rows of logits (per its LogitsMode) to `logits`
  // ([rows, vocab_size], caller-sized: see LogitRows). INVALID_ARGUMENT for token ids out
  // of range, positions past config().MaxPositions() or a block table too short; the cache
  // is untouched then. The result for a sequence does not depend on the rest of the batch.
  // `logits` is host memory; `cache` and `workspace` must be on this model's backend.
  // Calls must not overlap (the model keeps per-step RoPE rows and the expert load).
  [[nodiscard]] absl::Status Forward(std::span<const SequenceInput> batch, KvCache& cache,
                                     ForwardWorkspace& workspace, float* logits);

  static int64_t LogitRows(std::span<const SequenceInput> batch);

  // Accumulated expert load since construction or the last Reset (MoE models only).
  const ExpertLoad& expert_load() const;
  void ResetExpertLoad();

  struct Impl;

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace spanserve::model
