// A request inside the engine: its tokens, KV blocks, sampling state and timings. Owned
// by the scheduler and touched only on the engine thread (apart from the stream).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "runtime/engine/grammar.h"
#include "runtime/engine/json_grammar.h"
#include "runtime/engine/request.h"
#include "runtime/engine/sampler.h"
#include "runtime/engine/stop_checker.h"

namespace spanserve::engine {

enum class SequenceState {
  kWaiting,   // in the waiting queue, holding no blocks (new, or preempted)
  kRunning,   // holding blocks; prefilling (num_computed < tokens - 1) or decoding
  kFinished,  // its final output was pushed; blocks released
};

struct Sequence {
  RequestId id = 0;
  Request request;
  std::shared_ptr<RequestStream> stream;
  SequenceState state = SequenceState::kWaiting;

  // Prompt followed by the generated tokens; capacity reserved at submit.
  std::vector<int32_t> tokens;
  int32_t prompt_len = 0;
  int32_t num_generated() const { return static_cast<int32_t>(tokens.size()) - prompt_len; }
  // Tokens whose K/V are in the cache. tokens.size() - num_computed are still to compute:
  // the rest of the prompt while prefilling, the last sampled token while decoding.
  int32_t num_computed = 0;
  std::vector<int32_t> block_table;  // capacity reserved at submit
  // Prefix-cache chain: blocks [0, num_committed) are committed; last_key is the key of
  // block num_committed - 1 (prefix_root before the first). prefix_root: the chain's root,
  // fixed at submit (0, or what else the KV contents depend on: EngineCore::MakeSequence).
  int32_t num_committed = 0;
  uint64_t prefix_root = 0;
  uint64_t last_key = 0;
  // Sliding window: blocks [0, num_released) lie wholly before the window of every position
  // still to compute; they went back to the pool and read kReleasedBlock in block_table.
  int32_t num_released = 0;

  // Scheduling.
  int64_t arrival = 0;  // submit order (FCFS tie-break)
  Clock::time_point arrival_time;
  int32_t num_preemptions = 0;
  int32_t cached_prompt_tokens = 0;
  // Set by the scheduler for the current step: the effective priority (lower first, aged),
  // whether and how many tokens it computes.
  int64_t sort_key = 0;
  bool scheduled = false;
  int32_t step_tokens = 0;

  // Sampling and output.
  Rng rng;
  IncrementalDetokenizer detok;
  StopStringMatcher stop_matcher;
  bool want_text = false;
  // ResponseFormat kJsonObject / kJsonSchema: the output's bytes so far, recognized.
  bool json_mode() const {
    return request.sampling.response_format == ResponseFormat::kJsonObject ||
           request.sampling.response_format == ResponseFormat::kJsonSchema;
  }
  JsonState json;
  // ResponseFormat kChoice: the output's bytes so far, a prefix of one of the choices.
  bool choice_mode() const { return request.sampling.response_format == ResponseFormat::kChoice; }
  std::string choice_out;
  // ResponseFormat kRegex: the DFA state of the output's bytes so far (never dead).
  bool regex_mode() const { return request.sampling.response_format == ResponseFormat::kRegex; }
  uint32_t regex_state = 0;
  // ResponseFormat kGrammar: the recognizer's state after the output's bytes so far (some
  // sentence of the grammar still begins with them).
  bool grammar_mode() const { return request.sampling.response_format == ResponseFormat::kGrammar; }
  GrammarState grammar_state;
  // Prompt logprobs collected so far (positions prompt_logprobs_from..), emitted with the
  // first output.
  std::vector<PositionLogprobs> prompt_logprobs;
  bool prompt_logprobs_sent = false;
  // The first prompt position that gets logprobs, and whether some are still missing.
  int32_t prompt_logprobs_from() const { return request.sampling.prompt_logprobs_from; }
  bool wants_prompt_logprobs() const {
    return request.sampling.prompt_logprobs.has_value() && !prompt_logprobs_sent &&
           prompt_logprobs_from() + static_cast<int32_t>(prompt_logprobs.size()) < prompt_len;
  }
  // Pending output of the current step.
  RequestOutput pending;

  // Timings.
  Clock::time_point first_scheduled_time;
  Clock::time_point first_token_time;
  bool scheduled_once = false;
  bool has_first_token = false;

  // Tokens still to compute: prompt (or, after a preemption, prompt + output) left to
  // prefill, or 1 while decoding.
  int32_t remaining() const { return static_cast<int32_t>(tokens.size()) - num_computed; }
  bool is_decode() const { return num_generated() > 0 && remaining() == 1; }
};

}  // namespace spanserve::engine
