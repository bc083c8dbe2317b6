// The threaded engine's API: validation, admission, concurrency, cancellation, deadlines,
// callbacks, stats and shutdown.
#include "runtime/engine/engine.h"

#include <atomic>
#include <chrono>
#include <future>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "runtime/model/model.h"
#include "test_model.h"

namespace spanserve::engine {
namespace {

using testing::Collected;
using ::testing::HasSubstr;

EngineOptions Options() {
  EngineOptions o;
  o.num_kv_blocks = 128;
  o.max_batched_tokens = 64;
  o.detokenize = testing::FakeDecode;
  return o;
}

std::unique_ptr<Engine> MakeEngine(const EngineOptions& options = Options()) {
  auto engine = Engine::Create(testing::TinyModelDir(), options, /*num_threads=*/1);
  EXPECT_TRUE(engine.ok()) << engine.status();
  return std::move(*engine);
}

Request Greedy(std::vector<int32_t> prompt, int32_t max_tokens) {
  Request r;
  r.prompt = std::move(prompt);
  r.sampling.temperature = 0;
  r.sampling.max_tokens = max_tokens;
  r.sampling.ignore_eos = true;
  return r;
}

// Waits (bounded) until the engine has no request and its pool is whole.
void ExpectIdleAndWhole(const Engine& engine) {
  EngineStats s;
  for (int i = 0; i < 2000; ++i) {
    s = engine.Stats();
    if (s.num_running == 0 && s.num_waiting == 0 && s.kv_blocks_used == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(s.num_running, 0);
  EXPECT_EQ(s.num_waiting, 0);
  EXPECT_EQ(s.kv_blocks_used, 0);
}

TEST(EngineTest, InfoDescribesTheModelAndPool) {
  auto engine = MakeEngine();
  const EngineInfo& info = engine->info();
  EXPECT_EQ(info.vocab_size, 97);
  EXPECT_EQ(info.max_model_len, 128);
  EXPECT_EQ(info.num_kv_blocks, 128);
  EXPECT_EQ(info.block_size, 16);
  EXPECT_GT(info.kv_cache_bytes, 0);
  EXPECT_EQ(info.eos_token_ids, std::vector<int32_t>{2});
}

// The fallback for a checkout without the golden models: a random model written here.
TEST(EngineTest, RunsOnTheGeneratedFallbackModel) {
  auto engine = Engine::Create(testing::TinyModelDir("__generated__"), Options(), 1);
  ASSERT_TRUE(engine.ok()) << engine.status();
  auto h = (*engine)->Submit(Greedy({1, 2, 3}, 5));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(testing::Drain(*h->stream).tokens.size(), 5u);
}

TEST(EngineTest, CreateRejectsBadOptions) {
  EngineOptions o = Options();
  o.num_kv_blocks = 7;  // 128 tokens need 8 blocks
  auto e = Engine::Create(testing::TinyModelDir(), o, 1);
  EXPECT_EQ(e.status().code(), absl::StatusCode::kResourceExhausted);
  o = Options();
  o.enable_chunked_prefill = false;
  o.max_batched_tokens = 64;
  EXPECT_THAT(Engine::Create(testing::TinyModelDir(), o, 1).status().message(),
              HasSubstr("max_batched_tokens"));
  o = Options();
  o.max_model_len = 4096;
  EXPECT_THAT(Engine::Create(testing::TinyModelDir(), o, 1).status().message(),
              HasSubstr("max_position_embeddings"));
  o = Options();
  o.num_kv_blocks = 0;
  o.kv_cache_bytes = 1 << 20;  // sized in bytes
  auto sized = Engine::Create(testing::TinyModelDir(), o, 1);
  ASSERT_TRUE(sized.ok()) << sized.status();
  EXPECT_LE((*sized)->info().kv_cache_bytes, 1 << 20);
}

TEST(EngineTest, SubmitRejectsBadRequestsWithInvalidArgument) {
  auto engine = MakeEngine();
  auto code_and_message = [&](Request r) { return engine->Submit(std::move(r)).status(); };
  absl::Status st = code_and_message(Greedy({}, 4));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("empty"));
  st = code_and_message(Greedy({1, 97}, 4));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("vocabulary"));
  st = code_and_message(Greedy(std::vector<int32_t>(128, 5), 4));  // no room for a token
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("too long"));
  st = code_and_message(Greedy(std::vector<int32_t>(1000, 5), 4));
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  Request r = Greedy({1, 2}, 4);
  r.sampling.top_p = 7;
  st = code_and_message(r);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("top_p"));
  // Scoring a full-context prompt without generating is fine.
  Request score = Greedy(std::vector<int32_t>(128, 5), 0);
  auto h = engine->Submit(score);
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(testing::Drain(*h->stream).final.reason, FinishReason::kLength);
}

TEST(EngineTest, StopStringsNeedADetokenizer) {
  EngineOptions o = Options();
  o.detokenize = nullptr;
  auto engine = MakeEngine(o);
  Request r = Greedy({1, 2, 3}, 4);
  r.sampling.stop = {"x"};
  EXPECT_THAT(engine->Submit(r).status().message(), HasSubstr("detokenizer"));
}

TEST(EngineTest, FullWaitingQueueAnswersResourceExhausted) {
  EngineOptions o = Options();
  o.max_num_seqs = 1;
  o.max_waiting_requests = 2;
  auto engine = MakeEngine(o);
  // The first request's output callback holds the engine thread until every submission is
  // made, so no request can finish (and free its place) while the queue is being filled,
  // however the threads are scheduled.
  std::atomic<bool> release{false};
  std::atomic<int> first_finals{0};
  std::atomic<bool> first_by_length{false};
  Request first = Greedy({5, 6, 7}, 100);
  first.on_output = [&](RequestOutput&& out) {
    while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    if (out.final.has_value()) {
      first_finals.fetch_add(1);
      first_by_length.store(out.final->reason == FinishReason::kLength);
    }
  };
  ASSERT_TRUE(engine->Submit(std::move(first)).ok());
  std::vector<RequestHandle> accepted;
  int rejected = 0;
  for (int i = 1; i < 12; ++i) {
    auto h = engine->Submit(Greedy({5, 6, 7}, 100));
    if (h.ok()) {
      accepted.push_back(*h);
    } else {
      EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted) << h.status();
      ++rejected;
    }
  }
  release.store(true);
  // At most one running and two waiting: of the 12, at least 9 were turned away.
  EXPECT_GE(rejected, 9);
  EXPECT_LE(accepted.size(), 2u);
  for (RequestHandle& h : accepted) {
    const Collected c = testing::Drain(*h.stream);
    EXPECT_EQ(c.num_finals, 1);
    EXPECT_EQ(c.final.reason, FinishReason::kLength);
  }
  for (int i = 0; i < 10000 && first_finals.load() == 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(first_finals.load(), 1);
  EXPECT_TRUE(first_by_length.load());
  ExpectIdleAndWhole(*engine);
}

TEST(EngineTest, ConcurrentSubmittersGetBatchInvariantOutputs) {
  auto engine = MakeEngine();
  auto prompt = [](int i) {
    std::vector<int32_t> p;
    for (int j = 0; j < 3 + i % 20; ++j) p.push_back(3 + (i * 7 + j * 13) % 90);
    return p;
  };
  // Alone first.
  std::vector<std::vector<int32_t>> alone(32);
  for (int i = 0; i < 32; ++i) {
    auto h = engine->Submit(Greedy(prompt(i), 10));
    ASSERT_TRUE(h.ok());
    alone[i] = testing::Drain(*h->stream).tokens;
  }
  std::vector<std::vector<int32_t>> together(32);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::vector<RequestHandle> mine;
      for (int i = t; i < 32; i += 4) mine.push_back(*engine->Submit(Greedy(prompt(i), 10)));
      for (size_t k = 0; k < mine.size(); ++k) {
        together[t + 4 * k] = testing::Drain(*mine[k].stream).tokens;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(alone, together);
  ExpectIdleAndWhole(*engine);
  const EngineStats s = engine->Stats();
  EXPECT_EQ(s.requests_submitted, 64);
  EXPECT_EQ(s.requests_finished, 64);
  EXPECT_EQ(s.generation_tokens, 640);
  EXPECT_GT(s.prefix_cache_hits, 0);  // the second round found the first round's prompts
  EXPECT_GT(s.num_steps, 0);
}

TEST(EngineTest, AbortFinishesWithCancelledAndFreesBlocks) {
  auto engine = MakeEngine();
  // The callback holds the engine thread inside its first step until Abort has been
  // called, so the abort lands mid-request however fast the model is.
  std::promise<void> aborted;
  std::shared_future<void> aborted_f = aborted.get_future().share();
  std::mutex mu;
  Collected c;
  std::atomic<bool> done{false};
  Request r = Greedy(std::vector<int32_t>(40, 9), 80);
  r.on_output = [&](RequestOutput&& out) {
    aborted_f.wait();
    std::lock_guard lock(mu);
    const bool final = out.final.has_value();
    testing::Accumulate(std::move(out), &c);
    if (final) done = true;
  };
  auto h = engine->Submit(r);
  ASSERT_TRUE(h.ok());
  // A second request, cancelled by its consumer through the stream.
  auto h2 = engine->Submit(Greedy(std::vector<int32_t>(40, 9), 80));
  ASSERT_TRUE(h2.ok());
  h2->stream->Cancel();
  EXPECT_TRUE(engine->Abort(h->id));
  aborted.set_value();
  for (int i = 0; i < 5000 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(done);
  {
    std::lock_guard lock(mu);
    EXPECT_EQ(c.num_finals, 1);
    EXPECT_EQ(c.final.reason, FinishReason::kCancelled);
    EXPECT_LE(c.final.generated_tokens, 1);
  }
  EXPECT_FALSE(engine->Abort(h->id));  // already finished
  EXPECT_FALSE(engine->Abort(987654));
  ExpectIdleAndWhole(*engine);
  EXPECT_EQ(testing::Drain(*h2->stream).final.reason, FinishReason::kCancelled);
  ExpectIdleAndWhole(*engine);
}

// A request whose final output was delivered is no longer live: Abort answers false from
// the moment the consumer can see the end (it once answered true for a moment after).
TEST(EngineTest, AbortAfterTheFinalOutputIsFalse) {
  auto engine = MakeEngine();
  for (int i = 0; i < 20; ++i) {
    std::promise<bool> abort_result;
    Request r = Greedy({3, 1, 4}, 2);
    RequestId id = 0;
    std::promise<RequestId> id_promise;
    std::shared_future<RequestId> id_f = id_promise.get_future().share();
    r.on_output = [&](RequestOutput&& out) {
      if (out.final.has_value()) abort_result.set_value(engine->Abort(id_f.get()));
    };
    auto h = engine->Submit(r);
    ASSERT_TRUE(h.ok());
    id = h->id;
    id_promise.set_value(id);
    EXPECT_FALSE(abort_result.get_future().get()) << "request " << id << " had finished";
  }
  ExpectIdleAndWhole(*engine);
}

TEST(EngineTest, PassedDeadlineFinishesWithDeadline) {
  auto engine = MakeEngine();
  Request r = Greedy({5, 6, 7}, 50);
  r.deadline = Clock::now() - std::chrono::milliseconds(1);
  auto h = engine->Submit(r);
  ASSERT_TRUE(h.ok());
  const Collected c = testing::Drain(*h->stream);
  EXPECT_EQ(c.num_finals, 1);
  EXPECT_EQ(c.final.reason, FinishReason::kDeadline);
  EXPECT_TRUE(c.tokens.empty());
  ExpectIdleAndWhole(*engine);
}

TEST(EngineTest, CallbackReceivesEveryOutputAndOneFinal) {
  auto engine = MakeEngine();
  std::mutex mu;
  Collected c;
  std::atomic<bool> done{false};
  Request r = Greedy({3, 1, 4, 1, 5}, 12);
  r.sampling.logprobs = 1;
  r.on_output = [&](RequestOutput&& out) {
    std::lock_guard lock(mu);
    const bool final = out.final.has_value();
    testing::Accumulate(std::move(out), &c);
    if (final) done = true;
  };
  auto h = engine->Submit(r);
  ASSERT_TRUE(h.ok());
  for (int i = 0; i < 5000 && !done; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  ASSERT_TRUE(done);
  std::lock_guard lock(mu);
  EXPECT_EQ(c.num_finals, 1);
  EXPECT_EQ(c.tokens.size(), 12u);
  EXPECT_EQ(c.logprobs.size(), 12u);
  EXPECT_EQ(c.text, testing::FakeDecode(c.tokens));
  EXPECT_FALSE(h->stream->TryNext().has_value());  // nothing queued on the stream
  const RequestTimings& t = c.final.timings;
  EXPECT_GT(t.e2e_s, 0);
  EXPECT_GT(t.ttft_s, 0);
  EXPECT_LE(t.ttft_s, t.e2e_s);
  EXPECT_LE(t.queue_s, t.ttft_s);
  EXPECT_GE(t.decode_s, 0);
  EXPECT_EQ(c.final.prompt_tokens, 5);
  EXPECT_EQ(c.final.generated_tokens, 12);
}

TEST(EngineTest, ShutdownCancelsWhatIsInFlight) {
  auto engine = MakeEngine();
  std::vector<RequestHandle> handles;
  for (int i = 0; i < 8; ++i) handles.push_back(*engine->Submit(Greedy({5, 6, 7}, 120)));
  engine->Shutdown();
  for (RequestHandle& h : handles) {
    const Collected c = testing::Drain(*h.stream);
    EXPECT_EQ(c.num_finals, 1);
    EXPECT_TRUE(c.final.reason == FinishReason::kCancelled ||
                c.final.reason == FinishReason::kLength);
  }
  EXPECT_EQ(engine->Submit(Greedy({5}, 1)).status().code(), absl::StatusCode::kUnavailable);
  engine->Shutdown();  // idempotent
}

TEST(EngineTest, StepObserverSeesEveryStep) {
  std::atomic<int> steps{0};
  std::atomic<int> tokens{0};
  EngineOptions o = Options();
  o.step_observer = [&](const StepStats& s) {
    ++steps;
    tokens += s.num_prefill_tokens + s.num_decode_tokens;
    EXPECT_LE(s.schedule_s, s.step_s);
  };
  auto engine = MakeEngine(o);
  auto h = engine->Submit(Greedy({1, 2, 3, 4}, 5));
  ASSERT_TRUE(h.ok());
  testing::Drain(*h->stream);
  ExpectIdleAndWhole(*engine);
  EXPECT_EQ(steps.load(), 5);  // one prefill step (it samples the first token) + 4 decodes
  EXPECT_EQ(tokens.load(), 4 + 4);
}

TEST(EngineTest, StepHistogramsCountEveryStepExactly) {
  EXPECT_EQ(StepHistogram::BucketOf(0), 0);
  EXPECT_EQ(StepHistogram::BucketOf(1), 0);
  EXPECT_EQ(StepHistogram::BucketOf(2), 1);
  EXPECT_EQ(StepHistogram::BucketOf(3), 2);
  EXPECT_EQ(StepHistogram::BucketOf(4), 2);
  EXPECT_EQ(StepHistogram::BucketOf(5), 3);
  EXPECT_EQ(StepHistogram::BucketOf(int64_t{1} << 40), StepHistogram::kBuckets - 1);
  auto engine = MakeEngine();
  auto h = engine->Submit(Greedy({1, 2, 3, 4, 5, 6}, 4));
  ASSERT_TRUE(h.ok());
  testing::Drain(*h->stream);
  ExpectIdleAndWhole(*engine);
  const EngineStats s = engine->Stats();
  EXPECT_EQ(s.batch_seqs.count, s.num_steps);
  EXPECT_EQ(s.batch_seqs.sum, s.num_steps);  // one sequence per step
  EXPECT_EQ(s.batch_seqs.counts[0], s.num_steps);
  EXPECT_EQ(s.batch_tokens.count, 4);  // prefill (6 tokens) + 3 decodes
  EXPECT_EQ(s.batch_tokens.sum, 6 + 3);
  EXPECT_EQ(s.batch_tokens.counts[0], 3);  // the decodes: 1 token each
  EXPECT_EQ(s.batch_tokens.counts[3], 1);  // 4 < 6 <= 8
  EXPECT_TRUE(s.residual_rms.empty());     // sampling is off by default
  EXPECT_EQ(s.residual_rms_samples, 0);
}

TEST(EngineTest, ResidualRmsIsSampledEveryNSteps) {
  EngineOptions o = Options();
  o.residual_rms_every_n_steps = -1;
  EXPECT_THAT(Engine::Create(testing::TinyModelDir(), o, 1).status().message(),
              HasSubstr("residual_rms_every_n_steps"));
  o.residual_rms_every_n_steps = 2;
  auto engine = MakeEngine(o);
  auto h = engine->Submit(Greedy({1, 2, 3, 4}, 5));
  ASSERT_TRUE(h.ok());
  const std::vector<int32_t> sampled = testing::Drain(*h->stream).tokens;
  ExpectIdleAndWhole(*engine);
  const EngineStats s = engine->Stats();
  EXPECT_EQ(s.num_steps, 5);
  EXPECT_EQ(s.residual_rms_samples, 3);  // steps 0, 2 and 4
  ASSERT_EQ(static_cast<int>(s.residual_rms.size()), engine->info().num_layers);
  for (double v : s.residual_rms) EXPECT_GT(v, 0);
  // The output is the same as without sampling.
  auto plain = MakeEngine();
  auto p = plain->Submit(Greedy({1, 2, 3, 4}, 5));
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(testing::Drain(*p->stream).tokens, sampled);
}

}  // namespace
}  // namespace spanserve::engine
