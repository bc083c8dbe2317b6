// spanserve_engine_bench: engine-only throughput (no gRPC) at several concurrency levels.
// Each level submits `concurrency` requests at once (distinct random prompts of
// --prompt_len tokens, greedy, exactly --gen_len tokens each) to a fresh engine and
// reports generated tokens/s, decode tokens/s and step time at full batch, the
// scheduler's share of the step, and paging efficiency (tokens held in the KV cache over
// the capacity of the blocks in use).
//
// Default model: a random model with Qwen2-0.5B shapes (bf16), generated once into
// $TMPDIR/spanserve_bench_qwen2_0.5b_random. Any model directory works (--model).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "common/status.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "nlohmann/json.hpp"
#include "runtime/engine/block_manager.h"
#include "runtime/engine/engine.h"
#include "runtime/model/config.h"
#include "runtime/model/model.h"
#include "tools/bench/random_model.h"
#include "tools/bench/roofline.h"

ABSL_FLAG(std::string, model, "",
          "model directory (empty: a generated random Qwen2-0.5B-shaped model)");
ABSL_FLAG(std::string, concurrency, "1,4,16,64", "comma-separated concurrency levels");
ABSL_FLAG(int, prompt_len, 256, "prompt tokens per request");
ABSL_FLAG(int, gen_len, 32, "generated tokens per request");
ABSL_FLAG(int, threads, 0, "compute threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu",
          "compute device: cpu, cuda (the CUDA backend plugin, libspanserve_cuda.so), or auto");
ABSL_FLAG(int, block_size, 16, "KV block size in tokens");
ABSL_FLAG(int, max_batched_tokens, 2048, "token budget per step");
ABSL_FLAG(std::string, kv_cache_dtype, "auto", "KV element type: auto/f32 or bf16");
ABSL_FLAG(std::string, compute_dtype, "auto",
          "activations in products with bf16 weights: auto/f32 (exact) or bf16 (AVX512_BF16)");
ABSL_FLAG(bool, int8_dot, false,
          "activations quantized to 8-bit blocks for integer dot products with Q8_0/Q4_0/Q4_1/"
          "Q5_0/Q5_1/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL GGUF weights: faster quantized decode, not "
          "bit-exact");
ABSL_FLAG(std::string, json, "", "also write the results as JSON to this file");

namespace spanserve::engine {
namespace {

namespace fs = std::filesystem;
using BenchClock = std::chrono::steady_clock;

// The random Qwen2-0.5B-shaped bf16 checkpoint, written once to the temp directory.
std::string GenerateQwen2Model() {
  const std::string dir = (fs::temp_directory_path() / "spanserve_bench_qwen2-0.5b").string();
  std::fprintf(stderr, "random Qwen2-0.5B-shaped model in %s (written once) ...\n", dir.c_str());
  if (absl::Status st = bench::WriteRandomModel(dir, bench::Qwen2HalfBConfig(), DType::kBF16);
      !st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  return dir;
}

// FLOPs (a multiply-add counts 2) of decoding one token at `context` cached positions: every
// weight matrix the token passes through (the routed experts' top_k of them, the router,
// the shared expert) plus attention's scores and weighted sum. Norms, RoPE and sampling are
// left out (under 1 %).
double DecodeFlopsPerToken(const model::ModelConfig& c, double context) {
  const auto d = [](int v) { return static_cast<double>(v); };
  const double h = d(c.hidden_size), q = d(c.num_heads) * c.head_dim,
               kv = d(c.num_kv_heads) * c.head_dim;
  double macs = d(c.vocab_size) * h;  // lm_head
  for (int layer = 0; layer < c.num_layers; ++layer) {
    macs += h * (q + 2 * kv) + q * h + 2 * q * context;
    if (c.LayerIsMoe(layer)) {
      macs += h * c.moe.num_experts + d(c.moe.top_k) * 3 * h * c.moe.moe_intermediate_size;
      if (c.moe.shared_expert_intermediate_size > 0) {
        macs += 3 * h * c.moe.shared_expert_intermediate_size + h;
      }
    } else {
      macs += 3 * h * c.intermediate_size;
    }
  }
  return 2 * macs;
}

struct LevelResult {
  int concurrency = 0;
  double wall_s = 0;
  int64_t generated = 0;
  double gen_tokens_per_s = 0;     // generated tokens / wall time (prefill included)
  double decode_tokens_per_s = 0;  // concurrency / median full-batch decode step
  double decode_step_ms = 0;       // median
  double decode_schedule_ms = 0;
  double schedule_share = 0;  // scheduler time / step time, all steps
  double decode_schedule_share = 0;
  double decode_forward_share = 0;  // Model::Forward / step time, decode steps
  double prefill_tokens_per_s = 0;
  double mean_ttft_s = 0;
  double kv_efficiency = 0;  // live tokens / (blocks in use × block size), decode steps
  int64_t steps = 0;
};

absl::StatusOr<LevelResult> RunLevel(const std::string& model_dir, int concurrency,
                                     DType kv_cache_dtype, DType compute_dtype) {
  const int prompt_len = absl::GetFlag(FLAGS_prompt_len);
  const int gen_len = absl::GetFlag(FLAGS_gen_len);
  std::mutex mu;
  std::vector<StepStats> steps;
  steps.reserve(100000);
  EngineOptions o;
  o.block_size = absl::GetFlag(FLAGS_block_size);
  o.max_num_seqs = std::max(concurrency, 1);
  o.max_batched_tokens = absl::GetFlag(FLAGS_max_batched_tokens);
  o.max_model_len = prompt_len + gen_len;
  o.enable_prefix_caching = true;
  o.kv_cache_dtype = kv_cache_dtype;
  // Room for every sequence at once (and for the warm-up request).
  const int64_t per_seq = (prompt_len + gen_len + o.block_size - 1) / o.block_size;
  o.num_kv_blocks = static_cast<int32_t>(per_seq * (concurrency + 1));
  o.step_observer = [&](const StepStats& s) {
    std::lock_guard lock(mu);
    steps.push_back(s);
  };
  ASSIGN_OR_RETURN(auto model,
                   model::Model::Load(model_dir, {.device = absl::GetFlag(FLAGS_device),
                                                  .num_threads = absl::GetFlag(FLAGS_threads),
                                                  .compute_dtype = compute_dtype,
                                                  .int8_dot = absl::GetFlag(FLAGS_int8_dot)}));
  ASSIGN_OR_RETURN(auto engine, Engine::Create(std::move(model), o));
  const int32_t vocab = engine->info().vocab_size;

  // Warm-up: page the weights in.
  {
    Request r;
    r.prompt = {1, 2, 3, 4};
    r.sampling.temperature = 0;
    r.sampling.max_tokens = 2;
    ASSIGN_OR_RETURN(auto h, engine->Submit(r));
    RequestOutput out;
    while (h.stream->Next(&out)) {
    }
    std::lock_guard lock(mu);
    steps.clear();
  }

  uint64_t rng = 0x9e3779b97f4a7c15ULL * (concurrency + 1);
  std::vector<RequestHandle> handles;
  const auto t0 = BenchClock::now();
  for (int i = 0; i < concurrency; ++i) {
    Request r;
    for (int j = 0; j < prompt_len; ++j) {
      rng ^= rng << 13;
      rng ^= rng >> 7;
      rng ^= rng << 17;
      r.prompt.push_back(static_cast<int32_t>(rng % static_cast<uint64_t>(vocab)));
    }
    r.sampling.temperature = 0;
    r.sampling.max_tokens = gen_len;
    r.sampling.ignore_eos = true;
    ASSIGN_OR_RETURN(RequestHandle h, engine->Submit(std::move(r)));
    handles.push_back(std::move(h));
  }
  LevelResult res;
  res.concurrency = concurrency;
  for (RequestHandle& h : handles) {
    RequestOutput out;
    while (h.stream->Next(&out)) {
      res.generated += static_cast<int64_t>(out.token_ids.size());
      if (out.final.has_value()) res.mean_ttft_s += out.final->timings.ttft_s / concurrency;
    }
  }
  res.wall_s = std::chrono::duration<double>(BenchClock::now() - t0).count();
  engine->Shutdown();

  // Decode figures use the median full-batch step: robust to other load on a shared host.
  double sched = 0, total = 0, dec_sched = 0, dec_fwd = 0, dec_total = 0, kv_eff = 0;
  double pre_tok = 0, pre_s = 0;
  std::vector<double> dec_steps;
  for (const StepStats& s : steps) {
    sched += s.schedule_s;
    total += s.step_s;
    if (s.num_prefill_tokens == 0 && s.num_decode_seqs == concurrency) {
      dec_steps.push_back(s.step_s);
      dec_sched += s.schedule_s;
      dec_fwd += s.forward_s;
      dec_total += s.step_s;
      kv_eff += static_cast<double>(s.num_kv_tokens) /
                (static_cast<double>(s.num_kv_blocks_used) * o.block_size);
    } else if (s.num_prefill_tokens > 0) {
      pre_tok += s.num_prefill_tokens;
      pre_s += s.step_s;
    }
  }
  res.steps = static_cast<int64_t>(steps.size());
  res.gen_tokens_per_s = res.generated / res.wall_s;
  res.schedule_share = total > 0 ? sched / total : 0;
  if (!dec_steps.empty()) {
    const size_t n = dec_steps.size();
    std::nth_element(dec_steps.begin(), dec_steps.begin() + n / 2, dec_steps.end());
    const double median = dec_steps[n / 2];
    res.decode_step_ms = 1e3 * median;
    res.decode_schedule_ms = 1e3 * dec_sched / n;
    res.decode_tokens_per_s = concurrency / median;
    res.decode_schedule_share = dec_sched / dec_total;
    res.decode_forward_share = dec_fwd / dec_total;
    res.kv_efficiency = kv_eff / n;
  }
  res.prefill_tokens_per_s = pre_s > 0 ? pre_tok / pre_s : 0;
  return res;
}

// Decode at one concurrency level against the single-sequence level before it.
struct Ratio {
  int concurrency;
  double ratio, tokens_per_s, single_tokens_per_s, step_s, single_step_s;
};

// The batching ratios, each with the compute ceiling measured on the spot: N sequences
// cost N × the FLOPs of one token per step, so at the FMA peak a step takes at least
// N·F/peak, and the ratio can reach at most N · (one sequence's step) / that.
void PrintRatios(const std::string& model_dir, DType compute_dtype,
                 const std::vector<Ratio>& ratios) {
  if (ratios.empty()) return;
  std::printf("\n");
  const absl::StatusOr<model::ModelConfig> config = model::LoadModelConfig(model_dir);
  double peak = 0, flops = 0;
  const char* peak_name = "";
  if (config.ok()) {
    // The pool the engines' backends share (the same size: the same pool).
    const int threads = UsableThreads(absl::GetFlag(FLAGS_threads));
    const std::shared_ptr<ThreadPool> pool = SharedThreadPool(threads);
    UsePool use(pool.get());
    const bool avx512 = kernels::cpu::ActiveIsa() == kernels::cpu::Isa::kAvx512;
    const bool bf16 = compute_dtype == DType::kBF16;
    peak_name = bf16 ? "bf16 dot peak" : "FMA peak";
    peak = bf16 ? bench::MeasureBf16DotPeakFlops() : bench::MeasureFmaPeakFlops(avx512);
    const double read = bench::MeasureMemoryReadBytesPerSecond();
    // The median full-batch decode step sees about half the generated tokens cached.
    flops = DecodeFlopsPerToken(
        *config, absl::GetFlag(FLAGS_prompt_len) + absl::GetFlag(FLAGS_gen_len) / 2.0);
    std::printf(
        "roofline, measured now with %d threads: %s %.1f GFLOP/s (%s), memory read "
        "%.1f GB/s; one decoded token = %.4g GFLOP\n",
        threads, peak_name, peak / 1e9,
        bf16     ? "zmm VDPBF16PS"
        : avx512 ? "zmm"
                 : "ymm",
        read / 1e9, flops / 1e9);
  }
  for (const Ratio& r : ratios) {
    std::printf("decode at %d sequences: %.2fx one sequence (%.1f / %.1f tok/s)", r.concurrency,
                r.ratio, r.tokens_per_s, r.single_tokens_per_s);
    if (peak > 0) {
      const double work = r.concurrency * flops;
      const double floor_s = std::max(work / peak, r.single_step_s);
      std::printf(
          "; its step runs at %.1f GFLOP/s = %.0f%% of the %s, which caps the ratio at "
          "%.2fx (%d x %.3g ms / %.3g ms)",
          work / r.step_s / 1e9, 100 * work / r.step_s / peak, peak_name,
          r.concurrency * r.single_step_s / floor_s, r.concurrency, 1e3 * r.single_step_s,
          1e3 * floor_s);
    }
    std::printf("\n");
  }
}

int Main() {
  const absl::StatusOr<DType> kv_dtype = ParseKvCacheDtype(absl::GetFlag(FLAGS_kv_cache_dtype));
  const absl::StatusOr<DType> compute_dtype =
      model::ParseF32OrBf16(absl::GetFlag(FLAGS_compute_dtype), "compute_dtype");
  for (const absl::Status& st : {kv_dtype.status(), compute_dtype.status()}) {
    if (!st.ok()) {
      std::fprintf(stderr, "%s\n", st.ToString().c_str());
      return 2;
    }
  }
  std::string model_dir = absl::GetFlag(FLAGS_model);
  if (model_dir.empty()) model_dir = GenerateQwen2Model();
  std::vector<int> levels;
  for (absl::string_view part : absl::StrSplit(absl::GetFlag(FLAGS_concurrency), ',')) {
    int c = 0;
    if (!absl::SimpleAtoi(part, &c) || c <= 0) {
      std::fprintf(stderr, "bad --concurrency entry '%s'\n", std::string(part).c_str());
      return 2;
    }
    levels.push_back(c);
  }
  std::printf(
      "model %s, prompt %d tokens, %d generated per request, block %d, KV %s, compute %s%s, "
      "batched MatMul on %s\n\n",
      model_dir.c_str(), absl::GetFlag(FLAGS_prompt_len), absl::GetFlag(FLAGS_gen_len),
      absl::GetFlag(FLAGS_block_size), std::string(KvCacheDtypeName(*kv_dtype)).c_str(),
      std::string(model::F32OrBf16Name(*compute_dtype)).c_str(),
      *compute_dtype == DType::kBF16
          ? (kernels::cpu::Bf16DotUsesAmx() ? " (bf16 dot, AMX tiles)" : " (bf16 dot, VDPBF16PS)")
      : !absl::GetFlag(FLAGS_int8_dot) ? ""
      : kernels::cpu::Int8DotUsesAmx()
          ? " (int8 dot, VNNI; AMX tiles from 32 rows on packed Q8_0/Q4_x)"
      : kernels::cpu::Int8DotUsesVnni() ? " (int8 dot, VNNI)"
                                        : " (int8 dot, AVX2)",
      kernels::cpu::IsaName(kernels::cpu::ActiveIsa()));
  std::printf(
      "| conc | gen tok/s | decode tok/s | decode step ms (median) | sched ms/step | sched share "
      "(decode / all) | forward share | prefill tok/s | mean TTFT s | KV live/alloc |\n");
  std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  nlohmann::json json = nlohmann::json::array();
  // Decode tokens/s of each level over that of the latest single-sequence level before it
  // (the batching target: 16 sequences >= 8x one), printed after the table.
  std::vector<Ratio> ratios;
  double single = 0, single_step_s = 0;
  for (int c : levels) {
    auto r = RunLevel(model_dir, c, *kv_dtype, *compute_dtype);
    if (!r.ok()) {
      std::fprintf(stderr, "concurrency %d: %s\n", c, r.status().ToString().c_str());
      return 1;
    }
    std::printf(
        "| %d | %.1f | %.1f | %.1f | %.4f | %.4f%% / %.4f%% | %.1f%% | %.1f | %.2f | %.2f%% |\n", c,
        r->gen_tokens_per_s, r->decode_tokens_per_s, r->decode_step_ms, r->decode_schedule_ms,
        100 * r->decode_schedule_share, 100 * r->schedule_share, 100 * r->decode_forward_share,
        r->prefill_tokens_per_s, r->mean_ttft_s, 100 * r->kv_efficiency);
    std::fflush(stdout);
    if (c == 1) {
      single = r->decode_tokens_per_s;
      single_step_s = r->decode_step_ms / 1e3;
    } else if (single > 0) {
      ratios.push_back({c, r->decode_tokens_per_s / single, r->decode_tokens_per_s, single,
                        r->decode_step_ms / 1e3, single_step_s});
    }
    json.push_back({{"concurrency", c},
                    {"wall_s", r->wall_s},
                    {"generated_tokens", r->generated},
                    {"gen_tokens_per_s", r->gen_tokens_per_s},
                    {"decode_tokens_per_s", r->decode_tokens_per_s},
                    {"decode_step_ms", r->decode_step_ms},
                    {"decode_schedule_ms", r->decode_schedule_ms},
                    {"decode_schedule_share", r->decode_schedule_share},
                    {"decode_forward_share", r->decode_forward_share},
                    {"schedule_share", r->schedule_share},
                    {"prefill_tokens_per_s", r->prefill_tokens_per_s},
                    {"mean_ttft_s", r->mean_ttft_s},
                    {"kv_live_over_allocated", r->kv_efficiency},
                    {"steps", r->steps}});
  }
  PrintRatios(model_dir, *compute_dtype, ratios);
  if (!absl::GetFlag(FLAGS_json).empty()) {
    std::ofstream(absl::GetFlag(FLAGS_json)) << json.dump(2) << "\n";
  }
  return 0;
}

}  // namespace
}  // namespace spanserve::engine

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage("engine-only throughput at several concurrency levels");
  absl::ParseCommandLine(argc, argv);
  return spanserve::engine::Main();
}
