// Reading the committed tokenizer goldens (tests/data/tokenizers, written by
// tools/tokenizer/make_tokenizer_goldens.py).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::tokenizer::testing {

// The lines of a gzip-compressed text file.
std::vector<std::string> ReadGzipLines(const std::string& path);
std::string ReadFile(const std::string& path);

// tests/data/tokenizers/<rel>.
std::string TokenizerDataPath(const std::string& rel);

// The shared inputs (inputs.jsonl.gz).
const std::vector<std::string>& GoldenInputs();

struct GoldenRecord {
  std::vector<int32_t> ids;                         // add_special_tokens = false
  std::optional<std::vector<int32_t>> ids_special;  // add_special_tokens = true, when stored
  std::optional<std::string> decoded;               // decode(ids) where it differs from the input
  std::optional<std::string> decoded_skip;          // decode(ids_special, skip_special_tokens)
};

struct Golden {
  std::vector<GoldenRecord> records;
  std::vector<int32_t> special_prefix;
  std::vector<int32_t> special_suffix;
  bool decode_roundtrips = false;
  int64_t vocab_size = 0;
};

Golden ReadGolden(const std::string& name);

// tests/data/tokenizers/<name>/tokenizer.json and its goldens, each read once per process and
// shared (a Tokenizer is immutable after loading). tokenizer_test runs its cases in one
// process (CMakeLists.txt), so the suites of one tokenizer load it once.
absl::StatusOr<const Tokenizer*> SharedTokenizer(const std::string& name);
const Golden& SharedGolden(const std::string& name);

// Whether `s` is well-formed UTF-8.
bool IsWellFormedUtf8(const std::string& s);

}  // namespace spanserve::tokenizer::testing
