#include "runtime/model/weights.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <set>
#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "nlohmann/json.hpp"

namespace spanserve::model {
namespace {

using json = nlohmann::json;

// The safetensors reference implementation refuses headers above 100 MB; a bigger length
// means a file that is not safetensors at all.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr char kIndexName[] = "model.safetensors.index.json";
constexpr char kSingleName[] = "model.safetensors";

std::string JoinPath(const std::string& dir, std::string_view name) {
  return (std::filesystem::path(dir) / name).string();
}

bool FileExists(const std::string& path) {
  std::error_code ec;
  return std::filesystem::exists(path, ec);
}

std::string ShapeString(std::span<const int64_t> shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

absl::StatusOr<DType> ParseDType(const std::string& name) {
  for (const DType t : {DType::kF32, DType::kBF16, DType::kF16}) {
    if (DTypeName(t) == name) return t;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unsupported dtype '", name, "' (supported: F32, BF16, F16)"));
}

// A JSON array of non-negative integers.
bool ReadIndexList(const json& v, std::vector<int64_t>& out) {
  if (!v.is_array()) return false;
  for (const json& d : v) {
    // Unsigned values above int64 max would wrap; no real file has them.
    if (!d.is_number_integer()) return false;
    if (d.is_number_unsigned() ? d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX)
                               : d.get<int64_t>() < 0) {
      return false;
    }
    out.push_back(d.get<int64_t>());
  }
  return true;
}

// One header entry, validated against the data buffer but not yet against its neighbours.
struct ParsedTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  int64_t begin;
  int64_t end;
};

absl::StatusOr<ParsedTensor> ParseEntry(const std::string& name, const json& entry,
                                        uint64_t data_size) {
  ParsedTensor t{.name = name, .dtype = DType::kF32, .shape = {}, .begin = 0, .end = 0};
  if (!entry.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("entry is not an object but ", entry.type_name()));
  }
  const auto dtype = entry.find("dtype");
  if (dtype == entry.end() || !dtype->is_string()) {
    return absl::InvalidArgumentError("'dtype' is missing or not a string");
  }
  ASSIGN_OR_RETURN(t.dtype, ParseDType(dtype->get<std::string>()));

  const auto shape = entry.find("shape");
  if (shape == entry.end() || !ReadIndexList(*shape, t.shape)) {
    return absl::InvalidArgumentError("'shape' is not a list of non-negative integers");
  }
  const auto offsets = entry.find("data_offsets");
  std::vector<int64_t> range;
  if (offsets == entry.end() || !ReadIndexList(*offsets, range) || range.size() != 2 ||
      range[0] > range[1]) {
    return absl::InvalidArgumentError(
        "'data_offsets' is not two non-negative integers [begin, end] with begin <= end");
  }
  t.begin = range[0];
  t.end = range[1];
  if (static_cast<uint64_t>(t.end) > data_size) {
    return absl::InvalidArgumentError(absl::StrCat("data_offsets [", t.begin, ", ", t.end,
                                                   "] end beyond the ", data_size,
                                                   "-byte data buffer (truncated file?)"));
  }
  int64_t bytes = static_cast<int64_t>(DTypeSize(t.dtype));
  for (const int64_t d : t.shape) {
    if (__builtin_mul_overflow(bytes, d, &bytes)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", ShapeString(t.shape), " overflows a byte count"));
    }
  }
  if (bytes != t.end - t.begin) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", ShapeString(t.shape), " of ", std::string(DTypeName(t.dtype)), " needs ", bytes,
        " bytes but data_offsets [", t.begin, ", ", t.end, "] hold ", t.end - t.begin));
  }
  return t;
}

// Prefixes the file and tensor to a per-entry error, keeping its code.
absl::Status InEntry(const absl::Status& s, const std::string& path, const std::string& name) {
  return absl::Status(s.code(), absl::StrCat(path, ": tensor '", name, "': ", s.message()));
}

}  // namespace

int64_t TensorView::numel() const {
  int64_t n = 1;
  for (const int64_t d : shape) n *= d;
  return n;
}

int64_t TensorView::bytes() const {
  if (quant != kernels::QuantType::kNone) {
    return numel() / kernels::QuantBlockElems(quant) * kernels::QuantBlockBytes(quant);
  }
  return numel() * static_cast<int64_t>(DTypeSize(dtype));
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::OpenFile(const std::string& path) {
  std::unique_ptr<WeightStore> store(new WeightStore());
  store->source_ = path;
  RETURN_IF_ERROR(store->AddFile(path));
  return store;
}

absl::StatusOr<std::unique_ptr<WeightStore>> WeightStore::OpenDirectory(const std::string& dir) {
  std::unique_ptr<WeightStore> store(new WeightStore());
  store->source_ = dir;
  const std::string index_path = JoinPath(dir, kIndexName);
  if (!FileExists(index_path)) {
    const std::string single = JoinPath(dir, kSingleName);
    if (!FileExists(single)) {
      return absl::NotFoundError(absl::StrCat("no ", kSingleName, " or ", kIndexName, " in ", dir));
    }
    RETURN_IF_ERROR(store->AddFile(single));
    return store;
  }

  ASSIGN_OR_RETURN(const std::string text, ReadFileToString(index_path));
  std::map<std::string, std::string> shard_of;  // tensor name -> shard path
  try {
    const json index = json::parse(text);
    const auto map = index.is_object() ? index.find("weight_map") : index.end();
    if (map == index.end() || !map->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, ": 'weight_map' is missing or not an object"));
    }
    for (const auto& [name, file] : map->items()) {
      if (!file.is_string() || file.get<std::string>().empty()) {
        return absl::InvalidArgumentError(absl::StrCat(
            index_path, ": weight_map entry for tensor '", name, "' is not a file name"));
      }
      shard_of[name] = JoinPath(dir, file.get<std::string>());
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(index_path, ": ", e.what()));
  }

  std::set<std::string> shards;
  for (const auto& [name, shard] : shard_of) shards.insert(shard);
  for (const std::string& shard : shards) {
    if (!FileExists(shard)) {
      return absl::NotFoundError(
          absl::StrCat(index_path, " lists shard ", shard, ", which does not exist"));
    }
    RETURN_IF_ERROR(store->AddFile(shard));
  }
  // The index and the shards must agree, or a tensor could silently come from elsewhere.
  for (const auto& [name, shard] : shard_of) {
    const auto it = store->tensors_.find(name);
    if (it == store->tensors_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat(index_path, " maps tensor '", name, "' to ", shard, ", which lacks it"));
    }
    if (it->second.file != shard) {
      return absl::InvalidArgumentError(absl::StrCat(index_path, " maps tensor '", name, "' to ",
                                                     shard, " but it is in ", it->second.file));
    }
  }
  for (const auto& [name, entry] : store->tensors_) {
    if (!shard_of.contains(name)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' in ", entry.file, " is not listed in ", index_path));
    }
  }
  return store;
}

absl::Status WeightStore::AddFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::unique_ptr<MappedFile> file, MappedFile::Open(path));
  const uint64_t size = file->size();
  if (size < 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": ", size, " bytes is too short for a safetensors header"));
  }
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | file->data()[i];  // little-endian
  if (header_len > kMaxHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        path, ": header length ", header_len, " is implausibly large (not a safetensors file?)"));
  }
  if (header_len > size - 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": header length ", header_len, " exceeds the file size ", size));
  }
  const uint8_t* const data = file->data() + 8 + header_len;
  const uint64_t data_size = size - 8 - header_len;

  std::vector<ParsedTensor> parsed;
  try {
    const json header = json::parse(file->data() + 8, data);
    if (!header.is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": header is not a JSON object but ", header.type_name()));
    }
    for (const auto& [name, entry] : header.items()) {
      if (name == "__metadata__") continue;  // free-form strings (format, ...)
      absl::StatusOr<ParsedTensor> t = ParseEntry(name, entry, data_size);
      if (!t.ok()) return InEntry(t.status(), path, name);
      parsed.push_back(*std::move(t));
    }
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": bad safetensors header JSON: ", e.what()));
  }

  // Sorted by offset, two tensors overlap iff one starts before its predecessor ends.
  std::vector<const ParsedTensor*> by_offset;
  for (const ParsedTensor& t : parsed) {
    if (t.end > t.begin) by_offset.push_back(&t);  // empty tensors occupy no bytes
  }
  std::sort(by_offset.begin(), by_offset.end(),
            [](const ParsedTensor* a, const ParsedTensor* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); ++i) {
    const ParsedTensor& prev = *by_offset[i - 1];
    const ParsedTensor& cur = *by_offset[i];
    if (cur.begin < prev.end) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ": tensor '", cur.name, "' [", cur.begin, ", ", cur.end,
                       ") overlaps tensor '", prev.name, "' [", prev.begin, ", ", prev.end, ")"));
    }
  }

  for (ParsedTensor& t : parsed) {
    if (const auto it = tensors_.find(t.name); it != tensors_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name, "' appears in both ", it->second.file, " and ", path));
    }
    const uint8_t* ptr = data + t.begin;
    const size_t bytes = static_cast<size_t>(t.end - t.begin);
    // Kernels load whole elements; a header not padded to the element size shifts the
    // buffer, so those (rare) tensors get an aligned copy (new[] aligns to 16).
    if (reinterpret_cast<uintptr_t>(ptr) % DTypeSize(t.dtype) != 0) {
      auto copy = std::make_unique<uint8_t[]>(bytes);
      std::memcpy(copy.get(), ptr, bytes);
      ptr = copy.get();
      realigned_.push_back(std::move(copy));
    }
    Entry entry;
    entry.view.dtype = t.dtype;
    entry.view.shape = std::move(t.shape);
    entry.view.data = ptr;
    entry.file = path;
    total_bytes_ += static_cast<int64_t>(bytes);
    tensors_.emplace(std::move(t.name), std::move(entry));
  }
  files_.push_back(std::move(file));
  return absl::OkStatus();
}

std::unique_ptr<WeightStore> WeightStore::CreateEmpty(std::string source) {
  std::unique_ptr<WeightStore> store(new WeightStore());
  store->source_ = std::move(source);
  return store;
}

absl::Status WeightStore::AddTensor(std::string name, TensorView view, std::string origin) {
  if (tensors_.contains(name)) {
    return absl::InvalidArgumentError(
        absl::StrCat(origin, ": tensor '", name, "' is given twice in ", source_));
  }
  total_bytes_ += view.bytes();
  Entry entry;
  entry.view = std::move(view);
  entry.file = std::move(origin);
  tensors_.emplace(std::move(name), std::move(entry));
  return absl::OkStatus();
}

void WeightStore::Own(std::unique_ptr<float[]> buffer) { owned_.push_back(std::move(buffer)); }

void WeightStore::Own(std::unique_ptr<uint8_t[]> buffer) {
  owned_bytes_.push_back(std::move(buffer));
}

void WeightStore::KeepAlive(std::shared_ptr<const void> owner) {
  keep_alive_.push_back(std::move(owner));
}

bool WeightStore::Has(std::string_view name) const { return tensors_.contains(name); }

absl::StatusOr<TensorView> WeightStore::Get(std::string_view name, std::span<const int64_t> shape) {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) {
    return absl::NotFoundError(
        absl::StrCat("tensor '", std::string(name), "' not found in ", source_));
  }
  Entry& entry = it->second;
  if (!std::equal(entry.view.shape.begin(), entry.view.shape.end(), shape.begin(), shape.end())) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", std::string(name), "' has shape ",
                                                   ShapeString(entry.view.shape), ", expected ",
                                                   ShapeString(shape), " (in ", entry.file, ")"));
  }
  entry.used = true;
  return entry.view;
}

absl::Status WeightStore::CheckAllUsed(std::span<const std::string> ignored_prefixes) const {
  std::vector<const std::pair<const std::string, Entry>*> unused;
  for (const auto& item : tensors_) {
    if (item.second.used) continue;
    bool ignored = false;
    for (const std::string& prefix : ignored_prefixes) {
      ignored = ignored || item.first.starts_with(prefix);
    }
    if (!ignored) unused.push_back(&item);
  }
  if (unused.empty()) return absl::OkStatus();
  std::string message =
      absl::StrCat("unexpected tensor '", unused[0]->first, "' in ", unused[0]->second.file);
  if (unused.size() > 1) {
    std::vector<absl::string_view> more;
    for (size_t i = 1; i < unused.size() && i < 3; ++i) more.push_back(unused[i]->first);
    absl::StrAppend(&message, " and ", unused.size() - 1, " more ('", absl::StrJoin(more, "', '"),
                    unused.size() > 3 ? "', ...)" : "')");
  }
  absl::StrAppend(&message, ": the checkpoint does not match the model config (", unused.size(),
                  " unused)");
  return absl::InvalidArgumentError(message);
}

std::vector<std::string> WeightStore::Names() const {
  std::vector<std::string> names;
  names.reserve(tensors_.size());
  for (const auto& [name, entry] : tensors_) names.push_back(name);
  return names;
}

}  // namespace spanserve::model
