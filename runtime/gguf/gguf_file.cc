#include "runtime/gguf/gguf_file.h"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace spanserve::gguf {
namespace {

constexpr uint32_t kMagic = 0x46554747;  // "GGUF" read as a little-endian u32
constexpr int kMaxArrayDepth = 8;        // nested arrays deeper than this are not metadata
constexpr int kMaxDims = 4;

// Bytes of one scalar element of a metadata type; 0 for string and array.
size_t ScalarSize(ValueType t) {
  switch (t) {
    case ValueType::kUint8:
    case ValueType::kInt8:
    case ValueType::kBool:
      return 1;
    case ValueType::kUint16:
    case ValueType::kInt16:
      return 2;
    case ValueType::kUint32:
    case ValueType::kInt32:
    case ValueType::kFloat32:
      return 4;
    case ValueType::kUint64:
    case ValueType::kInt64:
    case ValueType::kFloat64:
      return 8;
    case ValueType::kString:
    case ValueType::kArray:
      return 0;
  }
  return 0;
}

bool KnownValueType(uint32_t t) { return t <= static_cast<uint32_t>(ValueType::kFloat64); }

// The smallest encoding of one element: a string is at least its 8-byte length, an array
// its 4-byte type and 8-byte count.
uint64_t MinElementBytes(ValueType t) {
  if (t == ValueType::kString) return 8;
  if (t == ValueType::kArray) return 12;
  return ScalarSize(t);
}

template <typename T>
T ReadLe(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));  // x86-64 is little-endian, as the format
  return v;
}

// Integer element `i` of packed elements of type `t`, widened.
bool IntElement(ValueType t, const uint8_t* raw, uint64_t i, int64_t* out, bool* overflow) {
  *overflow = false;
  switch (t) {
    case ValueType::kUint8:
      *out = raw[i];
      return true;
    case ValueType::kInt8:
      *out = static_cast<int8_t>(raw[i]);
      return true;
    case ValueType::kUint16:
      *out = ReadLe<uint16_t>(raw + 2 * i);
      return true;
    case ValueType::kInt16:
      *out = ReadLe<int16_t>(raw + 2 * i);
      return true;
    case ValueType::kUint32:
      *out = ReadLe<uint32_t>(raw + 4 * i);
      return true;
    case ValueType::kInt32:
      *out = ReadLe<int32_t>(raw + 4 * i);
      return true;
    case ValueType::kUint64: {
      const uint64_t u = ReadLe<uint64_t>(raw + 8 * i);
      *overflow = u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
      *out = static_cast<int64_t>(u);
      return true;
    }
    case ValueType::kInt64:
      *out = ReadLe<int64_t>(raw + 8 * i);
      return true;
    case ValueType::kFloat32:
    case ValueType::kBool:
    case ValueType::kString:
    case ValueType::kArray:
    case ValueType::kFloat64:
      return false;
  }
  return false;
}

}  // namespace

// Bounds-checked cursor over the file; every failure says what was being read and where.
class GgufFile::Reader {
 public:
  Reader(std::span<const uint8_t> bytes, const std::string& path) : bytes_(bytes), path_(path) {}

  uint64_t pos() const { return pos_; }
  uint64_t remaining() const { return bytes_.size() - pos_; }

  absl::Status Truncated(const std::string& what, uint64_t need) const {
    return absl::InvalidArgumentError(
        absl::StrCat(path_, ": truncated file: ", what, " needs ", need, " bytes at offset ", pos_,
                     " but only ", remaining(), " remain (file size ", bytes_.size(), ")"));
  }

  template <typename T>
  absl::StatusOr<T> Read(const std::string& what) {
    if (remaining() < sizeof(T)) return Truncated(what, sizeof(T));
    const T v = ReadLe<T>(bytes_.data() + pos_);
    pos_ += sizeof(T);
    return v;
  }

  absl::StatusOr<const uint8_t*> Take(const std::string& what, uint64_t n) {
    if (remaining() < n) return Truncated(what, n);
    const uint8_t* p = bytes_.data() + pos_;
    pos_ += n;
    return p;
  }

  absl::StatusOr<std::string_view> ReadString(const std::string& what) {
    ASSIGN_OR_RETURN(const uint64_t len, Read<uint64_t>(what));
    if (len > remaining()) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": ", what, ": string length ", len, " at offset ", pos_ - 8, " runs past the end",
          " of the file (", remaining(), " bytes left; truncated file?)"));
    }
    ASSIGN_OR_RETURN(const uint8_t* p, Take(what, len));
    return std::string_view(reinterpret_cast<const char*>(p), len);
  }

  // A value of type `type`; `what` names the key for messages.
  absl::Status ReadValue(ValueType type, const std::string& what, int depth, Value* out) {
    out->type = type;
    switch (type) {
      case ValueType::kUint8:
        return ReadScalar<uint8_t>(what, &out->u);
      case ValueType::kInt8:
        return ReadScalar<int8_t>(what, &out->i);
      case ValueType::kUint16:
        return ReadScalar<uint16_t>(what, &out->u);
      case ValueType::kInt16:
        return ReadScalar<int16_t>(what, &out->i);
      case ValueType::kUint32:
        return ReadScalar<uint32_t>(what, &out->u);
      case ValueType::kInt32:
        return ReadScalar<int32_t>(what, &out->i);
      case ValueType::kUint64:
        return ReadScalar<uint64_t>(what, &out->u);
      case ValueType::kInt64:
        return ReadScalar<int64_t>(what, &out->i);
      case ValueType::kFloat32:
        return ReadScalar<float>(what, &out->f);
      case ValueType::kFloat64:
        return ReadScalar<double>(what, &out->f);
      case ValueType::kBool: {
        ASSIGN_OR_RETURN(const uint8_t b, Read<uint8_t>(what));
        if (b > 1) {
          return absl::InvalidArgumentError(
              absl::StrCat(path_, ": ", what, ": bool value ", b, " is neither 0 nor 1"));
        }
        out->b = b != 0;
        return absl::OkStatus();
      }
      case ValueType::kString: {
        ASSIGN_OR_RETURN(out->str, ReadString(what));
        return absl::OkStatus();
      }
      case ValueType::kArray:
        return ReadArray(what, depth, out);
    }
    return absl::InternalError("unreachable");
  }

 private:
  // Reads a T and widens it into `field`.
  template <typename T, typename F>
  absl::Status ReadScalar(const std::string& what, F* field) {
    ASSIGN_OR_RETURN(const T v, Read<T>(what));
    *field = static_cast<F>(v);
    return absl::OkStatus();
  }

  absl::Status ReadArray(const std::string& what, int depth, Value* out) {
    if (depth >= kMaxArrayDepth) {
      return absl::InvalidArgumentError(absl::StrCat(path_, ": ", what, ": arrays nested deeper ",
                                                     "than ", kMaxArrayDepth, " levels"));
    }
    ASSIGN_OR_RETURN(const uint32_t elem, Read<uint32_t>(what));
    if (!KnownValueType(elem)) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": ", what, ": unknown array element type ", elem, " (expected 0..12)"));
    }
    out->elem_type = static_cast<ValueType>(elem);
    ASSIGN_OR_RETURN(out->count, Read<uint64_t>(what));
    // Every element takes at least MinElementBytes: a count that cannot fit is a lie (and
    // would make us reserve absurd amounts of memory).
    const uint64_t min_bytes = MinElementBytes(out->elem_type);
    if (out->count > remaining() / min_bytes) {
      return absl::InvalidArgumentError(absl::StrCat(
          path_, ": ", what, ": array of ", out->count, " ", ValueTypeName(out->elem_type),
          " elements needs at least ", min_bytes, " bytes each but only ", remaining(),
          " bytes remain in the file (truncated file?)"));
    }
    switch (out->elem_type) {
      case ValueType::kString:
        out->strings.reserve(out->count);
        for (uint64_t i = 0; i < out->count; ++i) {
          ASSIGN_OR_RETURN(std::string_view s, ReadString(absl::StrCat(what, "[", i, "]")));
          out->strings.push_back(s);
        }
        return absl::OkStatus();
      case ValueType::kArray:
        out->arrays.resize(out->count);
        for (uint64_t i = 0; i < out->count; ++i) {
          out->arrays[i].type = ValueType::kArray;
          RETURN_IF_ERROR(ReadArray(absl::StrCat(what, "[", i, "]"), depth + 1, &out->arrays[i]));
        }
        return absl::OkStatus();
      case ValueType::kBool: {
        ASSIGN_OR_RETURN(out->raw, Take(what, out->count));
        for (uint64_t i = 0; i < out->count; ++i) {
          if (out->raw[i] > 1) {
            return absl::InvalidArgumentError(absl::StrCat(
                path_, ": ", what, "[", i, "]: bool value ", out->raw[i], " is neither 0 nor 1"));
          }
        }
        return absl::OkStatus();
      }
      default: {
        ASSIGN_OR_RETURN(out->raw, Take(what, out->count * ScalarSize(out->elem_type)));
        return absl::OkStatus();
      }
    }
  }

  std::span<const uint8_t> bytes_;
  const std::string& path_;
  uint64_t pos_ = 0;
};

GgufFile::~GgufFile() = default;

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Open(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  std::unique_ptr<GgufFile> g(new GgufFile());
  g->bytes_ = std::span<const uint8_t>(file->data(), file->size());
  g->file_ = std::move(file);
  g->path_ = path;
  RETURN_IF_ERROR(g->ParseAll());
  return g;
}

absl::StatusOr<std::unique_ptr<GgufFile>> GgufFile::Parse(std::span<const uint8_t> bytes,
                                                          const std::string& name) {
  std::unique_ptr<GgufFile> g(new GgufFile());
  g->bytes_ = bytes;
  g->path_ = name;
  RETURN_IF_ERROR(g->ParseAll());
  return g;
}

absl::Status GgufFile::ParseAll() {
  const std::string& path = path_;
  Reader r(bytes_, path);
  if (bytes_.size() < 4) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", bytes_.size(),
                                                   " bytes is too short for a GGUF file (expected",
                                                   " the magic \"GGUF\")"));
  }
  ASSIGN_OR_RETURN(const uint32_t magic, r.Read<uint32_t>("magic"));
  if (magic != kMagic) {
    std::string shown;
    for (int i = 0; i < 4; ++i) {
      const char c = static_cast<char>(bytes_[i]);
      shown +=
          (c >= 0x20 && c < 0x7f) ? std::string(1, c) : absl::StrCat("\\x", absl::Hex(c & 0xff));
    }
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": bad magic \"", shown, "\" (expected \"GGUF\"): not a GGUF file"));
  }
  ASSIGN_OR_RETURN(version_, r.Read<uint32_t>("version"));
  if (version_ != 2 && version_ != 3) {
    std::string hint;
    if (version_ == 1) hint = " (GGUF v1 used 32-bit counts; re-convert the model)";
    if (version_ > 0xffff) hint = " (a big-endian GGUF? only little-endian files are read)";
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": unsupported GGUF version ", version_, " (supported: 2, 3)", hint));
  }
  ASSIGN_OR_RETURN(const uint64_t tensor_count, r.Read<uint64_t>("tensor_count"));
  ASSIGN_OR_RETURN(const uint64_t kv_count, r.Read<uint64_t>("kv_count"));
  // Each key-value pair takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor
  // info 8 (name length) + 4 (n_dims) + 8 (ne0) + 4 (type) + 8 (offset).
  if (kv_count > r.remaining() / 13) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": kv_count ", kv_count,
                                                   " cannot fit in the ", bytes_.size(),
                                                   "-byte file (truncated or corrupt header)"));
  }
  if (tensor_count > r.remaining() / 32) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": tensor_count ", tensor_count,
                                                   " cannot fit in the ", bytes_.size(),
                                                   "-byte file (truncated or corrupt header)"));
  }

  for (uint64_t k = 0; k < kv_count; ++k) {
    ASSIGN_OR_RETURN(const std::string_view key_view,
                     r.ReadString(absl::StrCat("metadata key #", k)));
    const std::string key(key_view);
    const std::string what = absl::StrCat("metadata key '", key, "'");
    if (metadata_.contains(key)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": duplicate ", what));
    }
    ASSIGN_OR_RETURN(const uint32_t type, r.Read<uint32_t>(what));
    if (!KnownValueType(type)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", what, ": unknown value type ", type, " (expected 0..12)"));
    }
    Value v;
    RETURN_IF_ERROR(r.ReadValue(static_cast<ValueType>(type), what, 0, &v));
    metadata_.emplace(key, std::move(v));
  }

  if (const Value* a = Find("general.alignment"); a != nullptr) {
    if (a->type != ValueType::kUint32) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key 'general.alignment' is ",
                                                     a->TypeName(), ", expected u32"));
    }
    if (a->u == 0 || (a->u & (a->u - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": metadata key 'general.alignment' is ",
                                                     a->u, ", expected a power of two"));
    }
    alignment_ = static_cast<uint32_t>(a->u);
  }

  struct Pending {
    TensorInfo info;
    uint64_t bytes;
  };
  std::vector<Pending> pending;
  pending.reserve(tensor_count);
  for (uint64_t t = 0; t < tensor_count; ++t) {
    ASSIGN_OR_RETURN(const std::string_view name_view,
                     r.ReadString(absl::StrCat("tensor info #", t)));
    const std::string name(name_view);
    const std::string what = absl::StrCat("tensor '", name, "'");
    if (tensor_index_.contains(name)) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": duplicate ", what));
    }
    TensorInfo info;
    info.name = name;
    ASSIGN_OR_RETURN(const uint32_t n_dims, r.Read<uint32_t>(what));
    if (n_dims < 1 || n_dims > kMaxDims) {
      return absl::InvalidArgumentError(absl::StrCat(path, ": ", what, " has ", n_dims,
                                                     " dimensions (expected 1 to ", kMaxDims, ")"));
    }
    int64_t numel = 1;
    for (uint32_t d = 0; d < n_dims; ++d) {
      ASSIGN_OR_RETURN(const uint64_t n, r.Read<uint64_t>(what));
      if (n == 0 || n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", what, ": dimension ne[", d, "] = ", n, " (expected > 0)"));
      }
      if (__builtin_mul_overflow(numel, static_cast<int64_t>(n), &numel)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ": ", what, ": element count overflows 64 bits"));
      }
      info.ne.push_back(static_cast<int64_t>(n));
    }
    ASSIGN_OR_RETURN(const uint32_t type, r.Read<uint32_t>(what));
    TypeTraits traits;
    if (!GetTypeTraits(type, &traits)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", what, " has unknown tensor type ", type));
    }
    info.type = static_cast<TensorType>(type);
    if (info.ne[0] % traits.block_size != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", what, ": ne[0] = ", info.ne[0], " is not a multiple of ",
                       TensorTypeName(info.type), "'s block size ", traits.block_size));
    }
    int64_t bytes = 0;
    if (__builtin_mul_overflow(numel / traits.block_size, traits.block_bytes, &bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", what, ": byte size overflows 64 bits"));
    }
    info.nbytes = bytes;
    ASSIGN_OR_RETURN(info.offset, r.Read<uint64_t>(what));
    if (info.offset % alignment_ != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": ", what, ": data offset ", info.offset,
                       " is not a multiple of the alignment ", alignment_));
    }
    tensor_index_.emplace(info.name, pending.size());
    pending.push_back({std::move(info), static_cast<uint64_t>(bytes)});
  }

  // The data section starts at the next multiple of the alignment.
  const uint64_t data_start = (r.pos() + alignment_ - 1) / alignment_ * alignment_;
  if (tensor_count > 0 && data_start > bytes_.size()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": truncated file: the tensor data ",
                                                   "should start at offset ", data_start,
                                                   " but the file has ", bytes_.size(), " bytes"));
  }
  const uint64_t data_size = tensor_count > 0 ? bytes_.size() - data_start : 0;
  for (Pending& p : pending) {
    if (p.info.offset > data_size || p.bytes > data_size - p.info.offset) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", p.info.name, "' (", TensorTypeName(p.info.type), ", ",
                       p.bytes, " bytes at data offset ", p.info.offset, ") ends beyond the ",
                       data_size, "-byte data section (truncated file?)"));
    }
    p.info.data = bytes_.data() + data_start + p.info.offset;
  }
  std::vector<const Pending*> by_offset;
  for (const Pending& p : pending) by_offset.push_back(&p);
  std::stable_sort(by_offset.begin(), by_offset.end(), [](const Pending* a, const Pending* b) {
    return a->info.offset < b->info.offset;
  });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const Pending& prev = *by_offset[i - 1];
    const Pending& cur = *by_offset[i];
    if (cur.info.offset < prev.info.offset + prev.bytes) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", cur.info.name, "' [", cur.info.offset, ", ",
                       cur.info.offset + cur.bytes, ") overlaps tensor '", prev.info.name, "' [",
                       prev.info.offset, ", ", prev.info.offset + prev.bytes, ")"));
    }
  }
  tensors_.reserve(pending.size());
  for (Pending& p : pending) tensors_.push_back(std::move(p.info));
  return absl::OkStatus();
}

const Value* GgufFile::Find(std::string_view key) const {
  const auto it = metadata_.find(key);
  return it == metadata_.end() ? nullptr : &it->second;
}

const TensorInfo* GgufFile::FindTensor(std::string_view name) const {
  const auto it = tensor_index_.find(name);
  return it == tensor_index_.end() ? nullptr : &tensors_[it->second];
}

void GgufFile::ReleasePages(const TensorInfo& tensor) const {
  if (file_ == nullptr || tensor.nbytes == 0) return;
  const uintptr_t page = static_cast<uintptr_t>(sysconf(_SC_PAGESIZE));
  // Only whole pages inside the tensor: a neighbour's bytes stay resident.
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(tensor.data) + page - 1) / page * page;
  const uintptr_t end = (reinterpret_cast<uintptr_t>(tensor.data) + tensor.nbytes) / page * page;
  if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}

absl::StatusOr<const Value*> GgufFile::Require(std::string_view key) const {
  const Value* v = Find(key);
  if (v == nullptr) {
    return absl::NotFoundError(
        absl::StrCat(path_, ": missing metadata key '", std::string(key), "'"));
  }
  return v;
}

absl::Status GgufFile::WrongType(std::string_view key, std::string_view want,
                                 const Value& v) const {
  return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", std::string(key),
                                                 "' is ", v.TypeName(), ", expected ",
                                                 std::string(want)));
}

absl::StatusOr<int64_t> GgufFile::GetInt(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (!v->is_integer()) return WrongType(key, "an integer", *v);
  if (v->type == ValueType::kUint64 &&
      v->u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return absl::InvalidArgumentError(absl::StrCat(path_, ": metadata key '", std::string(key),
                                                   "' = ", v->u, " is out of range"));
  }
  switch (v->type) {
    case ValueType::kUint8:
    case ValueType::kUint16:
    case ValueType::kUint32:
    case ValueType::kUint64:
      return static_cast<int64_t>(v->u);
    default:
      return v->i;
  }
}

absl::StatusOr<double> GgufFile::GetFloat(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (!v->is_float()) return WrongType(key, "f32 or f64", *v);
  return v->f;
}

absl::StatusOr<bool> GgufFile::GetBool(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (v->type != ValueType::kBool) return WrongType(key, "bool", *v);
  return v->b;
}

absl::StatusOr<std::string_view> GgufFile::GetString(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (v->type != ValueType::kString) return WrongType(key, "string", *v);
  return v->str;
}

absl::StatusOr<std::vector<std::string_view>> GgufFile::GetStringArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (v->type != ValueType::kArray || v->elem_type != ValueType::kString) {
    return WrongType(key, "array[string]", *v);
  }
  return v->strings;
}

absl::StatusOr<std::vector<int64_t>> GgufFile::GetIntArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  Value probe;
  probe.type = v->elem_type;
  if (v->type != ValueType::kArray || !probe.is_integer()) {
    return WrongType(key, "an array of integers", *v);
  }
  std::vector<int64_t> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    bool overflow = false;
    IntElement(v->elem_type, v->raw, i, &out[i], &overflow);
    if (overflow) {
      return absl::InvalidArgumentError(
          absl::StrCat(path_, ": metadata key '", std::string(key), "'[", i, "] is out of range"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<float>> GgufFile::GetFloatArray(std::string_view key) const {
  ASSIGN_OR_RETURN(const Value* v, Require(key));
  if (v->type != ValueType::kArray ||
      (v->elem_type != ValueType::kFloat32 && v->elem_type != ValueType::kFloat64)) {
    return WrongType(key, "array[f32]", *v);
  }
  std::vector<float> out(v->count);
  for (uint64_t i = 0; i < v->count; ++i) {
    out[i] = v->elem_type == ValueType::kFloat32
                 ? ReadLe<float>(v->raw + 4 * i)
                 : static_cast<float>(ReadLe<double>(v->raw + 8 * i));
  }
  return out;
}

}  // namespace spanserve::gguf
