// The engine's step loop without the thread: scheduler, KV pool, model and sampler, run
// one step at a time by whoever owns it (the Engine's thread, or a test). Not thread-safe
// apart from ValidateRequest.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/status/statusor.h"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/engine.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/scheduler.h"
#include "runtime/engine/sequence.h"
#include "runtime/model/model.h"

namespace spanserve::engine {

// The text tokens each state of a compiled constraint (a regex's DFA, a grammar) allows, kept
// per constraint (which the entry holds, so that its address is not reused) while the ids
// held stay under kMaxIds (past that it starts again empty). A constraint's entry goes when
// a new one comes and no request holds it any more.
template <typename Constraint, typename State, typename StateHash = absl::Hash<State>>
class AllowedTokensCache {
 public:
  static constexpr size_t kMaxIds = size_t{4} << 20;

  // Sets *out to the ids `state` of `constraint` allows: `fill(&ids)` computes them the first
  // time. `key_words` is what the state kept as the key costs, in ids.
  template <typename Fill>
  void Get(const std::shared_ptr<const Constraint>& constraint, const State& state,
           size_t key_words, Fill fill, std::vector<int32_t>* out) {
    auto entry = entries_.find(constraint.get());
    if (entry == entries_.end()) {
      for (auto it = entries_.begin(); it != entries_.end();) {
        if (it->second.constraint.use_count() == 1) {
          ids_ -= it->second.ids;
          entries_.erase(it++);
        } else {
          ++it;
        }
      }
      entry = entries_.try_emplace(constraint.get()).first;
      entry->second.constraint = constraint;
    }
    Entry& e = entry->second;
    auto [it, added] = e.allowed.try_emplace(state);
    if (added) {
      fill(&it->second);
      e.ids += it->second.size() + 1 + key_words;
      ids_ += it->second.size() + 1 + key_words;
    }
    out->assign(it->second.begin(), it->second.end());
    if (ids_ > kMaxIds) {
      entries_.clear();
      ids_ = 0;
    }
  }

 private:
  struct Entry {
    std::shared_ptr<const Constraint> constraint;
    absl::flat_hash_map<State, std::vector<int32_t>, StateHash> allowed;
    size_t ids = 0;
  };
  absl::flat_hash_map<const Constraint*, Entry> entries_;
  size_t ids_ = 0;
};

// Sees every row of logits the model produces, before sampling touches it: `position` is
// the position of the token whose logits these are (the next token is position + 1).
// A test hook.
using LogitsObserver =
    std::function<void(RequestId id, int32_t position, std::span<const float> logits)>;

// Counters of the core, read on the engine thread.
struct CoreCounters {
  int64_t num_steps = 0;
  int64_t prompt_tokens = 0;
  int64_t generation_tokens = 0;
  int64_t requests_finished = 0;
  int32_t last_batch_seqs = 0;
  int32_t last_batch_tokens = 0;
  StepHistogram batch_seqs;
  StepHistogram batch_tokens;
  std::vector<double> residual_rms;  // [num_layers] when sampling is on, sized at creation
  int64_t residual_rms_samples = 0;
};

class EngineCore {
 public:
  // Borrows `model`, which must outlive the core. Sizes the pool per `options`.
  [[nodiscard]] static absl::StatusOr<std::unique_ptr<EngineCore>> Create(
      model::Model* model, const EngineOptions& options);

  // Thread-safe: checks a request against the model and options (prompt non-empty, ids in
  // the vocabulary, fits the context, sampling params valid, stop strings need text).
  [[nodiscard]] absl::Status ValidateRequest(const Request& request) const;
  // Wraps a validated request into a sequence (allocates; any thread).
  std::unique_ptr<Sequence> MakeSequence(RequestId id, Request request,
                                         std::shared_ptr<RequestStream> stream,
                                         uint64_t default_seed) const;
  // Queues a sequence made by MakeSequence.
  void Add(std::unique_ptr<Sequence> seq);

  // One step: cancellations and deadlines, schedule, forward, sample, push outputs.
  // Returns false (doing nothing) when there is no request at all.
  bool Step();
  bool has_work() const { return !scheduler_.running().empty() || !scheduler_.waiting().empty(); }
  // Finishes every request with `reason` (shutdown).
  void FinishAll(FinishReason reason);

  // Called on the engine thread as a request finishes, just before its final output is
  // pushed (so the live set never holds a request whose end a client has seen).
  void set_on_finished(std::function<void(RequestId)> fn) { on_finished_ = std::move(fn); }
  void set_logits_observer(LogitsObserver fn) { logits_observer_ = std::move(fn); }

  const EngineInfo& info() const { return info_; }
  const EngineOptions& options() const { return options_; }
  const Scheduler& scheduler() const { return scheduler_; }
  const BlockManager& blocks() const { return blocks_; }
  const CoreCounters& counters() const { return counters_; }
  const StepStats& last_step() const { return last_step_; }
  model::Model& model() { return *model_; }

 private:
  EngineCore(model::Model* model, const EngineOptions& options, EngineInfo info,
             std::unique_ptr<model::KvCache> cache);
  void HandleCancellations(Clock::time_point now);
  // Consumes the logits rows of one scheduled sequence.
  void ProcessRows(Sequence* seq, const model::SequenceInput& input, float* rows);
  // Samples the next token from `row` (overwritten), runs the stop checks, and queues the
  // sequence on finishing_ when it is done.
  void SampleNext(Sequence* seq, float* row);
  // JSON mode: -inf for every token that would not keep seq's output a JSON object prefix
  // (EOS and stop ids only once it is complete and stops are allowed). False: none may
  // follow (the object is complete and stops are suppressed), so the output ends here.
  bool MaskToJson(const Sequence& seq, bool suppress_stop, std::span<float> logits);
  // Appends the ids a whole constrained output may end with to json_ids_: the model's EOS
  // (unless ignore_eos) and the request's stop ids.
  void AllowStopIds(const SamplingParams& params);
  // Sets every logit but json_ids_' to -inf; false (nothing changed) when json_ids_ is empty.
  bool KeepAllowedIds(std::span<float> logits);
  // The same for ResponseFormat::kChoice: the tokens that keep the output a prefix of one of
  // the choices, and EOS / stop ids after a whole one (unless suppress_stop).
  bool MaskToChoice(const Sequence& seq, bool suppress_stop, std::span<float> logits);
  // The same for ResponseFormat::kRegex: the tokens whose bytes keep the output a prefix of a
  // match, and EOS / stop ids after a match (unless suppress_stop).
  bool MaskToRegex(const Sequence& seq, bool suppress_stop, std::span<float> logits);
  // The same for ResponseFormat::kGrammar: the tokens whose bytes keep the output a prefix of
  // a sentence, and EOS / stop ids after a whole one (unless suppress_stop).
  bool MaskToGrammar(const Sequence& seq, bool suppress_stop, std::span<float> logits);
  // Releases text held back (detokenizer, stop-string matcher) at the end of a request.
  void FlushText(Sequence* seq, std::span<const int32_t> tokens);
  // Pushes the pending output.
  void Flush(Sequence* seq);
  // Completes the final info, pushes the last output and removes the sequence.
  void Finish(Sequence* seq, FinishReason reason, absl::Status error = absl::OkStatus());

  model::Model* const model_;
  const EngineOptions options_;
  const EngineInfo info_;
  const int32_t vocab_;
  std::unique_ptr<model::KvCache> cache_;
  model::ForwardWorkspace workspace_;
  BlockManager blocks_;
  Scheduler scheduler_;
  SamplerScratch scratch_;

  // Reused every step.
  ScheduleResult batch_;
  std::vector<model::SequenceInput> inputs_;
  std::vector<float> logits_;
  std::vector<float> raw_row_;  // a copy of a row for logprobs (sampling overwrites it)
  // JSON mode: the tokens allowed at this step.
  std::vector<int32_t> json_ids_;
  std::vector<std::string_view> choice_live_;  // MaskToChoice: the choices' remaining bytes
  // MaskToRegex / MaskToGrammar: the text tokens each state allows.
  struct GrammarStateHash {
    size_t operator()(const GrammarState& s) const { return s.Hash(); }
  };
  AllowedTokensCache<RegexDfa, uint32_t> regex_cache_;
  AllowedTokensCache<Grammar, GrammarState, GrammarStateHash> grammar_cache_;
  std::vector<Sequence*> finishing_;
  std::string text_;

  std::function<void(RequestId)> on_finished_;
  LogitsObserver logits_observer_;
  CoreCounters counters_;
  StepStats last_step_;
};

}  // namespace spanserve::engine
