// Tokenizer API: errors, accessors, thread-safety, the GGUF-style vocabulary factory.
#include "runtime/tokenizer/tokenizer.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "golden_util.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::tokenizer {
namespace {

using testing::GoldenInputs;
using testing::ReadFile;
using testing::TokenizerDataPath;

const Tokenizer* Load(const std::string& name) {
  auto tok = testing::SharedTokenizer(name);
  EXPECT_TRUE(tok.ok()) << tok.status();
  return tok.ok() ? *tok : nullptr;
}

// A small byte-level tokenizer.json with one component replaced.
std::string TinyJson(const std::string& field, const nlohmann::json& value) {
  nlohmann::json j = nlohmann::json::parse(R"({
    "version": "1.0", "added_tokens": [], "normalizer": null,
    "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
    "post_processor": null, "decoder": {"type": "ByteLevel"},
    "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}})");
  if (field == "model.type") {
    j["model"]["type"] = value;
  } else {
    j[field] = value;
  }
  return j.dump();
}

TEST(Tokenizer, InvalidUtf8IsInvalidArgument) {
  auto tok = Load("bpe_gpt2");
  ASSERT_NE(tok, nullptr);
  const std::vector<std::string> bad = {
      "\x80",              // lone continuation byte
      "abc\xC0\x80",       // overlong NUL
      "\xED\xA0\x80",      // UTF-16 surrogate
      "tail\xE2\x82",      // truncated sequence at the end
      "\xF5\x80\x80\x80",  // beyond U+10FFFF
      "ok \xFF ok",
  };
  for (const std::string& s : bad) {
    auto ids = tok->Encode(s, true);
    ASSERT_FALSE(ids.ok()) << "accepted " << s.size() << " bytes";
    EXPECT_EQ(ids.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(ids.status().message().find("UTF-8"), std::string::npos);
  }
  auto ok = tok->Encode("valid \xE2\x82\xAC and \xF0\x9F\x98\x80", true);
  EXPECT_TRUE(ok.ok());
}

TEST(Tokenizer, HugeInputsNeverCrash) {
  // A whitespace run of 20 MB exceeds what the Llama-3 split regex can backtrack over:
  // that is a RESOURCE_EXHAUSTED status, never an abort. Realistic sizes just work.
  auto tok = Load("bpe_llama3");
  ASSERT_NE(tok, nullptr);
  auto huge = tok->Encode(std::string(20 << 20, ' ') + "x", false);
  if (!huge.ok()) {
    EXPECT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  }
  auto big = tok->Encode(std::string(1 << 20, ' ') + "x", false);
  ASSERT_TRUE(big.ok()) << big.status();
  EXPECT_EQ(tok->Decode(*big, false), std::string(1 << 20, ' ') + "x");
}

TEST(Tokenizer, UnsupportedComponentsNameThemselves) {
  struct Case {
    std::string field;
    nlohmann::json value;
    std::string message;
  };
  const std::vector<Case> cases = {
      {"pre_tokenizer", {{"type", "Xyz"}}, "unsupported pre_tokenizer type 'Xyz'"},
      {"normalizer", {{"type", "BertNormalizer"}}, "unsupported normalizer type 'BertNormalizer'"},
      {"decoder", {{"type", "CTC"}}, "unsupported decoder type 'CTC'"},
      {"post_processor", {{"type", "Fancy"}}, "unsupported post_processor type 'Fancy'"},
      {"model.type", "WordPiece", "unsupported model type 'WordPiece'"},
      {"normalizer",
       {{"type", "Sequence"}, {"normalizers", {{{"type", "NFC"}}, {{"type", "Precompiled"}}}}},
       "unsupported normalizer type 'Precompiled'"},
  };
  for (const Case& c : cases) {
    auto tok = Tokenizer::FromJson(TinyJson(c.field, c.value));
    ASSERT_FALSE(tok.ok()) << c.message;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(tok.status().message().find(c.message), std::string::npos) << tok.status();
  }
  // The unmodified document loads.
  EXPECT_TRUE(Tokenizer::FromJson(TinyJson("padding", nullptr)).ok());
}

TEST(Tokenizer, MalformedFilesAreErrors) {
  EXPECT_EQ(Tokenizer::FromJson("{not json").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromJson("{}").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Tokenizer::FromFile("/nonexistent/tokenizer.json").status().code(),
            absl::StatusCode::kNotFound);
  // A merge whose parts are not in the vocabulary.
  nlohmann::json j = nlohmann::json::parse(TinyJson("padding", nullptr));
  j["model"]["merges"] = {"a c"};
  auto tok = Tokenizer::FromJson(j.dump());
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find("'a c'"), std::string::npos) << tok.status();
  // Sampling BPE (dropout) would make encoding random.
  j = nlohmann::json::parse(TinyJson("padding", nullptr));
  j["model"]["dropout"] = 0.1;
  EXPECT_FALSE(Tokenizer::FromJson(j.dump()).ok());
}

TEST(Tokenizer, TokenIdsOutOfRangeAreErrors) {
  // Found by tests/fuzz (fuzz_tokenizer_json): a vocab id of 9999999928 wrapped to int32
  // 1410065336 and sized the id -> token table (45 GB); ids index dense tables, so they are
  // bounded, and never wrap.
  const nlohmann::json base = nlohmann::json::parse(TinyJson("padding", nullptr));
  const auto expect_rejected = [](const nlohmann::json& j, const std::string& what) {
    auto tok = Tokenizer::FromJson(j.dump());
    ASSERT_FALSE(tok.ok()) << what;
    EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument) << what;
    EXPECT_NE(tok.status().message().find("out of range"), std::string::npos) << tok.status();
  };
  for (const nlohmann::json& id :
       {nlohmann::json(9999999928LL), nlohmann::json(-1), nlohmann::json(2147483647),
        nlohmann::json(1u << 22), nlohmann::json(18446744073709551615ULL)}) {
    nlohmann::json j = base;
    j["model"]["vocab"]["c"] = id;
    expect_rejected(j, "vocab id " + id.dump());
    j = base;
    j["added_tokens"] = {{{"id", id}, {"content", "<x>"}, {"special", true}}};
    expect_rejected(j, "added token id " + id.dump());
    j = base;
    j["post_processor"] = {{"type", "TemplateProcessing"},
                           {"single", {{{"SpecialToken", {{"id", "<x>"}}}}, {{"Sequence", {}}}}},
                           {"special_tokens", {{"<x>", {{"ids", {id}}}}}}};
    expect_rejected(j, "post-processor id " + id.dump());
  }
  nlohmann::json j = base;
  j["added_tokens"] = {{{"id", 4000}, {"content", "<x>"}, {"special", true}}};
  auto ok = Tokenizer::FromJson(j.dump());
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->vocab_size(), 4001);
  // Strip counts beyond int32 no longer wrap (4294967297 was a Strip of 1).
  j = base;
  j["decoder"] = {{"type", "Strip"}, {"content", " "}, {"start", 4294967297LL}, {"stop", 0}};
  EXPECT_FALSE(Tokenizer::FromJson(j.dump()).ok());
}

TEST(Tokenizer, AccessorsAndSpecialTokens) {
  auto tok = Load("bpe_llama3");
  ASSERT_NE(tok, nullptr);
  const auto bot = tok->TokenToId("<|begin_of_text|>");
  ASSERT_TRUE(bot.has_value());
  EXPECT_EQ(tok->bos_id(), bot);
  EXPECT_EQ(tok->eos_id(), tok->TokenToId("<|end_of_text|>"));
  EXPECT_TRUE(tok->IsSpecial(*bot));
  EXPECT_EQ(tok->IdToToken(*bot), "<|begin_of_text|>");
  EXPECT_EQ(tok->IdToToken(-1), "");
  EXPECT_EQ(tok->IdToToken(tok->vocab_size()), "");
  EXPECT_FALSE(tok->TokenToId("no such token").has_value());
  const auto the = tok->TokenToId("Ġthe");
  ASSERT_TRUE(the.has_value());
  EXPECT_FALSE(tok->IsSpecial(*the));

  // A special token in the text is one id, with or without add_special_tokens.
  auto ids = tok->Encode("<|begin_of_text|>the<|eot_id|>", false);
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->front(), *bot);
  EXPECT_EQ(ids->back(), *tok->TokenToId("<|eot_id|>"));
  EXPECT_EQ(tok->Decode(*ids, true), "the");
  EXPECT_EQ(tok->Decode(*ids, false), "<|begin_of_text|>the<|eot_id|>");
  // Unknown ids are skipped when decoding.
  std::vector<int32_t> with_unknown = *ids;
  with_unknown.push_back(-5);
  with_unknown.push_back(1 << 30);
  EXPECT_EQ(tok->Decode(with_unknown, false), "<|begin_of_text|>the<|eot_id|>");
  // Empty input: nothing but the template.
  auto empty = tok->Encode("", true);
  ASSERT_TRUE(empty.ok());
  EXPECT_EQ(*empty, std::vector<int32_t>{*bot});
}

// TokenBytes: each token's own bytes, joining into the text where a character spans tokens
// (which Decode of one such token shows as U+FFFD), for a byte-level vocabulary and for a
// SentencePiece one with byte fallback.
TEST(Tokenizer, TokenBytesJoinIntoTheText) {
  const std::string text = "Smile \xF0\x9F\x99\x82 and \xE6\xBC\xA2\xE5\xAD\x97 \xE2\x80\x94 ok";
  for (const std::string name : {"bpe_gpt2", "smollm2", "sp_llama2"}) {
    SCOPED_TRACE(name);
    auto tok = Load(name);
    ASSERT_NE(tok, nullptr);
    auto ids = tok->Encode(text, /*add_special_tokens=*/false);
    ASSERT_TRUE(ids.ok()) << ids.status();
    std::string joined;
    bool split_character = false;
    for (const int32_t id : *ids) {
      const std::string bytes = tok->TokenBytes(id);
      EXPECT_FALSE(bytes.empty()) << id;
      joined += bytes;
      const std::string decoded = tok->Decode(std::span<const int32_t>(&id, 1), false);
      split_character = split_character || decoded.find("\xEF\xBF\xBD") != std::string::npos;
    }
    // SentencePiece's "▁" is the space before each word, the first word's too (which Decode
    // of a whole text drops).
    if (name == "sp_llama2") {
      ASSERT_FALSE(joined.empty());
      if (joined.front() == ' ') joined.erase(0, 1);
    }
    EXPECT_EQ(joined, text);
    EXPECT_TRUE(split_character) << "no token of the text holds part of a character";
  }
  auto tok = Load("bpe_gpt2");
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->TokenBytes(-1), "");
  EXPECT_EQ(tok->TokenBytes(tok->vocab_size()), "");
}

TEST(Tokenizer, ConcurrentEncodeAndDecodeAgree) {
  auto tok = Load("smollm2");
  ASSERT_NE(tok, nullptr);
  const auto& inputs = GoldenInputs();
  std::vector<std::vector<int32_t>> want(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) want[i] = *tok->Encode(inputs[i], false);
  // A fresh tokenizer, so that the threads race on an empty word cache.
  auto shared = Load("smollm2");
  ASSERT_NE(shared, nullptr);
  constexpr int kThreads = 4;
  std::vector<int> mismatches(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (size_t k = 0; k < inputs.size(); ++k) {
        const size_t i = (k * (t + 1) + t * 977) % inputs.size();
        auto ids = shared->Encode(inputs[i], false);
        if (!ids.ok() || *ids != want[i]) ++mismatches[t];
        if (shared->Decode(want[i], false) != tok->Decode(want[i], false)) ++mismatches[t];
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(mismatches[t], 0) << "thread " << t;
}

TEST(Tokenizer, FromVocabularyMatchesSmolLm2TokenizerJson) {
  // The GGUF path: plain vectors as a GGUF file holds them (tokens, merges, token types,
  // "smollm" pre-tokenizer) give the same tokenizer as the written tokenizer.json.
  const std::string path = TokenizerDataPath("smollm2/tokenizer.json");
  const auto doc = nlohmann::json::parse(ReadFile(path));
  VocabularySpec spec;
  spec.model = VocabularyModel::kGpt2;
  spec.pre = "smollm";
  const auto& vocab = doc["model"]["vocab"];
  spec.tokens.resize(vocab.size());
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    spec.tokens[it.value().get<size_t>()] = it.key();
  }
  for (const auto& m : doc["model"]["merges"]) spec.merges.push_back(m.get<std::string>());
  spec.token_types.assign(spec.tokens.size(), static_cast<int32_t>(GgufTokenType::kNormal));
  for (const auto& t : doc["added_tokens"]) {
    spec.token_types[t["id"].get<size_t>()] = static_cast<int32_t>(GgufTokenType::kControl);
  }
  spec.bos_id = 1;
  spec.eos_id = 2;
  auto from_vocab = Tokenizer::FromVocabulary(spec);
  ASSERT_TRUE(from_vocab.ok()) << from_vocab.status();
  auto from_json = Load("smollm2");
  ASSERT_NE(from_json, nullptr);
  EXPECT_EQ((*from_vocab)->bos_id(), 1);
  EXPECT_EQ((*from_vocab)->eos_id(), 2);
  EXPECT_EQ((*from_vocab)->vocab_size(), from_json->vocab_size());
  size_t mismatches = 0;
  for (const std::string& text : GoldenInputs()) {
    if (*(*from_vocab)->Encode(text, true) != *from_json->Encode(text, true)) ++mismatches;
  }
  EXPECT_EQ(mismatches, 0u);

  spec.pre = "no-such-pre";
  auto bad = Tokenizer::FromVocabulary(spec);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("no-such-pre"), std::string::npos);
}

TEST(Tokenizer, FromVocabularyRejectsTokensThatAreNotUtf8) {
  // Found by tests/fuzz (fuzz_gguf): a GGUF token that is not UTF-8 made the tokenizer.json
  // that FromVocabulary writes throw (nlohmann type_error 316) out of the loader.
  VocabularySpec spec;
  spec.model = VocabularyModel::kGpt2;
  spec.tokens = {"<s>", "</s>", "a", "b", "ab", "ab\x94"};
  spec.merges = {"a b"};
  auto bad_token = Tokenizer::FromVocabulary(spec);
  ASSERT_FALSE(bad_token.ok());
  EXPECT_EQ(bad_token.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_token.status().message().find("token 5"), std::string::npos) << bad_token.status();

  spec.tokens.pop_back();
  spec.merges.push_back("a \xff");
  auto bad_merge = Tokenizer::FromVocabulary(spec);
  ASSERT_FALSE(bad_merge.ok());
  EXPECT_EQ(bad_merge.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(bad_merge.status().message().find("merge 1"), std::string::npos) << bad_merge.status();

  spec.merges.pop_back();
  EXPECT_TRUE(Tokenizer::FromVocabulary(spec).ok());
}

TEST(Tokenizer, FromVocabularyMatchesTransformersLlamaConverter) {
  // A SentencePiece model's pieces, scores and types (as a GGUF "llama" vocabulary holds
  // them, no merges): FromVocabulary derives the merges as transformers' converter does
  // and must tokenize exactly like the converter's tokenizer.json.
  const auto v = nlohmann::json::parse(ReadFile(TokenizerDataPath("spm_llama/spm_vocab.json")));
  VocabularySpec spec;
  spec.model = VocabularyModel::kLlama;
  spec.tokens = v["tokens"].get<std::vector<std::string>>();
  spec.scores = v["scores"].get<std::vector<float>>();
  spec.token_types = v["token_types"].get<std::vector<int32_t>>();
  spec.bos_id = v["bos_id"].get<int32_t>();
  spec.eos_id = v["eos_id"].get<int32_t>();
  spec.unk_id = v["unk_id"].get<int32_t>();
  spec.add_bos = true;
  auto from_vocab = Tokenizer::FromVocabulary(spec);
  ASSERT_TRUE(from_vocab.ok()) << from_vocab.status();
  auto converted = Load("spm_llama");
  ASSERT_NE(converted, nullptr);
  EXPECT_EQ((*from_vocab)->bos_id(), converted->bos_id());
  size_t mismatches = 0;
  for (const std::string& text : GoldenInputs()) {
    const auto ids = *converted->Encode(text, true);
    if (*(*from_vocab)->Encode(text, true) != ids && ++mismatches <= 3) {
      ADD_FAILURE() << "ids differ on \"" << text << "\"";
    }
    if ((*from_vocab)->Decode(ids, true) != converted->Decode(ids, true) && ++mismatches <= 3) {
      ADD_FAILURE() << "decode differs on \"" << text << "\"";
    }
  }
  EXPECT_EQ(mismatches, 0u);
}

}  // namespace
}  // namespace spanserve::tokenizer
