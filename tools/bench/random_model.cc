#include "tools/bench/random_model.h"

#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/mapped_file.h"
#include "common/status.h"
#include "runtime/model/config.h"
#include "runtime/model/model.h"

namespace spanserve::bench {

namespace fs = std::filesystem;

nlohmann::json Qwen2HalfBConfig() {
  return {
      {"model_type", "qwen2"},   {"hidden_size", 896},          {"intermediate_size", 4864},
      {"num_hidden_layers", 24}, {"num_attention_heads", 14},   {"num_key_value_heads", 2},
      {"rms_norm_eps", 1e-6},    {"rope_theta", 1000000.0},     {"max_position_embeddings", 4096},
      {"vocab_size", 151936},    {"tie_word_embeddings", true}, {"eos_token_id", 151643}};
}

absl::Status WriteRandomModel(const std::string& dir, const nlohmann::json& config, DType dtype,
                              unsigned seed) {
  const std::string text = config.dump(1);
  ASSIGN_OR_RETURN(const model::ModelConfig parsed, model::ParseModelConfig(text));
  if (auto old = ReadFileToString(dir + "/config.json");
      old.ok() && *old == text && fs::exists(dir + "/model.safetensors")) {
    return absl::OkStatus();
  }
  fs::create_directories(dir);
  const auto tensors = model::ExpectedTensors(parsed);
  nlohmann::json header = nlohmann::json::object();
  int64_t offset = 0;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const int64_t bytes = n * static_cast<int64_t>(DTypeSize(dtype));
    header[name] = {{"dtype", std::string(DTypeName(dtype))},
                    {"shape", shape},
                    {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string h = header.dump();
  while ((8 + h.size()) % 8 != 0) h.push_back(' ');
  const std::string tmp = dir + "/model.safetensors.partial";
  std::ofstream out(tmp, std::ios::binary);
  const uint64_t len = h.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(h.data(), h.size());
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::vector<char> buf;
  for (const auto& [name, shape] : tensors) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    const bool gain = absl::EndsWith(name, "norm.weight");
    const bool bias = absl::EndsWith(name, ".bias");
    buf.resize(n * DTypeSize(dtype));
    for (int64_t i = 0; i < n; ++i) {
      const float v = gain ? 1.0f : bias ? 0.0f : normal(rng);
      switch (dtype) {
        case DType::kF32:
          std::memcpy(buf.data() + 4 * i, &v, 4);
          break;
        case DType::kBF16: {
          const uint16_t b = F32ToBf16(v);
          std::memcpy(buf.data() + 2 * i, &b, 2);
          break;
        }
        case DType::kF16: {
          const uint16_t b = F32ToF16(v);
          std::memcpy(buf.data() + 2 * i, &b, 2);
          break;
        }
      }
    }
    out.write(buf.data(), buf.size());
  }
  out.close();
  if (!out) return absl::DataLossError(absl::StrCat("cannot write ", tmp));
  fs::rename(tmp, dir + "/model.safetensors");
  std::ofstream(dir + "/config.json") << text;
  return absl::OkStatus();
}

}  // namespace spanserve::bench
