// Tokenizer::FromVocabulary: writes the tokenizer.json that a GGUF-style vocabulary stands
// for (the same document transformers' converters produce) and loads it.
#include <algorithm>
#include <map>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/string_map.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

using Json = nlohmann::json;

constexpr std::string_view kLlama3Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Pattern =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

Json ByteLevelPre(bool use_regex) {
  return {{"type", "ByteLevel"},
          {"add_prefix_space", false},
          {"trim_offsets", true},
          {"use_regex", use_regex}};
}

Json SplitPre(std::string_view regex) {
  return {{"type", "Split"},
          {"pattern", {{"Regex", std::string(regex)}}},
          {"behavior", "Isolated"},
          {"invert", false}};
}

// The pre-tokenizer (and whether merges are ignored) for a GGUF tokenizer.ggml.pre name,
// following llama.cpp's table of names.
absl::Status Gpt2PreTokenizer(const std::string& pre, Json* root, bool* ignore_merges) {
  static const auto* kGpt2 =
      new std::vector<std::string>{"default", "gpt2", "gpt-2", "olmo", "mpt", "jais"};
  static const auto* kLlama3 =
      new std::vector<std::string>{"llama3", "llama-bpe", "llama-v3", "falcon3"};
  static const auto* kQwen2 = new std::vector<std::string>{"qwen2", "deepseek-r1-qwen"};
  static const auto* kDigitsGpt2 = new std::vector<std::string>{
      "smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva"};
  auto in = [&pre](const std::vector<std::string>* names) {
    return std::find(names->begin(), names->end(), pre) != names->end();
  };
  *ignore_merges = false;
  if (in(kGpt2)) {
    (*root)["pre_tokenizer"] = ByteLevelPre(true);
  } else if (in(kLlama3)) {
    (*root)["pre_tokenizer"] = {{"type", "Sequence"},
                                {"pretokenizers", {SplitPre(kLlama3Pattern), ByteLevelPre(false)}}};
    *ignore_merges = true;
  } else if (in(kQwen2)) {
    (*root)["normalizer"] = {{"type", "NFC"}};
    (*root)["pre_tokenizer"] = {{"type", "Sequence"},
                                {"pretokenizers", {SplitPre(kQwen2Pattern), ByteLevelPre(false)}}};
  } else if (in(kDigitsGpt2)) {
    (*root)["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers", {{{"type", "Digits"}, {"individual_digits", true}}, ByteLevelPre(true)}}};
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unsupported GGUF pre-tokenizer '", pre, "' (tokenizer.ggml.pre)"));
  }
  return absl::OkStatus();
}

// transformers' SentencePieceExtractor: every split of a piece into two pieces is a merge;
// merges rank by the score of the merged piece (highest first, stable), ties by the ids of
// the two halves.
std::vector<std::pair<std::string, std::string>> MergesFromScores(
    const std::vector<std::string>& tokens, const std::vector<float>& scores) {
  StringMap<int32_t> vocab;
  for (size_t i = 0; i < tokens.size(); ++i) vocab[tokens[i]] = static_cast<int32_t>(i);
  struct Candidate {
    int32_t left, right;
    float score;
  };
  std::vector<Candidate> merges;
  for (size_t t = 0; t < tokens.size(); ++t) {
    const std::string& piece = tokens[t];
    std::vector<Candidate> local;
    size_t pos = 0;
    DecodeUtf8(piece, &pos);  // split points are between characters
    while (pos < piece.size()) {
      auto l = vocab.find(std::string_view(piece).substr(0, pos));
      auto r = vocab.find(std::string_view(piece).substr(pos));
      if (l != vocab.end() && r != vocab.end()) local.push_back({l->second, r->second, scores[t]});
      DecodeUtf8(piece, &pos);
    }
    std::sort(local.begin(), local.end(), [](const Candidate& a, const Candidate& b) {
      return a.left != b.left ? a.left < b.left : a.right < b.right;
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(),
                   [](const Candidate& a, const Candidate& b) { return a.score > b.score; });
  std::vector<std::pair<std::string, std::string>> out;
  out.reserve(merges.size());
  for (const Candidate& m : merges) out.emplace_back(tokens[m.left], tokens[m.right]);
  return out;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromVocabulary(const VocabularySpec& spec) {
  const size_t n = spec.tokens.size();
  if (n == 0) return absl::InvalidArgumentError("vocabulary: no tokens");
  if (!spec.token_types.empty() && spec.token_types.size() != n) {
    return absl::InvalidArgumentError("vocabulary: token_types and tokens differ in length");
  }
  auto check_id = [n](const std::optional<int32_t>& id, const char* what) -> absl::Status {
    if (id && (*id < 0 || static_cast<size_t>(*id) >= n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary: ", what, " id ", *id, " is out of range"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(check_id(spec.bos_id, "bos"));
  RETURN_IF_ERROR(check_id(spec.eos_id, "eos"));
  RETURN_IF_ERROR(check_id(spec.unk_id, "unk"));
  // The tokenizer.json written below holds them as JSON strings, which must be UTF-8 (a
  // GGUF string is any bytes; nlohmann's dump would throw).
  for (size_t i = 0; i < n; ++i) {
    if (!IsValidUtf8(spec.tokens[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary: token ", i, " is not valid UTF-8"));
    }
  }
  for (size_t i = 0; i < spec.merges.size(); ++i) {
    if (!IsValidUtf8(spec.merges[i])) {
      return absl::InvalidArgumentError(
          absl::StrCat("vocabulary: merge ", i, " is not valid UTF-8"));
    }
  }

  Json root = {{"version", "1.0"},      {"truncation", nullptr},    {"padding", nullptr},
               {"normalizer", nullptr}, {"pre_tokenizer", nullptr}, {"post_processor", nullptr},
               {"decoder", nullptr}};
  Json vocab = Json::object();
  for (size_t i = 0; i < n; ++i) vocab[spec.tokens[i]] = static_cast<int32_t>(i);
  Json merges = Json::array();
  for (const std::string& m : spec.merges) merges.push_back(m);
  Json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false}};

  switch (spec.model) {
    case VocabularyModel::kGpt2: {
      bool ignore_merges = false;
      RETURN_IF_ERROR(Gpt2PreTokenizer(spec.pre, &root, &ignore_merges));
      model["ignore_merges"] = ignore_merges;
      model["unk_token"] = nullptr;
      root["decoder"] = {{"type", "ByteLevel"},
                         {"add_prefix_space", true},
                         {"trim_offsets", true},
                         {"use_regex", true}};
      break;
    }
    case VocabularyModel::kLlama: {
      if (spec.merges.empty()) {
        if (spec.scores.size() != n) {
          return absl::InvalidArgumentError(
              "vocabulary: a llama vocabulary without merges needs one score per token");
        }
        for (const auto& [a, b] : MergesFromScores(spec.tokens, spec.scores)) {
          merges.push_back(Json::array({a, b}));
        }
      }
      Json replace = {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "▁"}};
      if (spec.add_space_prefix) {
        root["normalizer"] = {{"type", "Sequence"},
                              {"normalizers", {{{"type", "Prepend"}, {"prepend", "▁"}}, replace}}};
      } else {
        root["normalizer"] = replace;
      }
      model["byte_fallback"] = true;
      model["fuse_unk"] = true;
      model["unk_token"] = spec.unk_id ? Json(spec.tokens[*spec.unk_id]) : Json(nullptr);
      root["decoder"] = {{"type", "Sequence"},
                         {"decoders",
                          {{{"type", "Replace"}, {"pattern", {{"String", "▁"}}}, {"content", " "}},
                           {{"type", "ByteFallback"}},
                           {{"type", "Fuse"}},
                           {{"type", "Strip"},
                            {"content", " "},
                            {"start", spec.add_space_prefix ? 1 : 0},
                            {"stop", 0}}}}};
      break;
    }
  }
  model["vocab"] = std::move(vocab);
  model["merges"] = std::move(merges);
  root["model"] = std::move(model);

  // Control and unknown tokens are special added tokens; user-defined ones are added
  // tokens matched in the raw text.
  Json added = Json::array();
  for (size_t i = 0; i < spec.token_types.size(); ++i) {
    const auto type = static_cast<GgufTokenType>(spec.token_types[i]);
    const bool special = type == GgufTokenType::kControl || type == GgufTokenType::kUnknown;
    if (!special && type != GgufTokenType::kUserDefined) continue;
    added.push_back({{"id", static_cast<int32_t>(i)},
                     {"content", spec.tokens[i]},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", special}});
  }
  root["added_tokens"] = std::move(added);

  if ((spec.add_bos && spec.bos_id) || (spec.add_eos && spec.eos_id)) {
    Json single = Json::array();
    Json special_tokens = Json::object();
    auto add_special = [&](int32_t id) {
      const std::string& name = spec.tokens[id];
      single.push_back({{"SpecialToken", {{"id", name}, {"type_id", 0}}}});
      special_tokens[name] = {{"id", name}, {"ids", {id}}, {"tokens", {name}}};
    };
    if (spec.add_bos && spec.bos_id) add_special(*spec.bos_id);
    single.push_back({{"Sequence", {{"id", "A"}, {"type_id", 0}}}});
    if (spec.add_eos && spec.eos_id) add_special(*spec.eos_id);
    root["post_processor"] = {{"type", "TemplateProcessing"},
                              {"single", single},
                              {"pair", single},
                              {"special_tokens", special_tokens}};
  }

  LoadOptions options;
  options.bos_id = spec.bos_id;
  options.eos_id = spec.eos_id;
  return FromJson(root.dump(), options);
}

}  // namespace spanserve::tokenizer
