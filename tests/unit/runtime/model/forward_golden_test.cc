// The bundled models' logits for a fixed two-step batch, fingerprinted bit for bit. The
// fingerprints were recorded before the compute backend seam (issue 16): the model running
// through kernels::Backend must give exactly the logits it gave calling the CPU kernels
// directly. A kernel change that moves any logit by one ulp shows here; if it is meant,
// record the new fingerprints it prints (and say why in the commit).
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/model/model.h"

namespace spanserve::model {
namespace {

// FNV-1a over the bytes of the floats.
uint64_t Fingerprint(const std::vector<float>& v, uint64_t h = 14695981039346656037ULL) {
  const auto* p = reinterpret_cast<const unsigned char*>(v.data());
  for (size_t i = 0; i < v.size() * sizeof(float); ++i) {
    h ^= p[i];
    h *= 1099511628211ULL;
  }
  return h;
}

struct Golden {
  const char* model;
  uint64_t fingerprint;
};

void PrintTo(const Golden& g, std::ostream* os) { *os << g.model; }

class ForwardGoldenTest : public ::testing::TestWithParam<Golden> {};

TEST_P(ForwardGoldenTest, LogitsAreBitForBitThoseRecorded) {
  const Golden& g = GetParam();
  auto model =
      Model::Load(std::string(SPANSERVE_SOURCE_DIR) + "/models/" + g.model, {.num_threads = 1});
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& c = (*model)->config();
  auto cache = KvCache::Create((*model)->backend(), c, /*block_size=*/16, /*num_blocks=*/8);
  ASSERT_TRUE(cache.ok());
  ForwardWorkspace ws((*model)->backend());
  // Step 1: a prefill with every row's logits beside one with the last row's only.
  const std::vector<int32_t> a = {1, 17, 42, 99, 250, 7, 3, 64, 128, 5, 77};
  const std::vector<int32_t> b = {9, 8, 7, 6, 5, 4, 300};
  const std::vector<int32_t> table_a = {0, 1}, table_b = {2, 3};
  std::vector<SequenceInput> step = {{a, 0, table_a, LogitsMode::kAll},
                                     {b, 0, table_b, LogitsMode::kLast}};
  std::vector<float> logits(static_cast<size_t>(Model::LogitRows(step)) * c.vocab_size);
  ASSERT_TRUE((*model)->Forward(step, **cache, ws, logits.data()).ok());
  uint64_t h = Fingerprint(logits);
  // Step 2: one decode step each, over the cached prefixes.
  const std::vector<int32_t> na = {11}, nb = {12};
  step = {{na, static_cast<int32_t>(a.size()), table_a, LogitsMode::kLast},
          {nb, static_cast<int32_t>(b.size()), table_b, LogitsMode::kLast}};
  logits.assign(static_cast<size_t>(Model::LogitRows(step)) * c.vocab_size, 0.0f);
  ASSERT_TRUE((*model)->Forward(step, **cache, ws, logits.data()).ok());
  h = Fingerprint(logits, h);
  EXPECT_EQ(h, g.fingerprint) << g.model << ": logits fingerprint 0x" << std::hex << h
                              << " (first logit " << logits[0] << ")";
}

INSTANTIATE_TEST_SUITE_P(Bundled, ForwardGoldenTest,
                         ::testing::Values(Golden{"spanserve-span-12l", 0x9ddb5bbb698fafdeULL},
                                           Golden{"spanserve-span-moe-12l", 0x0ea2ed5357bca8f9ULL}),
                         [](const auto& info) {
                           std::string name = info.param.model;
                           for (char& ch : name) {
                             if (ch == '-') ch = '_';
                           }
                           return name;
                         });

}  // namespace
}  // namespace spanserve::model
