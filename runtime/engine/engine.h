// The serving engine (DESIGN.md §1, §5): one engine thread owns the scheduler, the paged
// KV cache, the model and its workspace, and runs the step loop
//   schedule (pick batch, allocate KV blocks, chunk prefill, preempt)
//   → model forward → sample (stop checks, logprobs) → push outputs per request.
// Every other thread talks to it through Submit / Abort / Stats and the per-request
// RequestStream. Greedy output of a request does not depend on what else is in the batch.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "runtime/engine/json_grammar.h"
#include "runtime/engine/request.h"
#include "runtime/engine/sampling_params.h"

namespace spanserve::model {
class Model;
}  // namespace spanserve::model

namespace spanserve::engine {

// Token ids → text. Must be callable from the engine thread; pure (same ids, same text).
// Incomplete UTF-8 at the end of the ids may decode to U+FFFD: the engine holds such text
// back until the following tokens complete it.
using DetokenizeFn = std::function<std::string(std::span<const int32_t>, bool skip_special_tokens)>;

// Called on the engine thread after every step that ran the model. Must be cheap.
struct StepStats {
  int32_t num_seqs = 0;         // sequences in the batch
  int32_t num_decode_seqs = 0;  // of which decoding one token
  int32_t num_prefill_tokens = 0;
  int32_t num_decode_tokens = 0;
  double schedule_s = 0;  // scheduler (batch selection, block allocation, preemption)
  double forward_s = 0;   // Model::Forward
  double sample_s = 0;    // sampling, stop checks, detokenization, output push
  double step_s = 0;      // the whole step
  // After the step: tokens whose K/V the running sequences hold, and the blocks in use
  // (their ratio to blocks × block_size is the paging efficiency).
  int64_t num_kv_tokens = 0;
  int32_t num_kv_blocks_used = 0;
};
using StepObserver = std::function<void(const StepStats&)>;

struct EngineOptions {
  // KV cache. Pool size: num_kv_blocks if > 0, else kv_cache_bytes if > 0, else
  // kv_cache_memory_fraction of MemAvailable (/proc/meminfo) at start-up.
  int32_t block_size = 16;
  int32_t num_kv_blocks = 0;
  int64_t kv_cache_bytes = 0;
  double kv_cache_memory_fraction = 0.5;
  bool enable_prefix_caching = true;
  // Element type of the cached K and V: kF32 keeps them exact (outputs match the reference
  // model); kBF16 halves their bytes, so the same pool holds twice the tokens and attention
  // reads half as much, at the cost of rounding each cached value to bf16 (8 significant
  // bits). Batch, chunking and prefix-cache invariance hold for either.
  DType kv_cache_dtype = DType::kF32;

  // Scheduler. Each step decodes the running sequences, then fills what is left of
  // max_batched_tokens with prefill chunks, up to max_num_seqs sequences in the batch.
  int32_t max_batched_tokens = 1024;
  int32_t max_num_seqs = 64;
  // Off: a prompt is prefilled in one step (max_batched_tokens must be >= max_model_len).
  bool enable_chunked_prefill = true;
  // Submit answers RESOURCE_EXHAUSTED when this many requests are already waiting.
  int32_t max_waiting_requests = 1024;
  // Context length (prompt + generated tokens); 0: the model's ModelConfig::MaxPositions()
  // (max_position_embeddings; × rope_scaling.factor for dynamic NTK RoPE).
  int32_t max_model_len = 0;
  // A waiting request gains one priority level per this many seconds of waiting
  // (so a flood of important requests cannot starve a less important one); 0: no aging.
  double priority_aging_s = 5.0;

  // Text: needed for stop strings and RequestOutput::text. Unset: no text.
  DetokenizeFn detokenize;
  // Each token's bytes: needed for ResponseFormat::kJsonObject. Unset: such requests are
  // refused.
  std::shared_ptr<const TokenBytesTable> token_bytes;
  // Seeds the generator that draws a seed for requests without one.
  uint64_t seed = 0;
  StepObserver step_observer;
  // Residual-stream health: every this many steps (0: never) the model records, per layer,
  // the RMS of the block's output over the step's tokens (EngineStats::residual_rms). Costs
  // one pass over the hidden states per layer on sampled steps; results are unchanged.
  int32_t residual_rms_every_n_steps = 0;
};

// Per-step values (sequences or tokens in a batch) counted into power-of-two buckets by the
// engine thread with no lock and no allocation; readers turn deltas of these cumulative
// counts into histogram observations. Bucket i counts values v with 2^(i-1) < v <= 2^i
// (bucket 0: v <= 1), so a histogram with upper bounds 1, 2, 4, ... gets them exactly.
struct StepHistogram {
  static constexpr int kBuckets = 32;
  std::array<int64_t, kBuckets> counts{};
  int64_t count = 0;  // values added
  int64_t sum = 0;    // their sum

  static int BucketOf(int64_t v) {
    int i = 0;
    while (i + 1 < kBuckets && (int64_t{1} << i) < v) ++i;
    return i;
  }
  void Add(int64_t v) {
    ++counts[BucketOf(v)];
    ++count;
    sum += v;
  }
};

// What the engine serves, for GetModelInfo and metrics.
struct EngineInfo {
  std::string model_type;
  std::string norm_placement;
  int32_t vocab_size = 0;
  int32_t max_model_len = 0;
  int32_t num_layers = 0;
  int32_t hidden_size = 0;
  int32_t num_experts = 0;  // 0: dense
  int32_t experts_per_token = 0;
  int64_t num_parameters = 0;
  std::vector<int32_t> eos_token_ids;
  int32_t block_size = 0;
  int32_t num_kv_blocks = 0;
  int64_t kv_cache_bytes = 0;
  DType kv_cache_dtype = DType::kF32;
  DType compute_dtype = DType::kF32;  // model::Model::Options::compute_dtype
  std::string backend;                // kernels::Backend::description(): device, threads
  std::string device;                 // kernels::DeviceName of the backend: cpu, cuda
};

// A snapshot, refreshed after every step; reading it never blocks the step for long.
struct EngineStats {
  int32_t num_running = 0;  // requests holding KV blocks (prefilling or decoding)
  int32_t num_waiting = 0;  // submitted, not yet running (including preempted ones)
  int32_t kv_blocks_total = 0;
  int32_t kv_blocks_used = 0;       // referenced by a sequence
  int32_t kv_blocks_cached = 0;     // unreferenced but holding a reusable prefix
  double kv_cache_usage_ratio = 0;  // used / total
  int64_t num_preemptions = 0;
  int64_t prefix_cache_queries = 0;  // prompt tokens looked up in the prefix cache
  int64_t prefix_cache_hits = 0;     // of which found
  int64_t num_steps = 0;
  int64_t prompt_tokens = 0;      // prompt tokens computed (recomputation included)
  int64_t generation_tokens = 0;  // tokens generated
  int64_t requests_submitted = 0;
  int64_t requests_finished = 0;
  int32_t last_batch_seqs = 0;
  int32_t last_batch_tokens = 0;
  // Every step that ran the model since start-up: its sequences and its tokens.
  StepHistogram batch_seqs;
  StepHistogram batch_tokens;
  // The latest residual-stream sample (EngineOptions::residual_rms_every_n_steps): per
  // layer, the RMS of the block's output over that step's tokens. Empty when sampling is
  // off or before the first sample; residual_rms_samples counts the sampled steps.
  std::vector<double> residual_rms;
  int64_t residual_rms_samples = 0;
};

// Tokens routed to each expert since start-up, per MoE layer (empty for dense models).
struct ExpertLoadSnapshot {
  std::vector<int32_t> layer_ids;
  std::vector<std::vector<int64_t>> tokens;  // [moe layer][expert]
};

struct RequestHandle {
  RequestId id = 0;
  std::shared_ptr<RequestStream> stream;
};

class EngineCore;

class Engine {
 public:
  // Takes the model, sizes the KV pool and starts the engine thread. INVALID_ARGUMENT
  // for inconsistent options, RESOURCE_EXHAUSTED when the pool cannot hold one full-length
  // sequence.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Engine>> Create(
      std::unique_ptr<model::Model> model, const EngineOptions& options);
  // Loads <model_dir> (Model::Load) with `num_threads` compute threads (0: all cores).
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<Engine>> Create(const std::string& model_dir,
                                                                      const EngineOptions& options,
                                                                      int num_threads = 0);
  // Stops the thread; requests still in flight finish with kCancelled.
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Thread-safe. Validates and enqueues. INVALID_ARGUMENT naming the problem (empty prompt,
  // token id out of range, prompt + 1 longer than the context, bad sampling params);
  // RESOURCE_EXHAUSTED when the waiting queue is full; UNAVAILABLE after Shutdown.
  [[nodiscard]] absl::StatusOr<RequestHandle> Submit(Request request);
  // Thread-safe. The request finishes with kCancelled at the next step and its blocks are
  // freed there. False if the id is unknown or already finished.
  bool Abort(RequestId id);
  // Thread-safe; non-blocking apart from a short copy under a small lock.
  EngineStats Stats() const;
  ExpertLoadSnapshot ExpertLoad() const;
  const EngineInfo& info() const;
  // Rejects new requests, cancels the ones in flight and joins the thread. Idempotent.
  void Shutdown();

 private:
  struct State;
  explicit Engine(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace spanserve::engine
