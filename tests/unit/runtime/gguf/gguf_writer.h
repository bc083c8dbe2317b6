// A small GGUF writer for tests: synthesises valid files and, through its knobs, broken ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace spanserve::gguf::testing {

class GgufWriter {
 public:
  explicit GgufWriter(uint32_t version = 3) : version_(version) {}

  // Metadata values, encoded as the format does.
  void U32(const std::string& key, uint32_t v) { Kv(key, 4, Le(v)); }
  void I32(const std::string& key, int32_t v) { Kv(key, 5, Le(v)); }
  void F32(const std::string& key, float v) { Kv(key, 6, Le(v)); }
  void Bool(const std::string& key, bool v) { Kv(key, 7, {static_cast<uint8_t>(v)}); }
  void Str(const std::string& key, const std::string& v) { Kv(key, 8, String(v)); }
  void StrArray(const std::string& key, const std::vector<std::string>& v) {
    std::vector<uint8_t> b = Le(uint32_t{8});
    Append(b, Le(static_cast<uint64_t>(v.size())));
    for (const std::string& s : v) Append(b, String(s));
    Kv(key, 9, b);
  }
  void I32Array(const std::string& key, const std::vector<int32_t>& v) {
    std::vector<uint8_t> b = Le(uint32_t{5});
    Append(b, Le(static_cast<uint64_t>(v.size())));
    for (const int32_t x : v) Append(b, Le(x));
    Kv(key, 9, b);
  }
  void F32Array(const std::string& key, const std::vector<float>& v) {
    std::vector<uint8_t> b = Le(uint32_t{6});
    Append(b, Le(static_cast<uint64_t>(v.size())));
    for (const float x : v) Append(b, Le(x));
    Kv(key, 9, b);
  }
  // Any value, already encoded (type id + payload).
  void Kv(const std::string& key, uint32_t type, const std::vector<uint8_t>& payload) {
    Append(kv_, String(key));
    Append(kv_, Le(type));
    Append(kv_, payload);
    ++kv_count_;
  }

  struct Tensor {
    std::string name;
    std::vector<uint64_t> ne;
    uint32_t type = 0;
    std::vector<uint8_t> data;
    std::optional<uint64_t> offset;  // default: laid out in order, aligned
  };
  void AddTensor(Tensor t) { tensors_.push_back(std::move(t)); }
  void AddF32(const std::string& name, const std::vector<uint64_t>& ne,
              const std::vector<float>& values) {
    std::vector<uint8_t> data(values.size() * 4);
    std::memcpy(data.data(), values.data(), data.size());
    AddTensor({name, ne, 0, std::move(data), std::nullopt});
  }

  // Knobs for broken files.
  uint32_t magic = 0x46554747;
  std::optional<uint64_t> tensor_count_override;
  std::optional<uint64_t> kv_count_override;
  uint32_t alignment = 32;  // the layout's; write general.alignment yourself to change it

  std::vector<uint8_t> Build() const {
    std::vector<uint8_t> out;
    Append(out, Le(magic));
    Append(out, Le(version_));
    Append(out, Le(tensor_count_override.value_or(tensors_.size())));
    Append(out, Le(kv_count_override.value_or(kv_count_)));
    Append(out, kv_);
    std::vector<uint64_t> offsets;
    uint64_t next = 0;
    for (const Tensor& t : tensors_) {
      offsets.push_back(t.offset.value_or(next));
      next = Align(offsets.back() + t.data.size());
    }
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const Tensor& t = tensors_[i];
      Append(out, String(t.name));
      Append(out, Le(static_cast<uint32_t>(t.ne.size())));
      for (const uint64_t n : t.ne) Append(out, Le(n));
      Append(out, Le(t.type));
      Append(out, Le(offsets[i]));
    }
    out.resize(Align(out.size()), 0);
    const size_t data_start = out.size();
    for (size_t i = 0; i < tensors_.size(); ++i) {
      const size_t end = data_start + offsets[i] + tensors_[i].data.size();
      if (out.size() < end) out.resize(end, 0);
      if (tensors_[i].data.empty()) continue;
      std::memcpy(out.data() + data_start + offsets[i], tensors_[i].data.data(),
                  tensors_[i].data.size());
    }
    if (!tensors_.empty()) out.resize(data_start + Align(out.size() - data_start), 0);
    return out;
  }

  template <typename T>
  static std::vector<uint8_t> Le(T v) {
    std::vector<uint8_t> b(sizeof(T));
    std::memcpy(b.data(), &v, sizeof(T));
    return b;
  }
  static std::vector<uint8_t> String(const std::string& s) {
    std::vector<uint8_t> b(8 + s.size());
    const uint64_t n = s.size();
    std::memcpy(b.data(), &n, 8);
    if (n > 0) std::memcpy(b.data() + 8, s.data(), n);
    return b;
  }
  static void Append(std::vector<uint8_t>& to, const std::vector<uint8_t>& from) {
    const size_t at = to.size();
    to.resize(at + from.size());
    if (!from.empty()) std::memcpy(to.data() + at, from.data(), from.size());
  }

 private:
  uint64_t Align(uint64_t n) const { return (n + alignment - 1) / alignment * alignment; }

  uint32_t version_;
  std::vector<uint8_t> kv_;
  uint64_t kv_count_ = 0;
  std::vector<Tensor> tensors_;
};

}  // namespace spanserve::gguf::testing
