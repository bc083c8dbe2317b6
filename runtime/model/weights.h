// Weights of a model directory: one or more memory-mapped safetensors files. Tensors are
// used in place (no copy) unless a file stores one unaligned for its dtype.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"
#include "common/mapped_file.h"
#include "kernels/types.h"

namespace spanserve::model {

struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;  // borrowed: lives as long as the WeightStore
  // A GGUF matrix kept in its ggml blocks (rows of shape[1] / QuantBlockElems blocks; dtype
  // unused).
  kernels::QuantType quant = kernels::QuantType::kNone;
  int64_t numel() const;
  int64_t bytes() const;
};

class WeightStore {
 public:
  // Opens <dir>/model.safetensors, or the shards listed in <dir>/model.safetensors.index.json.
  // Validates every header: JSON, dtypes (F32/BF16/F16), shapes, offsets inside the file,
  // sizes equal to numel × element size, no overlaps. Errors name the file and tensor.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<WeightStore>> OpenDirectory(
      const std::string& dir);
  // Opens a single safetensors file.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<WeightStore>> OpenFile(
      const std::string& path);

  // An empty store, filled by AddTensor with weights converted from another format (GGUF).
  // `source` names the origin in messages.
  static std::unique_ptr<WeightStore> CreateEmpty(std::string source);
  // Adds `name` with `view`, whose data must stay valid as long as the store (own it with
  // Own or KeepAlive). `origin` says where it came from in messages (e.g. the GGUF tensor).
  // INVALID_ARGUMENT naming the tensor if the name is taken.
  [[nodiscard]] absl::Status AddTensor(std::string name, TensorView view, std::string origin);
  // Owns a buffer that added views point into.
  void Own(std::unique_ptr<float[]> buffer);
  void Own(std::unique_ptr<uint8_t[]> buffer);
  // Keeps `owner` (e.g. a mapped file whose bytes views borrow) alive with the store.
  void KeepAlive(std::shared_ptr<const void> owner);

  bool Has(std::string_view name) const;

  // The tensor `name` with exactly `shape`. NOT_FOUND naming a missing tensor;
  // INVALID_ARGUMENT naming the tensor, the expected and the actual shape. Marks it used.
  [[nodiscard]] absl::StatusOr<TensorView> Get(std::string_view name,
                                               std::span<const int64_t> shape);

  // INVALID_ARGUMENT naming an unexpected tensor if any stored tensor was never taken by
  // Get (a checkpoint that does not match its config), but for the tensors whose names
  // start with one of `ignored_prefixes` (parts of a checkpoint the model does not run).
  [[nodiscard]] absl::Status CheckAllUsed(std::span<const std::string> ignored_prefixes = {}) const;

  // Bytes of tensor data across all files (as held in memory for added tensors).
  int64_t total_bytes() const { return total_bytes_; }
  std::vector<std::string> Names() const;

 private:
  struct Entry {
    TensorView view;
    std::string file;
    bool used = false;
  };
  WeightStore() = default;
  absl::Status AddFile(const std::string& path);

  std::vector<std::unique_ptr<MappedFile>> files_;
  std::vector<std::unique_ptr<uint8_t[]>> realigned_;    // copies of unaligned tensors
  std::vector<std::unique_ptr<float[]>> owned_;          // converted tensors (AddTensor)
  std::vector<std::unique_ptr<uint8_t[]>> owned_bytes_;  // reordered quantized tensors
  std::vector<std::shared_ptr<const void>> keep_alive_;
  std::map<std::string, Entry, std::less<>> tensors_;
  std::string source_;  // the directory or file opened, for error messages
  int64_t total_bytes_ = 0;
};

}  // namespace spanserve::model
