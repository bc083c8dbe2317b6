#include "server/service.h"

#include <sys/random.h>

#include <random>
#include <string_view>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"
#include "common/text.h"
#include "runtime/engine/block_manager.h"
#include "runtime/model/model.h"
#include "server/calls.h"
#include "server/convert.h"
#include "server/grpc_status.h"
#include "server/raw_request.h"

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

// A Generate call refused before it started: finishes at once with `status`.
class RefusedStream final : public grpc::ServerWriteReactor<v1::GenerateChunk> {
 public:
  explicit RefusedStream(const absl::Status& status) { Finish(ToGrpcStatus(status)); }
  void OnDone() override { delete this; }
};

// Wraps a unary handler so that gRPC hands it bytes: `typed` gets the request parsed by
// ParseRequest, after the call was admitted (auth before anything about the bytes).
template <typename Request, typename Response, typename Typed>
grpc::internal::MethodHandler* RawUnary(const SpanServeService* service, Typed typed) {
  return new grpc::internal::CallbackUnaryHandler<grpc::ByteBuffer, Response>(
      [service, typed](grpc::CallbackServerContext* context, const grpc::ByteBuffer* raw,
                       Response* response) -> grpc::ServerUnaryReactor* {
        if (absl::Status s = service->Admit(*context); !s.ok()) return FinishUnary(context, s);
        Request request;
        if (absl::Status s = ParseRequest(*raw, &request); !s.ok()) return FinishUnary(context, s);
        // Handlers read the request before they return: it may die with this frame.
        return typed(context, &request, response);
      });
}

absl::Status NoTokenizerError(const ServedModel& model) {
  return absl::FailedPreconditionError(absl::StrCat(
      "model '", model.name(), "' has no tokenizer.json: only token ids are accepted"));
}

}  // namespace

SpanServeService::SpanServeService(ServiceOptions options)
    : options_(std::move(options)),
      work_pool_(std::make_unique<WorkPool>(/*threads=*/1, /*max_queued=*/32)) {
  for (size_t i = 0; i < options_.models.size(); ++i) {
    models_.push_back(std::make_unique<ServedModel>(
        options_.models[i].name, options_.models[i].path, static_cast<int32_t>(i)));
  }
  ParseRequestsOurselves();
}

SpanServeService::~SpanServeService() = default;

void SpanServeService::ParseRequestsOurselves() {
  // The methods' indices, in the order of the service in spanserve.proto.
  enum : int { kGenerate, kScore, kTokenize, kDetokenize, kGetModelInfo, kGetExpertLoad, kAbort };
  MarkMethodRawCallback(
      kGenerate,
      new grpc::internal::CallbackServerStreamingHandler<grpc::ByteBuffer, v1::GenerateChunk>(
          [this](grpc::CallbackServerContext* context,
                 const grpc::ByteBuffer* raw) -> grpc::ServerWriteReactor<v1::GenerateChunk>* {
            if (absl::Status s = Admit(*context); !s.ok()) return new RefusedStream(s);
            v1::GenerateRequest request;
            if (absl::Status s = ParseRequest(*raw, &request); !s.ok()) {
              return new RefusedStream(s);
            }
            return Generate(context, &request);
          }));
  MarkMethodRawCallback(kScore,
                        RawUnary<v1::ScoreRequest, v1::ScoreResponse>(
                            this, [this](auto* c, auto* q, auto* r) { return Score(c, q, r); }));
  MarkMethodRawCallback(kTokenize,
                        RawUnary<v1::TokenizeRequest, v1::TokenizeResponse>(
                            this, [this](auto* c, auto* q, auto* r) { return Tokenize(c, q, r); }));
  MarkMethodRawCallback(
      kDetokenize, RawUnary<v1::DetokenizeRequest, v1::DetokenizeResponse>(
                       this, [this](auto* c, auto* q, auto* r) { return Detokenize(c, q, r); }));
  MarkMethodRawCallback(kGetModelInfo, RawUnary<v1::GetModelInfoRequest, v1::ModelInfo>(
                                           this, [this](auto* c, auto* q, auto* r) {
                                             return GetModelInfo(c, q, r);
                                           }));
  MarkMethodRawCallback(kGetExpertLoad, RawUnary<v1::GetExpertLoadRequest, v1::ExpertLoad>(
                                            this, [this](auto* c, auto* q, auto* r) {
                                              return GetExpertLoad(c, q, r);
                                            }));
  MarkMethodRawCallback(kAbort,
                        RawUnary<v1::AbortRequest, v1::AbortResponse>(
                            this, [this](auto* c, auto* q, auto* r) { return Abort(c, q, r); }));
}

void SpanServeService::StartDraining() { draining_.store(true); }

void SpanServeService::ShutdownEngines() {
  for (const auto& model : models_) model->ShutdownEngine();
}

absl::Status SpanServeService::Admit(const grpc::CallbackServerContext& context) const {
  const auto& metadata = context.client_metadata();
  // gRPC takes metadata up to the transport's limit (server_main sets it far above this
  // one: past it gRPC 1.51 ends the whole connection); a call over ours fails alone.
  int64_t metadata_bytes = 0;
  for (const auto& [key, value] : metadata) metadata_bytes += key.size() + value.size() + 32;
  std::string authorization;
  auto it = metadata.find("authorization");
  if (it != metadata.end()) authorization.assign(it->second.data(), it->second.size());
  return Admit(it == metadata.end() ? nullptr : &authorization, metadata_bytes);
}

absl::Status SpanServeService::Admit(const std::string* authorization,
                                     int64_t metadata_bytes) const {
  if (metadata_bytes > options_.max_metadata_bytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("request metadata of ", metadata_bytes, " bytes exceeds the limit of ",
                     options_.max_metadata_bytes, " bytes (--max_metadata_bytes)"));
  }
  if (!options_.auth_token.empty()) {
    if (authorization == nullptr) {
      return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
    }
    const absl::string_view value(*authorization);
    constexpr absl::string_view kBearer = "Bearer ";
    // The scheme is case-insensitive (RFC 9110 §11.1): "bearer" and "BEARER" too.
    if (!absl::StartsWithIgnoreCase(value, kBearer) ||
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
      absl::StrCat("model: '", EchoValue(name),
                   "' is not served here; served models: ", absl::StrJoin(names, ", ")));
}

absl::StatusOr<ServedModel*> SpanServeService::ReadyModel(absl::string_view name) const {
  ASSIGN_OR_RETURN(ServedModel * model, FindModel(name));
  RETURN_IF_ERROR(model->CheckReady());
  return model;
}

uint64_t SpanServeService::NewPublicRequestId() {
  for (;;) {
    uint64_t id = 0;
    // getrandom(2) on the urandom pool: never blocks once the kernel's pool is seeded, and
    // 8 bytes never come back short.
    if (getrandom(&id, sizeof(id), 0) != static_cast<ssize_t>(sizeof(id))) {
      std::random_device device;  // the same pool through libstdc++, should the call fail
      id = (static_cast<uint64_t>(device()) << 32) ^ device();
    }
    std::lock_guard<std::mutex> lock(ids_mu_);
    if (id != 0 && !live_ids_.contains(id)) return id;
  }
}

void SpanServeService::RegisterRequest(uint64_t public_id, ServedModel* model,
                                       engine::RequestId engine_id) {
  std::lock_guard<std::mutex> lock(ids_mu_);
  live_ids_[public_id] = LiveRequest{model, engine_id};
}

void SpanServeService::UnregisterRequest(uint64_t public_id) {
  std::lock_guard<std::mutex> lock(ids_mu_);
  live_ids_.erase(public_id);
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

absl::Status SpanServeService::DoTokenize(const v1::TokenizeRequest& request,
                                          const ServedModel& model,
                                          v1::TokenizeResponse* response) const {
  const tokenizer::Tokenizer* tok = model.tokenizer();
  absl::StatusOr<std::vector<int32_t>> ids;
  if (request.has_chat()) {
    v1::Prompt prompt;
    *prompt.mutable_chat() = request.chat();
    ids = PromptIds(prompt, "", model);
  } else {
    const bool special = !request.has_add_special_tokens() || request.add_special_tokens();
    ids = tok->Encode(request.text(), special);
    if (!ids.ok()) {
      ids = absl::Status(ids.status().code(), absl::StrCat("text: ", ids.status().message()));
    }
  }
  if (!ids.ok()) return ids.status();
  response->mutable_token_ids()->Reserve(static_cast<int>(ids->size()));
  response->mutable_tokens()->Reserve(static_cast<int>(ids->size()));
  for (int32_t id : *ids) {
    response->add_token_ids(id);
    response->add_tokens(std::string(tok->IdToToken(id)));
  }
  // The input bound keeps the answer under the limit; should a tokenizer ever break it,
  // the call says so rather than failing in gRPC's send.
  if (const int64_t bytes = static_cast<int64_t>(response->ByteSizeLong());
      bytes > options_.max_message_bytes) {
    response->Clear();
    return absl::ResourceExhaustedError(
        absl::StrCat("the answer would be ", bytes, " bytes, over --max_message_bytes (",
                     options_.max_message_bytes, "); send less text"));
  }
  return absl::OkStatus();
}

absl::Status SpanServeService::CheckTokenize(const v1::TokenizeRequest& request,
                                             const ServedModel& model) const {
  if (model.tokenizer() == nullptr) return NoTokenizerError(model);
  if (request.has_chat() && !request.text().empty()) {
    return absl::InvalidArgumentError("text: must be empty when chat is set");
  }
  // Bounded so that the answer fits in one message.
  const int64_t max_bytes = options_.max_message_bytes / kTokenizeAnswerBytesPerByte;
  // The text (or the chat's messages) itself, not the rest of the request.
  const int64_t bytes = static_cast<int64_t>(request.has_chat() ? request.chat().ByteSizeLong()
                                                                : request.text().size());
  if (bytes > max_bytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        request.has_chat() ? "chat" : "text", ": ", bytes, " bytes; Tokenize takes at most ",
        max_bytes, " bytes a call (1/", kTokenizeAnswerBytesPerByte,
        " of --max_message_bytes, so the answer fits); split it"));
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* SpanServeService::Tokenize(grpc::CallbackServerContext* context,
                                                     const v1::TokenizeRequest* request,
                                                     v1::TokenizeResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<ServedModel*> model = ReadyModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  if (absl::Status s = CheckTokenize(*request, **model); !s.ok()) {
    return FinishUnary(context, s);
  }
  if (static_cast<int64_t>(request->ByteSizeLong()) <= kInlineTokenizeBytes) {
    return FinishUnary(context, DoTokenize(*request, **model, response));
  }
  // Long: off gRPC's threads, onto the work pool (the request is copied: it dies when this
  // handler returns).
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  auto owned = std::make_shared<v1::TokenizeRequest>(*request);
  const bool posted = work_pool_->TryPost([this, context, reactor, owned, response, m = *model] {
    reactor->Finish(ToGrpcStatus(context->IsCancelled()
                                     ? absl::CancelledError("the client cancelled the call")
                                     : DoTokenize(*owned, *m, response)));
  });
  if (!posted) {
    reactor->Finish(ToGrpcStatus(
        absl::ResourceExhaustedError("too many long Tokenize calls are waiting; retry later")));
  }
  return reactor;
}

absl::Status SpanServeService::DoDetokenize(const v1::DetokenizeRequest& request,
                                            const ServedModel& model,
                                            v1::DetokenizeResponse* response) const {
  const tokenizer::Tokenizer* tok = model.tokenizer();
  if (tok == nullptr) return NoTokenizerError(model);
  // Bounded so that decoding stays short and the text fits in one answer.
  const int64_t max_ids = options_.max_message_bytes / kDetokenizeAnswerBytesPerId;
  if (request.token_ids_size() > max_ids) {
    return absl::InvalidArgumentError(absl::StrCat(
        "token_ids: ", request.token_ids_size(), " ids; Detokenize takes at most ", max_ids,
        " a call (1/", kDetokenizeAnswerBytesPerId, " of --max_message_bytes); split them"));
  }
  const int32_t vocab = model.engine().info().vocab_size;
  for (int i = 0; i < request.token_ids_size(); ++i) {
    const int32_t id = request.token_ids(i);
    if (id < 0 || id >= vocab) {
      return absl::InvalidArgumentError(
          absl::StrCat("token_ids[", i, "]: ", id, " is outside the vocabulary [0, ", vocab, ")"));
    }
  }
  const bool skip = !request.has_skip_special_tokens() || request.skip_special_tokens();
  response->set_text(tok->Decode(
      std::span<const int32_t>(request.token_ids().data(), request.token_ids_size()), skip));
  if (static_cast<int64_t>(response->ByteSizeLong()) > options_.max_message_bytes) {
    response->Clear();
    return absl::ResourceExhaustedError(
        "the text would be over --max_message_bytes; send fewer ids");
  }
  return absl::OkStatus();
}

grpc::ServerUnaryReactor* SpanServeService::Detokenize(grpc::CallbackServerContext* context,
                                                       const v1::DetokenizeRequest* request,
                                                       v1::DetokenizeResponse* response) {
  if (absl::Status s = Admit(*context); !s.ok()) return FinishUnary(context, s);
  absl::StatusOr<ServedModel*> model = ReadyModel(request->model());
  if (!model.ok()) return FinishUnary(context, model.status());
  return FinishUnary(context, DoDetokenize(*request, **model, response));
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
  LiveRequest live;
  {
    std::lock_guard<std::mutex> lock(ids_mu_);
    auto it = live_ids_.find(id);
    if (it != live_ids_.end()) live = it->second;
  }
  // Unknown, or already finished: the id left the map before the client could see the end.
  response->set_aborted(live.model != nullptr && live.model->state() == ModelState::kReady &&
                        live.model->engine().Abort(live.engine_id));
  return FinishUnary(context, absl::OkStatus());
}

}  // namespace spanserve::server
