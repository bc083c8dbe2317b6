// One model the server serves: its name and path, fixed at start-up, and what loading made
// of it — an engine (with its own KV pool), a tokenizer and a chat template — or why
// loading failed. Models load one after another on a loading thread while the server
// already answers; a model's state only moves kLoading → kReady or kLoading → kFailed.
//
// Thread-safety: state(), CheckReady() and the accessors may be called from any thread;
// SetReady / SetFailed are called once, by the loading thread. The ready-only accessors
// require state() == kReady, which publishes what SetReady stored (release/acquire).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/chat/chat_template.h"
#include "runtime/engine/engine.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::server {

enum class ModelState { kLoading, kReady, kFailed };

// What a successful load hands over.
struct LoadedModel {
  std::unique_ptr<engine::Engine> engine;
  // Null for a model without a tokenizer (token-id prompts only).
  std::unique_ptr<tokenizer::Tokenizer> tokenizer;
  // The recognised chat template, or why chat prompts are refused (INVALID_ARGUMENT).
  absl::StatusOr<chat::ChatTemplate> chat_template = absl::InvalidArgumentError("no chat template");
  std::string format;  // "safetensors" or "gguf"
  // Chat answers split the model's <think> reasoning from its answer (--reasoning_parser;
  // server/openai_api.h, ReasoningSplitter).
  bool split_reasoning = false;
};

class ServedModel {
 public:
  // `index`: the model's position in the server's list (0 is the default model).
  ServedModel(std::string name, std::string path, int32_t index)
      : name_(std::move(name)), path_(std::move(path)), index_(index) {}
  ServedModel(const ServedModel&) = delete;
  ServedModel& operator=(const ServedModel&) = delete;

  const std::string& name() const { return name_; }
  const std::string& path() const { return path_; }
  int32_t index() const { return index_; }
  ModelState state() const { return state_.load(std::memory_order_acquire); }

  // OK when ready; UNAVAILABLE while loading; FAILED_PRECONDITION carrying the load error.
  // Messages name the model.
  absl::Status CheckReady() const;

  void SetReady(LoadedModel loaded);
  void SetFailed(absl::Status error);

  // Ready only.
  engine::Engine& engine() const { return *loaded_.engine; }
  const tokenizer::Tokenizer* tokenizer() const { return loaded_.tokenizer.get(); }
  const absl::StatusOr<chat::ChatTemplate>& chat_template() const { return loaded_.chat_template; }
  const std::string& format() const { return loaded_.format; }
  bool split_reasoning() const { return loaded_.split_reasoning; }
  std::chrono::steady_clock::time_point ready_time() const { return ready_time_; }
  // Failed only.
  const absl::Status& error() const { return error_; }

  // Cancels what the engine still holds and stops its thread; no-op unless ready.
  void ShutdownEngine();

 private:
  const std::string name_;
  const std::string path_;
  const int32_t index_;
  std::atomic<ModelState> state_{ModelState::kLoading};
  LoadedModel loaded_;
  absl::Status error_;
  std::chrono::steady_clock::time_point ready_time_;
};

}  // namespace spanserve::server
