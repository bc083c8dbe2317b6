#include "runtime/loader/model_source.h"

#include <fstream>
#include <sstream>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "runtime/gguf/gguf_file.h"
#include "runtime/loader/gguf_tokenizer.h"
#include "runtime/model/gguf_model.h"

namespace spanserve::loader {
namespace {

// tokenizer_config.json's "chat_template": a string, or a list of {name, template} of which
// the one named "default" is the chat template. Empty if the file or the key is absent.
absl::StatusOr<std::string> ReadChatTemplate(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  std::ifstream in(path);
  if (!in) return std::string();
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json json = nlohmann::json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
  if (json.is_discarded() || !json.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a JSON object"));
  }
  const auto it = json.find("chat_template");
  if (it == json.end() || it->is_null()) return std::string();
  if (it->is_string()) return it->get<std::string>();
  if (it->is_array()) {
    for (const nlohmann::json& entry : *it) {
      if (entry.is_object() && entry.value("name", "") == "default" && entry.contains("template") &&
          entry["template"].is_string()) {
        return entry["template"].get<std::string>();
      }
    }
    return std::string();
  }
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": 'chat_template' must be a string or a list of named templates"));
}

}  // namespace

std::string DefaultModelName(const std::string& path) {
  std::string p = path;
  while (p.size() > 1 && p.back() == '/') p.pop_back();
  const size_t slash = p.rfind('/');
  std::string name = slash == std::string::npos ? p : p.substr(slash + 1);
  if (absl::EndsWith(name, ".gguf")) name.resize(name.size() - 5);
  return name;
}

absl::StatusOr<ModelSource> LoadModelSource(const std::string& path,
                                            const model::Model::Options& options) {
  ModelSource source;
  source.path = path;
  if (model::IsGgufPath(path)) {
    source.format = "gguf";
    ASSIGN_OR_RETURN(std::shared_ptr<const gguf::GgufFile> file, gguf::GgufFile::Open(path));
    // The tokenizer first: it is cheap, and a bad one should not cost a weight conversion.
    absl::StatusOr<tokenizer::VocabularySpec> vocab = GgufVocabulary(*file);
    if (vocab.ok()) {
      absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok =
          tokenizer::Tokenizer::FromVocabulary(*vocab);
      if (!tok.ok()) {
        return absl::Status(tok.status().code(),
                            absl::StrCat(path, ": tokenizer.ggml.*: ", tok.status().message()));
      }
      source.tokenizer = *std::move(tok);
    } else if (!absl::IsNotFound(vocab.status())) {
      return vocab.status();
    }
    if (file->Has("tokenizer.chat_template")) {
      ASSIGN_OR_RETURN(const std::string_view chat, file->GetString("tokenizer.chat_template"));
      source.chat_template = std::string(chat);
    }
    ASSIGN_OR_RETURN(source.model, model::Model::LoadGguf(std::move(file), options));
    return source;
  }
  source.format = "safetensors";
  ASSIGN_OR_RETURN(source.model, model::Model::Load(path, options));
  absl::StatusOr<std::unique_ptr<tokenizer::Tokenizer>> tok =
      tokenizer::Tokenizer::FromFile(path + "/tokenizer.json");
  if (tok.ok()) {
    source.tokenizer = *std::move(tok);
  } else if (!absl::IsNotFound(tok.status())) {
    return tok.status();
  }
  ASSIGN_OR_RETURN(source.chat_template, ReadChatTemplate(path));
  return source;
}

}  // namespace spanserve::loader
