// Expert-load arithmetic for the metrics (DESIGN.md §7), kept free of Prometheus so it can be
// tested alone: per-layer balance of tokens over experts, and a sliding window over the
// engine's cumulative per-expert totals.
//
// Thread-safety: none; the owner serialises calls.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <vector>

namespace spanserve::server {

// How evenly one MoE layer spread its tokens over its experts.
struct LayerBalance {
  int64_t tokens = 0;       // Σ over experts (each token counts once per top-k slot)
  double balancedness = 1;  // mean / max tokens per expert, in (0, 1]; 1 when no tokens
  double load_cv = 0;       // population standard deviation / mean; 0 when no tokens
};

// `tokens_per_expert`: one layer's counts (non-negative), at least one expert.
LayerBalance ComputeLayerBalance(std::span<const int64_t> tokens_per_expert);

// Timestamped snapshots of cumulative totals (any flat layout, e.g. [layer][expert]); the
// window's load is the totals now minus the oldest snapshot taken within the last
// `window_s` seconds.
class ExpertLoadWindow {
 public:
  // Keeps a snapshot at most every `min_spacing_s` seconds, so frequent callers (one per
  // scrape) do not grow the history; memory is about window_s / min_spacing_s snapshots.
  ExpertLoadWindow(double window_s, double min_spacing_s);

  // Records `totals` at time `now_s` (seconds, non-decreasing) and drops snapshots that
  // fell out of the window. Every call must pass the same number of totals.
  void Add(double now_s, std::span<const int64_t> totals);
  // `totals` (at `now_s`) minus the oldest snapshot within the window, into `out`;
  // all zeros when there is none.
  void Delta(double now_s, std::span<const int64_t> totals, std::vector<int64_t>* out) const;
  // Seconds the window actually covers at `now_s` (0 without a snapshot in it).
  double Covered(double now_s) const;
  size_t num_snapshots() const { return snapshots_.size(); }

 private:
  struct Snapshot {
    double time_s = 0;
    std::vector<int64_t> totals;
  };
  // The oldest snapshot no older than the window, or nullptr.
  const Snapshot* Oldest(double now_s) const;

  double window_s_;
  double min_spacing_s_;
  std::deque<Snapshot> snapshots_;
};

}  // namespace spanserve::server
