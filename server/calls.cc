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
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "common/text.h"
#include "server/convert.h"
#include "server/grpc_status.h"

namespace spanserve::server {
namespace {

// The most continuations one Score call may carry (lm-evaluation-harness sends a handful
// per context); each is one engine request.
constexpr int kMaxScoreContinuations = 256;

// A request the engine cancelled while the server drains (its grace period is over) ends
// UNAVAILABLE, so the client knows to retry elsewhere.
absl::Status EndStatus(const engine::FinalInfo& final, const SpanServeService& service) {
  if (final.reason == engine::FinishReason::kCancelled && service.draining()) {
    return absl::UnavailableError(
        "the server shut down before the request finished; retry on another replica");
  }
  return FinishStatus(final);
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
      : service_(service),
        client_request_id_(proto.client_request_id()),
        public_id_(service->NewPublicRequestId()) {
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
    // Abort finds it from now until its final output, unless that came already.
    if (!final_seen_) {
      service_->RegisterRequest(public_id_, model_, handle->id);
      registered_ = true;
    }
  }

 private:
  absl::StatusOr<engine::Request> BuildRequest(const grpc::CallbackServerContext& context,
                                               const v1::GenerateRequest& proto) {
    if (absl::Status s = service_->Admit(context); !s.ok()) return s;
    ASSIGN_OR_RETURN(model_, service_->ReadyModel(proto.model()));
    ASSIGN_OR_RETURN(engine::Request request, ToEngineRequest(proto, *model_));
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
      pending_->set_request_id(public_id_);
      if (is_final) {
        // The id leaves Abort's map before the client can see the end (the engine dropped
        // it from its own live set before this output).
        final_seen_ = true;
        if (registered_) service_->UnregisterRequest(public_id_);
        final_status_ = EndStatus(*out.final, *service_);
        if (final_status_->ok()) ToFinalInfo(*out.final, pending_->mutable_final());
        LogRequestFinished(*service_, *model_, "Generate", *out.final, public_id_,
                           client_request_id_,
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
  const uint64_t public_id_;  // what the client sees as request_id
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
  bool final_seen_ = false;  // the engine delivered the final output
  bool registered_ = false;  // public_id_ is in the service's map
};

class ScoreCall final : public grpc::ServerUnaryReactor {
 public:
  ScoreCall(SpanServeService* service, grpc::CallbackServerContext* context,
            const v1::ScoreRequest& proto, v1::ScoreResponse* response)
      : service_(service), response_(response), public_id_(service->NewPublicRequestId()) {
    service_->CallStarted();
    // Everything is checked and tokenized before any engine request is built: a refused
    // call costs no more memory than its own message.
    if (absl::Status s = Prepare(*context, proto); !s.ok()) {
      finish_called_ = true;
      Finish(ToGrpcStatus(s));
      return;
    }
    const size_t n = continuations_.size();
    results_.resize(n);
    streams_.resize(n);
    std::unique_lock<std::mutex> lock(mu_);
    remaining_ = static_cast<int>(n);
    lock.unlock();
    const std::optional<Clock::time_point> deadline = EngineDeadline(*context);
    for (size_t i = 0; i < n; ++i) {
      // One request per continuation, built just before it is submitted. Each computes
      // only its own continuation's positions: the context's blocks come from the prefix
      // cache once the first request has computed them.
      const std::vector<int32_t>& context_ids = contexts_[context_of_[i]];
      engine::Request r;
      r.prompt.reserve(context_ids.size() + continuations_[i].size());
      r.prompt = context_ids;
      r.prompt.insert(r.prompt.end(), continuations_[i].begin(), continuations_[i].end());
      std::vector<int32_t>().swap(continuations_[i]);
      r.sampling.temperature = 0.0f;
      r.sampling.max_tokens = 0;  // the prompt's logprobs only: it may fill the context
      r.sampling.detokenize = false;
      r.sampling.prompt_logprobs = 1;  // the argmax alternative decides is_greedy
      r.sampling.prompt_logprobs_from = static_cast<int32_t>(context_ids.size());
      r.deadline = deadline;
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
    std::vector<std::vector<int32_t>>().swap(contexts_);
    lock.lock();
    submitting_ = false;
    lock.unlock();
    MaybeFinish();
  }

 private:
  using Clock = engine::Clock;
  struct Result {
    std::vector<engine::PositionLogprobs> prompt_logprobs;
  };

  absl::Status Prepare(const grpc::CallbackServerContext& context, const v1::ScoreRequest& proto) {
    RETURN_IF_ERROR(service_->Admit(context));
    ASSIGN_OR_RETURN(model_, service_->ReadyModel(proto.model()));
    const int num = proto.continuations().size();
    if (num == 0) {
      return absl::InvalidArgumentError("continuations: must hold at least one continuation");
    }
    if (num > kMaxScoreContinuations) {
      return absl::InvalidArgumentError(absl::StrCat("continuations: at most ",
                                                     kMaxScoreContinuations, " per call, got ", num,
                                                     "; split them over several calls"));
    }
    // Each continuation is one engine request: more than the waiting queue holds could
    // never be admitted, and more than it has room for now would be refused half-way.
    const int32_t max_waiting = service_->options().max_waiting_requests;
    if (num > max_waiting) {
      return absl::ResourceExhaustedError(
          absl::StrCat("continuations: ", num, " exceed the waiting queue's ", max_waiting,
                       " requests (--max_waiting_requests); split them over several calls"));
    }
    if (const int32_t waiting = model_->engine().Stats().num_waiting; waiting + num > max_waiting) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the waiting queue has room for ", std::max(0, max_waiting - waiting),
                       " of the ", num, " continuations; retry later"));
    }
    ASSIGN_OR_RETURN(ScoreIds ids, ScoreTokenIds(proto, *model_));
    contexts_ = std::move(ids.contexts);
    context_of_ = std::move(ids.context_of);
    continuations_ = std::move(ids.continuations);
    context_tokens_ = ids.context_tokens;
    return absl::OkStatus();
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
        LogRequestFinished(*service_, *model_, "Score", *out.final, public_id_, "", s);
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
      // Logprobs start at prompt_logprobs_from, the context's length: one per continuation
      // token.
      if (lps.empty()) {
        return absl::InternalError(
            absl::StrCat("continuations[", i, "]: the engine returned no prompt logprobs"));
      }
      double sum = 0;
      bool greedy = true;
      for (size_t j = 0; j < lps.size(); ++j) {
        sum += lps[j].logprob;
        score->add_token_logprobs(lps[j].logprob);
        if (!lps[j].top.empty() && lps[j].top[0].token != lps[j].token &&
            lps[j].top[0].logprob > lps[j].logprob) {
          greedy = false;
        }
      }
      score->set_logprob(sum);
      score->set_is_greedy(greedy);
      score->set_num_tokens(static_cast<int32_t>(lps.size()));
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
  const uint64_t public_id_;  // names the call's requests in the log
  std::atomic<int> refs_{1};
  int32_t context_tokens_ = 0;
  // The tokenized call (ScoreTokenIds), until submitted: continuation i is scored after
  // contexts_[context_of_[i]].
  std::vector<std::vector<int32_t>> contexts_;
  std::vector<uint8_t> context_of_;
  std::vector<std::vector<int32_t>> continuations_;

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

void LogRequestFinished(const SpanServeService& service, const ServedModel& model,
                        absl::string_view rpc, const engine::FinalInfo& final, uint64_t public_id,
                        absl::string_view client_request_id, const absl::Status& status) {
  if (service.metrics() != nullptr) service.metrics()->RecordFinished(model.name(), final);
  const std::string line = absl::StrFormat(
      "{\"event\":\"request_finished\",\"rpc\":\"%s\",\"model\":%s,\"id\":%d,"
      "\"client_request_id\":%s,"
      "\"prompt_tokens\":%d,\"generated_tokens\":%d,\"cached_prompt_tokens\":%d,"
      "\"queue_s\":%.6f,\"ttft_s\":%.6f,\"e2e_s\":%.6f,\"finish_reason\":\"%s\","
      "\"status\":\"%s\"}\n",
      rpc, JsonString(model.name()), public_id, JsonString(client_request_id), final.prompt_tokens,
      final.generated_tokens, final.cached_prompt_tokens, final.timings.queue_s,
      final.timings.ttft_s, final.timings.e2e_s,
      std::string(engine::FinishReasonName(final.reason)), absl::StatusCodeToString(status.code()));
  std::fputs(line.c_str(), stderr);
}

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
