#include "runtime/model/perplexity.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace spanserve::model {

absl::StatusOr<PerplexityResult> ScorePerplexity(Model& model, std::span<const int32_t> ids,
                                                 int window) {
  const ModelConfig& c = model.config();
  if (window < 2 || window > c.MaxPositions()) {
    return absl::InvalidArgumentError(
        absl::StrCat("window must be in [2, ", c.MaxPositions(), "], got ", window));
  }
  std::vector<std::span<const int32_t>> windows;
  for (size_t b = 0; b < ids.size(); b += window) {
    const size_t n = std::min<size_t>(window, ids.size() - b);
    if (n >= 2) windows.push_back(ids.subspan(b, n));
  }
  constexpr int32_t kBlock = 16;
  constexpr int kWindowsPerStep = 8;
  const int32_t blocks_per_window = (window + kBlock - 1) / kBlock;
  ASSIGN_OR_RETURN(
      auto cache, KvCache::Create(model.backend(), c, kBlock, blocks_per_window * kWindowsPerStep));
  std::vector<std::vector<int32_t>> tables(kWindowsPerStep);
  for (int w = 0; w < kWindowsPerStep; ++w) {
    for (int32_t b = 0; b < blocks_per_window; ++b) tables[w].push_back(w * blocks_per_window + b);
  }
  ForwardWorkspace ws(model.backend());
  std::vector<float> logits(static_cast<size_t>(kWindowsPerStep) * window * c.vocab_size);
  PerplexityResult r;
  std::vector<SequenceInput> batch;
  for (size_t first = 0; first < windows.size(); first += kWindowsPerStep) {
    batch.clear();
    for (size_t w = first; w < std::min(windows.size(), first + kWindowsPerStep); ++w) {
      batch.push_back({windows[w], 0, tables[w - first], LogitsMode::kAll});
    }
    RETURN_IF_ERROR(model.Forward(batch, *cache, ws, logits.data()));
    const float* row = logits.data();
    for (const SequenceInput& s : batch) {
      for (size_t j = 0; j < s.tokens.size(); ++j, row += c.vocab_size) {
        if (j + 1 == s.tokens.size()) continue;
        // log-softmax in f32 as the reference, summed in f64.
        float max = row[0];
        for (int v = 1; v < c.vocab_size; ++v) max = std::max(max, row[v]);
        double sum = 0;
        for (int v = 0; v < c.vocab_size; ++v) sum += std::exp(static_cast<double>(row[v] - max));
        r.nll_sum += max + std::log(sum) - row[s.tokens[j + 1]];
        ++r.tokens_scored;
      }
    }
  }
  r.perplexity = std::exp(r.nll_sum / std::max<int64_t>(r.tokens_scored, 1));
  return r;
}

}  // namespace spanserve::model
