// Fuzzes the GBNF grammars of guided decoding (runtime/engine/grammar.h): a grammar as a
// request carries it (guided_grammar), compiled, then a text fed to it. Whatever the grammar,
// compiling must end in a grammar or in INVALID_ARGUMENT saying where ("at L:C: ...") or
// naming the rule or the limit.
//
// Input: the grammar's text, a NUL byte, and a text to feed (its first 256 bytes).
//
// Checked on every grammar that compiles, along the longest prefix of the text it accepts:
// feeding byte by byte reaches the same state (== and Hash) as feeding the prefix whole; a
// final state is accepting and takes no byte; every state reached can be completed to a
// sentence (its shortest completion, where that is short, fed on a copy ends accepting,
// unless the limits on parses cut it short) and its min_completion_bytes is that completion's
// length; equal states hash alike; and, every few bytes, AllowedGrammarTokens over a small
// vocabulary (every single byte and some multi-byte tokens) allows exactly the tokens a copy
// of the state takes.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "fuzz_util.h"
#include "runtime/engine/grammar.h"
#include "runtime/engine/json_grammar.h"

namespace {

using spanserve::engine::AllowedGrammarTokens;
using spanserve::engine::Grammar;
using spanserve::engine::GrammarState;
using spanserve::engine::TokenBytesTable;

constexpr size_t kMaxFeed = 256;
constexpr size_t kMaxCompletion = 512;

[[noreturn]] void Fail(const char* what, std::string_view grammar, std::string_view text) {
  std::fprintf(stderr, "%s: grammar \"%.*s\" text \"%.*s\"\n", what,
               static_cast<int>(grammar.size()), grammar.data(), static_cast<int>(text.size()),
               text.data());
  std::abort();
}

// A refusal: INVALID_ARGUMENT with a place within the text, a rule or a limit.
void CheckRefusal(const absl::Status& status, std::string_view grammar) {
  SPANSERVE_CHECK(status.code() == absl::StatusCode::kInvalidArgument);
  const std::string_view message(status.message().data(), status.message().size());
  if (message.starts_with("at ")) {
    size_t line = 0, col = 0, i = 3;
    while (i < message.size() && message[i] >= '0' && message[i] <= '9') {
      line = line * 10 + static_cast<size_t>(message[i++] - '0');
      SPANSERVE_CHECK_LE(line, grammar.size() + 1);
    }
    SPANSERVE_CHECK(i < message.size() && message[i] == ':');
    ++i;
    while (i < message.size() && message[i] >= '0' && message[i] <= '9') {
      col = col * 10 + static_cast<size_t>(message[i++] - '0');
      SPANSERVE_CHECK_LE(col, grammar.size() + 1);
    }
    SPANSERVE_CHECK(line >= 1 && col >= 1);
    SPANSERVE_CHECK(message.substr(i).starts_with(": ") && message.size() > i + 2);
    return;
  }
  SPANSERVE_CHECK(message.starts_with("rule '") || message.starts_with("no rule 'root'") ||
                  message.starts_with("too large: "));
}

const std::vector<std::string>& Vocab() {
  static const std::vector<std::string>* vocab = [] {
    auto* v = new std::vector<std::string>;
    v->push_back("");  // a special token
    for (int b = 0; b < 256; ++b) v->push_back(std::string(1, static_cast<char>(b)));
    for (const char* t : {"ab",       "true",     "null",         "\": ",
                          "{\"",      "\"}",      ", ",           "12",
                          "a b",      "\xC3\xA9", "\xE6\x97\xA5", "\xF0\x9F\x98\x80",
                          "\xE6\x97", "\x97\xA5", "\xC3\xA9\xC3", "\n  ",
                          "[]",       "((",       "))",           "\xED\xA0\x80",
                          "\xC0\x80"}) {
      v->push_back(t);
    }
    return v;
  }();
  return *vocab;
}

const TokenBytesTable& Table() {
  static const TokenBytesTable* table = new TokenBytesTable(static_cast<int32_t>(Vocab().size()),
                                                            [](int32_t id) { return Vocab()[id]; });
  return *table;
}

void CheckState(const GrammarState& s, std::string_view grammar, std::string_view text,
                bool tokens) {
  if (s.final()) {
    if (!s.accepting()) Fail("final but not accepting", grammar, text);
    for (int b = 0; b < 256; ++b) {
      GrammarState t = s;
      const char c = static_cast<char>(b);
      if (t.Feed(std::string_view(&c, 1))) Fail("final yet a byte is taken", grammar, text);
    }
  }
  if (s.accepting() && s.min_completion_bytes() != 0) Fail("accepting, min > 0", grammar, text);
  const uint64_t min = s.min_completion_bytes();
  if (min <= kMaxCompletion) {
    std::string completion;
    if (!s.ShortestCompletion(kMaxCompletion, &completion)) {
      Fail("no shortest completion", grammar, text);
    }
    if (completion.size() != min) Fail("completion length != min", grammar, text);
    GrammarState t = s;
    const bool fed = t.Feed(completion);
    if (!(fed && t.accepting()) && !t.over_limits()) {
      Fail("the shortest completion does not complete", grammar, text);
    }
  }
  if (tokens) {
    std::vector<int32_t> allowed;
    AllowedGrammarTokens(s, Table(), &allowed);
    std::sort(allowed.begin(), allowed.end());
    std::vector<int32_t> want;
    bool limited = false;
    for (int32_t id = 0; id < static_cast<int32_t>(Vocab().size()); ++id) {
      if (Vocab()[id].empty()) continue;
      GrammarState t = s;
      if (t.Feed(Vocab()[id])) want.push_back(id);
      limited = limited || t.over_limits();
    }
    if (allowed != want) Fail("allowed tokens != tokens fed", grammar, text);
    // Single bytes are all in the vocabulary: a state that is not accepting takes one.
    if (want.empty() && !s.accepting() && !limited) Fail("stuck", grammar, text);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view in(reinterpret_cast<const char*>(data), size);
  const size_t cut = in.find('\0');
  const std::string_view grammar = in.substr(0, cut);
  const std::string_view text =
      cut == std::string_view::npos ? std::string_view() : in.substr(cut + 1, kMaxFeed);

  auto compiled = Grammar::Compile(grammar);
  if (!compiled.ok()) {
    CheckRefusal(compiled.status(), grammar);
    return 0;
  }
  const Grammar* g = compiled->get();
  GrammarState bytewise(g);
  CheckState(bytewise, grammar, "", true);
  size_t fed = 0;
  for (; fed < text.size(); ++fed) {
    GrammarState next = bytewise;
    if (!next.Feed(text.substr(fed, 1))) break;
    if (next == bytewise && next.Hash() != bytewise.Hash())
      Fail("== but Hash differs", grammar, text);
    bytewise = std::move(next);
    CheckState(bytewise, grammar, text.substr(0, fed + 1), fed % 16 == 15);
  }
  GrammarState whole(g);
  if (!whole.Feed(text.substr(0, fed))) Fail("whole refuses what bytes took", grammar, text);
  if (!(whole == bytewise) || whole.Hash() != bytewise.Hash()) {
    Fail("byte by byte != whole", grammar, text.substr(0, fed));
  }
  if (fed < text.size()) {
    GrammarState more(g);
    if (more.Feed(text.substr(0, fed + 1))) Fail("whole takes what bytes refused", grammar, text);
  }
  return 0;
}
