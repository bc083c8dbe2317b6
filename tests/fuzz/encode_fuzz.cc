// Fuzzes text encoding with real tokenizers, loaded once: the bundled model's byte-level
// BPE and the test tokenizers of every supported kind (GPT-2, Llama-3 and Qwen2 byte-level
// BPE, SentencePiece-style BPE with byte fallback, Metaspace). Each input is encoded, the
// ids decoded (whole and through the streaming detokenizer), and checked:
//   - Encode succeeds iff the text is valid UTF-8 (else INVALID_ARGUMENT);
//   - every id is in [0, vocab_size);
//   - Decode returns valid UTF-8, and the streaming detokenizer the same text;
//   - for the lossless tokenizers (byte-level, no normalizer, no stripping added tokens),
//     Decode(Encode(text)) == text.
//
// Input: byte 0 picks the tokenizer (low 3 bits) and add_special_tokens (bit 7); the
// rest is the text.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "runtime/tokenizer/streaming.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

using spanserve::tokenizer::Tokenizer;

struct Loaded {
  std::unique_ptr<Tokenizer> tokenizer;
  bool lossless;  // Decode(Encode(text, false), false) == text for every valid text
};

std::vector<Loaded>* LoadAll() {
  struct Spec {
    const char* path;
    bool lossless;
  };
  static constexpr Spec kSpecs[] = {
      {"models/spanserve-span-12l/tokenizer.json", true},
      {"tests/data/tokenizers/bpe_llama3/tokenizer.json", true},
      {"tests/data/tokenizers/bpe_gpt2/tokenizer.json", false},
      {"tests/data/tokenizers/bpe_qwen2/tokenizer.json", false},  // NFC
      {"tests/data/tokenizers/sp_llama2/tokenizer.json", false},
      {"tests/data/tokenizers/sp_metaspace/tokenizer.json", false},
      {"tests/data/tokenizers/spm_llama/tokenizer.json", false},
  };
  auto* out = new std::vector<Loaded>();
  for (const Spec& s : kSpecs) {
    absl::StatusOr<std::unique_ptr<Tokenizer>> tok =
        Tokenizer::FromFile(spanserve::fuzz::SourcePath(s.path));
    if (!tok.ok()) {
      std::fprintf(stderr, "cannot load %s: %s\n", s.path, tok.status().ToString().c_str());
      std::abort();
    }
    out->push_back({*std::move(tok), s.lossless});
  }
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static std::vector<Loaded>* const tokenizers = LoadAll();
  if (size < 1) return 0;
  const Loaded& loaded = (*tokenizers)[(data[0] & 7) % tokenizers->size()];
  const Tokenizer& t = *loaded.tokenizer;
  const bool add_special = (data[0] & 0x80) != 0;
  const std::string_view text(reinterpret_cast<const char*>(data + 1), size - 1);

  absl::StatusOr<std::vector<int32_t>> ids = t.Encode(text, add_special);
  const bool valid = spanserve::fuzz::IsValidUtf8(text);
  if (!ids.ok()) {
    SPANSERVE_CHECK(!valid);
    SPANSERVE_CHECK(ids.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  SPANSERVE_CHECK(valid);
  for (const int32_t id : *ids) {
    SPANSERVE_CHECK_GE(id, 0);
    SPANSERVE_CHECK_LT(id, t.vocab_size());
  }
  for (const bool skip : {false, true}) {
    const std::string decoded = t.Decode(*ids, skip);
    SPANSERVE_CHECK(spanserve::fuzz::IsValidUtf8(decoded));
    spanserve::tokenizer::StreamingDetokenizer stream(t, skip);
    std::string streamed;
    for (const int32_t id : *ids) streamed += stream.Add(id);
    streamed += stream.Flush();
    SPANSERVE_CHECK(streamed == decoded);
    if (loaded.lossless && !add_special && !skip) SPANSERVE_CHECK(decoded == text);
  }
  return 0;
}
