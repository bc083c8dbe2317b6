// The served world of the server-side fuzz targets (request_fuzz.cc, openai_request_fuzz.cc):
// the bundled model (models/spanserve-span-12l, 5.8 MB) loaded once and served twice, with
// the ChatML and with the Llama-3 chat template, as server_main.cc's LoadModel serves it,
// and an engine core for EngineCore::ValidateRequest (what Engine::Submit runs). Nothing is
// ever generated.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fuzz_util.h"
#include "runtime/chat/chat_template.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/engine_core.h"
#include "runtime/engine/json_grammar.h"
#include "runtime/loader/model_source.h"
#include "runtime/model/model.h"
#include "server/served_model.h"

namespace spanserve::fuzz {

namespace world_internal {
namespace engine = spanserve::engine;
namespace server = spanserve::server;

inline constexpr char kModelDir[] = "models/spanserve-span-12l";

template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, v.status().ToString().c_str());
    std::abort();
  }
  return *std::move(v);
}

inline engine::EngineOptions Options(const spanserve::tokenizer::Tokenizer* tok,
                                     int32_t vocab_size) {
  engine::EngineOptions options;
  options.num_kv_blocks = 80;  // one full 1024-token sequence in 16-token blocks, and spare
  options.max_num_seqs = 4;
  options.detokenize = [tok](std::span<const int32_t> ids, bool skip_special_tokens) {
    return tok->Decode(ids, skip_special_tokens);
  };
  // JSON mode's and structured outputs' token bytes, as server/model_loading.cc builds them.
  options.token_bytes =
      std::make_shared<const engine::TokenBytesTable>(vocab_size, [tok](int32_t id) {
        return id < tok->vocab_size() && !tok->IsSpecial(id) ? tok->TokenBytes(id) : std::string();
      });
  return options;
}

// A ready ServedModel, as server_main.cc's LoadModel builds it.
inline server::ServedModel* Serve(absl::string_view chat_template) {
  spanserve::loader::ModelSource source =
      OrDie(spanserve::loader::LoadModelSource(spanserve::fuzz::SourcePath(kModelDir),
                                               {.num_threads = 1}),
            "load model");
  server::LoadedModel loaded;
  loaded.format = source.format;
  loaded.tokenizer = std::move(source.tokenizer);
  SPANSERVE_CHECK(loaded.tokenizer != nullptr);
  const spanserve::tokenizer::Tokenizer* tok = loaded.tokenizer.get();
  std::string bos;
  if (tok->bos_id()) bos = std::string(tok->IdToToken(*tok->bos_id()));
  loaded.chat_template = spanserve::chat::ChatTemplate::Parse(chat_template, bos);
  SPANSERVE_CHECK(loaded.chat_template.ok());
  const int32_t vocab_size = source.model->config().vocab_size;
  loaded.engine =
      OrDie(engine::Engine::Create(std::move(source.model), Options(tok, vocab_size)), "engine");
  auto* model = new server::ServedModel("spanserve-span-12l", kModelDir, 0);
  model->SetReady(std::move(loaded));
  return model;
}

struct World {
  server::ServedModel* served[2];
  std::unique_ptr<spanserve::model::Model> model;  // the core's (it borrows it)
  std::unique_ptr<engine::EngineCore> core;        // for ValidateRequest: Submit's check
};

inline World* MakeWorld() {
  auto* w = new World();
  w->served[0] = Serve(kChatMl);
  w->served[1] = Serve(kLlama3);
  w->model = OrDie(
      spanserve::model::Model::Load(spanserve::fuzz::SourcePath(kModelDir), {.num_threads = 1}),
      "load model");
  w->core =
      OrDie(engine::EngineCore::Create(
                w->model.get(), Options(w->served[0]->tokenizer(), w->model->config().vocab_size)),
            "engine core");
  return w;
}

// The server's checks and the engine's must agree: whatever the server accepts (after
// AddChatStop has added the template's end-of-turn stop to a client's maximum of stops,
// corpus/request/seed_generate_many_stops) the engine accepts.
inline void CheckEngineAccepts(const World& w, const engine::Request& request) {
  const absl::Status s = w.core->ValidateRequest(request);
  if (!s.ok()) {
    std::fprintf(stderr, "the server accepted a request the engine rejects: %s\n",
                 s.ToString().c_str());
    std::abort();
  }
}

}  // namespace world_internal

using world_internal::CheckEngineAccepts;
using world_internal::MakeWorld;
using world_internal::World;

}  // namespace spanserve::fuzz
