// The tokenizer a GGUF file's metadata describes (tokenizer.ggml.*), as a VocabularySpec
// for tokenizer::Tokenizer::FromVocabulary.
#pragma once

#include "absl/status/statusor.h"
#include "runtime/gguf/gguf_file.h"
#include "runtime/tokenizer/vocabulary.h"

namespace spanserve::loader {

// Reads tokenizer.ggml.model ("gpt2" or "llama"), .tokens, .merges, .scores, .token_type,
// .pre, .bos/eos/unknown_token_id, .add_bos_token, .add_eos_token, .add_space_prefix.
// NOT_FOUND if the file has no tokenizer.ggml.model (a weights-only file); INVALID_ARGUMENT
// naming the key for an ill-typed or inconsistent key; UNIMPLEMENTED naming the key and value
// for another tokenizer model.
[[nodiscard]] absl::StatusOr<tokenizer::VocabularySpec> GgufVocabulary(const gguf::GgufFile& file);

}  // namespace spanserve::loader
