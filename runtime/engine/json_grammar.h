// JSON mode (OpenAI's response_format {"type": "json_object"}) and structured outputs
// ({"type": "json_schema"}): the output is constrained, token by token, to be a JSON object
// (RFC 8259), or a JSON text a schema accepts (json_schema.h). JsonMatcher recognizes the
// bytes of a valid prefix; JsonState follows the alternatives a schema's anyOf leaves open;
// TokenBytesTable holds each token's bytes, so AllowedJsonTokens can tell which tokens keep
// the output a valid prefix.
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "runtime/engine/json_schema.h"

namespace spanserve::engine {

// A byte-at-a-time recognizer of a JSON text whose top-level value is an object, or, given
// a schema, of the JSON texts it accepts. Strings must be valid UTF-8 (shortest forms, no
// surrogates); nesting is bounded (kMaxDepth), and so is whitespace between tokens, as
// llama.cpp's JSON grammar bounds it: a run holds at most one line break ('\n', after at
// most one '\r') and kMaxWhitespace bytes, enough for indented output but not for a model
// that would pad forever. After the top-level value nothing more is accepted. A couple of
// hundred bytes of state, copied freely.
//
// With a schema, where a value may take one of several alternatives (a union) the matcher
// stops before it, pending_union(), until Choose picks one; JsonState tries them all.
class JsonMatcher {
 public:
  static constexpr int kMaxDepth = JsonSchema::kMaxValueDepth;
  static constexpr int kMaxWhitespace = 48;

  // JSON mode: any object.
  JsonMatcher() = default;
  // The texts `schema` accepts (it must outlive the matcher); null: JSON mode.
  explicit JsonMatcher(const JsonSchema* schema);

  // Whether `c` continues a valid prefix; if not, the state is left unchanged.
  bool Feed(uint8_t c);
  // Whether all of `bytes` do (the state is then advanced past them; else unspecified). Fails
  // at a pending union: JsonState picks its alternatives.
  bool Feed(std::string_view bytes);
  // The top-level value is closed: the text is complete.
  bool complete() const { return mode_ == Mode::kDone; }
  // Inside a string with no escape or multi-byte character under way: every byte but '"',
  // '\\' and control characters is accepted, and so is every whole UTF-8 character, up to
  // string_room() more characters.
  bool in_plain_string() const { return mode_ == Mode::kString && utf8_need_ == 0; }
  // The characters a string may still take (UINT32_MAX: unbounded).
  uint32_t string_room() const;
  // The string being read has a pattern or format: each character is checked against it.
  bool in_pattern() const { return mode_ == Mode::kString && pattern() != nullptr; }
  // In a plain string, whether it takes `bytes`: `chars` whole characters, none of them '"',
  // '\\' or a control byte.
  bool TakesPlain(std::string_view bytes, uint32_t chars) const;
  // A value is due whose schema is a union: Choose one of its alternatives before feeding.
  bool pending_union() const;
  std::span<const uint16_t> alternatives() const;
  void Choose(uint16_t alternative) { node_ = alternative; }

  bool operator==(const JsonMatcher&) const = default;

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
    kKey,       // schema: inside a declared object's key, candidates [lo_, hi_) of by_key
    kEnum,      // schema: inside an enum's value, candidates [lo_, hi_) of its literals
    kDone,
  };
  struct Frame {
    uint16_t node = 0;  // the container's schema node (0: any)
    uint16_t n = 0;     // object: the next property index; array: items so far
    bool operator==(const Frame&) const = default;
  };
  const JsonSchema::Node& node(uint16_t i) const { return schema_->node(i); }
  Frame& top() { return frames_[depth_ - 1]; }
  const Frame& top() const { return frames_[depth_ - 1]; }
  bool FeedInner(uint8_t c);
  bool Whitespace(uint8_t c);
  bool StartValue(uint8_t c);
  bool StartAny(uint8_t c);
  bool StartString(bool key);
  bool Push(bool object, uint16_t node);
  void AfterValue();
  bool CanClose() const;
  bool Fits(uint16_t n) const;
  bool KeyMayCome() const;
  bool Key(uint8_t c);
  bool Literal(uint8_t c);
  bool CountChar();
  // The pattern (or format) of the string value being read, if it has one.
  const RegexDfa* pattern() const;
  bool Room(uint32_t state, uint32_t chars) const;
  bool RegexByte(uint8_t c, uint32_t chars);
  bool UnicodeEscape(uint8_t c);
  bool AsciiMayFollow(uint32_t chars) const;
  bool StartNumber(uint8_t c);
  bool NumberDigit(uint8_t c);
  bool NumberFeasible() const;
  bool NumberInBounds() const;
  // The value being read is a number with bounds.
  bool bounded() const { return schema_ != nullptr && node(node_).bounded; }

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
  // With a schema: the node of the value due or being read, the candidates of kKey / kEnum
  // ([lo_, hi_), pos_ bytes matched) and a bounded string's characters so far.
  const JsonSchema* schema_ = nullptr;
  uint16_t node_ = 0;
  uint16_t lo_ = 0;
  uint16_t hi_ = 0;
  uint16_t pos_ = 0;
  uint32_t count_ = 0;
  // A string with a pattern or format: its DFA state (a \\u escape's value so far in pos_).
  uint32_t re_ = 0;
  // A number with bounds: its sign, integer part, fraction digits' value and count, and its
  // digits in all.
  bool neg_ = false;
  uint8_t digits_ = 0;
  uint8_t frac_digits_ = 0;
  uint64_t mag_ = 0;
  uint64_t frac_ = 0;
  std::array<Frame, kMaxDepth> frames_{};
};

// The states a schema's output may be in: one JsonMatcher per alternative of its unions
// still open (two objects of an anyOf stay open while their keys agree). At most kMaxThreads;
// past that the later alternatives are dropped, which narrows the output but never lets an
// invalid one through. Every state has the same syntax (they read the same bytes), so they
// complete together.
class JsonState {
 public:
  static constexpr int kMaxThreads = 16;
  // JSON mode.
  JsonState() = default;
  // The texts `schema` accepts (it must outlive the state); null: JSON mode.
  explicit JsonState(const JsonSchema* schema);
  // Whether some state accepts all of `bytes`; they are advanced past them (if not, the
  // states are unspecified).
  bool Feed(std::string_view bytes);
  bool complete() const { return threads_[0].complete(); }
  std::span<const JsonMatcher> threads() const { return {threads_.data(), count_}; }

 private:
  std::array<JsonMatcher, kMaxThreads> threads_{};
  size_t count_ = 1;
};

// The bytes of every token id (Tokenizer::TokenBytes), empty for special and unknown ids,
// which a grammar never allows; with the ids grouped as AllowedJsonTokens scans them.
class TokenBytesTable {
 public:
  // bytes_of(id) for id in [0, vocab_size); special ids give "".
  TokenBytesTable(int32_t vocab_size, const std::function<std::string(int32_t)>& bytes_of);
  int32_t vocab_size() const { return static_cast<int32_t>(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[id]; }
  // The ids of the non-empty tokens whose first byte is `b`.
  const std::vector<int32_t>& with_first_byte(uint8_t b) const { return by_first_byte_[b]; }

 private:
  friend int32_t AllowedJsonTokens(const JsonState&, const TokenBytesTable&, std::vector<int32_t>*);
  std::vector<std::string> bytes_;
  // Tokens any plain string state accepts whole (no '"', '\\' or control byte, whole UTF-8
  // characters only), and the other non-empty tokens by their first byte.
  std::vector<int32_t> plain_;
  std::vector<uint32_t> plain_chars_;   // each plain token's characters
  std::vector<uint8_t> plain_escaped_;  // each plain token has an escape (a '\\')
  uint32_t max_plain_chars_ = 0;
  std::vector<int32_t> other_;
  std::vector<std::vector<int32_t>> by_first_byte_;
};

// The ids whose bytes `state` accepts, exactly those a copy of it would Feed (appended to
// *ids, not sorted); returns how many. Special tokens
// (EOS) are not among them: the caller allows those once state.complete().
int32_t AllowedJsonTokens(const JsonState& state, const TokenBytesTable& table,
                          std::vector<int32_t>* ids);

}  // namespace spanserve::engine
