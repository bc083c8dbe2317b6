// Parity with Hugging Face `tokenizers` on the committed goldens: identical ids for every
// input (with and without special tokens) and identical decoded text.
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gtest/gtest.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::tokenizer {
namespace {

using testing::Golden;
using testing::GoldenInputs;
using testing::SharedGolden;
using testing::SharedTokenizer;
using testing::TokenizerDataPath;

std::string Escape(const std::string& s, size_t max = 120) {
  std::ostringstream out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c == '\n') {
      out << "\\n";
    } else if (c < 0x20 || c == 0x7F) {
      out << "\\x" << std::hex << static_cast<int>(c) << std::dec;
    } else {
      out << s[i];
    }
  }
  if (s.size() > max) out << "...";
  return out.str();
}

std::string Describe(const Tokenizer& tok, const std::vector<int32_t>& ids, size_t from) {
  std::ostringstream out;
  for (size_t i = from; i < ids.size() && i < from + 8; ++i) {
    out << ids[i] << "'" << Escape(std::string(tok.IdToToken(ids[i])), 20) << "' ";
  }
  return out.str();
}

std::string Mismatch(const Tokenizer& tok, size_t index, const std::string& input,
                     const std::vector<int32_t>& want, const std::vector<int32_t>& got) {
  size_t k = 0;
  while (k < want.size() && k < got.size() && want[k] == got[k]) ++k;
  std::ostringstream out;
  out << "input " << index << " \"" << Escape(input) << "\": first difference at id " << k
      << "\n  reference: " << Describe(tok, want, k) << "\n  ours:      " << Describe(tok, got, k);
  return out.str();
}

class ParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto tok = SharedTokenizer(GetParam());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *tok;
    ASSERT_EQ(golden_.records.size(), GoldenInputs().size());
  }

  const Tokenizer* tok_ = nullptr;
  const Golden& golden_ = SharedGolden(GetParam());
};

TEST_P(ParityTest, EncodeMatchesReferenceOnEveryInput) {
  const auto& inputs = GoldenInputs();
  size_t mismatches = 0, bytes = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    bytes += inputs[i].size();
    auto ids = tok_->Encode(inputs[i], /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != golden_.records[i].ids && ++mismatches <= 5) {
      ADD_FAILURE() << Mismatch(*tok_, i, inputs[i], golden_.records[i].ids, *ids);
    }
  }
  EXPECT_EQ(mismatches, 0u) << "of " << inputs.size() << " inputs";
  EXPECT_GT(bytes, 1'000'000u);
}

TEST_P(ParityTest, EncodeWithSpecialTokensMatchesReference) {
  const auto& inputs = GoldenInputs();
  size_t mismatches = 0, stored = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const testing::GoldenRecord& r = golden_.records[i];
    std::vector<int32_t> want = golden_.special_prefix;
    want.insert(want.end(), r.ids.begin(), r.ids.end());
    want.insert(want.end(), golden_.special_suffix.begin(), golden_.special_suffix.end());
    if (r.ids_special) {
      want = *r.ids_special;
      ++stored;
    }
    auto ids = tok_->Encode(inputs[i], /*add_special_tokens=*/true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    if (*ids != want && ++mismatches <= 5) {
      ADD_FAILURE() << Mismatch(*tok_, i, inputs[i], want, *ids);
    }
  }
  EXPECT_EQ(mismatches, 0u);
  EXPECT_GT(stored, 100u);
}

TEST_P(ParityTest, DecodeMatchesReference) {
  const auto& inputs = GoldenInputs();
  size_t mismatches = 0, roundtrips = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const testing::GoldenRecord& r = golden_.records[i];
    const std::string want = r.decoded.value_or(inputs[i]);
    if (!r.decoded) ++roundtrips;
    const std::string got = tok_->Decode(r.ids, /*skip_special_tokens=*/false);
    if (got != want && ++mismatches <= 5) {
      ADD_FAILURE() << "input " << i << ": reference \"" << Escape(want) << "\"\n  ours \""
                    << Escape(got) << "\"";
    }
    if (r.ids_special && r.decoded_skip) {
      const std::string skip = tok_->Decode(*r.ids_special, /*skip_special_tokens=*/true);
      if (skip != *r.decoded_skip && ++mismatches <= 5) {
        ADD_FAILURE() << "input " << i << " (skip special): reference \"" << Escape(*r.decoded_skip)
                      << "\"\n  ours \"" << Escape(skip) << "\"";
      }
    }
  }
  EXPECT_EQ(mismatches, 0u);
  if (golden_.decode_roundtrips) {
    EXPECT_EQ(roundtrips, inputs.size());
  }
}

using ByteLevelTest = ParityTest;

TEST_P(ByteLevelTest, DecodeOfEncodeRoundTrips) {
  // Byte-level BPE is lossless: decode(encode(x)) == x, except where the reference loses
  // text too (a normalizer, an lstrip token eating spaces, bytes missing from the vocabulary).
  const auto& inputs = GoldenInputs();
  size_t roundtrips = 0;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string decoded = tok_->Decode(*tok_->Encode(inputs[i], false), false);
    if (decoded == inputs[i]) {
      ++roundtrips;
    } else {
      EXPECT_TRUE(golden_.records[i].decoded.has_value()) << "input " << i;
    }
  }
  EXPECT_GE(roundtrips, inputs.size() * 95 / 100);
}

TEST_P(ParityTest, VocabularySizeMatchesReference) {
  EXPECT_EQ(tok_->vocab_size(), golden_.vocab_size);
  if (!golden_.special_prefix.empty()) {
    EXPECT_EQ(tok_->bos_id(), golden_.special_prefix[0]);
  }
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, ParityTest,
                         ::testing::Values("smollm2", "bpe_gpt2", "bpe_llama3", "bpe_qwen2",
                                           "sp_llama2", "sp_metaspace", "spm_llama"),
                         [](const auto& info) { return info.param; });

INSTANTIATE_TEST_SUITE_P(Tokenizers, ByteLevelTest,
                         ::testing::Values("smollm2", "bpe_gpt2", "bpe_llama3", "bpe_qwen2"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace spanserve::tokenizer
