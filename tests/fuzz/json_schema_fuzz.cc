// Fuzzes structured outputs (runtime/engine/json_schema.h, json_grammar.h): a JSON Schema as
// a request carries it, compiled, then bytes an output might hold fed one at a time.
//
// Input: the schema's text, a NUL byte, then the bytes to feed. Whatever the schema, compiling
// must end with a schema or an error. For a compiled one, before each byte: the allowed tokens
// of a small vocabulary (every single byte, some multi-byte tokens) are computed, and the
// output must never be stuck (no token allowed before it is complete); a byte is fed where the
// state takes it (exactly when its one-byte token is allowed) and skipped otherwise. A complete
// output must be JSON (numbers past a double's range allowed).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/engine/json_grammar.h"
#include "runtime/engine/json_schema.h"

namespace {

namespace engine = spanserve::engine;

// Ids 0..255: the single bytes; then a few longer tokens.
const engine::TokenBytesTable& Table() {
  static const auto* const kTable = [] {
    std::vector<std::string> vocab;
    for (int b = 0; b < 256; ++b) vocab.emplace_back(1, static_cast<char>(b));
    for (const char* t : {"\"name\"", "\": ", "\", \"", "true", "null", "false", "{\"", "\"}",
                          "[\"", "\"]", "12", "-0.5", "\xC3\xA9", "\\u00e9", "}}", "]}", "\n  "}) {
      vocab.emplace_back(t);
    }
    return new engine::TokenBytesTable(static_cast<int32_t>(vocab.size()),
                                       [vocab](int32_t id) { return vocab[id]; });
  }();
  return *kTable;
}

[[noreturn]] void Fail(const char* what, const std::string& text) {
  std::fprintf(stderr, "%s after %zu bytes: %s\n", what, text.size(), text.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find('\0');
  const std::string_view schema_text = in.substr(0, cut);
  const std::string_view feed = cut == std::string_view::npos ? "" : in.substr(cut + 1);
  auto schema = engine::JsonSchema::Compile(schema_text);
  if (!schema.ok()) return 0;
  const engine::TokenBytesTable& table = Table();
  engine::JsonState state(schema->get());
  std::string text;
  std::vector<int32_t> ids;
  std::vector<char> allowed(static_cast<size_t>(table.vocab_size()));
  for (const char c : feed.substr(0, 4096)) {
    ids.clear();
    engine::AllowedJsonTokens(state, table, &ids);
    if (state.complete()) {
      if (!ids.empty()) Fail("a token allowed after the end", text);
      break;
    }
    if (ids.empty()) Fail("stuck", text);
    std::fill(allowed.begin(), allowed.end(), 0);
    for (const int32_t id : ids) allowed[id] = 1;
    engine::JsonState next = state;
    const bool took = next.Feed(std::string_view(&c, 1));
    if (took != (allowed[static_cast<uint8_t>(c)] != 0))
      Fail("Feed and the allowed set differ", text);
    if (!took) continue;
    state = next;
    text += c;
  }
  if (state.complete()) {
    try {
      (void)nlohmann::json::parse(text);
    } catch (const nlohmann::json::out_of_range&) {
      // A number past a double's range: valid JSON (RFC 8259) that this parser refuses.
    } catch (const nlohmann::json::exception&) {
      Fail("a complete output is not JSON", text);
    }
  }
  return 0;
}
