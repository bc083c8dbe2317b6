// The spanserve.v1.SpanServe service (proto/spanserve/v1/spanserve.proto) on gRPC's callback
// API. Handler threads validate, tokenize, submit to the engine and relay that request's
// outputs; they never touch the model or the KV cache (DESIGN.md §1). Several models may be
// served, each with its own engine and KV pool; requests name one (empty: the first).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/engine/engine.h"
#include "server/metrics.h"
#include "server/served_model.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::server {

struct ModelSpec {
  std::string name;  // what requests name it by; metrics label it with this
  std::string path;  // model directory or .gguf file
};

struct ServiceOptions {
  // At least one; the first is the default model. Names are unique.
  std::vector<ModelSpec> models;
  std::string device;
  // Non-empty: every call must carry `authorization: Bearer <auth_token>`.
  std::string auth_token;
  // The engine's limits, reported by GetModelInfo.
  int32_t max_num_seqs = 0;
  int32_t max_batched_tokens = 0;
  int32_t max_waiting_requests = 0;
  // Optional; must outlive the service.
  ServerMetrics* metrics = nullptr;
};

class SpanServeService final : public v1::SpanServe::CallbackService {
 public:
  explicit SpanServeService(ServiceOptions options);

  // The served models in the order given; the loading thread calls SetReady / SetFailed
  // on them. Each starts kLoading: calls naming it answer UNAVAILABLE until it is ready.
  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }
  // From now on new calls answer UNAVAILABLE; calls in flight go on.
  void StartDraining();
  // Stops every ready model's engine (what is still in flight ends CANCELLED).
  void ShutdownEngines();
  bool draining() const { return draining_.load(); }
  ServerMetrics* metrics() const { return options_.metrics; }
  // Generate and Score calls not yet finished.
  int32_t num_in_flight() const { return in_flight_.load(); }

  // The checks every call passes before it does anything: auth, then draining.
  absl::Status Admit(const grpc::CallbackServerContext& context) const;
  // The model a request names (empty: the default). NOT_FOUND naming it and listing the
  // served names when unknown; nullptr-free: the pointer lives as long as the service.
  absl::StatusOr<ServedModel*> FindModel(absl::string_view name) const;
  // FindModel, then the model must be ready (see ServedModel::CheckReady).
  absl::StatusOr<ServedModel*> ReadyModel(absl::string_view name) const;

  // Engine request ids restart at 1 in every engine; clients see ids unique across models:
  // (engine id - 1) * number of models + model index + 1.
  uint64_t PublicRequestId(const ServedModel& model, engine::RequestId id) const;
  // A call in flight holds one count, so draining knows when the server is idle.
  void CallStarted() { in_flight_.fetch_add(1); }
  void CallFinished() { in_flight_.fetch_sub(1); }

  grpc::ServerWriteReactor<v1::GenerateChunk>* Generate(
      grpc::CallbackServerContext* context, const v1::GenerateRequest* request) override;
  grpc::ServerUnaryReactor* Score(grpc::CallbackServerContext* context,
                                  const v1::ScoreRequest* request,
                                  v1::ScoreResponse* response) override;
  grpc::ServerUnaryReactor* Tokenize(grpc::CallbackServerContext* context,
                                     const v1::TokenizeRequest* request,
                                     v1::TokenizeResponse* response) override;
  grpc::ServerUnaryReactor* Detokenize(grpc::CallbackServerContext* context,
                                       const v1::DetokenizeRequest* request,
                                       v1::DetokenizeResponse* response) override;
  grpc::ServerUnaryReactor* GetModelInfo(grpc::CallbackServerContext* context,
                                         const v1::GetModelInfoRequest* request,
                                         v1::ModelInfo* response) override;
  grpc::ServerUnaryReactor* GetExpertLoad(grpc::CallbackServerContext* context,
                                          const v1::GetExpertLoadRequest* request,
                                          v1::ExpertLoad* response) override;
  grpc::ServerUnaryReactor* Abort(grpc::CallbackServerContext* context,
                                  const v1::AbortRequest* request,
                                  v1::AbortResponse* response) override;

 private:
  void FillModelInfo(const ServedModel& model, v1::ModelInfo* response) const;

  const ServiceOptions options_;
  std::vector<std::unique_ptr<ServedModel>> models_;
  std::atomic<bool> draining_{false};
  std::atomic<int32_t> in_flight_{0};
};

}  // namespace spanserve::server
