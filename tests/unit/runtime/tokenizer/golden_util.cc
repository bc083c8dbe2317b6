#include "golden_util.h"

#include <zlib.h>

#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "nlohmann/json.hpp"

namespace spanserve::tokenizer::testing {

std::vector<std::string> ReadGzipLines(const std::string& path) {
  gzFile f = gzopen(path.c_str(), "rb");
  if (f == nullptr) throw std::runtime_error("cannot open " + path);
  std::string all;
  char buf[1 << 16];
  int n;
  while ((n = gzread(f, buf, sizeof(buf))) > 0) all.append(buf, n);
  gzclose(f);
  std::vector<std::string> lines;
  size_t start = 0;
  while (start < all.size()) {
    size_t end = all.find('\n', start);
    if (end == std::string::npos) end = all.size();
    lines.push_back(all.substr(start, end - start));
    start = end + 1;
  }
  return lines;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

std::string TokenizerDataPath(const std::string& rel) {
  return std::string(SPANSERVE_TEST_DATA) + "/tokenizers/" + rel;
}

const std::vector<std::string>& GoldenInputs() {
  static const auto* inputs = [] {
    auto* out = new std::vector<std::string>();
    for (const std::string& line : ReadGzipLines(TokenizerDataPath("inputs.jsonl.gz"))) {
      out->push_back(nlohmann::json::parse(line).get<std::string>());
    }
    return out;
  }();
  return *inputs;
}

Golden ReadGolden(const std::string& name) {
  Golden g;
  const auto meta = nlohmann::json::parse(ReadFile(TokenizerDataPath(name + "/meta.json")));
  g.special_prefix = meta.at("special_prefix").get<std::vector<int32_t>>();
  g.special_suffix = meta.at("special_suffix").get<std::vector<int32_t>>();
  g.decode_roundtrips = meta.at("decode_roundtrips").get<bool>();
  g.vocab_size = meta.at("vocab_size").get<int64_t>();
  for (const std::string& line : ReadGzipLines(TokenizerDataPath(name + "/golden.jsonl.gz"))) {
    const auto j = nlohmann::json::parse(line);
    GoldenRecord r;
    r.ids = j.at("ids").get<std::vector<int32_t>>();
    if (j.contains("ids_special")) r.ids_special = j["ids_special"].get<std::vector<int32_t>>();
    if (j.contains("decoded")) r.decoded = j["decoded"].get<std::string>();
    if (j.contains("decoded_skip")) r.decoded_skip = j["decoded_skip"].get<std::string>();
    g.records.push_back(std::move(r));
  }
  return g;
}

bool IsWellFormedUtf8(const std::string& s) {
  // Independent of the library's validator: a straightforward Table 3-7 check.
  size_t i = 0;
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  while (i < n) {
    const unsigned c = p[i];
    size_t len;
    unsigned lo = 0x80, hi = 0xBF;
    if (c < 0x80) {
      ++i;
      continue;
    } else if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      len = 3;
      if (c == 0xE0) lo = 0xA0;
      if (c == 0xED) hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      len = 4;
      if (c == 0xF0) lo = 0x90;
      if (c == 0xF4) hi = 0x8F;
    } else {
      return false;
    }
    if (i + len > n) return false;
    if (p[i + 1] < lo || p[i + 1] > hi) return false;
    for (size_t k = 2; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return false;
    }
    i += len;
  }
  return true;
}

absl::StatusOr<const Tokenizer*> SharedTokenizer(const std::string& name) {
  static std::mutex mu;
  static auto* loaded = new std::map<std::string, std::unique_ptr<Tokenizer>>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = loaded->find(name);
  if (it == loaded->end()) {
    auto tok = Tokenizer::FromFile(TokenizerDataPath(name + "/tokenizer.json"));
    if (!tok.ok()) return tok.status();
    it = loaded->emplace(name, std::move(*tok)).first;
  }
  return it->second.get();
}

const Golden& SharedGolden(const std::string& name) {
  static std::mutex mu;
  static auto* read = new std::map<std::string, Golden>();
  std::lock_guard<std::mutex> lock(mu);
  auto it = read->find(name);
  if (it == read->end()) it = read->emplace(name, ReadGolden(name)).first;
  return it->second;
}

}  // namespace spanserve::tokenizer::testing
