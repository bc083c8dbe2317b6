#include "runtime/engine/request.h"

#include <utility>

namespace spanserve::engine {

std::string_view FinishReasonName(FinishReason reason) {
  switch (reason) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kCancelled:
      return "cancelled";
    case FinishReason::kDeadline:
      return "deadline";
    case FinishReason::kError:
      return "error";
  }
  return "unknown";
}

bool RequestStream::Next(RequestOutput* out) {
  std::unique_lock lock(mu_);
  cv_.wait(lock, [&] { return !queue_.empty() || final_popped_; });
  if (queue_.empty()) return false;
  *out = std::move(queue_.front());
  queue_.pop_front();
  if (out->final.has_value()) final_popped_ = true;
  return true;
}

std::optional<RequestOutput> RequestStream::NextFor(std::chrono::milliseconds timeout) {
  std::unique_lock lock(mu_);
  if (!cv_.wait_for(lock, timeout, [&] { return !queue_.empty() || final_popped_; }) ||
      queue_.empty()) {
    return std::nullopt;
  }
  std::optional<RequestOutput> out(std::move(queue_.front()));
  queue_.pop_front();
  if (out->final.has_value()) final_popped_ = true;
  return out;
}

std::optional<RequestOutput> RequestStream::TryNext() {
  std::lock_guard lock(mu_);
  if (queue_.empty()) return std::nullopt;
  std::optional<RequestOutput> out(std::move(queue_.front()));
  queue_.pop_front();
  if (out->final.has_value()) final_popped_ = true;
  return out;
}

bool RequestStream::finished() const {
  std::lock_guard lock(mu_);
  return final_pushed_;
}

void RequestStream::Push(RequestOutput&& output, const OutputCallback& callback) {
  const bool is_final = output.final.has_value();
  if (callback) {
    callback(std::move(output));
    std::lock_guard lock(mu_);
    final_pushed_ |= is_final;
    final_popped_ |= is_final;
  } else {
    std::lock_guard lock(mu_);
    final_pushed_ |= is_final;
    queue_.push_back(std::move(output));
  }
  cv_.notify_all();
}

}  // namespace spanserve::engine
