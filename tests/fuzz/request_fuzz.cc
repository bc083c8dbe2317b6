// Fuzzes request validation, as the gRPC handlers do it (server/calls.cc), on a serialized
// spanserve.v1.GenerateRequest or ScoreRequest: proto parsing, then the server's
// conversion (ToEngineRequest: PromptIds, text / token ids / chat through the model's chat
// template; CheckPromptLength; ToSamplingParams with engine::ValidateSamplingParams, bad_words
// tokenized, truncate_prompt_tokens; AddChatStop;
// Score's ScoreTokenIds, lm-evaluation-harness's pair encoding),
// then the engine's own check of the resulting request (EngineCore::ValidateRequest, what
// Engine::Submit runs). Whatever the server accepts, the engine must accept too.
//
// The bundled model is loaded once, twice served: with the ChatML and with the Llama-3 chat
// template (served_world.h); nothing is ever generated.
//
// Input: byte 0: bit 0 picks the message (0 GenerateRequest, 1 ScoreRequest), bit 1 the
// chat template (0 ChatML, 1 Llama-3); the rest is the serialized message.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/engine/engine_core.h"
#include "served_world.h"
#include "server/convert.h"
#include "server/served_model.h"
#include "spanserve/v1/spanserve.pb.h"

namespace {

namespace engine = spanserve::engine;
namespace server = spanserve::server;
namespace v1 = spanserve::v1;

using spanserve::fuzz::CheckEngineAccepts;
using spanserve::fuzz::MakeWorld;
using spanserve::fuzz::World;

void FuzzGenerate(const World& w, const server::ServedModel& model, std::string_view bytes) {
  v1::GenerateRequest proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  // gRPC's Generate path: the prompt's ids, its length, the sampling (bad_words tokenized,
  // truncate_prompt_tokens applied), the chat stop.
  absl::StatusOr<engine::Request> request = server::ToEngineRequest(proto, model);
  if (!request.ok()) {
    SPANSERVE_CHECK(request.status().code() == absl::StatusCode::kInvalidArgument);
    return;
  }
  SPANSERVE_CHECK(!request->prompt.empty());
  CheckEngineAccepts(w, *request);
}

void FuzzScore(const World& w, const server::ServedModel& model, std::string_view bytes) {
  v1::ScoreRequest proto;
  if (!proto.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  // The server refuses an empty call and more than 256 continuations before tokenizing.
  if (proto.continuations().empty() || proto.continuations().size() > 256) return;
  absl::StatusOr<server::ScoreIds> ids = server::ScoreTokenIds(proto, model);
  if (!ids.ok()) return;
  // What the server accepts: a context and a non-empty continuation for each, whose prompt
  // the engine accepts with the logprobs starting after the context.
  if (ids->continuations.size() != static_cast<size_t>(proto.continuations().size()) ||
      ids->context_of.size() != ids->continuations.size() || ids->contexts.empty() ||
      ids->contexts.size() > 2) {
    std::fprintf(stderr, "ScoreTokenIds: inconsistent shape\n");
    std::abort();
  }
  for (size_t i = 0; i < ids->continuations.size(); ++i) {
    const std::vector<int32_t>& context = ids->contexts.at(ids->context_of[i]);
    if (context.empty() || ids->continuations[i].empty()) {
      std::fprintf(stderr, "ScoreTokenIds: an empty context or continuation %zu\n", i);
      std::abort();
    }
    engine::Request r;
    r.prompt = context;
    r.prompt.insert(r.prompt.end(), ids->continuations[i].begin(), ids->continuations[i].end());
    r.sampling.temperature = 0.0f;
    r.sampling.max_tokens = 0;  // as calls.cc submits it: the prompt's logprobs only
    r.sampling.detokenize = false;
    r.sampling.prompt_logprobs = 1;
    r.sampling.prompt_logprobs_from = static_cast<int32_t>(context.size());
    CheckEngineAccepts(w, r);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const World* const world = MakeWorld();
  if (size < 1) return 0;
  const server::ServedModel& model = *world->served[(data[0] >> 1) & 1];
  const std::string_view bytes(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] & 1) {
    FuzzScore(*world, model, bytes);
  } else {
    FuzzGenerate(*world, model, bytes);
  }
  return 0;
}
