// StreamingDetokenizer: pieces are always well-formed UTF-8 and concatenate to Decode().
#include "runtime/tokenizer/streaming.h"

#include <memory>
#include <random>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gtest/gtest.h"
#include "runtime/tokenizer/tokenizer.h"

namespace spanserve::tokenizer {
namespace {

using testing::IsWellFormedUtf8;
using testing::TokenizerDataPath;

// Streams `ids`; returns the number of failures reported (at most a few).
int CheckStream(const Tokenizer& tok, const std::vector<int32_t>& ids, bool skip_special,
                const std::string& what) {
  StreamingDetokenizer stream(tok, skip_special);
  std::string all;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = stream.Add(ids[i]);
    if (!IsWellFormedUtf8(piece)) {
      ADD_FAILURE() << what << ": Add(" << ids[i] << ") at " << i << " returned ill-formed UTF-8";
      return 1;
    }
    all += piece;
  }
  const std::string tail = stream.Flush();
  if (!IsWellFormedUtf8(tail)) {
    ADD_FAILURE() << what << ": Flush returned ill-formed UTF-8";
    return 1;
  }
  all += tail;
  const std::string want = tok.Decode(ids, skip_special);
  if (all != want) {
    ADD_FAILURE() << what << ": streamed \"" << all << "\" but Decode gives \"" << want << "\"";
    return 1;
  }
  return 0;
}

class StreamingTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto tok = testing::SharedTokenizer(GetParam());
    ASSERT_TRUE(tok.ok()) << tok.status();
    tok_ = *tok;
  }
  const Tokenizer* tok_ = nullptr;
};

TEST_P(StreamingTest, ConcatenationEqualsDecodeOnGoldens) {
  const testing::Golden& golden = testing::SharedGolden(GetParam());
  int failures = 0;
  for (size_t i = 0; i < golden.records.size() && failures < 5; ++i) {
    const auto& r = golden.records[i];
    failures += CheckStream(*tok_, r.ids, false, "input " + std::to_string(i));
    if (r.ids_special) {
      failures += CheckStream(*tok_, *r.ids_special, true, "special " + std::to_string(i));
      failures += CheckStream(*tok_, *r.ids_special, false, "special " + std::to_string(i));
    }
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(StreamingTest, RandomIdsNeverBreakUtf8) {
  // Random ids split characters anywhere, make invalid byte runs and put special tokens
  // in the middle: the hardest case for holding text back.
  std::mt19937 rng(7);
  std::uniform_int_distribution<int32_t> any(-2, tok_->vocab_size() + 2);
  int failures = 0;
  for (int seq = 0; seq < 400 && failures < 5; ++seq) {
    std::vector<int32_t> ids(rng() % 40);
    for (int32_t& id : ids) {
      id = any(rng);
      // Bias towards byte-level pieces of multi-byte characters and byte tokens.
      if (rng() % 3 == 0) {
        if (auto t = tok_->TokenToId("<0x" + std::string(1, "89ABCDEF"[rng() % 8]) + "0>")) id = *t;
      }
    }
    failures += CheckStream(*tok_, ids, seq % 2 == 0, "random sequence " + std::to_string(seq));
  }
  EXPECT_EQ(failures, 0);
}

TEST_P(StreamingTest, EmitsTextBeforeTheEnd) {
  // Streaming must actually stream: most text is returned by Add, not held for Flush.
  auto ids = tok_->Encode("In the beginning God created the heaven and the earth.", false);
  ASSERT_TRUE(ids.ok());
  StreamingDetokenizer stream(*tok_, false);
  std::string before_flush;
  for (int32_t id : *ids) before_flush += stream.Add(id);
  const std::string tail = stream.Flush();
  EXPECT_GE(before_flush.size(), 40u) << "tail: " << tail;
}

TEST(StreamingDetokenizer, HoldsSplitCharactersUntilComplete) {
  // Byte-level BPE: an emoji the vocabulary lacks is several byte tokens; nothing of it
  // comes out until its last byte.
  auto tok = testing::SharedTokenizer("bpe_llama3");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("a😀", false);
  ASSERT_TRUE(ids.ok());
  ASSERT_GE(ids->size(), 3u);
  StreamingDetokenizer stream(**tok, false);
  std::vector<std::string> pieces;
  for (int32_t id : *ids) pieces.push_back(stream.Add(id));
  EXPECT_EQ(pieces.front(), "a");
  for (size_t i = 1; i + 1 < pieces.size(); ++i) EXPECT_EQ(pieces[i], "") << i;
  EXPECT_EQ(pieces.back(), "😀");
  EXPECT_EQ(stream.Flush(), "");
}

TEST(StreamingDetokenizer, ByteFallbackRunsDecodeAsAUnit) {
  // SentencePiece byte fallback: "你" is three <0xXX> tokens, final only once the run ends.
  auto tok = testing::SharedTokenizer("sp_llama2");
  ASSERT_TRUE(tok.ok());
  auto ids = (*tok)->Encode("I 你 x", false);
  ASSERT_TRUE(ids.ok());
  StreamingDetokenizer stream(**tok, false);
  std::string out;
  for (int32_t id : *ids) {
    const std::string piece = stream.Add(id);
    EXPECT_TRUE(IsWellFormedUtf8(piece));
    out += piece;
  }
  EXPECT_EQ(out + stream.Flush(), "I 你 x");
  // A run that ends invalid becomes one U+FFFD per byte, as Decode does.
  const std::vector<int32_t> bad = {*(*tok)->TokenToId("<0xE4>"), *(*tok)->TokenToId("<0x41>")};
  StreamingDetokenizer s2(**tok, false);
  std::string got = s2.Add(bad[0]);
  got += s2.Add(bad[1]);
  got += s2.Flush();
  EXPECT_EQ(got, (*tok)->Decode(bad, false));
  EXPECT_EQ(got, "\xEF\xBF\xBD\xEF\xBF\xBD");
}

TEST(StreamingDetokenizer, TrailingStripIsResolvedAtFlush) {
  // A Strip decoder that removes a trailing space of the whole text: the space is held
  // until more text follows, and dropped by Flush.
  auto base = testing::SharedTokenizer("sp_llama2");
  ASSERT_TRUE(base.ok());
  std::string json = testing::ReadFile(TokenizerDataPath("sp_llama2/tokenizer.json"));
  const std::string from = R"({"type":"Strip","content":" ","start":1,"stop":0})";
  const size_t at = json.find(from);
  ASSERT_NE(at, std::string::npos);
  json.replace(at, from.size(), R"({"type":"Strip","content":" ","start":1,"stop":1})");
  auto tok = Tokenizer::FromJson(json);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto ids = (*tok)->Encode("Amen. ", false);
  ASSERT_TRUE(ids.ok());
  StreamingDetokenizer stream(**tok, false);
  std::string out;
  for (int32_t id : *ids) out += stream.Add(id);
  EXPECT_EQ(out, "Amen.");
  EXPECT_EQ(out + stream.Flush(), (*tok)->Decode(*ids, false));
}

TEST(StreamingDetokenizer, SequenceWithNoKeptIdsFlushesWhatDecodeGives) {
  // Found by tests/fuzz (fuzz_tokenizer_json): Fuse then a Replace whose regex matches the
  // empty string decodes no tokens to the replacement (as `tokenizers` does); Flush
  // returned "" for a sequence with no kept ids (none, or only skipped special ones).
  std::string json = testing::ReadFile(TokenizerDataPath("sp_llama2/tokenizer.json"));
  const std::string from = R"({"type":"Strip","content":" ","start":1,"stop":0})";
  const size_t at = json.find(from);
  ASSERT_NE(at, std::string::npos);
  json.replace(at, from.size(),
               R"({"type":"Replace","pattern":{"Regex":"\u2581*+"},"content":" "})");
  auto tok = Tokenizer::FromJson(json);
  ASSERT_TRUE(tok.ok()) << tok.status();
  const int32_t bos = *(*tok)->TokenToId("<s>");
  for (const std::vector<int32_t>& ids : {std::vector<int32_t>{}, std::vector<int32_t>{bos}}) {
    const std::string want = (*tok)->Decode(ids, /*skip_special_tokens=*/true);
    ASSERT_EQ(want, " ");
    StreamingDetokenizer stream(**tok, /*skip_special_tokens=*/true);
    std::string got;
    for (int32_t id : ids) got += stream.Add(id);
    EXPECT_EQ(got + stream.Flush(), want) << ids.size() << " ids";
  }
  EXPECT_EQ(CheckStream(**tok, {bos, bos}, true, "two skipped"), 0);
  EXPECT_EQ(CheckStream(**tok, {bos}, false, "kept"), 0);
}

INSTANTIATE_TEST_SUITE_P(Tokenizers, StreamingTest,
                         ::testing::Values("smollm2", "bpe_gpt2", "bpe_llama3", "bpe_qwen2",
                                           "sp_llama2", "sp_metaspace", "spm_llama"),
                         [](const auto& info) { return info.param; });

}  // namespace
}  // namespace spanserve::tokenizer
