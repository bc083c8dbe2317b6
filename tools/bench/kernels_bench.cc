// Micro-benchmarks of the CPU kernels, with the counters needed to read decode GEMV as a
// fraction of memory bandwidth (weight_bytes/s ÷ BM_MemoryRead bytes/s) and prefill GEMM as
// FLOP/s. Run with OMP_NUM_THREADS set to the cores in use; see docs/KERNELS.md.

#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "benchmark/benchmark.h"
#include "common/dtype.h"
#include "common/thread_pool.h"
#include "kernels/cpu/attention.h"
#include "kernels/cpu/cpu_backend.h"
#include "kernels/cpu/matmul.h"
#include "kernels/cpu/matmul_avx512.h"
#include "kernels/cpu/matmul_int8dot.h"
#include "tools/bench/roofline.h"

namespace spanserve::kernels::cpu {
namespace {

constexpr int64_t kMiB = int64_t{1} << 20;
// Larger than any last-level cache here (35.8 MiB), so a sweep over it comes from DRAM.
constexpr int64_t kColdBytes = 256 * kMiB;

std::vector<float> RandomFloats(int64_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& f : v) f = dist(rng);
  return v;
}

// `copies` independent [n, k] weight matrices in one buffer, stored as `dtype`.
struct WeightSet {
  std::vector<uint8_t> bytes;
  int64_t matrix_bytes = 0;
  int64_t copies = 0;
};

WeightSet MakeWeights(int64_t n, int64_t k, DType dtype, int64_t copies) {
  const std::vector<float> values = RandomFloats(n * k, 1);
  WeightSet set;
  set.matrix_bytes = n * k * static_cast<int64_t>(DTypeSize(dtype));
  set.copies = copies;
  set.bytes.resize(set.matrix_bytes * copies);
  std::vector<uint8_t> one(set.matrix_bytes);
  for (int64_t i = 0; i < n * k; ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(one.data() + 4 * i, &values[i], 4);
    } else {
      const uint16_t h = dtype == DType::kBF16 ? F32ToBf16(values[i]) : F32ToF16(values[i]);
      std::memcpy(one.data() + 2 * i, &h, 2);
    }
  }
  for (int64_t c = 0; c < copies; ++c) {
    std::memcpy(set.bytes.data() + c * set.matrix_bytes, one.data(), set.matrix_bytes);
  }
  return set;
}

// y = x·Wᵀ. cold: each iteration uses the next of enough weight copies to fill kColdBytes,
// so weights stream from DRAM as they do in a real decode step over all layers; hot: one
// copy, which for these shapes may sit in the last-level cache.
// precision kBf16Dot: bf16 dot products (AMX tiles where the CPU has AMX-BF16; VDPBF16PS where
// it has only AVX512_BF16 or SPANSERVE_MAX_ISA=avx512 is set).
void BM_MatMul(benchmark::State& state, int64_t n, int64_t k, int64_t m, DType dtype, bool cold,
               MatMulPrecision precision) {
  const int64_t matrix_bytes = n * k * static_cast<int64_t>(DTypeSize(dtype));
  const int64_t copies = cold ? (kColdBytes + matrix_bytes - 1) / matrix_bytes : 1;
  const WeightSet weights = MakeWeights(n, k, dtype, copies);
  const std::vector<float> x = RandomFloats(m * k, 2);
  std::vector<float> y(m * n);
  int64_t c = 0;
  for (auto _ : state) {
    const WeightMatrix w{
        weights.bytes.data() + c * matrix_bytes, dtype, n, k, QuantType::kNone, precision};
    MatMul(x.data(), m, w, nullptr, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
    if (++c == copies) c = 0;
  }
  state.counters["weight_bytes/s"] = benchmark::Counter(
      static_cast<double>(matrix_bytes), benchmark::Counter::kIsIterationInvariantRate,
      benchmark::Counter::kIs1024);
  state.counters["FLOP/s"] = benchmark::Counter(2.0 * static_cast<double>(m * n * k),
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// Random GGUF blocks of `q` for an [n, k] matrix: every quant byte random, the f16 scales (and
// mins) small valid values, as in the kernel tests.
std::vector<uint8_t> RandomQuantBlocks(QuantType q, int64_t n, int64_t k) {
  const int64_t block_bytes = QuantBlockBytes(q);
  const int64_t blocks = n * k / QuantBlockElems(q);
  std::vector<uint8_t> bytes(blocks * block_bytes);
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::uniform_real_distribution<float> unit(-1.0f, 1.0f);
  for (uint8_t& b : bytes) b = static_cast<uint8_t>(byte(rng));
  const bool has_min = q == QuantType::kQ4_1 || q == QuantType::kQ5_1 || q == QuantType::kQ4_K ||
                       q == QuantType::kQ5_K;
  const int64_t d_at = q == QuantType::kQ6_K ? 208 : 0;  // Q6_K keeps d last
  for (int64_t b = 0; b < blocks; ++b) {
    const uint16_t d = F32ToF16(0.05f * unit(rng));
    std::memcpy(&bytes[b * block_bytes + d_at], &d, 2);
    if (has_min) {
      const uint16_t m = F32ToF16(0.05f * unit(rng));
      std::memcpy(&bytes[b * block_bytes + 2], &m, 2);
    }
  }
  return bytes;
}

// y = x·Wᵀ for GGUF-quantized weights (one hot copy), exact or with integer dot products:
// the batch shapes of decode at m streams and of prefill. Reports multiply-adds per second.
// int8: as the CPU backend uploads it (the formats of internal::Int8PackedSupports repacked on
// a CPU with VNNI), or with in_place the kernels on the blocks as stored.
void BM_MatMulQuant(benchmark::State& state, int64_t n, int64_t k, int64_t m, QuantType q,
                    MatMulPrecision precision, bool in_place) {
  const std::vector<uint8_t> bytes = RandomQuantBlocks(q, n, k);
  WeightMatrix w{bytes.data(), DType::kF32, n, k, q, precision};
  std::vector<uint8_t> packed;
  if (precision == MatMulPrecision::kInt8Dot && !in_place && internal::Int8PackedSupports(q) &&
      Int8DotUsesVnni()) {
    packed.resize(internal::Int8PackedBytes(q, n, k));
    internal::PackInt8(w, packed.data());
    w.packed = packed.data();
  }
  const std::vector<float> x = RandomFloats(m * k, 2);
  std::vector<float> y(m * n);
  for (auto _ : state) {
    MatMul(x.data(), m, w, nullptr, y.data());
    benchmark::DoNotOptimize(y.data());
    benchmark::ClobberMemory();
  }
  state.counters["MAC/s"] = benchmark::Counter(static_cast<double>(m * n * k),
                                               benchmark::Counter::kIsIterationInvariantRate);
}

// Sums a 256 MiB buffer with every OpenMP thread: the read bandwidth the GEMV competes for.
// The compute ceilings the kernels' rates compare with, measured with every pool thread:
// "FMA" (zmm where the CPU has AVX-512, else ymm) and "bf16 dot" (VDPBF16PS) in FLOP/s,
// "int8 dot" (VPDPBUSD) in multiply-adds per second.
void BM_Peak(benchmark::State& state, int kind) {
  double rate = 0;
  for (auto _ : state) {
    rate = kind == 0   ? bench::MeasureFmaPeakFlops(internal::CpuHasAvx512(), 1)
           : kind == 1 ? bench::MeasureBf16DotPeakFlops(1)
                       : bench::MeasureVnniPeakMacs(1);
  }
  state.counters[kind == 2 ? "MAC/s" : "FLOP/s"] = benchmark::Counter(rate);
}

void BM_MemoryRead(benchmark::State& state) {
  const int64_t floats = kColdBytes / 4;
  std::vector<float> buffer(floats, 1.0f);
  for (auto _ : state) benchmark::DoNotOptimize(bench::ParallelSum(buffer.data(), floats));
  state.counters["bytes/s"] = benchmark::Counter(static_cast<double>(kColdBytes),
                                                 benchmark::Counter::kIsIterationInvariantRate,
                                                 benchmark::Counter::kIs1024);
}

// One decode step of attention (one new token per sequence) over `context` cached tokens,
// `heads` query heads over `kv_heads` kv heads, head_dim 64, blocks of 16.
// layers: that many layers' K/V pools, one after another per iteration, as a decode step
// reads them: with 30 layers of 16 streams the K/V outgrow the last-level cache, so the
// figure includes fetching them from memory. The time is per layer.
void BM_AttentionDecode(benchmark::State& state, int32_t seqs, int32_t context, int32_t heads,
                        int32_t kv_heads, int32_t layers, DType kv_dtype) {
  const int32_t head_dim = 64, block_size = 16;
  const int32_t blocks_per_seq = (context + block_size) / block_size;
  const int32_t num_blocks = blocks_per_seq * seqs;
  const int64_t pool = int64_t{num_blocks} * block_size * kv_heads * head_dim;
  // The pools are one allocation from the CPU backend, layer after layer with each layer's K
  // then V, as the engine's KV cache is (KvCache in runtime/model/model.h): its pages matter.
  const std::unique_ptr<Backend> backend = CreateCpuBackend({});
  const int64_t pool_bytes = pool * static_cast<int64_t>(DTypeSize(kv_dtype));
  const int64_t total_bytes = 2 * pool_bytes * layers;
  char* const memory = static_cast<char*>(backend->Allocate(total_bytes).value());
  std::vector<PagedKvLayer> pools(layers);
  for (int32_t l = 0; l < layers; ++l) {
    void* kv[2];
    for (int i = 0; i < 2; ++i) {
      kv[i] = memory + (2 * l + i) * pool_bytes;
      const std::vector<float> values = RandomFloats(pool, 3 + 2 * l + i);
      for (int64_t e = 0; e < pool; ++e) {
        if (kv_dtype == DType::kBF16) {
          static_cast<uint16_t*>(kv[i])[e] = F32ToBf16(values[e]);
        } else {
          static_cast<float*>(kv[i])[e] = values[e];
        }
      }
    }
    pools[l] = PagedKvLayer{kv[0], kv[1], num_blocks, block_size, kv_heads, head_dim, kv_dtype};
  }
  // Interleave sequences' blocks, as a pool that served many requests would.
  std::vector<int32_t> tables(num_blocks);
  for (int32_t b = 0; b < num_blocks; ++b) tables[b] = (b % seqs) * blocks_per_seq + b / seqs;
  std::vector<AttentionSeq> batch(seqs);
  for (int32_t s = 0; s < seqs; ++s) {
    batch[s] = {tables.data() + s * blocks_per_seq, context - 1, 1, s};
  }
  const std::vector<float> q = RandomFloats(int64_t{seqs} * heads * head_dim, 5);
  std::vector<float> out(q.size());
  for (auto _ : state) {
    for (const PagedKvLayer& layer : pools) {
      PagedAttention(layer, batch.data(), seqs, q.data(), heads, 0.125f, out.data());
      benchmark::DoNotOptimize(out.data());
    }
  }
  const double kv_bytes =
      2.0 * seqs * context * kv_heads * head_dim * static_cast<double>(DTypeSize(kv_dtype));
  state.counters["kv_bytes/s"] =
      benchmark::Counter(kv_bytes * layers, benchmark::Counter::kIsIterationInvariantRate,
                         benchmark::Counter::kIs1024);
  // q·k and p·v: two multiply-adds per head, position and element.
  state.counters["FLOP/s"] = benchmark::Counter(4.0 * seqs * context * heads * head_dim * layers,
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
  state.counters["us/layer"] = benchmark::Counter(
      layers * 1e-6, benchmark::Counter::kIsIterationInvariantRate | benchmark::Counter::kInvert);
  backend->Free(memory, total_bytes);
}

void RegisterAll() {
  struct Shape {
    int64_t n, k;
  };
  // Qwen2-0.5B: attention output / q projection, and the MLP gate / up projection.
  const Shape shapes[] = {{896, 896}, {4864, 896}};
  for (const Shape& s : shapes) {
    struct Kind {
      DType dtype;
      MatMulPrecision precision;
      const char* label;
    };
    for (const Kind& kind : {Kind{DType::kBF16, MatMulPrecision::kExact, "bf16"},
                             Kind{DType::kBF16, MatMulPrecision::kBf16Dot, "bf16dot"},
                             Kind{DType::kF32, MatMulPrecision::kExact, "f32"}}) {
      if (kind.precision == MatMulPrecision::kBf16Dot && !CpuHasBf16Dot()) continue;
      const std::string shape = std::to_string(s.n) + "x" + std::to_string(s.k);
      for (int64_t m : {1, 16}) {
        for (bool cold : {true, false}) {
          const std::string name = std::string(cold ? "MatMulDecodeCold/" : "MatMulDecodeHot/") +
                                   kind.label + "/" + shape + "/m:" + std::to_string(m);
          benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, s.n, s.k, m, kind.dtype, cold,
                                       kind.precision)
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
      const std::string name = std::string("MatMulPrefill/") + kind.label + "/" + shape + "/m:512";
      benchmark::RegisterBenchmark(name.c_str(), BM_MatMul, s.n, s.k, 512, kind.dtype, false,
                                   kind.precision)
          ->UseRealTime()
          ->Unit(benchmark::kMillisecond);
    }
  }
  // SmolLM2-135M's MLP up projection (1536x576) and down projection (576x1536).
  const Shape quant_shapes[] = {{1536, 576}, {576, 1536}};
  for (const Shape& s : quant_shapes) {
    for (QuantType q : {QuantType::kQ4_1, QuantType::kQ8_0, QuantType::kQ5_0, QuantType::kQ2_K,
                        QuantType::kQ3_K, QuantType::kQ4_K, QuantType::kQ6_K}) {
      if (s.k % QuantBlockElems(q) != 0) continue;  // K-quants: k a multiple of 256
      // "int8-in-place": the packed formats' kernels on the blocks as stored, for comparison.
      const bool packs = internal::Int8PackedSupports(q) && Int8DotUsesVnni();
      for (const char* variant : {"exact", "int8", "int8-in-place"}) {
        const std::string v = variant;
        if (v == "int8-in-place" && !packs) continue;
        const MatMulPrecision p =
            v == "exact" ? MatMulPrecision::kExact : MatMulPrecision::kInt8Dot;
        for (int64_t m : {1, 4, 8, 16, 32, 64, 512}) {
          const std::string name = std::string("MatMulQuant/") + QuantTypeName(q) + "/" + v + "/" +
                                   std::to_string(s.n) + "x" + std::to_string(s.k) +
                                   "/m:" + std::to_string(m);
          benchmark::RegisterBenchmark(name.c_str(), BM_MatMulQuant, s.n, s.k, m, q, p,
                                       v == "int8-in-place")
              ->UseRealTime()
              ->Unit(benchmark::kMicrosecond);
        }
      }
    }
  }
  benchmark::RegisterBenchmark("Peak/FMA", BM_Peak, 0)->Iterations(3);
  if (CpuHasBf16Dot()) benchmark::RegisterBenchmark("Peak/bf16-dot", BM_Peak, 1)->Iterations(3);
  if (internal::CpuHasAvx512Vnni()) {
    benchmark::RegisterBenchmark("Peak/int8-dot", BM_Peak, 2)->Iterations(3);
  }
  benchmark::RegisterBenchmark("MemoryRead/256MiB", BM_MemoryRead)
      ->UseRealTime()
      ->Unit(benchmark::kMillisecond);
  // Qwen2-0.5B's heads (14 / 2) at 512 positions, and SmolLM2-135M's (9 / 3) as 16 streams
  // decode them after a 128-token prompt: one layer (its K/V stay in cache), and SmolLM2's 30
  // layers (cold: the K/V come from memory, as in the engine's step), f32 and bf16 K/V.
  struct AttentionShape {
    int32_t seqs, context, heads, kv_heads, layers;
  };
  for (const AttentionShape& a :
       {AttentionShape{1, 512, 14, 2, 1}, AttentionShape{8, 512, 14, 2, 1},
        AttentionShape{16, 160, 9, 3, 1}, AttentionShape{1, 160, 9, 3, 1},
        AttentionShape{16, 160, 9, 3, 30}, AttentionShape{1, 160, 9, 3, 30}}) {
    for (DType kv : {DType::kF32, DType::kBF16}) {
      if (a.layers == 1 && kv == DType::kBF16) continue;
      const std::string name =
          "AttentionDecode" + std::string(a.layers > 1 ? "Cold" : "") +
          "/heads:" + std::to_string(a.heads) + "/" + std::to_string(a.kv_heads) +
          "/context:" + std::to_string(a.context) + "/seqs:" + std::to_string(a.seqs) +
          (a.layers > 1 ? "/layers:" + std::to_string(a.layers) : "") +
          (kv == DType::kBF16 ? "/kv:bf16" : "");
      benchmark::RegisterBenchmark(name.c_str(), BM_AttentionDecode, a.seqs, a.context, a.heads,
                                   a.kv_heads, a.layers, kv)
          ->UseRealTime()
          ->Unit(benchmark::kMicrosecond);
    }
  }
}

}  // namespace
}  // namespace spanserve::kernels::cpu

int main(int argc, char** argv) {
  spanserve::kernels::cpu::RegisterAll();
  // Every kernel on all the CPUs this process may use, as the server runs them.
  const auto pool = spanserve::SharedThreadPool(spanserve::AvailableCpus());
  spanserve::UsePool use(pool.get());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
