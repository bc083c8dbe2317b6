// Everything a served model needs from its files: the model, its tokenizer and its chat
// template, from one path. A path is a model directory (config.json, safetensors,
// tokenizer.json, optionally tokenizer_config.json with a chat template) or a GGUF file.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "runtime/model/model.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::loader {

struct ModelSource {
  std::unique_ptr<model::Model> model;
  // Null when the directory has no tokenizer.json (test and benchmark models): such a
  // model serves token-id prompts only.
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  // The model's chat template (Jinja source) as its files give it: tokenizer_config.json's
  // "chat_template", or GGUF's tokenizer.chat_template. Empty when there is none.
  std::string chat_template;
  // "safetensors" or "gguf".
  std::string format;
  // The path it was loaded from.
  std::string path;
};

// Loads `path` (a directory, or a GGUF file: a path ending in .gguf or any regular file). Errors
// name the file and the key or tensor at fault (see Model::Load and Tokenizer::FromFile).
[[nodiscard]] absl::StatusOr<ModelSource> LoadModelSource(const std::string& path,
                                                          const model::Model::Options& options);

// A model's default name: the last path component without a .gguf suffix
// ("models/spanserve-span-12l/" -> "spanserve-span-12l").
std::string DefaultModelName(const std::string& path);

}  // namespace spanserve::loader
