#include "server/model_loading.h"

#include <chrono>
#include <cstdio>
#include <span>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/chat/chat_template.h"
#include "runtime/engine/block_manager.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/model.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::server {
namespace {

// The same prefix as the rest of spanserve-server's log: these lines are its log.
void Log(const std::string& message) {
  std::fprintf(stderr, "spanserve-server: %s\n", message.c_str());
}

// One short greedy request, so the first client does not pay for cold caches and pages.
absl::Status WarmUp(engine::Engine& engine) {
  engine::Request request;
  request.prompt = {0, 1, 2, 3};
  request.sampling.temperature = 0.0f;
  request.sampling.max_tokens = 2;
  request.sampling.detokenize = false;
  ASSIGN_OR_RETURN(engine::RequestHandle handle, engine.Submit(std::move(request)));
  engine::RequestOutput out;
  while (handle.stream->Next(&out)) {
    if (out.final && out.final->reason == engine::FinishReason::kError) return out.final->error;
  }
  return absl::OkStatus();
}

// "serving model 'NAME' from PATH (type, norm placement, MoE or dense, KV blocks and their
// type, compute type, chat family) after S s": what an operator checks the set-up by.
std::string ServingLine(const ServedModel& model, double load_seconds) {
  const engine::EngineInfo& info = model.engine().info();
  return absl::StrCat(
      "serving model '", model.name(), "' from ", model.path(), " (", info.model_type, ", ",
      info.norm_placement, ", ", info.num_experts > 0 ? "MoE" : "dense", ", ", info.num_kv_blocks,
      " KV blocks of ", std::string(engine::KvCacheDtypeName(info.kv_cache_dtype)), ", compute ",
      std::string(model::F32OrBf16Name(info.compute_dtype)), ", chat: ",
      model.chat_template().ok()
          ? std::string(chat::FamilyName(model.chat_template()->family()))
          : absl::StrCat("none (", std::string(model.chat_template().status().message()), ")"),
      model.split_reasoning() ? ", reasoning split" : "", "; on ", info.backend, ") after ",
      load_seconds, " s");
}

}  // namespace

absl::StatusOr<LoadedModel> LoadModel(const ModelSpec& spec, ModelLoadOptions options) {
  ASSIGN_OR_RETURN(loader::ModelSource source,
                   loader::LoadModelSource(spec.path, {.device = options.device,
                                                       .num_threads = options.num_threads,
                                                       .compute_dtype = options.compute_dtype,
                                                       .int8_dot = options.int8_dot}));
  LoadedModel loaded;
  loaded.format = source.format;
  loaded.tokenizer = std::move(source.tokenizer);
  const tokenizer::Tokenizer* tok = loaded.tokenizer.get();
  std::string bos, eos;
  if (tok != nullptr && tok->bos_id()) bos = std::string(tok->IdToToken(*tok->bos_id()));
  if (tok != nullptr && tok->eos_id()) eos = std::string(tok->IdToToken(*tok->eos_id()));
  loaded.chat_template = chat::ChatTemplate::Parse(source.chat_template, bos, eos);
  loaded.split_reasoning =
      options.reasoning == ModelLoadOptions::Reasoning::kThink ||
      (options.reasoning == ModelLoadOptions::Reasoning::kAuto && loaded.chat_template.ok() &&
       absl::StrContains(source.chat_template, "</think>"));
  if (tok != nullptr) {
    options.engine.detokenize = [tok](std::span<const int32_t> ids, bool skip_special_tokens) {
      return tok->Decode(ids, skip_special_tokens);
    };
    // JSON mode's token bytes, over the model's vocabulary (which may be padded past the
    // tokenizer's): special and unknown ids have none.
    options.engine.token_bytes = std::make_shared<const engine::TokenBytesTable>(
        source.model->config().vocab_size, [tok](int32_t id) {
          return id < tok->vocab_size() && !tok->IsSpecial(id) ? tok->TokenBytes(id)
                                                               : std::string();
        });
  }
  ASSIGN_OR_RETURN(loaded.engine, engine::Engine::Create(std::move(source.model), options.engine));
  if (absl::Status s = WarmUp(*loaded.engine); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("warm-up failed: ", s.message()));
  }
  return loaded;
}

absl::StatusOr<ModelLoadOptions::Reasoning> ParseReasoningParser(absl::string_view name) {
  if (name == "none" || name.empty()) return ModelLoadOptions::Reasoning::kNone;
  if (name == "auto") return ModelLoadOptions::Reasoning::kAuto;
  if (name == "deepseek_r1" || name == "qwen3") return ModelLoadOptions::Reasoning::kThink;
  return absl::InvalidArgumentError(
      absl::StrCat("--reasoning_parser '", name, "' is not one of none, auto, deepseek_r1, qwen3"));
}

int64_t EvenKvShare(int64_t kv_bytes_left, int64_t models_left) {
  return kv_bytes_left / models_left;
}

void LoadServedModels(const std::vector<std::unique_ptr<ServedModel>>& models,
                      const ModelLoadOptions& options, const std::atomic<bool>& stop,
                      const ModelLoadHooks& hooks) {
  int64_t kv_bytes_left = options.engine.kv_cache_bytes;
  int64_t models_left = static_cast<int64_t>(models.size());
  // Without the default model the server exits, so loading the others would only delay it.
  bool default_failed = false;
  for (const std::unique_ptr<ServedModel>& model : models) {
    ModelLoadOptions model_options = options;
    if (options.engine.num_kv_blocks <= 0) {
      model_options.engine.kv_cache_bytes = EvenKvShare(kv_bytes_left, models_left);
    }
    --models_left;
    if (stop.load() || default_failed) {
      model->SetFailed(absl::UnavailableError("the server shut down before loading it"));
      continue;
    }
    const bool is_default = model->index() == 0;
    const auto t0 = std::chrono::steady_clock::now();
    absl::StatusOr<LoadedModel> loaded = LoadModel({model->name(), model->path()}, model_options);
    if (!loaded.ok()) {
      Log(absl::StrCat(
          "model '", model->name(), "' (", model->path(),
          ") failed to load: ", loaded.status().ToString(),
          is_default ? "; it is the default model: exiting" : "; serving the other models"));
      model->SetFailed(loaded.status());
      if (is_default) {
        default_failed = true;
        if (hooks.on_default_failed) hooks.on_default_failed();
      }
      continue;
    }
    kv_bytes_left -= model_options.engine.kv_cache_bytes;
    model->SetReady(*std::move(loaded));
    if (hooks.on_model_ready) hooks.on_model_ready(*model);
    Log(ServingLine(*model,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()));
    if (is_default && hooks.on_default_ready) hooks.on_default_ready();
  }
}

}  // namespace spanserve::server
