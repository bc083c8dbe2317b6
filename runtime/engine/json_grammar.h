// JSON mode (OpenAI's response_format {"type": "json_object"}): the output is constrained,
// token by token, to be a JSON object (RFC 8259). JsonMatcher recognizes the bytes of a
// valid prefix; TokenBytesTable holds each token's bytes, so AllowedJsonTokens can tell
// which tokens keep the output a valid prefix.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace spanserve::engine {

// A byte-at-a-time recognizer of a JSON text whose top-level value is an object. Strings
// must be valid UTF-8 (shortest forms, no surrogates); nesting is bounded (kMaxDepth), and
// so is whitespace between tokens, as llama.cpp's JSON grammar bounds it: a run holds at most
// one line break ('\n', after at most one '\r') and kMaxWhitespace bytes, enough for
// indented output but not for a model that would pad forever. After the closing brace
// nothing more is accepted. A few bytes of state, copied freely.
class JsonMatcher {
 public:
  static constexpr int kMaxDepth = 32;
  static constexpr int kMaxWhitespace = 48;

  // Whether `c` continues a valid prefix; if not, the state is left unchanged.
  bool Feed(uint8_t c);
  // Whether all of `bytes` do (the state is then advanced past them; else unspecified).
  bool Feed(std::string_view bytes);
  // The top-level object is closed: the text is complete.
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a string with no escape or multi-byte character under way: every byte but '"',
  // '\\' and control characters is accepted, and so is every whole UTF-8 character.
  bool in_plain_string() const { return mode_ == Mode::kString && utf8_need_ == 0; }

 private:
  enum class Mode : uint8_t {
    kStart,     // before the top-level '{'
    kValue,     // a value is expected
    kObjFirst,  // after '{': a key or '}'
    kObjKey,    // after ',' in an object: a key
    kColon,     // after a key
    kObjNext,   // after a member's value: ',' or '}'
    kArrFirst,  // after '[': a value or ']'
    kArrNext,   // after an element: ',' or ']'
    kString,    // inside a string (key_ says which kind)
    kEscape,    // after '\\'
    kUnicode,   // after "\\u": aux_ hex digits to go
    kNumMinus,  // "-"
    kNumZero,   // "-?0"
    kNumInt,    // "-?[1-9][0-9]*"
    kNumDot,    // "...."
    kNumFrac,   // "....[0-9]+"
    kNumE,      // "...e"
    kNumESign,  // "...e[+-]"
    kNumExp,    // "...e[+-]?[0-9]+"
    kLiteral,   // inside true / false / null: literal_, aux_ bytes matched
    kDone,
  };
  bool FeedInner(uint8_t c);
  bool Whitespace(uint8_t c);
  bool StartValue(uint8_t c);
  bool Push(bool object);
  void AfterValue();

  Mode mode_ = Mode::kStart;
  uint8_t depth_ = 0;
  uint8_t ws_ = 0;          // whitespace bytes in a row
  uint8_t ws_breaks_ = 0;   // of which bit 0: a '\n', bit 1: a '\r'
  uint8_t aux_ = 0;         // kUnicode: hex digits left; kLiteral: bytes matched
  uint8_t literal_ = 0;     // 0 true, 1 false, 2 null
  uint8_t utf8_need_ = 0;   // continuation bytes still due in a string
  uint8_t utf8_lo_ = 0x80;  // the next continuation byte's range
  uint8_t utf8_hi_ = 0xBF;
  bool key_ = false;      // the string is a member's key
  uint32_t objects_ = 0;  // bit d: level d + 1 is an object (else an array)
};

// The bytes of every token id (Tokenizer::TokenBytes), empty for special and unknown ids,
// which a grammar never allows; with the ids grouped as AllowedJsonTokens scans them.
class TokenBytesTable {
 public:
  // bytes_of(id) for id in [0, vocab_size); special ids give "".
  TokenBytesTable(int32_t vocab_size, const std::function<std::string(int32_t)>& bytes_of);
  int32_t vocab_size() const { return static_cast<int32_t>(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }

 private:
  friend int32_t AllowedJsonTokens(const JsonMatcher&, const TokenBytesTable&,
                                   std::vector<int32_t>*);
  std::vector<std::string> bytes_;
  // Tokens any plain string state accepts whole (no '"', '\\' or control byte, whole UTF-8
  // characters only), and the other non-empty tokens by their first byte.
  std::vector<int32_t> plain_;
  std::vector<int32_t> other_;
  std::vector<std::vector<int32_t>> by_first_byte_;
};

// The ids whose bytes `m` accepts (appended to *ids, ascending within each group, not
// sorted overall); returns how many. Special tokens (EOS) are not among them: the caller
// allows those once m.complete().
int32_t AllowedJsonTokens(const JsonMatcher& m, const TokenBytesTable& table,
                          std::vector<int32_t>* ids);

}  // namespace spanserve::engine
