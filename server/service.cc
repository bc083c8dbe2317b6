#include "server/service.h"

#include <string_view>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "runtime/engine/block_manager.h"
#include "runtime/model/model.h"
#include "server/calls.h"
#include "server/convert.h"
#include "server/grpc_status.h"

namespace spanserve::server {
namespace {

// Compares without an early exit, so response time does not leak the token's prefix.
bool ConstantTimeEquals(absl::string_view a, absl::string_view b) {
  if (a.size() != b.size()) return false;
  unsigned char diff = 0;
  for (size_t i = 0; i < a.size(); ++i) diff |= static_cast<unsigned char>(a[i] ^ b[i]);
  return diff == 0;
}

grpc::ServerUnaryReactor* FinishUnary(grpc::CallbackServerContext* context,
                                      const absl::Status& status) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

absl::Status NoTokenizerError(const ServedModel& model) {
  return absl::FailedPreconditionError(absl::StrCat(
      "model '", model.name(), "' has no tokenizer.json: only token ids are accepted"));
}

}  // namespace

SpanServeService::SpanServeService(ServiceOptions options) : options_(std::move(options)) {
  for (size_t i = 0; i < options_.models.size(); ++i) {
    models_.push_back(std::make_unique<ServedModel>(
        options_.models[i].name, options_.models[i].path, static_cast<int32_t>(i)));
  }
}

void SpanServeService::StartDraining() { draining_.store(true); }

void SpanServeService::ShutdownEngines() {
  for (const auto& model : models_) model->ShutdownEngine();
}

absl::Status SpanServeService::Admit(const grpc::CallbackServerContext& context) const {
  if (!options_.auth_token.empty()) {
    const auto& metadata = context.client_metadata();
    auto it = metadata.find("authorization");
    if (it == metadata.end()) {
      return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
    }
    const absl::string_view value(it->second.data(), it->second.size());
    constexpr absl::string_view kBearer = "Bearer ";
    if (!absl::StartsWith(value, kBearer) ||
        !ConstantTimeEquals(value.substr(kBearer.size()), options_.auth_token)) {
      return absl::UnauthenticatedError("invalid bearer token");
    }
  }
  if (draining_.load()) {
    return absl::UnavailableError("the server is shutting down; retry on another replica");
  }
  return absl::OkStatus();
}

absl::StatusOr<ServedModel*> SpanServeService::FindModel(absl::string_view name) const {
  if (name.empty()) return models_.front().get();
  for (const auto& model : models_) {
    if (model->name() == name) return model.get();
  }
  std::vector<std::string> names;
  for (const auto& model : models_) names.push_back(model->name());
  return absl::NotFoundError(
      absl::StrCat("model: '", absl::CEscape(name),
                   "' is not served here; served models: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<ServedModel*> SpanServeService::ReadyModel(absl::string_view name) const {
  ASSIGN_OR_RETURN(ServedModel * model, FindModel(name));
  RETURN_IF_ERROR(model->CheckReady());
  return model;
}

uint64_t SpanServeService::PublicRequestId(const ServedModel& model, engine::RequestId id) const {
  return (static_cast<uint64_t>(id) - 1) * models_.size() + static_cast<uint64_t>(model.index()) +
         1;
}

grpc::ServerWriteReactor<v1::GenerateChunk>* SpanServeService::Generate(
    grpc::CallbackServerContext* context, const v1::GenerateRequest* request) {
  return StartGenerateCall(this, context, *request);
}

grpc::ServerUnaryReactor* SpanServeService::Score(grpc::CallbackServerContext* context,
                                                  const v1::ScoreRequest* request,
                                                  v1::ScoreResponse* response) {
  return StartScoreCall(this, context, *request, response);
}

grpc::ServerUnaryReactor* SpanServeService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<ServedModel*> model = ReadyModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  const tokenizer::Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return FinishUnary(context, NoTokenizerError(**model));
  absl::StatusOr<std::vector<int32_t>> ids;
  if (request->has_chat()) {
    if (!request->text().empty()) {
      return FinishUnary(context,
                         absl::InvalidArgumentError("text: must be empty when chat is set"));
    }
    v1::Prompt prompt;
    *prompt.mutable_chat() = request->chat();
    ids = PromptIds(prompt, "", **model);
  } else {
    const bool special = !request->has_add_special_tokens() || request->add_special_tokens();
    ids = tok->Encode(request->text(), special);
    if (!ids.ok()) {
      ids = absl::Status(ids.status().code(), absl::StrCat("text: ", ids.status().message()));
    }
  }
  if (!ids.ok()) return FinishUnary(context, ids.status());
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_tokens(std::string(tok->IdToToken(id)));
  }
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SpanServeService::Detokenize(grpc::CallbackServerContext* context,
                                                       const v1::DetokenizeRequest* request,
                                                       v1::DetokenizeResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<ServedModel*> model = ReadyModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  const tokenizer::Tokenizer* tok = (*model)->tokenizer();
  if (tok == nullptr) return FinishUnary(context, NoTokenizerError(**model));
  const int32_t vocab = (*model)->engine().info().vocab_size;
  for (int i = 0; i < request->token_ids_size(); ++i) {
    const int32_t id = request->token_ids(i);
    if (id < 0 || id >= vocab) {
      return FinishUnary(
          context, absl::InvalidArgumentError(absl::StrCat(
                       "token_ids[", i, "]: ", id, " is outside the vocabulary [0, ", vocab, ")")));
    }
  }
  const bool skip = !request->has_skip_special_tokens() || request->skip_special_tokens();
  response->set_text(tok->Decode(
      std::span<const int32_t>(request->token_ids().data(), request->token_ids_size()), skip));
  return FinishUnary(context, absl::OkStatus());
}

void SpanServeService::FillModelInfo(const ServedModel& model, v1::ModelInfo* response) const {
  response->set_name(model.name());
  response->set_model_path(model.path());
  response->set_is_default(model.index() == 0);
  response->set_device(options_.device);
  response->set_max_num_seqs(options_.max_num_seqs);
  response->set_max_batched_tokens(options_.max_batched_tokens);
  response->set_max_waiting_requests(options_.max_waiting_requests);
  switch (model.state()) {
    case ModelState::kLoading:
      response->set_state(v1::MODEL_STATE_LOADING);
      return;
    case ModelState::kFailed:
      response->set_state(v1::MODEL_STATE_FAILED);
      response->set_error(std::string(model.error().message()));
      return;
    case ModelState::kReady:
      response->set_state(v1::MODEL_STATE_READY);
      break;
  }
  const engine::EngineInfo& info = model.engine().info();
  const engine::EngineStats stats = model.engine().Stats();
  response->set_format(model.format());
  if (model.chat_template().ok()) {
    response->set_chat_template_family(
        std::string(chat::FamilyName(model.chat_template()->family())));
  } else {
    response->set_chat_template_error(std::string(model.chat_template().status().message()));
  }
  response->set_architecture(info.model_type);
  response->set_norm_placement(info.norm_placement);
  response->set_is_moe(info.num_experts > 0);
  response->set_num_experts(info.num_experts);
  response->set_experts_per_token(info.experts_per_token);
  response->set_num_layers(info.num_layers);
  response->set_hidden_size(info.hidden_size);
  response->set_vocab_size(info.vocab_size);
  response->set_num_parameters(info.num_parameters);
  response->mutable_eos_token_ids()->Add(info.eos_token_ids.begin(), info.eos_token_ids.end());
  response->set_max_model_len(info.max_model_len);
  response->set_kv_block_size(info.block_size);
  response->set_kv_blocks_total(stats.kv_blocks_total);
  response->set_kv_blocks_used(stats.kv_blocks_used);
  response->set_kv_cache_bytes(info.kv_cache_bytes);
  response->set_kv_cache_dtype(std::string(engine::KvCacheDtypeName(info.kv_cache_dtype)));
  response->set_compute_dtype(std::string(model::F32OrBf16Name(info.compute_dtype)));
  response->set_kv_cache_usage_ratio(stats.kv_cache_usage_ratio);
  response->set_num_requests_running(stats.num_running);
  response->set_num_requests_waiting(stats.num_waiting);
}

grpc::ServerUnaryReactor* SpanServeService::GetModelInfo(grpc::CallbackServerContext* context,
                                                         const v1::GetModelInfoRequest* request,
                                                         v1::ModelInfo* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  // Answers in every model state: loading and failed models are what it reports on.
  absl::StatusOr<ServedModel*> model = FindModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  FillModelInfo(**model, response);
  for (const auto& m : models_) FillModelInfo(*m, response->add_models());
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SpanServeService::GetExpertLoad(grpc::CallbackServerContext* context,
                                                          const v1::GetExpertLoadRequest* request,
                                                          v1::ExpertLoad* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<ServedModel*> model = ReadyModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  const engine::ExpertLoadSnapshot load = (*model)->engine().ExpertLoad();
  for (size_t i = 0; i < load.layer_ids.size() && i < load.tokens.size(); ++i) {
    v1::LayerExpertLoad* layer = response->add_layers();
    layer->set_layer(load.layer_ids[i]);
    layer->mutable_tokens()->Add(load.tokens[i].begin(), load.tokens[i].end());
  }
  response->set_window_s(
      std::chrono::duration<double>(std::chrono::steady_clock::now() - (*model)->ready_time())
          .count());
  if ((*model)->engine().info().num_experts == 0) response->set_note("dense model: no experts");
  return FinishUnary(context, absl::OkStatus());
}

grpc::ServerUnaryReactor* SpanServeService::Abort(grpc::CallbackServerContext* context,
                                                  const v1::AbortRequest* request,
                                                  v1::AbortResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  const uint64_t id = request->request_id();
  if (id == 0) {
    return FinishUnary(context, absl::InvalidArgumentError("request_id: must be set (non-zero)"));
  }
  // Inverts PublicRequestId.
  const ServedModel& model = *models_[(id - 1) % models_.size()];
  const engine::RequestId engine_id = (id - 1) / models_.size() + 1;
  response->set_aborted(model.state() == ModelState::kReady && model.engine().Abort(engine_id));
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace spanserve::server
