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
#include <mutex>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "runtime/engine/engine.h"
#include "server/metrics.h"
#include "server/served_model.h"
#include "server/work_pool.h"
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
  // The largest message received or sent (--max_message_bytes): Tokenize takes at most
  // max_message_bytes / kTokenizeAnswerBytesPerByte bytes of text, so its answer fits.
  int64_t max_message_bytes = 16 << 20;
  // A call whose metadata (keys + values + 32 bytes an entry, as HTTP/2 counts it) is
  // larger answers RESOURCE_EXHAUSTED, alone (--max_metadata_bytes).
  int64_t max_metadata_bytes = 8 << 10;
  // Optional; must outlive the service.
  ServerMetrics* metrics = nullptr;
};

// A Tokenize answer (ids and token strings) is at most this many bytes per byte of text:
// <= 1 token a byte, <= 5 bytes of varint id and 3 of string framing a token, and token
// strings <= 3 bytes a text byte (byte-level BPE maps a byte to <= 2, SentencePiece a
// space to 3).
inline constexpr int64_t kTokenizeAnswerBytesPerByte = 12;
// Detokenize takes at most max_message_bytes / this many ids (a token's text is rarely over
// 16 bytes; the answer's size is checked too).
inline constexpr int64_t kDetokenizeAnswerBytesPerId = 32;
// Texts longer than this are tokenized on the service's work pool, not on gRPC's threads.
inline constexpr int64_t kInlineTokenizeBytes = 64 << 10;

class SpanServeService final : public v1::SpanServe::CallbackService {
 public:
  explicit SpanServeService(ServiceOptions options);
  ~SpanServeService() override;

  // The served models in the order given; the loading thread calls SetReady / SetFailed
  // on them. Each starts kLoading: calls naming it answer UNAVAILABLE until it is ready.
  const std::vector<std::unique_ptr<ServedModel>>& models() const { return models_; }
  // From now on new calls answer UNAVAILABLE; calls in flight go on.
  void StartDraining();
  // Stops every ready model's engine (what is still in flight ends CANCELLED).
  void ShutdownEngines();
  bool draining() const { return draining_.load(); }
  const ServiceOptions& options() const { return options_; }
  ServerMetrics* metrics() const { return options_.metrics; }
  // Generate and Score calls not yet finished.
  int32_t num_in_flight() const { return in_flight_.load(); }

  // The checks every call passes before it does anything: the size of its metadata, auth,
  // then draining. gRPC calls pass their context; the HTTP front its headers' value of
  // `authorization` (null when absent) and their size.
  absl::Status Admit(const grpc::CallbackServerContext& context) const;
  absl::Status Admit(const std::string* authorization, int64_t metadata_bytes) const;
  // The model a request names (empty: the default). NOT_FOUND naming it and listing the
  // served names when unknown; nullptr-free: the pointer lives as long as the service.
  absl::StatusOr<ServedModel*> FindModel(absl::string_view name) const;
  // FindModel, then the model must be ready (see ServedModel::CheckReady).
  absl::StatusOr<ServedModel*> ReadyModel(absl::string_view name) const;

  // The request ids clients see (GenerateChunk.request_id, Abort) are drawn at random from
  // the kernel's CSPRNG, never 0, unique among the live ones: holding the shared token does
  // not let one client guess another's request and abort it. Engine ids stay internal.
  uint64_t NewPublicRequestId();
  // Abort finds the request under `public_id` from Register until Unregister.
  void RegisterRequest(uint64_t public_id, ServedModel* model, engine::RequestId engine_id);
  void UnregisterRequest(uint64_t public_id);
  // A call in flight holds one count, so draining knows when the server is idle.
  void CallStarted() { in_flight_.fetch_add(1); }
  void CallFinished() { in_flight_.fetch_sub(1); }

  // Tokenize and Detokenize, whichever front calls them: the checks (tokenizer present,
  // input within the bounds that keep the answer under --max_message_bytes) and the work.
  absl::Status CheckTokenize(const v1::TokenizeRequest& request, const ServedModel& model) const;
  absl::Status DoTokenize(const v1::TokenizeRequest& request, const ServedModel& model,
                          v1::TokenizeResponse* response) const;
  absl::Status DoDetokenize(const v1::DetokenizeRequest& request, const ServedModel& model,
                            v1::DetokenizeResponse* response) const;
  // GetModelInfo's answer for one model.
  void FillModelInfo(const ServedModel& model, v1::ModelInfo* response) const;

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
  // Has gRPC hand each method its request as bytes, parsed by ParseRequest.
  void ParseRequestsOurselves();

  const ServiceOptions options_;
  std::vector<std::unique_ptr<ServedModel>> models_;
  std::atomic<bool> draining_{false};
  std::atomic<int32_t> in_flight_{0};

  struct LiveRequest {
    ServedModel* model = nullptr;
    engine::RequestId engine_id = 0;
  };
  std::unique_ptr<WorkPool> work_pool_;  // long tokenization
  mutable std::mutex ids_mu_;
  absl::flat_hash_map<uint64_t, LiveRequest> live_ids_;  // guarded by ids_mu_
};

}  // namespace spanserve::server
