// Grammar-constrained decoding: the output is held, token by token, to a sentence of a GBNF
// grammar (the format of llama.cpp's grammars, which vLLM's guided_grammar and xgrammar's
// EBNF also take). Grammar::Compile reads the grammar; a GrammarState recognizes the bytes of
// a sentence prefix; AllowedGrammarTokens tells which tokens of a TokenBytesTable keep the
// output such a prefix.
//
// The syntax: rules `name ::= alternatives`, one per line (a name holds letters, digits, `-`
// and `_`; `root` is the start rule; a name is defined once). Alternatives are separated by
// `|`; each is a sequence of elements: "string literals", character classes `[a-z_]` and
// negated ones `[^"\\]`, `.` (any Unicode scalar value), rule names, groups `( ... )`, each
// optionally followed by `*`, `+`, `?`, `{m}`, `{m,}` or `{m,n}` (m, n <= kMaxRepeat). Literals
// and classes take the escapes `\n \r \t \\ \" \[ \] \- \^ \xHH \uHHHH \UHHHHHHHH`. `#` begins a
// comment to the end of the line. A line break ends a rule's body, except inside parentheses
// and except where the next line that holds anything begins with `|` (more alternatives).
//
// Characters are code points and the text is their UTF-8: a state may hold part of a
// character (a token may end inside one), and takes it exactly when some completion of the
// character could match; invalid UTF-8 (overlong forms, surrogates, values past U+10FFFF,
// stray continuation bytes) is never taken, nor is a surrogate by `.` or a negated class.
//
// Refused (INVALID_ARGUMENT, saying where as line:column or naming the rule): syntax errors,
// an undefined, a doubly defined or a missing root rule, a left-recursive rule (directly,
// through other rules or past a prefix that can be empty), a rule that derives no finite text,
// an empty character class, a repetition of something that can be empty (`("a"?)*`), and a
// grammar over the limits ("too large: ..."). So every state Feed reaches can be completed to
// a sentence: a token is allowed exactly when its bytes keep the output a sentence prefix.
//
// A state is the set of the parses still open, each a stack of grammar positions; the set is
// kept deduplicated and sorted. Ambiguous grammars could still make it grow: a byte that would
// need more than kMaxStacks stacks, a stack deeper than kMaxStackDepth or more than
// kMaxExpansionWork stacks visited is refused (Feed returns false), so a pathological grammar
// may cut a text short, but never makes a state grow without bound.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/json_grammar.h"

namespace spanserve::engine {

class GrammarState;

class Grammar {
 public:
  static constexpr size_t kMaxGrammarBytes = 64 << 10;
  static constexpr int kMaxRepeat = 1000;          // m and n of {m,n}
  static constexpr int kMaxRules = 1 << 16;        // named ones and those groups and
                                                   // repetitions become
  static constexpr int kMaxElements = 1 << 18;     // after {m,n} is expanded
  static constexpr int kMaxNesting = 64;           // groups within groups
  static constexpr int kMaxStacks = 2048;          // parses open in one state
  static constexpr int kMaxStackDepth = 256;       // positions in one parse's stack
  static constexpr int kMaxExpansionWork = 16384;  // stacks visited to take one character

  // Compiles GBNF `text` (root rule `root`). Errors are INVALID_ARGUMENT saying where
  // (line:column, both from 1, the column in characters) and what ("at 3:14: expected '::='",
  // "rule 'value' is used but not defined", "rule 'a' is left-recursive", "rule 'x' can
  // never finish (it derives no finite text)", "too large: ...").
  static absl::StatusOr<std::shared_ptr<const Grammar>> Compile(std::string_view text);

  // Sizes of the compiled grammar.
  int32_t num_rules() const { return static_cast<int32_t>(rule_alts_.size()); }
  int32_t num_elements() const { return static_cast<int32_t>(elems_.size()); }

 private:
  friend class GrammarState;
  friend class GrammarCompiler;
  enum Kind : uint8_t { kChar, kRef, kEnd };
  struct Elem {
    Kind kind = kEnd;
    uint32_t arg = 0;  // kChar: the set; kRef: the rule
  };
  struct CharSet {
    uint64_t ascii[2] = {0, 0};
    uint32_t begin = 0;  // its ranges in ranges_
    uint32_t end = 0;
  };
  bool Contains(uint32_t set, uint32_t cp) const;
  // Whether the set holds some / every code point of [lo, hi].
  bool Intersects(uint32_t set, uint32_t lo, uint32_t hi) const;
  bool Covers(uint32_t set, uint32_t lo, uint32_t hi) const;

  std::vector<Elem> elems_;                       // each alternative's elements, then kEnd
  std::vector<std::vector<uint32_t>> rule_alts_;  // each rule's alternatives' first positions
  std::vector<CharSet> sets_;
  std::vector<std::pair<uint32_t, uint32_t>> ranges_;  // sorted, disjoint, no surrogates
  // Completion: the fewest bytes from each position to the end of its alternative, and the
  // alternative of each rule that reaches its fewest bytes.
  std::vector<uint64_t> suffix_min_;
  std::vector<uint32_t> best_alt_;
  std::vector<uint32_t> start_;  // the start state's stacks (GrammarState::data_)
  int32_t root_ = 0;
};

// A recognizer's state: which texts may still follow the bytes fed so far. Copyable (the
// engine keeps one per sequence and copies it to try a token); cheap to copy for small
// grammars (one vector).
class GrammarState {
 public:
  GrammarState() = default;  // no grammar: unusable except to assign to
  // At the start of the text (the grammar must outlive the state).
  explicit GrammarState(const Grammar* grammar);
  // Feeds bytes: true when every byte keeps the text a prefix of some sentence of the grammar
  // (the state then moves past them); false otherwise (the state is then unspecified: callers
  // feed a copy), also when a byte would pass the limits (see over_limits()).
  bool Feed(std::string_view bytes);
  // The text so far is a whole sentence (EOS may follow).
  bool accepting() const;
  // No byte may follow (then accepting() is true).
  bool final() const;
  // Equal states have the same continuations: the same sorted set of stacks and the same
  // character under way.
  bool operator==(const GrammarState&) const;
  size_t Hash() const;  // consistent with ==

  // The last Feed that failed was refused because of the limits (kMaxStacks,
  // kMaxStackDepth, kMaxExpansionWork), not because the grammar refuses the bytes.
  bool over_limits() const { return over_limits_; }
  // The parses open (stacks), and the continuation bytes due of a character under way.
  size_t num_stacks() const;
  // The state's size in 32-bit words (its stacks, their positions and lengths).
  size_t size_words() const { return data_.size(); }
  int continuation_bytes_due() const { return rem_; }
  // The fewest bytes that complete the text to a sentence (0 when accepting; saturates).
  uint64_t min_completion_bytes() const;
  // Appends to *out one of the shortest texts that complete the text to a sentence; false
  // (with *out unspecified) when that is longer than `max_bytes`.
  bool ShortestCompletion(size_t max_bytes, std::string* out) const;

 private:
  friend class GrammarCompiler;
  bool FeedByte(uint8_t b);
  // Moves every stack whose top takes `cp` (all of them when `all`) past its top.
  bool Advance(uint32_t cp, bool all);
  bool FillStart();
  // Expands the stacks of `work` until each top is a character set (or the stack is empty)
  // into data_; false past the limits.
  bool Close(std::vector<std::vector<uint32_t>>* work);
  uint64_t StackMin(size_t at, size_t len) const;

  const Grammar* grammar_ = nullptr;
  // The stacks, each as its length then its positions from the bottom; the top is always a
  // character set's position (an empty stack: the text may end here). Sorted, no duplicates.
  std::vector<uint32_t> data_;
  // A character under way: continuation bytes due, its length in bytes, its bits so far.
  // any_: every completion is a valid character that every stack's top takes (value_ and
  // len_ are then 0, so that all such states are equal).
  uint32_t value_ = 0;
  uint8_t rem_ = 0;
  uint8_t len_ = 0;
  bool any_ = false;
  bool over_limits_ = false;
};

// The ids of `table` whose bytes `state` accepts, exactly those a copy of it would Feed
// successfully (appended to *ids, not sorted); returns how many. Tokens with no bytes (special
// tokens, EOS) are never among them: the caller allows EOS when state.accepting().
int32_t AllowedGrammarTokens(const GrammarState& state, const TokenBytesTable& table,
                             std::vector<int32_t>* ids);

}  // namespace spanserve::engine
