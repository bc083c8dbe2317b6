#include "runtime/engine/engine.h"

#include <atomic>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <utility>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "common/status.h"
#include "runtime/engine/engine_core.h"
#include "runtime/model/model.h"

namespace spanserve::engine {

struct Engine::State {
  std::unique_ptr<model::Model> model;
  std::unique_ptr<EngineCore> core;
  std::thread thread;

  // Submit → engine thread. Guarded by mu.
  std::mutex mu;
  std::condition_variable wake;
  std::vector<std::unique_ptr<Sequence>> inbox;
  std::vector<std::unique_ptr<Sequence>> draining;  // engine thread only: swapped with inbox
  bool stopping = false;
  bool stopped = false;
  RequestId next_id = 1;
  uint64_t seed_state = 0;
  // Requests submitted and not yet finished, for Abort.
  absl::flat_hash_map<RequestId, std::shared_ptr<RequestStream>> live;
  // Waiting requests as of the last step (inbox excluded), for the admission bound.
  int32_t core_waiting = 0;
  int64_t submitted = 0;

  // Engine thread → readers.
  mutable std::mutex stats_mu;
  EngineStats stats;
  ExpertLoadSnapshot expert_load;

  void Run();
  void PublishStats();
};

namespace {

uint64_t NextSeed(uint64_t& state) {  // splitmix64
  uint64_t z = (state += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

}  // namespace

void Engine::State::Run() {
  draining.reserve(1024);
  for (;;) {
    {
      std::unique_lock lock(mu);
      wake.wait(lock, [&] { return stopping || !inbox.empty() || core->has_work(); });
      if (stopping) break;
      draining.swap(inbox);
      // They wait in the core now; count them until the step's stats replace the figure.
      core_waiting += static_cast<int32_t>(draining.size());
    }
    for (auto& seq : draining) core->Add(std::move(seq));
    draining.clear();
    core->Step();
    PublishStats();
  }
  core->FinishAll(FinishReason::kCancelled);
  std::vector<std::unique_ptr<Sequence>> left;
  {
    std::lock_guard lock(mu);
    left.swap(inbox);
  }
  for (auto& seq : left) core->Add(std::move(seq));
  core->FinishAll(FinishReason::kCancelled);
  PublishStats();
}

void Engine::State::PublishStats() {
  const Scheduler& s = core->scheduler();
  const BlockManager& b = core->blocks();
  const CoreCounters& c = core->counters();
  int32_t waiting = static_cast<int32_t>(s.waiting().size());
  int64_t num_submitted = 0;
  {
    std::lock_guard lock(mu);
    core_waiting = waiting;
    waiting += static_cast<int32_t>(inbox.size());
    num_submitted = submitted;
  }
  const model::ExpertLoad& load = core->model().expert_load();
  std::lock_guard lock(stats_mu);
  stats.num_running = static_cast<int32_t>(s.running().size());
  stats.num_waiting = waiting;
  stats.kv_blocks_total = b.num_blocks();
  stats.kv_blocks_used = b.num_used();
  stats.kv_blocks_cached = b.num_cached_free();
  stats.kv_cache_usage_ratio = static_cast<double>(b.num_used()) / b.num_blocks();
  stats.num_preemptions = s.num_preemptions();
  stats.prefix_cache_queries = s.prefix_cache_queries();
  stats.prefix_cache_hits = s.prefix_cache_hits();
  stats.num_steps = c.num_steps;
  stats.prompt_tokens = c.prompt_tokens;
  stats.generation_tokens = c.generation_tokens;
  stats.requests_submitted = num_submitted;
  stats.requests_finished = c.requests_finished;
  stats.last_batch_seqs = c.last_batch_seqs;
  stats.last_batch_tokens = c.last_batch_tokens;
  stats.batch_seqs = c.batch_seqs;
  stats.batch_tokens = c.batch_tokens;
  // Same size every time: assign reuses the storage after the first copy.
  if (c.residual_rms_samples > 0) {
    stats.residual_rms.assign(c.residual_rms.begin(), c.residual_rms.end());
  }
  stats.residual_rms_samples = c.residual_rms_samples;
  // Same shape every time after the first copy: assign reuses the storage.
  expert_load.layer_ids.assign(load.layer_ids.begin(), load.layer_ids.end());
  expert_load.tokens.resize(load.tokens.size());
  for (size_t i = 0; i < load.tokens.size(); ++i) {
    expert_load.tokens[i].assign(load.tokens[i].begin(), load.tokens[i].end());
  }
}

Engine::Engine(std::unique_ptr<State> state) : state_(std::move(state)) {}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(std::unique_ptr<model::Model> model,
                                                       const EngineOptions& options) {
  if (model == nullptr) return absl::InvalidArgumentError("no model");
  auto state = std::make_unique<State>();
  ASSIGN_OR_RETURN(state->core, EngineCore::Create(model.get(), options));
  state->model = std::move(model);
  state->seed_state = options.seed;
  State* s = state.get();
  s->core->set_on_finished([s](RequestId id) {
    std::lock_guard lock(s->mu);
    s->live.erase(id);
  });
  s->PublishStats();
  s->thread = std::thread([s] { s->Run(); });
  return std::unique_ptr<Engine>(new Engine(std::move(state)));
}

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const std::string& model_dir,
                                                       const EngineOptions& options,
                                                       int num_threads) {
  ASSIGN_OR_RETURN(
      auto model, model::Model::Load(model_dir, model::Model::Options{.num_threads = num_threads}));
  return Create(std::move(model), options);
}

Engine::~Engine() { Shutdown(); }

void Engine::Shutdown() {
  {
    std::lock_guard lock(state_->mu);
    if (state_->stopped) return;
    state_->stopping = true;
    state_->stopped = true;
  }
  state_->wake.notify_all();
  if (state_->thread.joinable()) state_->thread.join();
}

absl::StatusOr<RequestHandle> Engine::Submit(Request request) {
  RETURN_IF_ERROR(state_->core->ValidateRequest(request));
  const int32_t max_waiting = state_->core->options().max_waiting_requests;
  RequestId id;
  uint64_t seed;
  {
    std::lock_guard lock(state_->mu);
    if (state_->stopping) return absl::UnavailableError("the engine is shutting down");
    const int32_t waiting = state_->core_waiting + static_cast<int32_t>(state_->inbox.size());
    if (waiting >= max_waiting) {
      return absl::ResourceExhaustedError(
          absl::StrCat("the waiting queue is full (", max_waiting, " requests); retry later"));
    }
    id = state_->next_id++;
    seed = NextSeed(state_->seed_state);
  }
  // Built outside the lock: it allocates.
  auto stream = std::make_shared<RequestStream>(id);
  auto seq = state_->core->MakeSequence(id, std::move(request), stream, seed);
  {
    std::lock_guard lock(state_->mu);
    if (state_->stopping) return absl::UnavailableError("the engine is shutting down");
    state_->live.emplace(id, stream);
    state_->inbox.push_back(std::move(seq));
    ++state_->submitted;
  }
  state_->wake.notify_one();
  return RequestHandle{id, std::move(stream)};
}

bool Engine::Abort(RequestId id) {
  std::lock_guard lock(state_->mu);
  auto it = state_->live.find(id);
  if (it == state_->live.end()) return false;
  it->second->Cancel();
  state_->wake.notify_one();
  return true;
}

EngineStats Engine::Stats() const {
  std::lock_guard lock(state_->stats_mu);
  EngineStats s = state_->stats;
  return s;
}

ExpertLoadSnapshot Engine::ExpertLoad() const {
  std::lock_guard lock(state_->stats_mu);
  return state_->expert_load;
}

const EngineInfo& Engine::info() const { return state_->core->info(); }

}  // namespace spanserve::engine
