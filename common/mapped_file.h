// A read-only memory map of a whole file. Weights are used in place from the map, never
// copied; the pages a forward pass touches are the pages that become resident.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace spanserve {

class MappedFile {
 public:
  // Maps `path` read-only. NOT_FOUND if it does not exist; an empty file maps to size 0.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<MappedFile>> Open(const std::string& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile(std::string path, const uint8_t* data, size_t size)
      : path_(std::move(path)), data_(data), size_(size) {}
  std::string path_;
  const uint8_t* data_;
  size_t size_;
};

// Reads a whole (small) file into a string: configs, tokenizer files.
[[nodiscard]] absl::StatusOr<std::string> ReadFileToString(const std::string& path);

}  // namespace spanserve
