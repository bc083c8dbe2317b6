// The spanserve.v1.SpanServe service (proto/spanserve/v1/spanserve.proto) on gRPC's callback
// API. Handler threads validate, tokenize, submit to the engine and relay that request's
// outputs; they never touch the model or the KV cache (DESIGN.md §1).
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/engine/engine.h"
#include "runtime/tokenizer/tokenizer.h"
#include "server/metrics.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::server {

struct ServiceOptions {
  std::string model_path;  // reported by GetModelInfo
  std::string model_name;  // the name requests use and metrics label the model with
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

  // Until this is called every call answers UNAVAILABLE ("loading"). Both must outlive the
  // service's calls; `tokenizer` may be null (a model without tokenizer.json: token ids only).
  void SetEngine(engine::Engine* engine, const tokenizer::Tokenizer* tokenizer);
  // From now on new calls answer UNAVAILABLE; calls in flight go on.
  void StartDraining();
  bool draining() const { return draining_.load(); }
  ServerMetrics* metrics() const { return options_.metrics; }
  const std::string& model_name() const { return options_.model_name; }
  // Generate and Score calls not yet finished.
  int32_t num_in_flight() const { return in_flight_.load(); }

  // The checks every call passes before it does anything: auth, then loading / draining.
  absl::Status Admit(const grpc::CallbackServerContext& context) const;

  engine::Engine& engine() const { return *engine_.load(); }
  const tokenizer::Tokenizer* tokenizer() const { return tokenizer_; }
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
  const ServiceOptions options_;
  const std::chrono::steady_clock::time_point start_time_;
  std::atomic<engine::Engine*> engine_{nullptr};
  const tokenizer::Tokenizer* tokenizer_ = nullptr;
  std::atomic<bool> draining_{false};
  std::atomic<int32_t> in_flight_{0};
};

}  // namespace spanserve::server
