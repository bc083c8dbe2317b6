// Test fixtures for the engine: a tiny model directory (the committed golden `span` model
// when present, else a random Llama-style one written here), a fake detokenizer, and a
// helper that drains a request's stream.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "runtime/engine/engine.h"
#include "runtime/engine/request.h"

namespace spanserve::engine::testing {

// A small model directory: tests/data/models/<name> if it exists, else a random dense
// model with the same shapes (vocab 97, 3 layers, max_position_embeddings 128, EOS 2)
// written once into the test's temp dir.
std::string TinyModelDir(const std::string& name = "span");

// Token t decodes to two lowercase letters: 'a' + t % 26, then 'a' + (t / 26) % 26; but
// tokens 0..2 (the tiny model's EOS is 2) are special: they decode to "<0>".."<2>", or to
// nothing when `skip_special_tokens`.
std::string FakeDecode(std::span<const int32_t> ids, bool skip_special_tokens = true);

// Everything a request produced, concatenated.
struct Collected {
  std::vector<int32_t> tokens;
  std::string text;
  std::vector<PositionLogprobs> logprobs;
  std::vector<PositionLogprobs> prompt_logprobs;
  FinalInfo final;
  int num_finals = 0;
  int num_outputs = 0;
};
// Adds one output to *c.
void Accumulate(RequestOutput&& out, Collected* c);
// Pops every output of `stream` until the final one (blocking).
Collected Drain(RequestStream& stream);
// Pops what is queued on `stream` without blocking.
void DrainQueued(RequestStream& stream, Collected* c);

}  // namespace spanserve::engine::testing
