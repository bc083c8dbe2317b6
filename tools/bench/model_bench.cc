// Model benchmark (a program, not a test): load time, RSS after load, prefill time of a
// 512-token prompt, decode-step time at batch 1 and 16, and the decode step's effective
// weight bandwidth next to a plain memory-read bandwidth measured in the same run.
//
//   spanserve_model_bench --model DIR|FILE.gguf [--threads N] [--steps 16] [--json out.json]
//   spanserve_model_bench --random qwen2-0.5b|moe8|moe32|moe64   (a random bf16 checkpoint
//       written once to the temp directory: Qwen2-0.5B's shapes, or an MoE with 8/32/64
//       experts of the same size and the same top-2, so the same active parameters)

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "common/thread_pool.h"
#include "kernels/cpu/matmul.h"
#include "runtime/model/model.h"
#include "tools/bench/random_model.h"

ABSL_FLAG(std::string, model, "models/spanserve-span-12l", "model directory or .gguf file");
ABSL_FLAG(int, threads, 0, "compute threads (0: all cores)");
ABSL_FLAG(std::string, device, "cpu",
          "compute device: cpu, cuda (the CUDA backend plugin, libspanserve_cuda.so), or auto");
ABSL_FLAG(int, steps, 16, "decode steps timed per batch size");
ABSL_FLAG(int, prompt, 512, "prefill prompt length");
ABSL_FLAG(std::string, json, "", "also write the figures as JSON to this file");
ABSL_FLAG(std::string, random, "", "benchmark a random model: qwen2-0.5b, moe8, moe32, moe64");
ABSL_FLAG(std::string, compute_dtype, "auto",
          "products with bf16 weights: auto|f32 (exact) or bf16 (bf16 dot products)");
ABSL_FLAG(bool, int8_dot, false,
          "activations quantized to 8-bit blocks for integer dot products with Q8_0/Q4_0/Q4_1/"
          "Q5_0/Q5_1/Q3_K/Q4_K/Q5_K/Q6_K/IQ4_NL GGUF weights: faster quantized decode, not "
          "bit-exact");

namespace spanserve {
namespace {

using Clock = std::chrono::steady_clock;
double Since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Resident set size in bytes (VmRSS).
int64_t RssBytes() {
  std::ifstream in("/proc/self/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      int64_t kb = 0;
      in >> kb;
      return kb * 1024;
    }
    in.ignore(1 << 20, '\n');
  }
  return 0;
}

// Bytes/s of a parallel integer sum over a 512 MiB buffer (integer adds vectorise without
// fast-math, so this is bound by memory, as a decode step at best is).
double MemoryReadBandwidth() {
  const size_t n = (512u << 20) / sizeof(uint64_t);
  std::vector<uint64_t> buf(n, 1);
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    const auto t0 = Clock::now();
    uint64_t total = 0;
    std::vector<uint64_t> partial(ParallelThreads(), 0);
    Parallel([&](int64_t t, int64_t threads) {
      for (size_t i = n * t / threads; i < n * (t + 1) / threads; ++i) partial[t] += buf[i];
    });
    for (uint64_t p : partial) total += p;
    const double secs = Since(t0);
    if (total != n) std::fprintf(stderr, "memory read check failed\n");
    best = std::max(best, n * sizeof(uint64_t) / secs);
  }
  return best;
}

// An MoE with `experts` experts of 256, top-2 and a shared expert: active size independent
// of the expert count.
nlohmann::json MoeConfig(int experts) {
  return {{"model_type", "spanserve"},
          {"norm_placement", "span"},
          {"hidden_size", 512},
          {"intermediate_size", 768},
          {"num_hidden_layers", 8},
          {"num_attention_heads", 8},
          {"num_key_value_heads", 2},
          {"vocab_size", 32000},
          {"max_position_embeddings", 2048},
          {"num_experts", experts},
          {"num_experts_per_tok", 2},
          {"moe_intermediate_size", 256},
          {"norm_topk_prob", true},
          {"shared_expert_intermediate_size", 256}};
}

std::string ModelDir() {
  const std::string random = absl::GetFlag(FLAGS_random);
  if (random.empty()) return absl::GetFlag(FLAGS_model);
  nlohmann::json config;
  if (random == "qwen2-0.5b") {
    config = bench::Qwen2HalfBConfig();
  } else if (random == "moe8" || random == "moe32" || random == "moe64") {
    config = MoeConfig(std::stoi(random.substr(3)));
  } else {
    std::fprintf(stderr, "unknown --random %s\n", random.c_str());
    std::exit(2);
  }
  const std::string dir = "/tmp/spanserve_bench_" + random;
  std::fprintf(stderr, "writing a random %s checkpoint to %s (once) ...\n", random.c_str(),
               dir.c_str());
  if (absl::Status st = bench::WriteRandomModel(dir, config, DType::kBF16); !st.ok()) {
    std::fprintf(stderr, "error: %s\n", st.ToString().c_str());
    std::exit(1);
  }
  return dir;
}

int Run() {
  const std::string dir = ModelDir();
  // The backend's own count (it never exceeds the CPUs), so the bench prints what ran.
  const int threads = UsableThreads(absl::GetFlag(FLAGS_threads));
  // The model's backend shares this pool (SharedThreadPool of the same size); the bandwidth
  // figure is read with it too.
  const std::shared_ptr<ThreadPool> pool = SharedThreadPool(threads);
  UsePool use(pool.get());
  const int64_t rss0 = RssBytes();
  absl::StatusOr<DType> compute_dtype =
      model::ParseF32OrBf16(absl::GetFlag(FLAGS_compute_dtype), "compute_dtype");
  if (!compute_dtype.ok()) {
    std::fprintf(stderr, "%s\n", compute_dtype.status().ToString().c_str());
    return 2;
  }
  auto t0 = Clock::now();
  auto loaded = model::Model::Load(dir, {.device = absl::GetFlag(FLAGS_device),
                                         .num_threads = threads,
                                         .compute_dtype = *compute_dtype,
                                         .int8_dot = absl::GetFlag(FLAGS_int8_dot)});
  if (!loaded.ok()) {
    std::fprintf(stderr, "error: %s\n", loaded.status().ToString().c_str());
    return 1;
  }
  const double load_s = Since(t0);
  const int64_t rss_load = RssBytes() - rss0;
  model::Model& m = **loaded;
  const model::ModelConfig& c = m.config();

  const int prompt = std::min(absl::GetFlag(FLAGS_prompt), c.max_position_embeddings - 64);
  const int steps = absl::GetFlag(FLAGS_steps);
  constexpr int32_t kBlock = 16;
  const int32_t blocks_per_seq = (prompt + steps + kBlock) / kBlock + 1;
  constexpr int kMaxBatch = 16;
  auto cache = *model::KvCache::Create(m.backend(), c, kBlock, blocks_per_seq * kMaxBatch);
  model::ForwardWorkspace ws(m.backend());
  std::mt19937 rng(1);
  std::uniform_int_distribution<int32_t> token(0, c.vocab_size - 1);
  std::vector<std::vector<int32_t>> tables(kMaxBatch), ids(kMaxBatch);
  for (int s = 0; s < kMaxBatch; ++s) {
    tables[s].resize(blocks_per_seq);
    std::iota(tables[s].begin(), tables[s].end(), s * blocks_per_seq);
    ids[s].resize(prompt);
    for (int32_t& id : ids[s]) id = token(rng);
  }
  std::vector<float> logits(static_cast<size_t>(kMaxBatch) * c.vocab_size);

  // Prefill of one prompt (the first run warms the pages and the workspace).
  double prefill_s = 1e30;
  for (int rep = 0; rep < 2; ++rep) {
    model::SequenceInput s{ids[0], 0, tables[0], model::LogitsMode::kLast};
    t0 = Clock::now();
    if (!m.Forward({&s, 1}, *cache, ws, logits.data()).ok()) return 1;
    prefill_s = std::min(prefill_s, Since(t0));
  }
  // Every sequence prefilled, then decode steps at batch 1 and 16.
  for (int s = 1; s < kMaxBatch; ++s) {
    model::SequenceInput in{ids[s], 0, tables[s], model::LogitsMode::kLast};
    if (!m.Forward({&in, 1}, *cache, ws, logits.data()).ok()) return 1;
  }
  // Per batch size the fastest step (the kernels' own speed) and the median (what a serving
  // engine's TPOT median compares with).
  double step_s[2] = {0, 0}, median_s[2] = {0, 0};
  const int batch_sizes[2] = {1, kMaxBatch};
  for (int b = 0; b < 2; ++b) {
    const int batch = batch_sizes[b];
    std::vector<int32_t> next(batch);
    std::vector<model::SequenceInput> in(batch);
    std::vector<double> times;
    double best = 1e30;
    for (int step = 0; step < steps; ++step) {
      for (int s = 0; s < batch; ++s) {
        next[s] = token(rng);
        in[s] = {std::span<const int32_t>(&next[s], 1), prompt + step, tables[s],
                 model::LogitsMode::kLast};
      }
      t0 = Clock::now();
      if (!m.Forward(in, *cache, ws, logits.data()).ok()) return 1;
      times.push_back(Since(t0));
      best = std::min(best, times.back());
    }
    step_s[b] = best;
    if (!times.empty()) {
      std::sort(times.begin(), times.end());
      const size_t h = times.size() / 2;
      median_s[b] = times.size() % 2 == 1 ? times[h] : (times[h - 1] + times[h]) / 2;
    }
  }
  const double mem_bw = MemoryReadBandwidth();
  // A decode step streams every weight once (the embedding table only by row).
  const int64_t embed_bytes = c.tie_word_embeddings
                                  ? 0
                                  : m.weight_bytes() / std::max<int64_t>(1, m.num_parameters()) *
                                        static_cast<int64_t>(c.vocab_size) * c.hidden_size;
  const double step_bytes = static_cast<double>(m.weight_bytes() - embed_bytes);
  const double bw1 = step_bytes / step_s[0];

  std::printf("model                 %s\n", dir.c_str());
  std::printf("parameters            %.1f M (%.1f MiB of weights)\n", m.num_parameters() / 1e6,
              m.weight_bytes() / 1048576.0);
  std::printf("threads               %d\n", threads);
  std::printf("batched MatMul on     %s\n", kernels::cpu::IsaName(kernels::cpu::ActiveIsa()));
  if (m.compute_dtype() == DType::kBF16) {
    std::printf("bf16 weights          bf16 dot products (%s)\n",
                kernels::cpu::Bf16DotUsesAmx() ? "AMX tiles" : "VDPBF16PS");
  }
  if (m.int8_dot()) {
    std::printf("quantized weights     int8 dot products (%s)\n",
                kernels::cpu::Int8DotUsesAmx() ? "VNNI; AMX tiles from 32 rows on packed Q8_0/Q4_x"
                : kernels::cpu::Int8DotUsesVnni() ? "VNNI"
                                                  : "AVX2");
  }
  std::printf("load                  %.3f s\n", load_s);
  std::printf("RSS after load        %.1f MiB (%.0f%% of the weight bytes)\n", rss_load / 1048576.0,
              100.0 * rss_load / m.weight_bytes());
  std::printf("prefill %4d tokens    %.3f s (%.0f tokens/s)\n", prompt, prefill_s,
              prompt / prefill_s);
  std::printf("decode step, batch 1  %.2f ms (%.1f tokens/s; median %.2f ms)\n", step_s[0] * 1e3,
              1 / step_s[0], median_s[0] * 1e3);
  std::printf("decode step, batch 16 %.2f ms (%.1f tokens/s, %.1fx batch 1; median %.2f ms)\n",
              step_s[1] * 1e3, 16 / step_s[1], (16 / step_s[1]) / (1 / step_s[0]),
              median_s[1] * 1e3);
  if (c.is_moe()) {
    // A step streams only the routed experts: the dense-model roofline does not apply.
    std::printf("weight stream         n/a for MoE; memory read %.2f GB/s\n", mem_bw / 1e9);
  } else {
    std::printf("weight stream         %.2f GB/s at batch 1 = %.0f%% of memory read %.2f GB/s\n",
                bw1 / 1e9, 100 * bw1 / mem_bw, mem_bw / 1e9);
  }
  std::printf("RSS at end            %.1f MiB\n", RssBytes() / 1048576.0);
  if (const std::string path = absl::GetFlag(FLAGS_json); !path.empty()) {
    std::ofstream out(path);
    out << "{\"model\": \"" << dir << "\", \"threads\": " << threads << ", \"load_s\": " << load_s
        << ", \"rss_after_load_bytes\": " << rss_load << ", \"weight_bytes\": " << m.weight_bytes()
        << ", \"prefill_tokens\": " << prompt << ", \"prefill_s\": " << prefill_s
        << ", \"decode_step_s_batch1\": " << step_s[0]
        << ", \"decode_step_s_batch16\": " << step_s[1]
        << ", \"decode_step_median_s_batch1\": " << median_s[0]
        << ", \"decode_step_median_s_batch16\": " << median_s[1]
        << ", \"memory_read_bytes_per_s\": " << mem_bw << "}\n";
  }
  return 0;
}

}  // namespace
}  // namespace spanserve

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  return spanserve::Run();
}
