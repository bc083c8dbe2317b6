// Fuzzes tokenizer.json loading (Tokenizer::FromJson: every normalizer, pre-tokenizer,
// model, post-processor, decoder and added-token parser), then runs a tokenizer that loads
// over a few fixed texts: Encode, Decode, the streaming detokenizer and the id accessors.
//
// Input: the tokenizer.json text.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "fuzz_util.h"
#include "runtime/tokenizer/streaming.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

using spanserve::tokenizer::Tokenizer;

// Bounds that keep one input fast: a loaded vocabulary is walked below.
constexpr int32_t kMaxWalkedIds = 1 << 12;

void Exercise(const Tokenizer& t) {
  SPANSERVE_CHECK(t.vocab_size() >= 0);
  const int32_t walk = t.vocab_size() < kMaxWalkedIds ? t.vocab_size() : kMaxWalkedIds;
  for (int32_t id = -1; id <= walk; ++id) {
    const std::string_view token = t.IdToToken(id);
    if (!token.empty()) (void)t.TokenToId(token);
    (void)t.IsSpecial(id);
  }
  for (const char* text : {"", "Hello world", "  a  b\n\n\tc ", "caf\xc3\xa9 \xe2\x96\x81x 1234",
                           "<s></s><|endoftext|>", "\xf0\x9f\x98\x80!"}) {
    for (const bool special : {false, true}) {
      absl::StatusOr<std::vector<int32_t>> ids = t.Encode(text, special);
      if (!ids.ok()) continue;
      std::string streamed;
      spanserve::tokenizer::StreamingDetokenizer stream(t, /*skip_special_tokens=*/special);
      for (const int32_t id : *ids) streamed += stream.Add(id);
      streamed += stream.Flush();
      const std::string decoded = t.Decode(*ids, /*skip_special_tokens=*/special);
      SPANSERVE_CHECK(spanserve::fuzz::IsValidUtf8(decoded));
      SPANSERVE_CHECK(streamed == decoded);
    }
  }
  // Unknown and out-of-range ids are skipped.
  const int32_t odd_ids[] = {-1, 0, 1, t.vocab_size() - 1, t.vocab_size(), 2147483647};
  SPANSERVE_CHECK(spanserve::fuzz::IsValidUtf8(t.Decode(odd_ids, false)));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok = Tokenizer::FromJson(json);
  if (!tok.ok()) {
    SPANSERVE_CHECK(tok.status().code() == absl::StatusCode::kInvalidArgument);
    return 0;
  }
  Exercise(**tok);
  return 0;
}
