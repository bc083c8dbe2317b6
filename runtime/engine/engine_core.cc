#include "runtime/engine/engine_core.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/check.h"
#include "common/status.h"
#include "kernels/backend.h"
#include "runtime/engine/regex.h"

namespace spanserve::engine {
namespace {

double Seconds(Clock::time_point from, Clock::time_point to) {
  return std::chrono::duration<double>(to - from).count();
}

bool Contains(std::span<const int32_t> ids, int32_t id) {
  return std::find(ids.begin(), ids.end(), id) != ids.end();
}

absl::Status CheckOptions(const EngineOptions& o, int32_t max_model_len) {
  if (o.block_size <= 0) return absl::InvalidArgumentError("block_size must be positive");
  if (o.max_batched_tokens <= 0) {
    return absl::InvalidArgumentError("max_batched_tokens must be positive");
  }
  if (o.max_num_seqs <= 0) return absl::InvalidArgumentError("max_num_seqs must be positive");
  if (o.max_waiting_requests <= 0) {
    return absl::InvalidArgumentError("max_waiting_requests must be positive");
  }
  if (o.priority_aging_s < 0) return absl::InvalidArgumentError("priority_aging_s must be >= 0");
  if (o.residual_rms_every_n_steps < 0) {
    return absl::InvalidArgumentError("residual_rms_every_n_steps must be >= 0");
  }
  if (!o.enable_chunked_prefill && o.max_batched_tokens < max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("without chunked prefill max_batched_tokens (", o.max_batched_tokens,
                     ") must be at least max_model_len (", max_model_len, ")"));
  }
  return absl::OkStatus();
}

// The prefix-cache chain root of a request with a prompt of `prompt_len` tokens. With dynamic
// NTK RoPE a prompt longer than max_position_embeddings rotates its tokens for its own
// length, so its blocks are shared only with prompts of that length (their own chain);
// every shorter prompt rotates each position alike (root 0). With LongRoPE every prompt
// longer than original_max_position_embeddings rotates all its tokens with the long
// factors: such prompts share one chain of their own.
uint64_t PrefixRoot(const model::ModelConfig& c, int32_t prompt_len) {
  if (c.rope_scaling.type == model::RopeScalingType::kLongRope) {
    if (prompt_len <= c.rope_scaling.original_max_position_embeddings) return 0;
    const int32_t tag[] = {-2, 1};  // no block holds negative token ids
    return BlockKey(0, tag);
  }
  if (c.rope_scaling.type != model::RopeScalingType::kDynamic ||
      prompt_len <= c.max_position_embeddings) {
    return 0;
  }
  const int32_t tag[] = {-1, prompt_len};  // no block holds negative token ids
  return BlockKey(0, tag);
}

}  // namespace

absl::StatusOr<std::unique_ptr<EngineCore>> EngineCore::Create(model::Model* model,
                                                               const EngineOptions& options) {
  const model::ModelConfig& c = model->config();
  // Dynamic NTK RoPE reaches past max_position_embeddings (ModelConfig::MaxPositions).
  int32_t max_model_len = c.MaxPositions();
  if (options.max_model_len > 0) {
    if (options.max_model_len > max_model_len) {
      return absl::InvalidArgumentError(
          max_model_len == c.max_position_embeddings
              ? absl::StrCat("max_model_len ", options.max_model_len,
                             " exceeds the model's max_position_embeddings ",
                             c.max_position_embeddings)
              : absl::StrCat("max_model_len ", options.max_model_len, " exceeds the model's ",
                             max_model_len,
                             " positions (max_position_embeddings × rope_scaling.factor)"));
    }
    max_model_len = options.max_model_len;
  }
  RETURN_IF_ERROR(CheckOptions(options, max_model_len));
  const int64_t block_bytes =
      model::KvCache::BytesPerBlock(c, options.block_size, options.kv_cache_dtype);
  int64_t num_blocks = options.num_kv_blocks;
  if (num_blocks <= 0) {
    ASSIGN_OR_RETURN(const int64_t bytes,
                     KvPoolBytes(options.kv_cache_bytes, options.kv_cache_memory_fraction,
                                 model->backend().FreeDeviceMemoryBytes()));
    num_blocks = std::min<int64_t>(bytes / block_bytes, 1 << 30);
  }
  int64_t min_blocks = (max_model_len + options.block_size - 1) / options.block_size;
  if (const int32_t window = c.KvWindow(); window > 0 && options.enable_chunked_prefill) {
    // One sequence holds at most the blocks of its window and of one step's chunk, plus
    // the two the window and the chunk may start and end in partway.
    min_blocks = std::min<int64_t>(min_blocks,
                                   (window + options.max_batched_tokens) / options.block_size + 2);
  }
  if (num_blocks < min_blocks) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the KV pool of ", num_blocks, " blocks (", num_blocks * block_bytes,
                     " bytes) cannot hold one sequence of max_model_len ", max_model_len,
                     " tokens (", min_blocks, " blocks of ", block_bytes,
                     " bytes); give it more memory or lower "
                     "max_model_len"));
  }
  ASSIGN_OR_RETURN(
      auto cache, model::KvCache::Create(model->backend(), c, options.block_size,
                                         static_cast<int32_t>(num_blocks), options.kv_cache_dtype));
  EngineInfo info;
  info.model_type = c.model_type;
  info.norm_placement = std::string(model::NormPlacementName(c.norm_placement));
  info.vocab_size = c.vocab_size;
  info.max_model_len = max_model_len;
  info.num_layers = c.num_layers;
  info.hidden_size = c.hidden_size;
  info.num_experts = c.moe.num_experts;
  info.experts_per_token = c.moe.top_k;
  info.num_parameters = model->num_parameters();
  info.eos_token_ids.assign(c.eos_token_ids.begin(), c.eos_token_ids.end());
  info.block_size = options.block_size;
  info.num_kv_blocks = static_cast<int32_t>(num_blocks);
  info.kv_cache_bytes = cache->bytes();
  info.kv_cache_dtype = cache->dtype();
  info.compute_dtype = model->compute_dtype();
  info.backend = model->backend().description();
  info.device = std::string(kernels::DeviceName(model->backend().device()));
  return std::unique_ptr<EngineCore>(
      new EngineCore(model, options, std::move(info), std::move(cache)));
}

EngineCore::EngineCore(model::Model* model, const EngineOptions& options, EngineInfo info,
                       std::unique_ptr<model::KvCache> cache)
    : model_(model),
      options_(options),
      info_(std::move(info)),
      vocab_(info_.vocab_size),
      cache_(std::move(cache)),
      workspace_(model->backend()),
      blocks_(info_.num_kv_blocks, options.block_size, options.enable_prefix_caching),
      scheduler_(
          SchedulerOptions{
              .max_batched_tokens = options.max_batched_tokens,
              .max_num_seqs = options.max_num_seqs,
              .enable_chunked_prefill = options.enable_chunked_prefill,
              .priority_aging_s = options.priority_aging_s,
              .watermark_blocks = info_.num_kv_blocks / 100,
              .sliding_window = model->config().KvWindow(),
          },
          &blocks_),
      scratch_(info_.vocab_size) {
  batch_.seqs.reserve(options.max_num_seqs);
  inputs_.reserve(options.max_num_seqs);
  finishing_.reserve(options.max_num_seqs);
  logits_.resize(static_cast<size_t>(options.max_num_seqs) * vocab_);
  raw_row_.resize(vocab_);
  if (options.residual_rms_every_n_steps > 0) counters_.residual_rms.resize(info_.num_layers);
}

absl::Status EngineCore::ValidateRequest(const Request& request) const {
  const int32_t n = static_cast<int32_t>(request.prompt.size());
  if (n == 0) return absl::InvalidArgumentError("prompt must not be empty");
  for (int32_t i = 0; i < n; ++i) {
    const int32_t id = request.prompt[i];
    if (id < 0 || id >= vocab_) {
      return absl::InvalidArgumentError(absl::StrCat(
          "prompt token ", i, " (id ", id, ") is outside the vocabulary [0, ", vocab_, ")"));
    }
  }
  const int32_t need = n + (request.sampling.max_tokens > 0 ? 1 : 0);
  if (need > info_.max_model_len) {
    return absl::InvalidArgumentError(
        absl::StrCat("prompt of ", n, " tokens is too long: the context holds ",
                     info_.max_model_len, " tokens (prompt + at least one generated token)"));
  }
  // The server may have added its own stop (a chat's end of turn) to a client's maximum.
  RETURN_IF_ERROR(ValidateSamplingParams(request.sampling, vocab_, StopLimits::kEngine));
  if (request.sampling.response_format != ResponseFormat::kText) {
    const ResponseFormat f = request.sampling.response_format;
    const char* name = f == ResponseFormat::kJsonObject   ? "json_object"
                       : f == ResponseFormat::kJsonSchema ? "json_schema"
                       : f == ResponseFormat::kRegex      ? "guided_regex"
                       : f == ResponseFormat::kGrammar    ? "guided_grammar"
                                                          : "guided_choice";
    if (options_.token_bytes == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("response_format ", name,
                       " needs the tokenizer's token bytes, and this engine has "
                       "none"));
    }
    if (options_.token_bytes->vocab_size() != vocab_) {
      return absl::InvalidArgumentError(
          absl::StrCat("response_format ", name, ": the tokenizer has ",
                       options_.token_bytes->vocab_size(), " tokens and the model ", vocab_));
    }
  }
  if (!request.sampling.stop.empty() && !options_.detokenize) {
    return absl::InvalidArgumentError("stop strings need a detokenizer, and this engine has none");
  }
  return absl::OkStatus();
}

std::unique_ptr<Sequence> EngineCore::MakeSequence(RequestId id, Request request,
                                                   std::shared_ptr<RequestStream> stream,
                                                   uint64_t default_seed) const {
  auto seq = std::make_unique<Sequence>();
  seq->id = id;
  seq->arrival = static_cast<int64_t>(id);
  seq->arrival_time = Clock::now();
  seq->prompt_len = static_cast<int32_t>(request.prompt.size());
  seq->prefix_root = PrefixRoot(model_->config(), seq->prompt_len);
  seq->last_key = seq->prefix_root;
  const int64_t max_len = std::min<int64_t>(
      static_cast<int64_t>(seq->prompt_len) + request.sampling.max_tokens, info_.max_model_len);
  // The prompt moves into the token list (no second copy is kept for the request's life).
  seq->tokens = std::move(request.prompt);
  seq->tokens.reserve(max_len);
  seq->block_table.reserve((max_len + options_.block_size - 1) / options_.block_size);
  seq->rng.Seed(request.sampling.seed.value_or(default_seed));
  seq->want_text =
      options_.detokenize && (request.sampling.detokenize || !request.sampling.stop.empty());
  seq->detok.Reset(seq->prompt_len, request.sampling.skip_special_tokens);
  if (request.sampling.prompt_logprobs.has_value()) {
    seq->prompt_logprobs.reserve(
        std::max(0, seq->prompt_len - request.sampling.prompt_logprobs_from));
  }
  seq->json = JsonState(request.sampling.json_schema.get());
  if (request.sampling.choices != nullptr) {
    size_t longest = 0;
    for (const std::string& c : *request.sampling.choices) longest = std::max(longest, c.size());
    seq->choice_out.reserve(longest);  // the output grows in SampleNext without allocating
  }
  if (request.sampling.regex != nullptr) seq->regex_state = request.sampling.regex->start();
  if (request.sampling.grammar != nullptr) {
    seq->grammar_state = GrammarState(request.sampling.grammar.get());
  }
  seq->stream = std::move(stream);
  seq->request = std::move(request);
  return seq;
}

void EngineCore::Add(std::unique_ptr<Sequence> seq) { scheduler_.Add(std::move(seq)); }

void EngineCore::HandleCancellations(Clock::time_point now) {
  finishing_.clear();
  for (const auto* list : {&scheduler_.running(), &scheduler_.waiting()}) {
    for (const auto& seq : *list) {
      if (seq->stream->cancel_requested()) {
        seq->pending.final.emplace().reason = FinishReason::kCancelled;
        finishing_.push_back(seq.get());
      } else if (seq->request.deadline.has_value() && now >= *seq->request.deadline) {
        seq->pending.final.emplace().reason = FinishReason::kDeadline;
        finishing_.push_back(seq.get());
      }
    }
  }
  for (Sequence* seq : finishing_) Finish(seq, seq->pending.final->reason);
  finishing_.clear();
}

bool EngineCore::Step() {
  if (!has_work()) return false;
  const Clock::time_point t0 = Clock::now();
  HandleCancellations(t0);
  scheduler_.Schedule(t0, &batch_);
  const Clock::time_point t1 = Clock::now();
  if (batch_.seqs.empty()) return has_work();

  inputs_.clear();
  for (Sequence* seq : batch_.seqs) {
    if (!seq->scheduled_once) {
      seq->scheduled_once = true;
      seq->first_scheduled_time = t0;
    }
    const int32_t end = seq->num_computed + seq->step_tokens;
    // Prompt logprobs from position `from` need the logits of positions from - 1 on: a
    // chunk that ends before them computes none.
    const bool want_prompt_logprobs =
        seq->wants_prompt_logprobs() && end >= seq->prompt_logprobs_from();
    model::LogitsMode mode = model::LogitsMode::kNone;
    if (want_prompt_logprobs) {
      mode = model::LogitsMode::kAll;
    } else if (end == static_cast<int32_t>(seq->tokens.size())) {
      mode = model::LogitsMode::kLast;
    }
    // The original prompt's length, also when a preempted sequence recomputes its output:
    // dynamic NTK RoPE rotates each token as a function of it (SequenceInput).
    inputs_.push_back(model::SequenceInput{
        .tokens =
            std::span<const int32_t>(seq->tokens).subspan(seq->num_computed, seq->step_tokens),
        .cached = seq->num_computed,
        .block_table = seq->block_table,
        .logits = mode,
        .rope_prompt_length = seq->prompt_len});
  }
  const int64_t rows = model::Model::LogitRows(inputs_);
  if (static_cast<int64_t>(logits_.size()) < rows * vocab_) logits_.resize(rows * vocab_);
  const int32_t rms_every = options_.residual_rms_every_n_steps;
  const bool sample_rms = rms_every > 0 && counters_.num_steps % rms_every == 0;
  workspace_.set_record_residual_rms(sample_rms);
  const absl::Status status = model_->Forward(inputs_, *cache_, workspace_, logits_.data());
  const Clock::time_point t2 = Clock::now();
  if (sample_rms && status.ok()) {
    const std::span<const double> rms = workspace_.residual_rms();
    std::copy(rms.begin(), rms.end(), counters_.residual_rms.begin());
    ++counters_.residual_rms_samples;
  }

  finishing_.clear();
  if (!status.ok()) {
    for (Sequence* seq : batch_.seqs) {
      seq->pending.final.emplace().reason = FinishReason::kError;
      seq->pending.final->error = status;
      finishing_.push_back(seq);
    }
  } else {
    float* row = logits_.data();
    for (size_t i = 0; i < batch_.seqs.size(); ++i) {
      Sequence* seq = batch_.seqs[i];
      scheduler_.OnComputed(seq);
      ProcessRows(seq, inputs_[i], row);
      row += model::Model::LogitRows({&inputs_[i], 1}) * vocab_;
    }
    for (Sequence* seq : batch_.seqs) {
      if (seq->pending.final.has_value()) continue;  // pushed by Finish below
      if (seq->pending.token_ids.empty() && seq->pending.text.empty()) continue;
      Flush(seq);
    }
  }
  // Paging efficiency, measured before finishing sequences give their blocks back.
  int64_t kv_tokens = 0;
  for (const auto& seq : scheduler_.running()) kv_tokens += seq->num_computed;
  const int32_t kv_blocks_used = blocks_.num_used();
  for (Sequence* seq : finishing_) {
    Finish(seq, seq->pending.final->reason, seq->pending.final->error);
  }
  finishing_.clear();
  const Clock::time_point t3 = Clock::now();

  counters_.num_steps++;
  counters_.prompt_tokens += batch_.num_prefill_tokens;
  counters_.last_batch_seqs = static_cast<int32_t>(batch_.seqs.size());
  counters_.last_batch_tokens = batch_.num_prefill_tokens + batch_.num_decode_tokens;
  counters_.batch_seqs.Add(counters_.last_batch_seqs);
  counters_.batch_tokens.Add(counters_.last_batch_tokens);
  last_step_ = StepStats{
      .num_seqs = counters_.last_batch_seqs,
      .num_decode_seqs = batch_.num_decode_seqs,
      .num_prefill_tokens = batch_.num_prefill_tokens,
      .num_decode_tokens = batch_.num_decode_tokens,
      .schedule_s = Seconds(t0, t1),
      .forward_s = Seconds(t1, t2),
      .sample_s = Seconds(t2, t3),
      .step_s = Seconds(t0, t3),
      .num_kv_tokens = kv_tokens,
      .num_kv_blocks_used = kv_blocks_used,
  };
  if (options_.step_observer) options_.step_observer(last_step_);
  return true;
}

void EngineCore::ProcessRows(Sequence* seq, const model::SequenceInput& input, float* rows) {
  const int32_t n = static_cast<int32_t>(input.tokens.size());
  const int32_t num_rows = static_cast<int32_t>(model::Model::LogitRows({&input, 1}));
  if (num_rows == 0) return;
  const int32_t first_position =
      input.logits == model::LogitsMode::kAll ? input.cached : input.cached + n - 1;
  if (logits_observer_) {
    for (int32_t r = 0; r < num_rows; ++r) {
      logits_observer_(seq->id, first_position + r,
                       {rows + static_cast<int64_t>(r) * vocab_, static_cast<size_t>(vocab_)});
    }
  }
  const std::optional<int32_t>& top_n = seq->request.sampling.prompt_logprobs;
  if (input.logits == model::LogitsMode::kAll && top_n.has_value()) {
    for (int32_t r = 0; r < num_rows; ++r) {
      const int32_t target = first_position + r + 1;  // the prompt token these logits predict
      if (target >= seq->prompt_len) break;
      const int32_t next =
          seq->prompt_logprobs_from() + static_cast<int32_t>(seq->prompt_logprobs.size());
      if (target != next) continue;  // before `from`, or given before a preemption
      ComputeLogprobs({rows + static_cast<int64_t>(r) * vocab_, static_cast<size_t>(vocab_)},
                      seq->tokens[target], *top_n, &seq->prompt_logprobs.emplace_back());
    }
  }
  if (seq->num_computed == static_cast<int32_t>(seq->tokens.size())) {
    // Sampling overwrites the row: no one reads it after.
    SampleNext(seq, rows + static_cast<int64_t>(num_rows - 1) * vocab_);
  }
}

void EngineCore::AllowStopIds(const SamplingParams& params) {
  if (!params.ignore_eos) {
    for (int32_t t : info_.eos_token_ids) {
      if (t >= 0 && t < vocab_) json_ids_.push_back(t);
    }
  }
  json_ids_.insert(json_ids_.end(), params.stop_token_ids.begin(), params.stop_token_ids.end());
}

bool EngineCore::KeepAllowedIds(std::span<float> logits) {
  if (json_ids_.empty()) return false;
  // The sampler's [vocab] flags, all zero between its calls, mark the allowed ids.
  std::vector<char>& keep = scratch_.seen;
  for (int32_t t : json_ids_) keep[t] = 1;
  for (int32_t i = 0; i < vocab_; ++i) {
    if (keep[i] == 0) logits[i] = -std::numeric_limits<float>::infinity();
  }
  for (int32_t t : json_ids_) keep[t] = 0;
  return true;
}

bool EngineCore::MaskToJson(const Sequence& seq, bool suppress_stop, std::span<float> logits) {
  json_ids_.clear();
  if (seq.json.complete()) {
    if (suppress_stop) return false;
    AllowStopIds(seq.request.sampling);
  } else {
    AllowedJsonTokens(seq.json, *options_.token_bytes, &json_ids_);
  }
  return KeepAllowedIds(logits);
}

bool EngineCore::MaskToChoice(const Sequence& seq, bool suppress_stop, std::span<float> logits) {
  const SamplingParams& params = seq.request.sampling;
  const std::string& out = seq.choice_out;
  json_ids_.clear();
  // The choices the output so far begins, and whether it is one of them.
  bool whole = false;
  choice_live_.clear();
  for (const std::string& c : *params.choices) {
    if (c.size() < out.size() || c.compare(0, out.size(), out) != 0) continue;
    if (c.size() == out.size()) {
      whole = true;
    } else {
      choice_live_.push_back(std::string_view(c).substr(out.size()));
    }
  }
  if (!choice_live_.empty()) {
    // A token can only go on with a live choice's next byte: most are passed over on that.
    std::array<bool, 256> first{};
    for (std::string_view rest : choice_live_) first[static_cast<uint8_t>(rest[0])] = true;
    const TokenBytesTable& table = *options_.token_bytes;
    for (int32_t t = 0; t < vocab_; ++t) {
      const std::string& b = table.bytes(t);
      // Special tokens (no bytes) are not text: only EOS / stop ids, below.
      if (b.empty() || !first[static_cast<uint8_t>(b[0])]) continue;
      for (std::string_view rest : choice_live_) {
        if (rest.size() >= b.size() && rest.compare(0, b.size(), b) == 0) {
          json_ids_.push_back(t);
          break;
        }
      }
    }
  }
  if (whole && !suppress_stop) AllowStopIds(params);
  return KeepAllowedIds(logits);
}

bool EngineCore::MaskToRegex(const Sequence& seq, bool suppress_stop, std::span<float> logits) {
  const std::shared_ptr<const RegexDfa>& dfa = seq.request.sampling.regex;
  const uint32_t state = seq.regex_state;
  json_ids_.clear();
  if (!dfa->final(state)) {
    regex_cache_.Get(
        dfa, state, /*key_words=*/0,
        [&](std::vector<int32_t>* allowed) {
          // A token can only go on with a byte the state takes: most are passed over on that.
          std::array<bool, 256> first{};
          for (int b = 0; b < 256; ++b) {
            first[b] = dfa->Next(state, static_cast<uint8_t>(b)) != RegexDfa::kDead;
          }
          const TokenBytesTable& table = *options_.token_bytes;
          for (int32_t t = 0; t < vocab_; ++t) {
            const std::string& b = table.bytes(t);
            // Special tokens (no bytes) are not text: only EOS / stop ids, below.
            if (b.empty() || !first[static_cast<uint8_t>(b[0])]) continue;
            if (dfa->Walk(state, b) != RegexDfa::kDead) allowed->push_back(t);
          }
        },
        &json_ids_);
  }
  if (dfa->accepting(state) && !suppress_stop) AllowStopIds(seq.request.sampling);
  return KeepAllowedIds(logits);
}

bool EngineCore::MaskToGrammar(const Sequence& seq, bool suppress_stop, std::span<float> logits) {
  const GrammarState& state = seq.grammar_state;
  json_ids_.clear();
  if (!state.final()) {
    // The state kept as the key counts too (a deep one holds many positions).
    grammar_cache_.Get(
        seq.request.sampling.grammar, state, state.size_words(),
        [&](std::vector<int32_t>* allowed) {
          AllowedGrammarTokens(state, *options_.token_bytes, allowed);
        },
        &json_ids_);
  }
  if (state.accepting() && !suppress_stop) AllowStopIds(seq.request.sampling);
  return KeepAllowedIds(logits);
}

void EngineCore::SampleNext(Sequence* seq, float* row) {
  const SamplingParams& params = seq->request.sampling;
  RequestOutput& out = seq->pending;
  if (seq->num_generated() >= params.max_tokens) {  // max_tokens 0: prompt scoring only
    out.final.emplace().reason = FinishReason::kLength;
    finishing_.push_back(seq);
    return;
  }
  const std::span<float> logits(row, static_cast<size_t>(vocab_));
  if (params.logprobs.has_value()) std::copy(logits.begin(), logits.end(), raw_row_.begin());
  const std::span<const int32_t> all(seq->tokens);
  const SampleContext ctx{
      .params = &params,
      .prompt = all.first(seq->prompt_len),
      .output = all.subspan(seq->prompt_len),
      .eos_ids = info_.eos_token_ids,
      .suppress_stop = seq->num_generated() < params.min_tokens,
  };
  // The output ends here, with no token: in JSON mode when no token may follow (or, should
  // the sampler ever pick one, when the token would break the object), and likewise for the
  // other constraints below.
  const auto end_output = [&] {
    out.final.emplace().reason = FinishReason::kStop;
    FlushText(seq, seq->tokens);
    finishing_.push_back(seq);
  };
  if (seq->json_mode() && !MaskToJson(*seq, ctx.suppress_stop, logits)) return end_output();
  // A choice: likewise, the output ends when no token may follow (a whole choice that
  // nothing longer goes on from, under ignore_eos or min_tokens).
  if (seq->choice_mode() && !MaskToChoice(*seq, ctx.suppress_stop, logits)) return end_output();
  if (seq->regex_mode() && !MaskToRegex(*seq, ctx.suppress_stop, logits)) return end_output();
  if (seq->grammar_mode() && !MaskToGrammar(*seq, ctx.suppress_stop, logits)) return end_output();
  const int32_t token = SampleToken(ctx, logits, seq->rng, scratch_);
  // Masks that leave no token (allowed_token_ids of only EOS while min_tokens holds EOS back,
  // say): the argmax of an all -inf row is a token no mask allowed, so the output ends here
  // instead, as when a structured output admits nothing more.
  if (logits[token] == -std::numeric_limits<float>::infinity()) return end_output();
  if (seq->choice_mode()) {
    // An allowed token: after a whole choice, EOS or a stop id (handled below as for any
    // output); else a choice's next bytes. Anything else (a NaN row's argmax) ends the output.
    const std::vector<std::string>& choices = *params.choices;
    const bool whole = std::find(choices.begin(), choices.end(), seq->choice_out) != choices.end();
    const bool stop_id = Contains(info_.eos_token_ids, token) ||
                         Contains(std::span<const int32_t>(params.stop_token_ids), token);
    if (!(whole && stop_id)) {
      const std::string& b = options_.token_bytes->bytes(token);
      const std::string& out = seq->choice_out;
      const bool goes_on = std::any_of(choices.begin(), choices.end(), [&](const std::string& c) {
        return c.size() >= out.size() + b.size() && c.compare(0, out.size(), out) == 0 &&
               c.compare(out.size(), b.size(), b) == 0;
      });
      if (b.empty() || !goes_on) return end_output();
      seq->choice_out += b;  // within the capacity MakeSequence reserved
    }
  }
  if (seq->regex_mode()) {
    // An allowed token: after a match, EOS or a stop id (handled below as for any output);
    // else bytes that keep it a prefix of one. Anything else (a NaN row's argmax) ends it.
    const RegexDfa& dfa = *params.regex;
    const bool stop_id = Contains(info_.eos_token_ids, token) ||
                         Contains(std::span<const int32_t>(params.stop_token_ids), token);
    if (!(dfa.accepting(seq->regex_state) && stop_id)) {
      const std::string& b = options_.token_bytes->bytes(token);
      const uint32_t next = dfa.Walk(seq->regex_state, b);
      if (b.empty() || next == RegexDfa::kDead) return end_output();
      seq->regex_state = next;
    }
  }
  if (seq->grammar_mode()) {
    // As for a regex: after a whole sentence, EOS or a stop id; else bytes that keep the
    // output a prefix of one. Anything else (a NaN row's argmax) ends it.
    const bool stop_id = Contains(info_.eos_token_ids, token) ||
                         Contains(std::span<const int32_t>(params.stop_token_ids), token);
    if (!(seq->grammar_state.accepting() && stop_id)) {
      // Fed in place: a state Feed refuses is never used again, the output ends.
      const std::string& b = options_.token_bytes->bytes(token);
      if (b.empty() || !seq->grammar_state.Feed(b)) return end_output();
    }
  }
  if (seq->json_mode() && !seq->json.complete()) {
    // An allowed token: MaskToJson left at least one, and a NaN row's argmax is one of them
    // only if the model gave it a number.
    JsonState next = seq->json;
    if (!next.Feed(options_.token_bytes->bytes(token))) return end_output();
    seq->json = next;
  }
  seq->tokens.push_back(token);
  ++counters_.generation_tokens;
  if (!seq->has_first_token) {
    seq->has_first_token = true;
    seq->first_token_time = Clock::now();
  }
  out.token_ids.push_back(token);
  if (params.logprobs.has_value()) {
    ComputeLogprobs(raw_row_, token, *params.logprobs, &out.logprobs.emplace_back());
  }

  const bool past_min = seq->num_generated() >= params.min_tokens;
  const std::span<const int32_t> stops(params.stop_token_ids);
  if (past_min &&
      ((!params.ignore_eos && Contains(info_.eos_token_ids, token)) || Contains(stops, token))) {
    // The stop token's own text is not part of the output, unless asked for.
    FinalInfo& final = out.final.emplace();
    final.reason = FinishReason::kStop;
    final.stop_token = token;
    FlushText(seq, std::span<const int32_t>(seq->tokens)
                       .first(seq->tokens.size() - (params.include_stop_str_in_output ? 0 : 1)));
    finishing_.push_back(seq);
    return;
  }
  if (seq->want_text) {
    text_.clear();
    seq->detok.Step(options_.detokenize, seq->tokens, &text_);
    const int hit = seq->stop_matcher.Feed(text_, params.stop, past_min, &out.text,
                                           params.include_stop_str_in_output);
    if (hit >= 0) {
      FinalInfo& final = out.final.emplace();
      final.reason = FinishReason::kStop;
      final.stop_string = params.stop[hit];
      finishing_.push_back(seq);
      return;
    }
  }
  if (seq->num_generated() >= params.max_tokens ||
      static_cast<int32_t>(seq->tokens.size()) >= info_.max_model_len) {
    out.final.emplace().reason = FinishReason::kLength;
    FlushText(seq, seq->tokens);
    finishing_.push_back(seq);
  }
}

void EngineCore::FlushText(Sequence* seq, std::span<const int32_t> tokens) {
  if (!seq->want_text) return;
  RequestOutput& out = seq->pending;
  const SamplingParams& params = seq->request.sampling;
  text_.clear();
  seq->detok.Flush(options_.detokenize, tokens, &text_);
  const bool past_min = seq->num_generated() >= params.min_tokens;
  const int hit = seq->stop_matcher.Feed(text_, params.stop, past_min, &out.text,
                                         params.include_stop_str_in_output);
  if (hit >= 0) {
    out.final->reason = FinishReason::kStop;
    out.final->stop_string = params.stop[hit];
    return;
  }
  seq->stop_matcher.Flush(&out.text);
}

void EngineCore::Flush(Sequence* seq) {
  RequestOutput& out = seq->pending;
  out.id = seq->id;
  if (!seq->prompt_logprobs_sent && seq->request.sampling.prompt_logprobs.has_value()) {
    out.prompt_logprobs = std::move(seq->prompt_logprobs);
    seq->prompt_logprobs_sent = true;
  }
  seq->stream->Push(std::move(out), seq->request.on_output);
  out.token_ids.clear();
  out.text.clear();
  out.logprobs.clear();
  out.prompt_logprobs.clear();
  out.final.reset();
}

void EngineCore::Finish(Sequence* seq, FinishReason reason, absl::Status error) {
  const Clock::time_point now = Clock::now();
  FinalInfo& f =
      seq->pending.final.has_value() ? *seq->pending.final : seq->pending.final.emplace();
  f.reason = reason;
  f.error = std::move(error);
  f.prompt_tokens = seq->prompt_len;
  f.generated_tokens = seq->num_generated();
  f.cached_prompt_tokens = seq->cached_prompt_tokens;
  f.num_preemptions = seq->num_preemptions;
  RequestTimings& t = f.timings;
  t.e2e_s = Seconds(seq->arrival_time, now);
  if (seq->scheduled_once) t.queue_s = Seconds(seq->arrival_time, seq->first_scheduled_time);
  if (seq->has_first_token) {
    t.ttft_s = Seconds(seq->arrival_time, seq->first_token_time);
    t.prefill_s = Seconds(seq->first_scheduled_time, seq->first_token_time);
    t.decode_s = Seconds(seq->first_token_time, now);
  } else if (seq->scheduled_once) {
    t.prefill_s = Seconds(seq->first_scheduled_time, now);
  }
  // The request stops being live (Abort answers false) before its final output is pushed:
  // a client that has seen the end can never be told its abort took effect.
  if (on_finished_) on_finished_(seq->id);
  Flush(seq);
  scheduler_.Remove(seq);  // releases the blocks; the sequence is destroyed here
  ++counters_.requests_finished;
}

void EngineCore::FinishAll(FinishReason reason) {
  std::vector<Sequence*> all;
  for (const auto* list : {&scheduler_.running(), &scheduler_.waiting()}) {
    for (const auto& seq : *list) all.push_back(seq.get());
  }
  for (Sequence* seq : all) Finish(seq, reason);
}

}  // namespace spanserve::engine
