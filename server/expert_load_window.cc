#include "server/expert_load_window.h"

#include <algorithm>
#include <cmath>

#include "common/check.h"

namespace spanserve::server {

LayerBalance ComputeLayerBalance(std::span<const int64_t> tokens_per_expert) {
  SPANSERVE_CHECK(!tokens_per_expert.empty());
  LayerBalance b;
  int64_t max = 0;
  for (int64_t v : tokens_per_expert) {
    b.tokens += v;
    max = std::max(max, v);
  }
  if (b.tokens == 0) return b;
  const double n = static_cast<double>(tokens_per_expert.size());
  const double mean = static_cast<double>(b.tokens) / n;
  double var = 0;
  for (int64_t v : tokens_per_expert) var += (v - mean) * (v - mean);
  var /= n;
  b.balancedness = mean / static_cast<double>(max);
  b.load_cv = std::sqrt(var) / mean;
  return b;
}

ExpertLoadWindow::ExpertLoadWindow(double window_s, double min_spacing_s)
    : window_s_(window_s), min_spacing_s_(min_spacing_s) {}

void ExpertLoadWindow::Add(double now_s, std::span<const int64_t> totals) {
  if (snapshots_.empty() || now_s - snapshots_.back().time_s >= min_spacing_s_) {
    snapshots_.push_back({now_s, std::vector<int64_t>(totals.begin(), totals.end())});
  }
  while (!snapshots_.empty() && snapshots_.front().time_s < now_s - window_s_) {
    snapshots_.pop_front();
  }
}

const ExpertLoadWindow::Snapshot* ExpertLoadWindow::Oldest(double now_s) const {
  for (const Snapshot& s : snapshots_) {
    if (s.time_s >= now_s - window_s_) return &s;
  }
  return nullptr;
}

void ExpertLoadWindow::Delta(double now_s, std::span<const int64_t> totals,
                             std::vector<int64_t>* out) const {
  out->assign(totals.begin(), totals.end());
  const Snapshot* oldest = Oldest(now_s);
  if (oldest == nullptr) {
    std::fill(out->begin(), out->end(), 0);
    return;
  }
  SPANSERVE_CHECK_EQ(oldest->totals.size(), totals.size());
  for (size_t i = 0; i < totals.size(); ++i) (*out)[i] -= oldest->totals[i];
}

double ExpertLoadWindow::Covered(double now_s) const {
  const Snapshot* oldest = Oldest(now_s);
  return oldest == nullptr ? 0.0 : now_s - oldest->time_s;
}

}  // namespace spanserve::server
