// A GGUF file (the llama.cpp / ggml model format, versions 2 and 3): header, metadata and
// tensor infos, validated in full at Open, with tensor data used in place from a read-only
// memory map. Only little-endian files are read (what every GGUF in circulation is).
//
// Layout: "GGUF" u32 version, u64 tensor_count, u64 kv_count, kv_count × (string key,
// u32 type, value), tensor_count × (string name, u32 n_dims, u64 ne[n_dims], u32 type,
// u64 offset), padding to general.alignment (default 32), then the tensor data; offsets
// are relative to the start of the data. Strings are u64 length + bytes; arrays are
// u32 element type + u64 count + elements.
//
// Thread-safety: immutable after Open; every accessor may be called from any thread.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "common/mapped_file.h"

namespace spanserve::gguf {

// Metadata value types, numbered as in the file.
enum class ValueType : uint32_t {
  kUint8 = 0,
  kInt8 = 1,
  kUint16 = 2,
  kInt16 = 3,
  kUint32 = 4,
  kInt32 = 5,
  kFloat32 = 6,
  kBool = 7,
  kString = 8,
  kArray = 9,
  kUint64 = 10,
  kInt64 = 11,
  kFloat64 = 12,
};

// "u8", "i32", "f32", "bool", "string", "array", ...
const char* ValueTypeName(ValueType t);

// ggml tensor types, numbered as in the file. Every type is validated (block size and
// bytes per block); TensorDataType says which ones the runtime can turn into f32.
enum class TensorType : uint32_t {
  kF32 = 0,
  kF16 = 1,
  kQ4_0 = 2,
  kQ4_1 = 3,
  kQ5_0 = 6,
  kQ5_1 = 7,
  kQ8_0 = 8,
  kQ8_1 = 9,
  kQ2_K = 10,
  kQ3_K = 11,
  kQ4_K = 12,
  kQ5_K = 13,
  kQ6_K = 14,
  kQ8_K = 15,
  kIQ2_XXS = 16,
  kIQ2_XS = 17,
  kIQ3_XXS = 18,
  kIQ1_S = 19,
  kIQ4_NL = 20,
  kIQ3_S = 21,
  kIQ2_S = 22,
  kIQ4_XS = 23,
  kI8 = 24,
  kI16 = 25,
  kI32 = 26,
  kI64 = 27,
  kF64 = 28,
  kIQ1_M = 29,
  kBF16 = 30,
};

// "F32", "Q4_1", "Q6_K", ... (ggml's spelling); "type N" for unknown values.
std::string TensorTypeName(TensorType t);

struct TypeTraits {
  int64_t block_size = 0;   // elements per block along ne0
  int64_t block_bytes = 0;  // bytes per block
};
// False for values ggml does not define (or has retired).
bool GetTypeTraits(uint32_t type, TypeTraits* traits);

// One metadata value. Scalars use the field of their type; arrays hold their element
// type and either packed little-endian elements (`raw`, numeric and bool), string views
// into the map (`strings`) or nested arrays (`arrays`).
struct Value {
  ValueType type = ValueType::kUint8;
  uint64_t u = 0;        // u8, u16, u32, u64
  int64_t i = 0;         // i8, i16, i32, i64
  double f = 0.0;        // f32, f64
  bool b = false;        // bool
  std::string_view str;  // string
  // kArray:
  ValueType elem_type = ValueType::kUint8;
  uint64_t count = 0;
  const uint8_t* raw = nullptr;
  std::vector<std::string_view> strings;
  std::vector<Value> arrays;

  bool is_integer() const;
  bool is_float() const { return type == ValueType::kFloat32 || type == ValueType::kFloat64; }
  // "u32", or "array[string]", "array[array[i32]]", ...
  std::string TypeName() const;
};

struct TensorInfo {
  std::string name;
  TensorType type = TensorType::kF32;
  // ggml's ne: ne[0] is the innermost (contiguous) dimension, i.e. the number of columns of
  // a matrix; PyTorch's shape is ne reversed. 1 to 4 entries, each > 0.
  std::vector<int64_t> ne;
  uint64_t offset = 0;  // from the start of the data section
  const uint8_t* data = nullptr;
  int64_t nbytes = 0;
  int64_t numel() const;
  // ne reversed: [rows, cols] for a matrix.
  std::vector<int64_t> TorchShape() const;
};

class GgufFile {
 public:
  // Maps and validates `path`. Every error is INVALID_ARGUMENT (NOT_FOUND for a missing
  // file) and names the file and the key or tensor at fault, with what was expected.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<GgufFile>> Open(const std::string& path);
  // Parses an in-memory image (tests); `name` stands for the file in messages. The bytes
  // must outlive the GgufFile.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<GgufFile>> Parse(
      std::span<const uint8_t> bytes, const std::string& name);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  uint32_t alignment() const { return alignment_; }
  uint64_t file_size() const { return bytes_.size(); }

  // Metadata, by key.
  const std::map<std::string, Value, std::less<>>& metadata() const { return metadata_; }
  const Value* Find(std::string_view key) const;
  bool Has(std::string_view key) const { return Find(key) != nullptr; }

  // Typed accessors: NOT_FOUND naming a missing key; INVALID_ARGUMENT naming the key, the
  // type asked for and the type stored. GetInt takes any integer type (range-checked),
  // GetFloat f32 or f64.
  [[nodiscard]] absl::StatusOr<int64_t> GetInt(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<double> GetFloat(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<bool> GetBool(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<std::string_view> GetString(std::string_view key) const;
  [[nodiscard]] absl::StatusOr<std::vector<std::string_view>> GetStringArray(
      std::string_view key) const;
  // Arrays of any integer type, widened.
  [[nodiscard]] absl::StatusOr<std::vector<int64_t>> GetIntArray(std::string_view key) const;
  // Arrays of f32 or f64.
  [[nodiscard]] absl::StatusOr<std::vector<float>> GetFloatArray(std::string_view key) const;

  // Tensors in file order.
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* FindTensor(std::string_view name) const;

  // Drops this process's resident pages of a tensor's data once it has been converted
  // (the kernel re-reads them from the file if touched again), so a dequantized model does
  // not also keep the quantized bytes resident. No-op for in-memory images (Parse).
  void ReleasePages(const TensorInfo& tensor) const;

 private:
  GgufFile() = default;
  class Reader;
  absl::Status ParseAll();
  absl::StatusOr<const Value*> Require(std::string_view key) const;
  absl::Status WrongType(std::string_view key, std::string_view want, const Value& v) const;

  std::unique_ptr<MappedFile> file_;
  std::span<const uint8_t> bytes_;
  std::string path_;
  uint32_t version_ = 0;
  uint32_t alignment_ = 32;
  std::map<std::string, Value, std::less<>> metadata_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t, std::less<>> tensor_index_;
};

}  // namespace spanserve::gguf
