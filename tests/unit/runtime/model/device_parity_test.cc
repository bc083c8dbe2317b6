// Every model the CPU backend serves, on the CUDA backend, against the CPU backend (the
// oracle, DESIGN.md §3): every norm placement, dense and MoE, the bundled models and the
// test models of each family. Two targets:
//   - "cuda_emu": the CUDA backend's kernels and host code compiled against the CPU
//     emulation (kernels/cuda/compat.h), always run, so the whole backend is checked on
//     machines without a GPU;
//   - "cuda": the real plugin on a GPU; skipped, visibly, where there is none.
// Each model runs a two-step batch (a prefill with every row's logits beside one with the
// last row's only, then a decode step of each over its cached prefix) and then greedy
// decoding from a prompt; the logits must agree within f32 rounding (1e-4 of the largest
// logit) and the greedy tokens must be identical.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gtest/gtest.h"
#include "kernels/backend.h"
#include "kernels/cuda/cuda_backend.h"
#include "runtime/model/model.h"

namespace spanserve::model {
namespace {

struct Case {
  const char* model;  // under the source tree
  bool emulated;
};

void PrintTo(const Case& c, std::ostream* os) {
  *os << c.model << (c.emulated ? " on cuda_emu" : " on cuda");
}

// Logits of a fixed two-step batch, then `greedy` tokens decoded greedily from a prompt.
struct ModelRun {
  std::vector<float> logits;
  std::vector<int32_t> greedy;
};

absl::StatusOr<ModelRun> RunModel(const std::string& path, kernels::Backend* backend, int greedy) {
  Model::Options options;
  options.backend = backend;
  options.num_threads = 1;
  absl::StatusOr<std::unique_ptr<Model>> model = Model::Load(path, options);
  if (!model.ok()) return model.status();
  const ModelConfig& c = (*model)->config();
  absl::StatusOr<std::unique_ptr<KvCache>> cache =
      KvCache::Create((*model)->backend(), c, /*block_size=*/16, /*num_blocks=*/16);
  if (!cache.ok()) return cache.status();
  ForwardWorkspace ws((*model)->backend());
  const int32_t v = static_cast<int32_t>(c.vocab_size);
  ModelRun run;
  const std::vector<int32_t> a = {1 % v, 17 % v, 42 % v,  99 % v, 250 % v, 7,
                                  3,     64 % v, 128 % v, 5,      77 % v};
  const std::vector<int32_t> b = {9, 8, 7, 6, 5, 4, 300 % v};
  const std::vector<int32_t> table_a = {0, 1}, table_b = {2, 3};
  std::vector<SequenceInput> step = {{a, 0, table_a, LogitsMode::kAll},
                                     {b, 0, table_b, LogitsMode::kLast}};
  std::vector<float> logits(static_cast<size_t>(Model::LogitRows(step)) * v);
  if (absl::Status s = (*model)->Forward(step, **cache, ws, logits.data()); !s.ok()) return s;
  run.logits = logits;
  const std::vector<int32_t> na = {11}, nb = {12};
  step = {{na, static_cast<int32_t>(a.size()), table_a, LogitsMode::kLast},
          {nb, static_cast<int32_t>(b.size()), table_b, LogitsMode::kLast}};
  logits.assign(static_cast<size_t>(Model::LogitRows(step)) * v, 0.0f);
  if (absl::Status s = (*model)->Forward(step, **cache, ws, logits.data()); !s.ok()) return s;
  run.logits.insert(run.logits.end(), logits.begin(), logits.end());

  // Greedy decoding in blocks 4.. of the cache.
  std::vector<int32_t> tokens = {2, 40 % v, 13, 21 % v, 34 % v};
  std::vector<int32_t> table;
  for (int32_t i = 4; i < 16; ++i) table.push_back(i);
  int32_t cached = 0;
  std::vector<int32_t> next = tokens;
  std::vector<float> row(static_cast<size_t>(v));
  for (int i = 0; i < greedy; ++i) {
    std::vector<SequenceInput> s = {{next, cached, table, LogitsMode::kLast}};
    if (absl::Status st = (*model)->Forward(s, **cache, ws, row.data()); !st.ok()) return st;
    cached += static_cast<int32_t>(next.size());
    const int32_t best =
        static_cast<int32_t>(std::max_element(row.begin(), row.end()) - row.begin());
    run.greedy.push_back(best);
    next = {best};
  }
  return run;
}

class DeviceParityTest : public ::testing::TestWithParam<Case> {};

TEST_P(DeviceParityTest, LogitsAndGreedyTokensMatchTheCpuBackend) {
  const Case& c = GetParam();
  absl::StatusOr<std::unique_ptr<kernels::Backend>> device =
      c.emulated ? kernels::cuda::CreateCudaBackend({})
                 : kernels::CreateBackend(kernels::Device::kCuda, {});
  if (!device.ok()) {
    ASSERT_FALSE(c.emulated) << device.status();
    GTEST_SKIP() << "no CUDA backend here: " << device.status();
  }
  absl::StatusOr<std::unique_ptr<kernels::Backend>> cpu =
      kernels::CreateBackend(kernels::Device::kCpu, {.num_threads = 1});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  // The source tree: where the test was built, unless SPANSERVE_SOURCE_DIR says otherwise
  // (tools/gpu_check.sh runs it on another machine).
  const char* root = std::getenv("SPANSERVE_SOURCE_DIR");
  const std::string path =
      std::string(root != nullptr && *root != '\0' ? root : SPANSERVE_SOURCE_DIR) + "/" + c.model;
  // The emulation is slow: fewer greedy steps there (the context still crosses a block).
  const int greedy = c.emulated ? 20 : 64;
  absl::StatusOr<ModelRun> want = RunModel(path, cpu->get(), greedy);
  ASSERT_TRUE(want.ok()) << want.status();
  absl::StatusOr<ModelRun> got = RunModel(path, device->get(), greedy);
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->logits.size(), want->logits.size());
  float scale = 0.0f;
  for (float x : want->logits) scale = std::max(scale, std::abs(x));
  int bad = 0;
  for (size_t i = 0; i < want->logits.size(); ++i) {
    if (!(std::abs(got->logits[i] - want->logits[i]) <= 1e-4f * scale)) {
      if (++bad <= 5) {
        ADD_FAILURE() << "logit " << i << ": " << (*device)->description() << " " << got->logits[i]
                      << ", cpu " << want->logits[i] << " (scale " << scale << ")";
      }
    }
  }
  EXPECT_EQ(bad, 0) << bad << " of " << want->logits.size() << " logits differ";
  EXPECT_EQ(got->greedy, want->greedy);
}

std::vector<Case> Cases() {
  const char* models[] = {
      "models/spanserve-span-12l",
      "models/spanserve-span-moe-12l",
      "tests/data/models/pre",
      "tests/data/models/post",
      "tests/data/models/span",
      "tests/data/models/sandwich",
      "tests/data/models/mix",
      "tests/data/models/b2t",
      "tests/data/models/deepnorm",
      "tests/data/models/span_layernorm",
      "tests/data/models/span_bf16",
      "tests/data/models/pre_f16",
      "tests/data/models/span_attnbias",
      "tests/data/models/span_scaled",
      "tests/data/models/pre_tied",
      "tests/data/models/pre_rope_linear",
      "tests/data/models/hf_llama",
      "tests/data/models/hf_llama3_rope",
      "tests/data/models/hf_qwen2",
      "tests/data/models/hf_qwen2_yarn",
      "tests/data/models/hf_llama_dynamic",
      "tests/data/models/hf_mixtral",
      "tests/data/models/hf_olmoe",
      "tests/data/models/hf_qwen2_moe",
      "tests/data/models/moe_qwen2_span",
      "tests/data/models/moe_sigmoid_span",
      "tests/data/models/hf_mistral_sliding",
      "tests/data/models/hf_qwen2_sliding",
      "tests/data/models/hf_gemma",
      "tests/data/models/hf_qwen3",
      "tests/data/models/hf_qwen3_moe",
      "tests/data/models/hf_phi3",
      "tests/data/models/hf_phi3_longrope",
      "tests/data/models/hf_gemma2",
      "tests/data/models/hf_gemma3",
  };
  std::vector<Case> cases;
  for (bool emulated : {true, false}) {
    for (const char* m : models) cases.push_back({m, emulated});
  }
  return cases;
}

INSTANTIATE_TEST_SUITE_P(Models, DeviceParityTest, ::testing::ValuesIn(Cases()),
                         [](const auto& info) {
                           std::string name = info.param.model;
                           name = name.substr(name.rfind('/') + 1);
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name + (info.param.emulated ? "_cuda_emu" : "_cuda");
                         });

}  // namespace
}  // namespace spanserve::model
