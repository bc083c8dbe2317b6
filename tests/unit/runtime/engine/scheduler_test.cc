// The scheduler without a model: sampling is simulated by appending a token whenever a
// sequence's tokens are all computed.
#include "runtime/engine/scheduler.h"

#include <algorithm>
#include <random>

#include "gtest/gtest.h"

namespace spanserve::engine {
namespace {

struct Harness {
  Harness(int32_t num_blocks, int32_t block_size, SchedulerOptions options, bool prefix = true)
      : blocks(num_blocks, block_size, prefix), scheduler(options, &blocks) {}

  Sequence* Add(std::vector<int32_t> prompt, int32_t priority = 0, int32_t max_tokens = 4,
                Clock::time_point arrival = Clock::now()) {
    auto seq = std::make_unique<Sequence>();
    seq->id = ++next_id;
    seq->arrival = static_cast<int64_t>(seq->id);
    seq->arrival_time = arrival;
    seq->prompt_len = static_cast<int32_t>(prompt.size());
    seq->tokens = std::move(prompt);
    seq->request.priority = priority;
    seq->request.sampling.max_tokens = max_tokens;
    seq->stream = std::make_shared<RequestStream>(seq->id);
    Sequence* raw = seq.get();
    scheduler.Add(std::move(seq));
    return raw;
  }
  // One step; returns the finished ids.
  std::vector<RequestId> Step(Clock::time_point now = Clock::now()) {
    scheduler.Schedule(now, &result);
    std::vector<RequestId> done;
    std::vector<Sequence*> batch = result.seqs;
    for (Sequence* seq : batch) {
      scheduler.OnComputed(seq);
      if (seq->num_computed == static_cast<int32_t>(seq->tokens.size())) {
        seq->tokens.push_back(static_cast<int32_t>(seq->tokens.size() % 7));
        if (seq->num_generated() >= seq->request.sampling.max_tokens) {
          done.push_back(seq->id);
          scheduler.Remove(seq);
        }
      }
    }
    blocks.CheckConsistency();
    return done;
  }
  BlockManager blocks;
  Scheduler scheduler;
  ScheduleResult result;
  RequestId next_id = 0;
};

std::vector<int32_t> Prompt(int n, int32_t start = 10) {
  std::vector<int32_t> v(n);
  for (int i = 0; i < n; ++i) v[i] = start + i;
  return v;
}

SchedulerOptions Opts(int32_t budget, int32_t max_seqs = 8) {
  return SchedulerOptions{.max_batched_tokens = budget, .max_num_seqs = max_seqs};
}

TEST(SchedulerTest, DecodesFirstThenChunkedPrefill) {
  Harness h(64, 4, Opts(8));
  Sequence* a = h.Add(Prompt(20), 0, 8);
  h.Step();
  EXPECT_EQ(a->num_computed, 8);
  h.Step();
  h.Step();
  EXPECT_EQ(a->num_computed, 20);
  EXPECT_EQ(a->num_generated(), 1);
  Sequence* b = h.Add(Prompt(10, 50));
  h.Step();
  ASSERT_EQ(h.result.seqs.size(), 2u);
  EXPECT_EQ(h.result.seqs[0], a);  // the decode first
  EXPECT_EQ(a->step_tokens, 1);
  EXPECT_EQ(b->step_tokens, 7);  // the rest of the budget
  EXPECT_EQ(h.result.num_decode_tokens, 1);
  EXPECT_EQ(h.result.num_prefill_tokens, 7);
}

TEST(SchedulerTest, MaxNumSeqsCapsTheBatch) {
  Harness h(64, 4, Opts(64, /*max_seqs=*/2));
  for (int i = 0; i < 4; ++i) h.Add(Prompt(3, 10 * i));
  h.Step();
  EXPECT_EQ(h.result.seqs.size(), 2u);
  EXPECT_EQ(h.scheduler.waiting().size(), 2u);
}

TEST(SchedulerTest, PrefixHitSkipsCachedBlocksButKeepsTheLastToken) {
  Harness h(64, 4, Opts(64));
  h.Add(Prompt(32), 0, 1);
  EXPECT_EQ(h.Step().size(), 1u);  // prefilled, sampled, finished
  Sequence* b = h.Add(Prompt(32), 0, 1);
  h.scheduler.Schedule(Clock::now(), &h.result);
  EXPECT_EQ(b->num_computed, 28);  // 7 of 8 blocks: the last token is recomputed
  EXPECT_EQ(b->step_tokens, 4);
  EXPECT_EQ(h.scheduler.prefix_cache_hits(), 28);
  EXPECT_EQ(h.scheduler.prefix_cache_queries(), 64);
}

TEST(SchedulerTest, PreemptsTheLeastImportantLatestRequest) {
  // 6 blocks of 4: three sequences of 7 tokens take 2 blocks each; growing to 9 needs a
  // third block each.
  Harness h(6, 4, Opts(64));
  Sequence* a = h.Add(Prompt(7, 0), 0, 10);
  Sequence* b = h.Add(Prompt(7, 20), 0, 10);
  Sequence* c = h.Add(Prompt(7, 40), 0, 10);
  h.Step();  // prefill all three, each samples its 8th token
  EXPECT_EQ(h.blocks.num_free(), 0);
  h.Step();  // decode the 8th: fits
  h.Step();  // the 9th needs new blocks: c (latest) goes
  EXPECT_EQ(h.scheduler.num_preemptions(), 1);
  EXPECT_EQ(c->state, SequenceState::kWaiting);
  EXPECT_EQ(c->num_computed, 0);
  EXPECT_TRUE(c->block_table.empty());
  EXPECT_EQ(a->state, SequenceState::kRunning);
  EXPECT_EQ(b->state, SequenceState::kRunning);
  // A more important request arriving later preempts the older, less important one.
  Harness p(6, 4, Opts(64));
  Sequence* low = p.Add(Prompt(7, 0), /*priority=*/5, 10);
  Sequence* high1 = p.Add(Prompt(7, 20), 0, 10);
  Sequence* high2 = p.Add(Prompt(7, 40), 0, 10);
  p.Step();
  p.Step();
  p.Step();
  EXPECT_EQ(low->state, SequenceState::kWaiting);
  EXPECT_EQ(high1->state, SequenceState::kRunning);
  EXPECT_EQ(high2->state, SequenceState::kRunning);
}

TEST(SchedulerTest, PreemptedRequestCompletesLater) {
  Harness h(6, 4, Opts(64));
  for (int i = 0; i < 3; ++i) h.Add(Prompt(7, 20 * i), 0, 10);
  int finished = 0;
  for (int step = 0; step < 200 && finished < 3; ++step) finished += h.Step().size();
  EXPECT_EQ(finished, 3);
  EXPECT_GE(h.scheduler.num_preemptions(), 1);
  EXPECT_EQ(h.blocks.num_used(), 0);
}

TEST(SchedulerTest, PriorityOrdersAdmissionAndAgingPreventsStarvation) {
  const Clock::time_point t0 = Clock::now();
  {
    Harness h(64, 4, Opts(64, 1));
    Sequence* low = h.Add(Prompt(3), 5, 4, t0);
    Sequence* high = h.Add(Prompt(3), 0, 4, t0);
    h.Step(t0);
    EXPECT_EQ(high->state, SequenceState::kRunning);
    EXPECT_EQ(low->state, SequenceState::kWaiting);
  }
  {
    // priority_aging_s = 1: after 10 s of waiting, priority 3 counts as -7 and beats a
    // fresh priority-0 request.
    SchedulerOptions o = Opts(64, 1);
    o.priority_aging_s = 1.0;
    Harness h(64, 4, o);
    Sequence* old_low = h.Add(Prompt(3), 3, 4, t0);
    Sequence* new_high = h.Add(Prompt(3), 0, 4, t0 + std::chrono::seconds(10));
    h.Step(t0 + std::chrono::seconds(10));
    EXPECT_EQ(old_low->state, SequenceState::kRunning);
    EXPECT_EQ(new_high->state, SequenceState::kWaiting);
  }
}

// 10 000 random operations (submit with shared prefixes, step, cancel waiting or running)
// on a small pool with preemptions: the allocator stays consistent and is whole at idle.
TEST(SchedulerTest, RandomScheduleAndCancelKeepTheAllocatorConsistent) {
  Harness h(24, 4, Opts(16, 6));
  std::mt19937 rng(7);
  std::vector<std::pair<RequestId, Sequence*>> live;  // finished ones are gone: match by id
  int finished = 0;
  for (int op = 0; op < 10000; ++op) {
    const int kind = std::uniform_int_distribution<int>(0, 9)(rng);
    if (kind < 3) {
      const int len = std::uniform_int_distribution<int>(1, 30)(rng);
      std::vector<int32_t> prompt = Prompt(len, 100 * (rng() % 3));
      if (rng() % 2) prompt.back() = rng() % 1000;
      Sequence* seq = h.Add(std::move(prompt), rng() % 3, 1 + rng() % 12);
      live.emplace_back(seq->id, seq);
    } else if (kind < 9) {
      for (RequestId id : h.Step()) {
        live.erase(
            std::find_if(live.begin(), live.end(), [id](const auto& s) { return s.first == id; }));
        ++finished;
      }
    } else if (!live.empty()) {
      const size_t i = rng() % live.size();
      h.scheduler.Remove(live[i].second);
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(i));
      h.blocks.CheckConsistency();
    }
    int32_t held = 0;
    for (const auto& s : h.scheduler.running()) held += static_cast<int32_t>(s->block_table.size());
    for (const auto& s : h.scheduler.waiting()) EXPECT_TRUE(s->block_table.empty());
    EXPECT_GE(held, h.blocks.num_used());  // shared blocks count once in num_used
  }
  for (const auto& s : live) h.scheduler.Remove(s.second);
  h.blocks.CheckConsistency();
  EXPECT_EQ(h.blocks.num_used(), 0);
  EXPECT_EQ(h.blocks.num_free(), 24);
  EXPECT_GT(finished, 100);
  EXPECT_GT(h.scheduler.num_preemptions(), 0);
}

}  // namespace
}  // namespace spanserve::engine
