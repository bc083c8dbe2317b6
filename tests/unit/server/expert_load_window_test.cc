// The expert-load arithmetic behind spanserve_moe_layer_balancedness / _load_cv: balance of
// one layer, and the sliding window over cumulative totals.
#include "server/expert_load_window.h"

#include <cmath>
#include <vector>

#include "gtest/gtest.h"

namespace spanserve::server {
namespace {

TEST(LayerBalanceTest, PerfectlyBalancedIsOneWithZeroSpread) {
  const std::vector<int64_t> even = {5, 5, 5, 5};
  const LayerBalance b = ComputeLayerBalance(even);
  EXPECT_EQ(b.tokens, 20);
  EXPECT_DOUBLE_EQ(b.balancedness, 1.0);
  EXPECT_DOUBLE_EQ(b.load_cv, 0.0);
}

TEST(LayerBalanceTest, MatchesHandComputedValues) {
  // mean 2.5, max 4, population variance ((1.5² + 0.5² + 0.5² + 2.5²) / 4) = 2.25.
  const std::vector<int64_t> load = {4, 3, 3, 0};
  const LayerBalance b = ComputeLayerBalance(load);
  EXPECT_EQ(b.tokens, 10);
  EXPECT_DOUBLE_EQ(b.balancedness, 2.5 / 4.0);
  EXPECT_DOUBLE_EQ(b.load_cv, 1.5 / 2.5);
}

TEST(LayerBalanceTest, AllOnOneExpertIsOneOverExperts) {
  const std::vector<int64_t> load = {0, 0, 12, 0, 0, 0, 0, 0};
  const LayerBalance b = ComputeLayerBalance(load);
  EXPECT_DOUBLE_EQ(b.balancedness, 1.0 / 8);
  EXPECT_DOUBLE_EQ(b.load_cv, std::sqrt(7.0));  // the largest CV over 8 experts
}

TEST(LayerBalanceTest, NoTokensReadsAsBalanced) {
  const std::vector<int64_t> none = {0, 0, 0};
  const LayerBalance b = ComputeLayerBalance(none);
  EXPECT_EQ(b.tokens, 0);
  EXPECT_EQ(b.balancedness, 1.0);
  EXPECT_EQ(b.load_cv, 0.0);
}

TEST(ExpertLoadWindowTest, DeltaIsNowMinusOldestSnapshotInTheWindow) {
  ExpertLoadWindow w(/*window_s=*/10, /*min_spacing_s=*/1);
  std::vector<int64_t> out;
  w.Add(0, std::vector<int64_t>{0, 0});
  w.Add(4, std::vector<int64_t>{10, 2});
  w.Delta(5, std::vector<int64_t>{12, 8}, &out);
  EXPECT_EQ(out, (std::vector<int64_t>{12, 8}));  // against t=0
  EXPECT_DOUBLE_EQ(w.Covered(5), 5);
  // At t=12 the t=0 snapshot has left the window: t=4 is the oldest in it.
  w.Add(12, std::vector<int64_t>{20, 9});
  EXPECT_EQ(w.num_snapshots(), 2u);
  w.Delta(12, std::vector<int64_t>{20, 9}, &out);
  EXPECT_EQ(out, (std::vector<int64_t>{10, 7}));
  EXPECT_DOUBLE_EQ(w.Covered(12), 8);
}

TEST(ExpertLoadWindowTest, FrequentCallersDoNotGrowTheHistory) {
  ExpertLoadWindow w(/*window_s=*/60, /*min_spacing_s=*/1);
  for (int i = 0; i < 1000; ++i) w.Add(i * 0.01, std::vector<int64_t>{i});  // 10 s, 100 Hz
  EXPECT_EQ(w.num_snapshots(), 10u);
  std::vector<int64_t> out;
  w.Delta(9.99, std::vector<int64_t>{999}, &out);
  EXPECT_EQ(out, (std::vector<int64_t>{999}));  // still against the first snapshot, at t=0
}

TEST(ExpertLoadWindowTest, NoSnapshotInTheWindowGivesZeros) {
  ExpertLoadWindow w(/*window_s=*/5, /*min_spacing_s=*/1);
  std::vector<int64_t> out;
  w.Delta(0, std::vector<int64_t>{3, 4}, &out);
  EXPECT_EQ(out, (std::vector<int64_t>{0, 0}));
  w.Add(0, std::vector<int64_t>{3, 4});
  w.Delta(100, std::vector<int64_t>{9, 9}, &out);  // the only snapshot is too old
  EXPECT_EQ(out, (std::vector<int64_t>{0, 0}));
  EXPECT_EQ(w.Covered(100), 0);
}

}  // namespace
}  // namespace spanserve::server
