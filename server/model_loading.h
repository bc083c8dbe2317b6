// Loading the served models: each in turn, on the server's loading thread, while the server
// already answers (health NOT_SERVING until the default model is ready). A model is read
// from its directory or .gguf file, gets its own engine and KV pool, and is warmed up
// before it serves; the KV memory budget of all models together is split evenly as they
// load. Flag handling, health and the drain stay in server_main.cc: this file takes plain
// options and tells the caller what happened through hooks.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/dtype.h"
#include "runtime/engine/engine.h"
#include "server/served_model.h"
#include "server/service.h"

namespace spanserve::server {

struct ModelLoadOptions {
  // Shared by every model. kv_cache_bytes is the KV memory of all models together, which
  // LoadServedModels splits (EvenKvShare); num_kv_blocks, when > 0, is each model's own
  // block count and wins over it.
  engine::EngineOptions engine;
  std::string device = "cpu";  // cpu or cuda (kernels::CreateBackend)
  int num_threads = 0;         // model compute threads (0: all cores)
  DType compute_dtype = DType::kF32;
  bool int8_dot = false;  // model::Model::Options::int8_dot
  // Whose chat answers split <think> reasoning into reasoning_content: kAuto, the models
  // whose chat template writes </think>; kThink, every model.
  enum class Reasoning { kNone, kAuto, kThink };
  Reasoning reasoning = Reasoning::kNone;
};

// --reasoning_parser: none, auto, or vLLM's names of the <think> parsers (deepseek_r1,
// qwen3, which split alike here); INVALID_ARGUMENT naming the values otherwise.
absl::StatusOr<ModelLoadOptions::Reasoning> ParseReasoningParser(absl::string_view name);

// Loads one model (loader::LoadModelSource), recognises its chat template, starts its
// engine and warms it up with one short greedy request, so that the first client does not
// pay for cold caches and pages. options.engine.kv_cache_bytes is this model's own (no
// split here).
absl::StatusOr<LoadedModel> LoadModel(const ModelSpec& spec, ModelLoadOptions options);

// The KV bytes the next model gets: an even share of what the models loaded before it
// left, `models_left` counting it. A model that fails to load spends nothing, so its share
// goes to the models after it.
int64_t EvenKvShare(int64_t kv_bytes_left, int64_t models_left);

// What the loading thread tells the server; each hook may be empty.
struct ModelLoadHooks {
  // A model is ready (before it is logged as serving): e.g. start watching its engine.
  std::function<void(ServedModel&)> on_model_ready;
  // The default model (index 0) is ready and logged: the server can turn SERVING.
  std::function<void()> on_default_ready;
  // The default model failed to load and the failure is logged: the server can never be
  // ready, so it should shut down and exit non-zero.
  std::function<void()> on_default_failed;
};

// Loads and warms up `models` in order, marking each SetReady or SetFailed, and logs each
// outcome. Once `stop` is set, or once the default model has failed, the models not yet
// started are marked failed (UNAVAILABLE: the server shut down before loading them); a
// model being loaded finishes first. Returns when every model is ready or failed.
void LoadServedModels(const std::vector<std::unique_ptr<ServedModel>>& models,
                      const ModelLoadOptions& options, const std::atomic<bool>& stop,
                      const ModelLoadHooks& hooks);

}  // namespace spanserve::server
