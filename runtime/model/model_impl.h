// The model's insides, shared by its files: the bound weights (binding.cc), the forward
// workspace's device arrays, the MoE layer (moe_layer.cc) and the forward pass (model.cc).
// Not for use outside runtime/model.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/backend.h"
#include "runtime/model/model.h"
#include "runtime/model/weights.h"

namespace spanserve::model {

// Scratch in the backend's memory: grows to the largest size asked for, never shrinks, and
// keeps no contents across a Grow. A steady-state step allocates nothing.
template <typename T>
class DeviceArray {
 public:
  DeviceArray() = default;
  ~DeviceArray() { Release(); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;

  absl::StatusOr<T*> Grow(kernels::Backend& backend, int64_t n) {
    const int64_t bytes = n * static_cast<int64_t>(sizeof(T));
    if (bytes <= bytes_ && backend_ == &backend) return data_;
    Release();
    absl::StatusOr<void*> p = backend.Allocate(bytes);
    if (!p.ok()) return p.status();
    backend_ = &backend;
    data_ = static_cast<T*>(*p);
    bytes_ = bytes;
    return data_;
  }
  T* data() const { return data_; }

 private:
  void Release() {
    if (backend_ != nullptr) backend_->Free(data_, bytes_);
    backend_ = nullptr;
    data_ = nullptr;
    bytes_ = 0;
  }
  kernels::Backend* backend_ = nullptr;
  T* data_ = nullptr;
  int64_t bytes_ = 0;
};

struct ForwardWorkspace::Buffers {
  // Device: the residual stream and the block's intermediates.
  DeviceArray<float> x, t, n, a, f, q, kk, v, att, g, u, sel, logits;
  DeviceArray<int32_t> ids, positions, logit_rows;
  // Device: MoE.
  DeviceArray<float> router, slot_out, ein, eout, eg, eu, topk_weight;
  DeviceArray<int32_t> topk_expert, expert_rows;
  // Host: what the host builds before copying, and what the backend reads on the host.
  // host_positions: each token's row of the model's RoPE tables (its position, or for
  // dynamic NTK a per-step row after the positions' rows).
  std::vector<int32_t> host_ids, host_positions, host_logit_rows, expert_offset;
  // Dynamic NTK: the runs of per-step RoPE rows, {sequence length, first position, rows}.
  struct RopeRun {
    int64_t length, first_position, rows;
  };
  std::vector<RopeRun> rope_runs;
  std::vector<kernels::AttentionSeq> seqs;
};

struct NormWeights {
  kernels::WeightVector gain;
  kernels::WeightVector bias;
  bool has_bias = false;
};

struct FfnWeights {
  kernels::WeightMatrix gate, up, down;
};

struct MoeWeights {
  kernels::WeightMatrix router;
  std::vector<FfnWeights> experts;
  bool has_shared = false;
  FfnWeights shared;
  bool has_shared_gate = false;
  kernels::WeightMatrix shared_gate;
  int moe_index = 0;  // index into ExpertLoad
};

struct LayerWeights {
  NormPlacement placement = NormPlacement::kPre;
  NormWeights norms[4];
  kernels::WeightMatrix q, k, v, o;
  kernels::WeightVector qb, kb, vb, ob;
  bool has_qkv_bias = false;
  bool has_o_bias = false;
  bool has_qk_norm = false;
  NormWeights q_norm, k_norm;
  bool is_moe = false;
  FfnWeights mlp;
  MoeWeights moe;
};

struct ModelWeights {
  kernels::WeightMatrix embed;
  kernels::WeightMatrix lm_head;
  NormWeights final_norm;
  std::vector<LayerWeights> layers;
  // Gains computed at load (Gemma's offset + w) that the backend may read in place.
  std::vector<std::unique_ptr<float[]>> folded;
};

using TensorShapes = std::vector<std::pair<std::string, std::vector<int64_t>>>;

// How matrices multiply, by their storage (Model::Options::compute_dtype and int8_dot).
struct MatrixPrecisions {
  kernels::MatMulPrecision bf16 = kernels::MatMulPrecision::kExact;       // bf16 matrices
  kernels::MatMulPrecision quantized = kernels::MatMulPrecision::kExact;  // block-quantized
};

// binding.cc: binds every tensor `config` implies from `store` (exact shapes; then the
// store must hold no other tensor), uploaded to `backend`; bf16 and block-quantized matrices
// take their `precisions`. Without a store (and backend) it only records names and shapes
// into `record`. Fills the MoE layers' entries of *load; returns the parameter count.
absl::StatusOr<int64_t> BindWeights(const ModelConfig& config, WeightStore* store,
                                    kernels::Backend* backend, const MatrixPrecisions& precisions,
                                    ModelWeights* weights, ExpertLoad* load,
                                    TensorShapes* record = nullptr);

// model.cc: out = down(act(gate(in)) ⊙ up(in)), act silu or gelu_tanh.
absl::Status DenseFfn(kernels::Backend& backend, Activation activation, const FfnWeights& w,
                      const float* in, int64_t tokens, ForwardWorkspace::Buffers& b, float* out);

// moe_layer.cc: the MoE FFN of one layer over `tokens` rows of `in`; adds the tokens routed
// to each expert to `load`.
absl::Status MoeFfn(kernels::Backend& backend, const MoeConfig& config, int64_t hidden,
                    const MoeWeights& w, const float* in, int64_t tokens,
                    ForwardWorkspace::Buffers& b, std::vector<int64_t>& load, float* out);

}  // namespace spanserve::model
