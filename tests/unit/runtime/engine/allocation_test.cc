// The step loop allocates nothing in steady state. A consumer that takes ownership of an
// output (as RequestStream's queue does) leaves the engine one token-id vector to allocate
// per request per step.
#include <atomic>
#include <cstdlib>
#include <new>

#include "gtest/gtest.h"
#include "runtime/engine/engine_core.h"
#include "test_model.h"

namespace {
thread_local bool g_counting = false;
std::atomic<int64_t> g_allocations{0};
}  // namespace

void* operator new(std::size_t n) {
  if (g_counting) g_allocations.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }

namespace spanserve::engine {
namespace {

// `residual_rms_every_n_steps`: residual-stream sampling (0: off) must not allocate either.
void ExpectSteadyStateAllocatesOnlyTheOutputs(int32_t residual_rms_every_n_steps) {
  auto model = model::Model::Load(testing::TinyModelDir(), {.num_threads = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  EngineOptions o;
  o.num_kv_blocks = 64;
  o.max_batched_tokens = 64;
  o.max_num_seqs = 8;
  o.residual_rms_every_n_steps = residual_rms_every_n_steps;
  auto core = EngineCore::Create(model->get(), o);
  ASSERT_TRUE(core.ok()) << core.status();
  constexpr int kSeqs = 8;
  bool take = false;
  for (int i = 0; i < kSeqs; ++i) {
    Request r;
    r.prompt = {5, 6, 7, static_cast<int32_t>(10 + i)};
    r.sampling.temperature = 0.7f;
    r.sampling.top_p = 0.9f;
    r.sampling.seed = i;
    r.sampling.max_tokens = 60;
    r.sampling.ignore_eos = true;
    // Looks at the output without taking it, until `take` is set.
    r.on_output = [&take](RequestOutput&& out) {
      if (take) RequestOutput owned = std::move(out);
    };
    (*core)->Add(
        (*core)->MakeSequence(i + 1, std::move(r), std::make_shared<RequestStream>(i + 1), i));
  }
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*core)->Step());  // prefill, then warm decodes
  constexpr int kSteps = 10;
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < kSteps; ++i) (*core)->Step();
  g_counting = false;
  EXPECT_EQ((*core)->last_step().num_decode_seqs, kSeqs);
  EXPECT_EQ(g_allocations.load(), 0);
  // The counter works: outputs taken by the consumer cost one vector each.
  take = true;
  (*core)->Step();  // the first taken outputs leave empty vectors behind
  g_allocations = 0;
  g_counting = true;
  for (int i = 0; i < kSteps; ++i) (*core)->Step();
  g_counting = false;
  EXPECT_EQ(g_allocations.load(), kSteps * kSeqs);
  if (residual_rms_every_n_steps > 0) {
    EXPECT_EQ((*core)->counters().residual_rms_samples,
              (3 + 2 * kSteps + 1 + residual_rms_every_n_steps - 1) / residual_rms_every_n_steps);
  }
}

TEST(AllocationTest, SteadyStateDecodeStepAllocatesOnlyTheOutputs) {
  ExpectSteadyStateAllocatesOnlyTheOutputs(0);
}

TEST(AllocationTest, ResidualRmsSamplingAllocatesNothingMore) {
  ExpectSteadyStateAllocatesOnlyTheOutputs(2);
}

}  // namespace
}  // namespace spanserve::engine
