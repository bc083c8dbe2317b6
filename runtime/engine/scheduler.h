// Iteration-level scheduling (continuous batching with chunked prefill, DESIGN.md §5).
// Each step, in order of importance (effective priority, then arrival):
//   1. every running decode gets its one token;
//   2. running sequences still prefilling get chunks of what is left of the token budget;
//   3. waiting requests are admitted (prefix-cache hits skip their cached blocks) into
//      what is left, while the sequence cap and the free blocks allow.
// When a running sequence needs a block and none is free, the least important running
// sequence (highest effective priority number, latest arrival) is preempted: its blocks
// are released and it goes back to waiting, to be recomputed later. A step that preempts
// admits no waiting request.
//
// Single-threaded (the engine thread). Allocates only when sequences are added.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "runtime/engine/block_manager.h"
#include "runtime/engine/sequence.h"

namespace spanserve::engine {

struct SchedulerOptions {
  int32_t max_batched_tokens = 1024;
  int32_t max_num_seqs = 64;
  bool enable_chunked_prefill = true;
  double priority_aging_s = 5.0;  // 0: no aging
  // Admission keeps this many blocks free for running sequences to grow into, unless
  // nothing is running.
  int32_t watermark_blocks = 0;
  // > 0: every layer attends only to the last `sliding_window` positions (the widest
  // layer's window), so a sequence's blocks that lie wholly before the window of its next
  // position go back to the pool as soon as they are computed (and committed to the prefix
  // cache, where they stay reusable until evicted). A long sequence then holds about
  // window / block_size blocks however long it grows. 0: blocks are held to the end.
  int32_t sliding_window = 0;
};

// The batch of one step: sequences in batch order, each with step_tokens set.
struct ScheduleResult {
  std::vector<Sequence*> seqs;
  int32_t num_decode_seqs = 0;
  int32_t num_prefill_tokens = 0;
  int32_t num_decode_tokens = 0;
  int32_t num_preempted = 0;
};

class Scheduler {
 public:
  Scheduler(const SchedulerOptions& options, BlockManager* blocks);

  // Queues a new request (state kWaiting, no blocks).
  void Add(std::unique_ptr<Sequence> seq);
  // Picks this step's batch and allocates the blocks it needs. `now` drives priority aging.
  void Schedule(Clock::time_point now, ScheduleResult* out);
  // After the forward pass: the scheduled tokens are in the cache; full blocks are
  // committed to the prefix cache, then blocks outside the sliding window (if any) released.
  void OnComputed(Sequence* seq);
  // Takes a sequence out (finished or cancelled), releasing its blocks.
  std::unique_ptr<Sequence> Remove(Sequence* seq);

  const std::vector<std::unique_ptr<Sequence>>& running() const { return running_; }
  const std::vector<std::unique_ptr<Sequence>>& waiting() const { return waiting_; }
  int64_t num_preemptions() const { return num_preemptions_; }
  int64_t prefix_cache_queries() const { return prefix_queries_; }
  int64_t prefix_cache_hits() const { return prefix_hits_; }

 private:
  void SortByImportance(std::vector<std::unique_ptr<Sequence>>& seqs, Clock::time_point now);
  // Allocates blocks so that `seq` can hold `tokens` tokens, preempting less important
  // sequences as needed. False if `seq` itself had to be preempted.
  bool Reserve(Sequence* seq, int32_t tokens, ScheduleResult* out);
  void Preempt(Sequence* victim, ScheduleResult* out);
  // Admits waiting_[0]; false if it does not fit now.
  bool Admit(ScheduleResult* out);

  const SchedulerOptions options_;
  int32_t budget_ = 0;  // tokens left in the step being scheduled
  BlockManager* const blocks_;
  std::vector<std::unique_ptr<Sequence>> running_;  // most important first after Schedule
  std::vector<std::unique_ptr<Sequence>> waiting_;  // most important first after Schedule
  int64_t num_preemptions_ = 0;
  int64_t prefix_queries_ = 0;
  int64_t prefix_hits_ = 0;
};

}  // namespace spanserve::engine
