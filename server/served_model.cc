#include "server/served_model.h"

#include <utility>

#include "absl/strings/str_cat.h"

namespace spanserve::server {

absl::Status ServedModel::CheckReady() const {
  switch (state()) {
    case ModelState::kReady:
      return absl::OkStatus();
    case ModelState::kLoading:
      return absl::UnavailableError(
          absl::StrCat("model '", name_, "' is still loading; retry shortly"));
    case ModelState::kFailed:
      return absl::FailedPreconditionError(
          absl::StrCat("model '", name_, "' failed to load: ", error_.message()));
  }
  return absl::InternalError("unknown model state");
}

void ServedModel::SetReady(LoadedModel loaded) {
  loaded_ = std::move(loaded);
  ready_time_ = std::chrono::steady_clock::now();
  state_.store(ModelState::kReady, std::memory_order_release);
}

void ServedModel::SetFailed(absl::Status error) {
  error_ = std::move(error);
  state_.store(ModelState::kFailed, std::memory_order_release);
}

void ServedModel::ShutdownEngine() {
  if (state() == ModelState::kReady) loaded_.engine->Shutdown();
}

}  // namespace spanserve::server
