// Shared by the GGUF loader tests: the logits of every position of one sequence, run alone
// from position 0 in one forward pass.
#pragma once

#include <cstdint>
#include <vector>

#include "gtest/gtest.h"
#include "runtime/model/model.h"

namespace spanserve::loader::test_util {

// `tokens` (at most 64) through `m` with a fresh 4-block cache; [tokens.size(), vocab].
inline std::vector<float> Logits(model::Model& m, const std::vector<int32_t>& tokens) {
  auto cache = model::KvCache::Create(m.backend(), m.config(), 16, 4);
  EXPECT_TRUE(cache.ok());
  model::ForwardWorkspace ws(m.backend());
  const std::vector<int32_t> table = {0, 1, 2, 3};
  const model::SequenceInput seq{
      .tokens = tokens, .cached = 0, .block_table = table, .logits = model::LogitsMode::kAll};
  std::vector<float> logits(tokens.size() * m.config().vocab_size);
  EXPECT_TRUE(m.Forward({&seq, 1}, **cache, ws, logits.data()).ok());
  return logits;
}

}  // namespace spanserve::loader::test_util
