// What a client hands the engine (Request) and what comes back (RequestOutput), and the
// per-request output channel (RequestStream) that carries the outputs from the engine
// thread to whichever thread consumes them.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "runtime/engine/sampling_params.h"

namespace spanserve::engine {

using Clock = std::chrono::steady_clock;
// Assigned by the engine at submit, unique for the engine's lifetime, never 0.
using RequestId = uint64_t;

struct RequestOutput;
// Called on the engine thread with each output of a request, instead of queueing it on
// the stream. Must return quickly and must not call back into the engine's Submit.
using OutputCallback = std::function<void(RequestOutput&&)>;

struct Request {
  std::vector<int32_t> prompt;  // token ids; non-empty, shorter than the context
  SamplingParams sampling;
  // Lower is more important (as vLLM); equal priorities are served first come first served.
  // A waiting request's effective priority improves with its waiting time
  // (EngineOptions::priority_aging), so nothing starves.
  int32_t priority = 0;
  // Past this instant the request finishes with kDeadline at the next step.
  std::optional<Clock::time_point> deadline;
  // Optional: deliver outputs through this callback rather than RequestStream::Next.
  OutputCallback on_output;
};

// Exactly one per request, in its last output.
enum class FinishReason {
  kStop,       // EOS, a stop token id or a stop string
  kLength,     // max_tokens generated, or the context is full
  kCancelled,  // Abort, RequestStream::Cancel, or engine shutdown
  kDeadline,   // Request::deadline passed
  kError,      // the model failed; FinalInfo::error says why
};
// "stop", "length", "cancelled", "deadline", "error" (the metrics label).
std::string_view FinishReasonName(FinishReason reason);

struct TokenLogprob {
  int32_t token = 0;
  float logprob = 0.0f;
};

// One position: the token there and its logprob, and the n most likely alternatives
// (most likely first; may include the token itself).
struct PositionLogprobs {
  int32_t token = 0;
  float logprob = 0.0f;
  // The token's rank by logprob, from 1 (the most likely): 1 + the tokens strictly likelier.
  int32_t rank = 1;
  std::vector<TokenLogprob> top;
};

// Seconds, measured on Clock. Zero where the phase did not happen.
struct RequestTimings {
  double queue_s = 0;    // submit → first scheduled
  double ttft_s = 0;     // submit → first generated token
  double prefill_s = 0;  // first scheduled → first generated token
  double decode_s = 0;   // first generated token → finish
  double e2e_s = 0;      // submit → finish
};

struct FinalInfo {
  FinishReason reason = FinishReason::kStop;
  absl::Status error;  // OK unless reason is kError
  // The stop token id or stop string that ended the request (kStop), else unset.
  std::optional<int32_t> stop_token;
  std::optional<std::string> stop_string;
  int32_t prompt_tokens = 0;
  int32_t generated_tokens = 0;
  int32_t cached_prompt_tokens = 0;  // prompt tokens served from the prefix cache
  int32_t num_preemptions = 0;
  RequestTimings timings;
};

// One delta of a request's output. Outputs arrive in order; the last has `final`.
struct RequestOutput {
  RequestId id = 0;
  std::vector<int32_t> token_ids;          // tokens generated since the last output
  std::string text;                        // their text (if detokenized); may lag tokens
                                           // while it could still be part of a stop string
  std::vector<PositionLogprobs> logprobs;  // one per token in token_ids, if requested
  // Prompt positions sampling.prompt_logprobs_from (default 1) .. n-1, first output only.
  std::vector<PositionLogprobs> prompt_logprobs;
  std::optional<FinalInfo> final;
};

// The consumer's end of a request's outputs. Thread-safe: the engine pushes, any one
// thread pops; Cancel may be called from any thread. Shared between the engine and the
// holder, so either may outlive the other.
class RequestStream {
 public:
  explicit RequestStream(RequestId id) : id_(id) {}
  RequestStream(const RequestStream&) = delete;
  RequestStream& operator=(const RequestStream&) = delete;

  RequestId id() const { return id_; }

  // Blocks until the next output; false (and *out untouched) once the final output was
  // returned. Outputs queued since the last call come one at a time, in order.
  bool Next(RequestOutput* out);
  // As Next, but gives up after `timeout`: nullopt on timeout or after the final output.
  std::optional<RequestOutput> NextFor(std::chrono::milliseconds timeout);
  // Non-blocking: the next queued output, if any.
  std::optional<RequestOutput> TryNext();
  // Whether the final output has been pushed (it may not have been popped yet).
  bool finished() const;

  // Asks the engine to finish the request with kCancelled at its next step.
  void Cancel() { cancel_requested_.store(true, std::memory_order_relaxed); }
  bool cancel_requested() const { return cancel_requested_.load(std::memory_order_relaxed); }

  // Engine side: queue an output (or hand it to `callback` when set) and wake a waiter.
  void Push(RequestOutput&& output, const OutputCallback& callback);

 private:
  const RequestId id_;
  std::atomic<bool> cancel_requested_{false};
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::deque<RequestOutput> queue_;
  bool final_pushed_ = false;
  bool final_popped_ = false;
};

}  // namespace spanserve::engine
