// Held-out perplexity, defined exactly as tools/train/eval_perplexity.py: the ids are cut
// into consecutive non-overlapping windows of `window` tokens (a last partial window counts
// if it has two tokens or more); each window is scored on its own from position 0.
#pragma once

#include <cstdint>
#include <span>

#include "absl/status/statusor.h"
#include "runtime/model/model.h"

namespace spanserve::model {

struct PerplexityResult {
  int64_t tokens_scored = 0;  // Σ (window length − 1)
  double nll_sum = 0;         // natural log
  double perplexity = 0;      // exp(nll_sum / tokens_scored)
};

// Scores `ids` with `model`, several windows per forward step.
[[nodiscard]] absl::StatusOr<PerplexityResult> ScorePerplexity(Model& model,
                                                               std::span<const int32_t> ids,
                                                               int window);

}  // namespace spanserve::model
