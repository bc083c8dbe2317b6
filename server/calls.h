// The two calls that go through the engine, each a small state machine on gRPC's callback
// API: Generate (server streaming) and Score (unary, one engine request per continuation).
#pragma once

#include <grpcpp/grpcpp.h>

#include "server/service.h"
#include "spanserve/v1/spanserve.grpc.pb.h"

namespace spanserve::server {

// The reactor owns itself: it is deleted once gRPC is done with the call and the engine
// has delivered the request's final output, whichever comes last.
grpc::ServerWriteReactor<v1::GenerateChunk>* StartGenerateCall(SpanServeService* service,
                                                               grpc::CallbackServerContext* context,
                                                               const v1::GenerateRequest& request);
// One structured (JSON) line per finished engine request on stderr, for log shippers; also
// feeds the metrics. `rpc` names the call ("Generate", "Score", "OpenAI.Completions", ...).
// Client strings are JSON-escaped and bounded (common/text.h).
void LogRequestFinished(const SpanServeService& service, const ServedModel& model,
                        absl::string_view rpc, const engine::FinalInfo& final, uint64_t public_id,
                        absl::string_view client_request_id, const absl::Status& status);

grpc::ServerUnaryReactor* StartScoreCall(SpanServeService* service,
                                         grpc::CallbackServerContext* context,
                                         const v1::ScoreRequest& request,
                                         v1::ScoreResponse* response);

}  // namespace spanserve::server
