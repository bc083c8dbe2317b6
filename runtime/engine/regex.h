// Regular expressions compiled to a DFA over bytes, for guided decoding: vLLM's guided_regex
// (the whole output matches) and JSON Schema's `pattern` and `format` (a string's decoded
// value contains a match, json_schema.h). Every state of the automaton can still reach a
// match, so a text the DFA has not rejected can always be completed; that is what lets the
// engine allow a token exactly when its bytes keep the output a prefix of a match.
//
// The syntax is the common core of ECMAScript's and Python's: literals (UTF-8 code points),
// `.`, bracket classes with ranges and negation, `\d \w \s \D \W \S`, escapes (`\n \t \r \f
// \v \0 \xHH \uHHHH \u{H...}` and escaped punctuation), groups `( )` and `(?: )` and
// `(?<name> )` / `(?P<name> )`, alternation, `* + ? {n} {n,} {n,m}` (lazy forms accepted:
// they match the same texts), and `^` / `$` at the start / end of the pattern or of a
// top-level alternative. Where the two dialects differ the set is the one both agree on (`\d`
// is ASCII digits, `\w` ASCII word characters, `\D` and `\W` hold no character Python's
// Unicode classes would call a digit or a word character, `\s` / `\S` no character either
// calls the other, `.` no line terminator), so a generated text matches under either.
// Refused, with the offset and what is not supported: backreferences, lookaround, word
// boundaries, anchors elsewhere, inline flags, possessive quantifiers, Unicode property
// classes, `\D` `\W` `\S` in a negated class, and anything over the size or work limits.
#pragma once

#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace spanserve::engine {

class RegexDfa {
 public:
  // How a text matches the pattern.
  enum class Match : uint8_t {
    kFull,    // the whole text matches (guided_regex); `^` and `$` at the ends change nothing
    kSearch,  // JSON Schema's `pattern`: some part of the text matches; a top-level
              // alternative without `^` may begin anywhere, one without `$` end anywhere
  };
  // The dead state: no text that reaches it can be completed to a match.
  static constexpr uint32_t kDead = 0;
  static constexpr uint32_t kUnbounded = UINT32_MAX;
  // Limits on one compiled pattern. A pattern over them is refused (INVALID_ARGUMENT).
  static constexpr size_t kMaxPatternBytes = 16 << 10;
  static constexpr int kMaxRepeat = 10000;       // n and m of {n,m}
  static constexpr int kMaxNfaStates = 1 << 17;  // after counted repetition is expanded
  static constexpr int kMaxDfaStates = 1 << 14;  // live states, the dead one included
  static constexpr int kMaxNesting = 256;        // groups within groups
  // The construction's work on one pattern (NFA states visited, transitions and kernel
  // entries handled: about 0.1 s), or on all the patterns that share a `work` counter.
  static constexpr uint64_t kMaxWork = uint64_t{1} << 25;

  // Compiles `pattern`. Errors are INVALID_ARGUMENT and say what is wrong and where
  // ("at offset 3: lookahead is not supported"), and so does a pattern no text matches
  // ("no text matches it") or one too costly ("too complex: ..."). `work`, when given, is
  // the allowance left to the patterns that share it (a schema's), decreased by this one's
  // work; else each pattern has kMaxWork.
  static absl::StatusOr<std::shared_ptr<const RegexDfa>> Compile(std::string_view pattern,
                                                                 Match match = Match::kFull,
                                                                 uint64_t* work = nullptr);

  // The texts this DFA accepts that are also valid UTF-8 of `min` ..= `max` code points
  // (max kUnbounded: no upper bound). INVALID_ARGUMENT when no text is left or the product
  // passes kMaxDfaStates. (JSON Schema's minLength / maxLength beside a pattern or format.)
  absl::StatusOr<std::shared_ptr<const RegexDfa>> WithLength(uint32_t min, uint32_t max) const;

  uint32_t start() const { return start_; }
  // The state after `byte`; kDead if no match can follow.
  uint32_t Next(uint32_t state, uint8_t byte) const {
    return next_[static_cast<size_t>(state) * num_classes_ + class_of_[byte]];
  }
  // The text read so far matches.
  bool accepting(uint32_t state) const { return flags_[state] & kAccepting; }
  // No byte may follow (then the state is accepting: every live state can reach a match).
  bool final(uint32_t state) const { return flags_[state] & kFinal; }
  // Feeds `bytes` from `state`: the state after them, kDead once one is refused.
  uint32_t Walk(uint32_t state, std::string_view bytes) const {
    for (char c : bytes) {
      state = Next(state, static_cast<uint8_t>(c));
      if (state == kDead) break;
    }
    return state;
  }
  int32_t num_states() const { return static_cast<int32_t>(flags_.size()); }
  // The fewest characters (code points) that must begin after `state` before a match: 0
  // when accepting; a character begun but not finished adds nothing more.
  uint32_t min_chars(uint32_t state) const { return min_chars_[state]; }

 private:
  friend class RegexDfaBuilder;
  static constexpr uint8_t kAccepting = 1;
  static constexpr uint8_t kFinal = 2;
  uint32_t start_ = 1;
  uint32_t num_classes_ = 1;
  uint8_t class_of_[256] = {};       // each byte's equivalence class
  std::vector<uint32_t> next_;       // [state][class]; row 0 (dead) all kDead
  std::vector<uint8_t> flags_;       // per state
  std::vector<uint32_t> min_chars_;  // per state
};

}  // namespace spanserve::engine
