// Parity per component option: small tokenizer.json variants (every split behaviour,
// Metaspace scheme, normalizer, decoder, post-processor, added-token flag, BPE option),
// each checked against the reference's ids and text on a few hundred inputs
// (tests/data/tokenizers/components, from tools/tokenizer/make_component_goldens.py).
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "runtime/tokenizer/regex.h"
#include "runtime/tokenizer/streaming.h"
#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/unicode.h"

namespace spanserve::tokenizer {
namespace {

using testing::ReadGzipLines;
using testing::TokenizerDataPath;

struct ComponentCase {
  std::unique_ptr<Tokenizer> tok;
  std::vector<int32_t> prefix, suffix;
};

class ComponentParityTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string all;
    for (const std::string& line : ReadGzipLines(TokenizerDataPath("components/configs.json.gz"))) {
      all += line + "\n";
    }
    doc_ = new nlohmann::json(nlohmann::json::parse(all));
    inputs_ = new std::vector<std::string>(
        nlohmann::json::parse(testing::ReadFile(TokenizerDataPath("components/inputs.json")))
            .get<std::vector<std::string>>());
  }
  static void TearDownTestSuite() {
    delete doc_;
    delete inputs_;
  }

  static nlohmann::json* doc_;
  static std::vector<std::string>* inputs_;
};

nlohmann::json* ComponentParityTest::doc_ = nullptr;
std::vector<std::string>* ComponentParityTest::inputs_ = nullptr;

TEST_F(ComponentParityTest, EveryConfigMatchesReference) {
  std::map<std::string, ComponentCase> cases;
  for (auto it = (*doc_)["configs"].begin(); it != (*doc_)["configs"].end(); ++it) {
    auto tok = Tokenizer::FromJson(it.value().dump());
    ASSERT_TRUE(tok.ok()) << it.key() << ": " << tok.status();
    ComponentCase& c = cases[it.key()];
    c.tok = std::move(*tok);
    c.prefix = (*doc_)["templates"][it.key()]["prefix"].get<std::vector<int32_t>>();
    c.suffix = (*doc_)["templates"][it.key()]["suffix"].get<std::vector<int32_t>>();
  }
  EXPECT_GE(cases.size(), 40u);
  std::map<std::string, int> failures;
  size_t records = 0;
  for (const std::string& line : ReadGzipLines(TokenizerDataPath("components/golden.jsonl.gz"))) {
    const auto r = nlohmann::json::parse(line);
    const std::string name = r["config"];
    const std::string& input = inputs_->at(r["input"].get<size_t>());
    ComponentCase& c = cases.at(name);
    ++records;
    auto report = [&](const std::string& what) {
      if (++failures[name] <= 2) {
        ADD_FAILURE() << name << ", input " << r["input"] << " \"" << input << "\": " << what;
      }
    };
    const auto want = r["ids"].get<std::vector<int32_t>>();
    auto ids = c.tok->Encode(input, false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != want) report("ids differ");
    std::vector<int32_t> want_special = c.prefix;
    want_special.insert(want_special.end(), want.begin(), want.end());
    want_special.insert(want_special.end(), c.suffix.begin(), c.suffix.end());
    if (r.contains("ids_special")) want_special = r["ids_special"].get<std::vector<int32_t>>();
    auto special = c.tok->Encode(input, true);
    ASSERT_TRUE(special.ok());
    if (*special != want_special) report("ids with special tokens differ");
    if (r.contains("decode_panics")) continue;  // the reference has no answer
    const std::string decoded = r.value("decoded", input);
    const std::string got = c.tok->Decode(want, false);
    if (got != decoded) report("decode: reference \"" + decoded + "\", ours \"" + got + "\"");
    const std::string skip = c.tok->Decode(want_special, true);
    if (skip != r.value("decoded_skip", decoded)) report("decode (skip special) differs");
    // Streaming agrees with Decode on every configuration.
    StreamingDetokenizer stream(*c.tok, false);
    std::string streamed;
    for (int32_t id : want) streamed += stream.Add(id);
    streamed += stream.Flush();
    if (streamed != got) report("streamed \"" + streamed + "\" != decoded \"" + got + "\"");
  }
  EXPECT_GT(records, 10000u);
  for (const auto& [name, n] : failures) ADD_FAILURE() << name << ": " << n << " failures";
}

TEST(RegexTranslation, ClassesMatchOnigurumaOverAllCodePoints) {
  // Every code point, each its own candidate: a class matches exactly the code points the
  // reference's Oniguruma matches.
  std::string text;
  std::vector<uint32_t> starts;
  std::vector<char32_t> cps;
  for (char32_t c = 1; c < 0x110000; ++c) {
    if (c >= 0xD800 && c <= 0xDFFF) continue;
    starts.push_back(static_cast<uint32_t>(text.size()));
    cps.push_back(c);
    AppendUtf8(c, &text);
  }
  const auto classes =
      nlohmann::json::parse(testing::ReadFile(TokenizerDataPath("components/regex_classes.json")));
  EXPECT_GE(classes.size(), 16u);
  for (auto it = classes.begin(); it != classes.end(); ++it) {
    auto pattern = Pattern::Regex(it.key());
    ASSERT_TRUE(pattern.ok()) << pattern.status();
    std::vector<bool> want(0x110000, false);
    for (const auto& range : it.value()) {
      for (uint32_t c = range[0]; c <= range[1].get<uint32_t>(); ++c) want[c] = true;
    }
    std::vector<bool> got(0x110000, false);
    std::vector<Span> matches;
    ASSERT_TRUE((*pattern)->FindAll(text, &matches));
    size_t k = 0;
    for (const Span& m : matches) {
      while (k < starts.size() && starts[k] < m.begin) ++k;
      for (size_t q = k; q < starts.size() && starts[q] < m.end; ++q) got[cps[q]] = true;
    }
    int differences = 0;
    for (char32_t c : cps) {
      if (got[c] != want[c] && ++differences <= 3) {
        ADD_FAILURE() << it.key() << " (PCRE2: " << TranslateOnigurumaPattern(it.key()) << "): U+"
                      << std::hex << static_cast<uint32_t>(c)
                      << (want[c] ? " should match" : " should not match");
      }
    }
    EXPECT_EQ(differences, 0) << it.key();
  }
}

}  // namespace
}  // namespace spanserve::tokenizer
