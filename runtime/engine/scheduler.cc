#include "runtime/engine/scheduler.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "common/check.h"

namespace spanserve::engine {
namespace {

// Waiting requests reserved for up front, so Add rarely grows the queue.
constexpr size_t kInitialQueueCapacity = 4096;

}  // namespace

Scheduler::Scheduler(const SchedulerOptions& options, BlockManager* blocks)
    : options_(options), blocks_(blocks) {
  SPANSERVE_CHECK_GT(options.max_batched_tokens, 0);
  SPANSERVE_CHECK_GT(options.max_num_seqs, 0);
  running_.reserve(options.max_num_seqs + 1);
  waiting_.reserve(kInitialQueueCapacity);
}

void Scheduler::Add(std::unique_ptr<Sequence> seq) {
  seq->state = SequenceState::kWaiting;
  waiting_.push_back(std::move(seq));
}

void Scheduler::SortByImportance(std::vector<std::unique_ptr<Sequence>>& seqs,
                                 Clock::time_point now) {
  for (const auto& seq : seqs) {
    int64_t aged = 0;
    if (options_.priority_aging_s > 0) {
      const double waited = std::chrono::duration<double>(now - seq->arrival_time).count();
      aged = static_cast<int64_t>(std::floor(std::max(waited, 0.0) / options_.priority_aging_s));
    }
    seq->sort_key = static_cast<int64_t>(seq->request.priority) - aged;
  }
  std::sort(seqs.begin(), seqs.end(), [](const auto& a, const auto& b) {
    if (a->sort_key != b->sort_key) return a->sort_key < b->sort_key;
    return a->arrival < b->arrival;
  });
}

void Scheduler::Schedule(Clock::time_point now, ScheduleResult* out) {
  out->seqs.clear();
  out->num_decode_seqs = out->num_prefill_tokens = out->num_decode_tokens = 0;
  out->num_preempted = 0;
  for (const auto& seq : running_) {
    seq->scheduled = false;
    seq->step_tokens = 0;
  }
  SortByImportance(running_, now);
  SortByImportance(waiting_, now);
  budget_ = options_.max_batched_tokens;

  // 1. Decodes. Victims are taken from the back, so indices before i never move.
  for (size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
    Sequence* seq = running_[i].get();
    if (!seq->is_decode()) continue;
    if (!Reserve(seq, seq->num_computed + 1, out)) continue;
    seq->scheduled = true;
    seq->step_tokens = 1;
    --budget_;
    out->seqs.push_back(seq);
    ++out->num_decode_seqs;
    ++out->num_decode_tokens;
  }
  // 2. Running sequences still prefilling (or recomputing).
  for (size_t i = 0; i < running_.size() && budget_ > 0; ++i) {
    Sequence* seq = running_[i].get();
    if (seq->scheduled || seq->is_decode()) continue;
    const int32_t n = std::min(seq->remaining(), budget_);
    if (!options_.enable_chunked_prefill && n < seq->remaining()) continue;
    if (!Reserve(seq, seq->num_computed + n, out)) continue;
    seq->scheduled = true;
    seq->step_tokens = n;
    budget_ -= n;
    out->seqs.push_back(seq);
    out->num_prefill_tokens += n;
  }
  // 3. Admission, most important first; a request that does not fit blocks those behind it.
  if (out->num_preempted > 0) return;
  while (!waiting_.empty() && budget_ > 0 &&
         static_cast<int32_t>(running_.size()) < options_.max_num_seqs && Admit(out)) {
  }
}

bool Scheduler::Reserve(Sequence* seq, int32_t tokens, ScheduleResult* out) {
  const int32_t need = blocks_->BlocksFor(tokens) - static_cast<int32_t>(seq->block_table.size());
  while (need > blocks_->num_free()) {
    Sequence* victim = running_.back().get();
    Preempt(victim, out);
    if (victim == seq) return false;
  }
  for (int32_t i = 0; i < need; ++i) seq->block_table.push_back(blocks_->Allocate());
  return true;
}

void Scheduler::Preempt(Sequence* victim, ScheduleResult* out) {
  if (victim->scheduled) {
    out->seqs.erase(std::find(out->seqs.begin(), out->seqs.end(), victim));
    budget_ += victim->step_tokens;
    if (victim->is_decode()) {
      --out->num_decode_seqs;
      out->num_decode_tokens -= victim->step_tokens;
    } else {
      out->num_prefill_tokens -= victim->step_tokens;
    }
  }
  blocks_->ReleaseTable(&victim->block_table);
  victim->num_computed = 0;
  victim->num_committed = 0;
  victim->num_released = 0;
  victim->last_key = victim->prefix_root;
  victim->scheduled = false;
  victim->step_tokens = 0;
  victim->state = SequenceState::kWaiting;
  ++victim->num_preemptions;
  ++num_preemptions_;
  ++out->num_preempted;
  auto it = std::find_if(running_.begin(), running_.end(),
                         [victim](const auto& s) { return s.get() == victim; });
  SPANSERVE_CHECK(it != running_.end());
  waiting_.push_back(std::move(*it));
  running_.erase(it);
}

bool Scheduler::Admit(ScheduleResult* out) {
  Sequence* seq = waiting_.front().get();
  SPANSERVE_CHECK(seq->block_table.empty());
  const int32_t total = static_cast<int32_t>(seq->tokens.size());
  // Keep at least the last token to compute: its logits choose the next token; with prompt
  // logprobs still to give, position prompt_logprobs_from - 1 and on (its logits give the
  // first of them).
  const int32_t keep_from =
      seq->wants_prompt_logprobs() ? seq->prompt_logprobs_from() - 1 : total - 1;
  const int32_t max_blocks = keep_from / blocks_->block_size();
  uint64_t key = 0;
  const int32_t matched =
      blocks_->MatchPrefix(seq->tokens, max_blocks, &seq->block_table, &key, seq->prefix_root);
  const int32_t cached = matched * blocks_->block_size();
  const int32_t remaining = total - cached;
  const int32_t n = std::min(remaining, budget_);
  const int32_t need = blocks_->BlocksFor(cached + n) - matched;
  const int32_t reserve = running_.empty() ? 0 : options_.watermark_blocks;
  if ((!options_.enable_chunked_prefill && n < remaining) || need + reserve > blocks_->num_free()) {
    blocks_->ReleaseTable(&seq->block_table);
    return false;
  }
  for (int32_t i = 0; i < need; ++i) seq->block_table.push_back(blocks_->Allocate());
  prefix_queries_ += total;
  prefix_hits_ += cached;
  if (!seq->scheduled_once) seq->cached_prompt_tokens = std::min(cached, seq->prompt_len);
  seq->num_computed = cached;
  seq->num_committed = matched;
  seq->last_key = key;
  seq->state = SequenceState::kRunning;
  seq->scheduled = true;
  seq->step_tokens = n;
  budget_ -= n;
  out->seqs.push_back(seq);
  out->num_prefill_tokens += n;
  running_.push_back(std::move(waiting_.front()));
  waiting_.erase(waiting_.begin());
  return true;
}

void Scheduler::OnComputed(Sequence* seq) {
  seq->num_computed += seq->step_tokens;
  const int32_t bs = blocks_->block_size();
  if (blocks_->prefix_caching()) {
    while ((seq->num_committed + 1) * bs <= seq->num_computed) {
      const int32_t i = seq->num_committed;
      // The parent is never released yet: a block is released only after the block behind
      // it is committed (both lie before the window, so both are full and computed).
      const int32_t parent = i > 0 ? seq->block_table[i - 1] : -1;
      seq->last_key = blocks_->Commit(
          seq->block_table[i], parent, seq->last_key,
          std::span<const int32_t>(seq->tokens).subspan(static_cast<size_t>(i) * bs, bs));
      ++seq->num_committed;
    }
  }
  if (options_.sliding_window > 0) {
    // The next position computed is num_computed; it (and every later one) attends to
    // positions >= num_computed - window + 1, so block b is unread once
    // (b + 1) · bs <= num_computed - window + 1.
    const int32_t first_read = seq->num_computed - options_.sliding_window + 1;
    const int32_t unread = first_read > 0 ? first_read / bs : 0;
    for (; seq->num_released < unread; ++seq->num_released) {
      int32_t& block = seq->block_table[seq->num_released];
      blocks_->Release(block);
      block = kReleasedBlock;
    }
  }
}

std::unique_ptr<Sequence> Scheduler::Remove(Sequence* seq) {
  for (auto* list : {&running_, &waiting_}) {
    auto it =
        std::find_if(list->begin(), list->end(), [seq](const auto& s) { return s.get() == seq; });
    if (it == list->end()) continue;
    std::unique_ptr<Sequence> owned = std::move(*it);
    list->erase(it);
    blocks_->ReleaseTable(&owned->block_table);
    owned->state = SequenceState::kFinished;
    return owned;
  }
  SPANSERVE_CHECK(false);  // not ours
  return nullptr;
}

}  // namespace spanserve::engine
