#include "server/calls.h"

#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "server/convert.h"
#include "server/grpc_status.h"

namespace spanserve::server {
namespace {

// A request the engine cancelled while the server drains (its grace period is over) ends
// UNAVAILABLE, so the client knows to retry elsewhere.
absl::Status EndStatus(const engine::FinalInfo& final, const SpanServeService& service) {
  if (final.reason == engine::FinishReason::kCancelled && service.draining()) {
    return absl::UnavailableError(
        "the server shut down before the request finished; retry on another replica");
  }
  return FinishStatus(final);
}

// One structured (JSON) line per finished request on stderr, for log shippers; also feeds
// the metrics.
void LogRequestFinished(const SpanServeService& service, const ServedModel& model,
                        absl::string_view rpc, const engine::FinalInfo& final, engine::RequestId id,
                        absl::string_view client_request_id, const absl::Status& status) {
  if (service.metrics() != nullptr) service.metrics()->RecordFinished(model.name(), final);
  const std::string line = absl::StrFormat(
      "{\"event\":\"request_finished\",\"rpc\":\"%s\",\"model\":\"%s\",\"id\":%d,"
      "\"client_request_id\":\"%s\","
      "\"prompt_tokens\":%d,\"generated_tokens\":%d,\"cached_prompt_tokens\":%d,"
      "\"queue_s\":%.6f,\"ttft_s\":%.6f,\"e2e_s\":%.6f,\"finish_reason\":\"%s\","
      "\"status\":\"%s\"}\n",
      rpc, absl::CEscape(model.name()), service.PublicRequestId(model, id),
      absl::CEscape(client_request_id), final.prompt_tokens, final.generated_tokens,
      final.cached_prompt_tokens, final.timings.queue_s, final.timings.ttft_s, final.timings.e2e_s,
      std::string(engine::FinishReasonName(final.reason)), absl::StatusCodeToString(status.code()));
  std::fputs(line.c_str(), stderr);
}

// Runs tasks on one thread of its own. The engine thread hands writes to it rather than
// starting them itself: gRPC may do transport work inline in StartWrite, and time the
// engine thread spends there is added to every request's step.
class Relay {
 public:
  static Relay& Get() {
    static Relay* relay = new Relay();  // lives as long as the process: calls may outlive main
    return *relay;
  }
  void Post(std::function<void()> task) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      tasks_.push_back(std::move(task));
    }
    cv_.notify_one();
  }

 private:
  Relay() {
    std::thread([this] {
      std::vector<std::function<void()>> batch;
      for (;;) {
        {
          std::unique_lock<std::mutex> lock(mu_);
          cv_.wait(lock, [this] { return !tasks_.empty(); });
          batch.swap(tasks_);
        }
        for (auto& task : batch) task();
        batch.clear();
      }
    }).detach();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::function<void()>> tasks_;
};

class GenerateCall final : public grpc::ServerWriteReactor<v1::GenerateChunk> {
 public:
  GenerateCall(SpanServeService* service, grpc::CallbackServerContext* context,
               const v1::GenerateRequest& proto)
      : service_(service), client_request_id_(proto.client_request_id()) {
    service_->CallStarted();
    absl::StatusOr<engine::Request> request = BuildRequest(*context, proto);
    if (!request.ok()) {
      FinishEarly(request.status());
      return;
    }
    request->on_output = [this](engine::RequestOutput&& out) { OnOutput(std::move(out)); };
    // The engine holds a reference from Submit until it delivers the final output, which
    // may happen on the engine thread before Submit even returns.
    refs_.fetch_add(1);
    absl::StatusOr<engine::RequestHandle> handle = model_->engine().Submit(*std::move(request));
    if (!handle.ok()) {
      refs_.fetch_sub(1);
      FinishEarly(handle.status());
      return;
    }
    std::lock_guard<std::mutex> lock(mu_);
    stream_ = handle->stream;
  }

 private:
  absl::StatusOr<engine::Request> BuildRequest(const grpc::CallbackServerContext& context,
                                               const v1::GenerateRequest& proto) {
    if (absl::Status s = service_->Admit(context); !s.ok()) return s;
    ASSIGN_OR_RETURN(model_, service_->ReadyModel(proto.model()));
    const engine::EngineInfo& info = model_->engine().info();
    engine::Request request;
    absl::StatusOr<std::vector<int32_t>> ids = PromptIds(proto.prompt(), "prompt", *model_);
    if (!ids.ok()) return ids.status();
    request.prompt = *std::move(ids);
    if (absl::Status s = CheckPromptLength(request.prompt.size(), info.max_model_len, "prompt");
        !s.ok()) {
      return s;
    }
    absl::StatusOr<engine::SamplingParams> sampling =
        ToSamplingParams(proto.sampling(), info.vocab_size);
    if (!sampling.ok()) return sampling.status();
    request.sampling = *std::move(sampling);
    AddChatStop(proto.prompt(), *model_, &request.sampling);
    request.priority = proto.priority();
    request.deadline = EngineDeadline(context);
    return request;
  }

  // Rejected before reaching the engine: nothing was streamed, the status says why.
  void FinishEarly(const absl::Status& status) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      finish_called_ = true;
    }
    Finish(ToGrpcStatus(status));
  }

  // Engine thread: coalesce the output into the pending chunk, so a slow client gets fewer,
  // larger chunks instead of an unbounded queue, and have the relay send it.
  void OnOutput(engine::RequestOutput&& out) {
    const bool is_final = out.final.has_value();
    bool schedule = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      // A write in flight pumps again when done; a scheduled pump will see this output.
      schedule = !writing_ && !pump_scheduled_ && !finish_called_;
      if (schedule) {
        pump_scheduled_ = true;
        refs_.fetch_add(1);  // the relay's, until its pump has run
      }
      if (!pending_) pending_.emplace();
      AppendOutput(out, model_->tokenizer(), &*pending_);
      pending_->set_request_id(service_->PublicRequestId(*model_, out.id));
      if (is_final) {
        final_status_ = EndStatus(*out.final, *service_);
        if (final_status_->ok()) ToFinalInfo(*out.final, pending_->mutable_final());
        LogRequestFinished(*service_, *model_, "Generate", *out.final, out.id, client_request_id_,
                           client_gone_ ? absl::CancelledError() : *final_status_);
      }
    }
    if (schedule) {
      Relay::Get().Post([this] {
        {
          std::lock_guard<std::mutex> lock(mu_);
          pump_scheduled_ = false;
        }
        Pump();
        Unref();
      });
    }
    if (is_final) Unref();
  }

  // Starts the next write or the Finish, whichever is due; at most one write in flight.
  void Pump() {
    std::unique_lock<std::mutex> lock(mu_);
    // Writing, or done: OnWriteDone pumps again / nothing more may be sent.
    if (writing_ || finish_called_) return;
    // Client gone (cancelled, deadline, broken write): end now; the engine frees the
    // request's KV blocks at its next step.
    if (client_gone_) {
      finish_called_ = true;
      lock.unlock();
      Finish(ToGrpcStatus(absl::CancelledError("the client cancelled the call")));
      return;
    }
    // Output waiting: send it.
    if (pending_) {
      writing_ = true;
      current_ = *std::move(pending_);
      pending_.reset();
      lock.unlock();
      StartWrite(&current_);
      return;
    }
    // Everything sent and the engine is done: end with the request's status.
    if (final_status_) {
      finish_called_ = true;
      const absl::Status status = *final_status_;
      lock.unlock();
      Finish(ToGrpcStatus(status));
    }
    // Otherwise idle: the engine's next output pumps again.
  }

  void OnWriteDone(bool ok) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      writing_ = false;
      if (!ok) client_gone_ = true;
    }
    Pump();
  }

  void OnCancel() override {
    std::shared_ptr<engine::RequestStream> stream;
    {
      std::lock_guard<std::mutex> lock(mu_);
      client_gone_ = true;
      stream = stream_;
    }
    if (stream) stream->Cancel();
    Pump();
  }

  void OnDone() override {
    service_->CallFinished();
    Unref();
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  SpanServeService* const service_;
  ServedModel* model_ = nullptr;  // set once the request names a ready model
  const std::string client_request_id_;
  // gRPC's reference (released in OnDone), plus the engine's while it holds the request.
  std::atomic<int> refs_{1};

  std::mutex mu_;
  std::shared_ptr<engine::RequestStream> stream_;
  std::optional<v1::GenerateChunk> pending_;  // outputs not yet handed to gRPC
  v1::GenerateChunk current_;                 // the chunk being written
  std::optional<absl::Status> final_status_;  // set once the engine delivered the final output
  bool writing_ = false;
  bool pump_scheduled_ = false;  // a relay task will call Pump
  bool client_gone_ = false;
  bool finish_called_ = false;
};

class ScoreCall final : public grpc::ServerUnaryReactor {
 public:
  ScoreCall(SpanServeService* service, grpc::CallbackServerContext* context,
            const v1::ScoreRequest& proto, v1::ScoreResponse* response)
      : service_(service), response_(response) {
    service_->CallStarted();
    absl::StatusOr<std::vector<engine::Request>> requests = BuildRequests(*context, proto);
    if (!requests.ok()) {
      finish_called_ = true;
      Finish(ToGrpcStatus(requests.status()));
      return;
    }
    const size_t n = requests->size();
    results_.resize(n);
    streams_.resize(n);
    std::unique_lock<std::mutex> lock(mu_);
    remaining_ = static_cast<int>(n);
    lock.unlock();
    for (size_t i = 0; i < n; ++i) {
      engine::Request& r = (*requests)[i];
      r.on_output = [this, i](engine::RequestOutput&& out) { OnOutput(i, std::move(out)); };
      refs_.fetch_add(1);
      absl::StatusOr<engine::RequestHandle> handle = model_->engine().Submit(std::move(r));
      lock.lock();
      if (!handle.ok()) {
        refs_.fetch_sub(1);
        // The rest would be answered in vain: cancel what went in and skip what did not.
        if (error_.ok()) error_ = handle.status();
        remaining_ -= static_cast<int>(n - i);
        for (auto& s : streams_) {
          if (s) s->Cancel();
        }
        lock.unlock();
        break;
      }
      streams_[i] = handle->stream;
      if (client_gone_) handle->stream->Cancel();
      lock.unlock();
    }
    lock.lock();
    submitting_ = false;
    lock.unlock();
    MaybeFinish();
  }

 private:
  struct Result {
    std::vector<engine::PositionLogprobs> prompt_logprobs;
  };

  absl::StatusOr<std::vector<engine::Request>> BuildRequests(
      const grpc::CallbackServerContext& context, const v1::ScoreRequest& proto) {
    if (absl::Status s = service_->Admit(context); !s.ok()) return s;
    ASSIGN_OR_RETURN(model_, service_->ReadyModel(proto.model()));
    const tokenizer::Tokenizer* tok = model_->tokenizer();
    if (proto.continuations().empty()) {
      return absl::InvalidArgumentError("continuations: must hold at least one continuation");
    }
    std::vector<int32_t> context_ids;
    const bool empty_text_context =
        proto.context().input_case() == v1::Prompt::kText && proto.context().text().empty();
    if (empty_text_context && tok != nullptr && tok->bos_id()) {
      // lm-eval scores unconditional continuations after the BOS token.
      context_ids = {*tok->bos_id()};
    } else {
      absl::StatusOr<std::vector<int32_t>> ids = PromptIds(proto.context(), "context", *model_);
      if (!ids.ok()) return ids.status();
      context_ids = *std::move(ids);
    }
    context_tokens_ = static_cast<int32_t>(context_ids.size());
    std::vector<engine::Request> requests;
    for (int i = 0; i < proto.continuations().size(); ++i) {
      v1::Prompt cont = proto.continuations(i);
      // Continuations are tokenized on their own, without BOS/EOS.
      if (cont.input_case() == v1::Prompt::kText && !cont.has_add_special_tokens()) {
        cont.set_add_special_tokens(false);
      }
      const std::string field = absl::StrCat("continuations[", i, "]");
      if (cont.input_case() == v1::Prompt::kChat) {
        return absl::InvalidArgumentError(
            absl::StrCat(field, ": must be text or token_ids (chat is for the context only)"));
      }
      absl::StatusOr<std::vector<int32_t>> ids = PromptIds(cont, field, *model_);
      if (!ids.ok()) return ids.status();
      engine::Request r;
      r.prompt = context_ids;
      r.prompt.insert(r.prompt.end(), ids->begin(), ids->end());
      if (absl::Status s = CheckPromptLength(r.prompt.size(), model_->engine().info().max_model_len,
                                             absl::StrCat("context + ", field));
          !s.ok()) {
        return s;
      }
      r.sampling.temperature = 0.0f;
      r.sampling.max_tokens = 1;
      r.sampling.detokenize = false;
      r.sampling.prompt_logprobs = 1;  // the argmax alternative decides is_greedy
      r.deadline = EngineDeadline(context);
      requests.push_back(std::move(r));
    }
    return requests;
  }

  // Engine thread: collect the prompt logprobs; the last final output finishes the call.
  void OnOutput(size_t i, engine::RequestOutput&& out) {
    const bool is_final = out.final.has_value();
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto& lps = results_[i].prompt_logprobs;
      lps.insert(lps.end(), std::make_move_iterator(out.prompt_logprobs.begin()),
                 std::make_move_iterator(out.prompt_logprobs.end()));
      if (is_final) {
        --remaining_;
        const absl::Status s = EndStatus(*out.final, *service_);
        if (!s.ok() && error_.ok()) error_ = s;
        LogRequestFinished(*service_, *model_, "Score", *out.final, out.id, "", s);
      }
    }
    if (is_final) {
      MaybeFinish();
      Unref();
    }
  }

  void MaybeFinish() {
    std::unique_lock<std::mutex> lock(mu_);
    // Still submitting or waiting for outputs, or already answered.
    if (submitting_ || remaining_ > 0 || finish_called_) return;
    finish_called_ = true;
    absl::Status status = client_gone_ ? absl::CancelledError("the client cancelled") : error_;
    if (status.ok()) status = FillResponse();
    lock.unlock();
    Finish(ToGrpcStatus(status));
  }

  absl::Status FillResponse() {
    response_->set_context_tokens(context_tokens_);
    for (size_t i = 0; i < results_.size(); ++i) {
      const auto& lps = results_[i].prompt_logprobs;
      v1::ContinuationScore* score = response_->add_scores();
      // prompt_logprobs[j] is prompt position j + 1: the continuation starts at the context
      // length, so its logprobs start at index context_tokens_ - 1.
      const size_t first = static_cast<size_t>(context_tokens_ - 1);
      if (lps.size() < first + 1) {
        return absl::InternalError(absl::StrCat("continuations[", i, "]: the engine returned ",
                                                lps.size(), " prompt logprobs"));
      }
      double sum = 0;
      bool greedy = true;
      for (size_t j = first; j < lps.size(); ++j) {
        sum += lps[j].logprob;
        score->add_token_logprobs(lps[j].logprob);
        if (!lps[j].top.empty() && lps[j].top[0].token != lps[j].token &&
            lps[j].top[0].logprob > lps[j].logprob) {
          greedy = false;
        }
      }
      score->set_logprob(sum);
      score->set_is_greedy(greedy);
      score->set_num_tokens(static_cast<int32_t>(lps.size() - first));
    }
    return absl::OkStatus();
  }

  void OnCancel() override {
    std::lock_guard<std::mutex> lock(mu_);
    client_gone_ = true;
    for (auto& s : streams_) {
      if (s) s->Cancel();
    }
  }

  void OnDone() override {
    service_->CallFinished();
    Unref();
  }

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  SpanServeService* const service_;
  ServedModel* model_ = nullptr;  // set once the request names a ready model
  v1::ScoreResponse* const response_;
  std::atomic<int> refs_{1};
  int32_t context_tokens_ = 0;

  std::mutex mu_;
  std::vector<Result> results_;
  std::vector<std::shared_ptr<engine::RequestStream>> streams_;
  int remaining_ = 0;  // engine requests not yet finished
  bool submitting_ = true;
  bool client_gone_ = false;
  bool finish_called_ = false;
  absl::Status error_;
};

}  // namespace

grpc::ServerWriteReactor<v1::GenerateChunk>* StartGenerateCall(SpanServeService* service,
                                                               grpc::CallbackServerContext* context,
                                                               const v1::GenerateRequest& request) {
  return new GenerateCall(service, context, request);
}

grpc::ServerUnaryReactor* StartScoreCall(SpanServeService* service,
                                         grpc::CallbackServerContext* context,
                                         const v1::ScoreRequest& request,
                                         v1::ScoreResponse* response) {
  return new ScoreCall(service, context, request, response);
}

}  // namespace spanserve::server
