// The bundled models reproduce the PyTorch reference's held-out perplexity
// (models/<name>/reference_perplexity.json, written by tools/train/eval_perplexity.py on
// tests/data/text/kjv_heldout.txt) within 0.1 %, with the tokenizer read from their own
// tokenizer.json.
#include <cmath>
#include <fstream>
#include <string>

#include "common/mapped_file.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/model/model.h"
#include "runtime/model/perplexity.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::model {
namespace {

class BundledModelTest : public ::testing::TestWithParam<std::string> {};

TEST_P(BundledModelTest, ReproducesReferencePerplexity) {
  const std::string dir = std::string(SPANSERVE_SOURCE_DIR) + "/models/" + GetParam();
  std::ifstream in(dir + "/reference_perplexity.json");
  ASSERT_TRUE(in) << dir;
  const nlohmann::json ref = nlohmann::json::parse(in);

  auto model = Model::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  auto tok = tokenizer::Tokenizer::FromFile(dir + "/tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto text = ReadFileToString(std::string(SPANSERVE_TEST_DATA) + "/text/kjv_heldout.txt");
  ASSERT_TRUE(text.ok());
  auto ids = (*tok)->Encode(*text, /*add_special_tokens=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();

  auto r = ScorePerplexity(**model, *ids, ref.at("window").get<int>());
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->tokens_scored, ref.at("tokens_scored").get<int64_t>());
  const double want = ref.at("perplexity").get<double>();
  EXPECT_NEAR(r->perplexity, want, 1e-3 * want);
  RecordProperty("perplexity", std::to_string(r->perplexity));
}

INSTANTIATE_TEST_SUITE_P(Models, BundledModelTest,
                         ::testing::Values("spanserve-span-12l", "spanserve-span-moe-12l"),
                         [](const auto& info) {
                           std::string n = info.param;
                           for (char& ch : n) ch = std::isalnum(ch) ? ch : '_';
                           return n;
                         });

}  // namespace
}  // namespace spanserve::model
