// Structured outputs (OpenAI's response_format {"type": "json_schema"}, vLLM's guided_json):
// a JSON Schema compiled into the small graph JsonMatcher (json_grammar.h) walks byte by byte,
// so that every generated token keeps the output a prefix of a JSON text the schema accepts.
//
// The subset compiled is what OpenAI's strict structured outputs and pydantic's schemas use:
// `type` (one name or a list), `properties` / `required` / `additionalProperties`, `items` /
// `minItems` / `maxItems`, `minLength` / `maxLength`, `pattern` (regex.h's syntax, searched
// as ECMAScript does: "^...$" to match the whole string), `format` (date-time, date, time,
// duration, email, hostname, ipv4, ipv6, uuid, uri; int32 / int64 / float / double on
// numbers), `minimum` / `maximum` / `exclusiveMinimum` / `exclusiveMaximum` (any on
// integers, integer bounds on numbers), `enum`, `const`, `anyOf`, `oneOf` (as anyOf: an
// output may match more than one alternative), a one-element `allOf`, `nullable`, and `$ref`
// to "#", "#/$defs/…" or "#/definitions/…", recursion included. Annotations (title,
// description, default, examples, …) are ignored. Any other keyword (`multipleOf`,
// `prefixItems`, …) is refused with an error naming it and where it is, rather than
// ignored, so a compiled schema never lets through an output it rejects.
//
// A string with a pattern or format is generated with no `\u` escape of a character past
// ASCII (it is written as UTF-8 instead). Under bounds a number has no exponent and at most
// 15 significant digits, so that its value is exact in a double.
//
// Two choices make every output valid and every prefix completable:
// - An object with `properties` takes only those keys, each at most once and in the
//   schema's order, the required ones never skipped (OpenAI's outputs follow that order
//   too); extra keys are not generated even where `additionalProperties` allows them. An
//   object with no `properties` takes any keys, each value of `additionalProperties`' schema.
// - The top level must end with its own last byte: a schema whose top level may be a bare
//   number is refused (the output could always go on with another digit); one that allows
//   anything at the top level (`{}`, `true`) gets an object, as JSON mode does.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/engine/regex.h"

namespace spanserve::engine {

class JsonSchema {
 public:
  enum class Kind : uint8_t {
    kAny,  // any JSON value
    kObject,
    kArray,
    kString,
    kNumber,
    kInteger,  // a number with no fraction or exponent
    kBoolean,
    kNull,
    kEnum,   // one of `literals`
    kUnion,  // one of `alternatives`
  };
  static constexpr uint32_t kUnbounded = UINT32_MAX;
  // Limits on one compiled schema.
  static constexpr int kMaxNodes = 4096;
  static constexpr int kMaxProperties = 1024;
  static constexpr int kMaxLiterals = 4096;
  static constexpr int kMaxAlternatives = 64;
  static constexpr int kMaxDepth = 64;  // nesting of the schema document's keywords
  static constexpr size_t kMaxText = 256 << 10;
  static constexpr int kMaxMembers = 1024;  // of any object in the document
  // The deepest nesting of objects and arrays in an output (JsonMatcher::kMaxDepth).
  static constexpr int kMaxValueDepth = 32;
  static constexpr uint8_t kNoValue = 255;
  // Bounds past these are taken as these (an integer has at most 18 digits under bounds, a
  // number 15 significant ones).
  static constexpr int64_t kMaxIntegerBound = 999'999'999'999'999'999;
  static constexpr int64_t kMaxNumberBound = 999'999'999'999;

  struct Property {
    std::string key;  // the name as JSON encodes it, without the quotes
    uint16_t node = 0;
    bool required = false;
  };
  struct Node {
    Kind kind = Kind::kAny;
    // kObject: its properties in the schema's order, or none with `free` set (any key).
    std::vector<Property> properties;
    // Property indices in the byte order of their keys.
    std::vector<uint16_t> by_key;
    // [i]: the first required property at index >= i, else properties.size(); one entry
    // more than properties. After property i - 1, keys i ..= next_required[i] may come next.
    std::vector<uint16_t> next_required;
    bool free = false;
    // kArray: its items' node; free kObject: its values' node; kAny: 0 (itself).
    uint16_t values = 0;
    // kArray: items; kString: characters (code points; an escape counts as one).
    uint32_t min = 0;
    uint32_t max = kUnbounded;
    // kString: its `pattern` or `format` with its length bounds folded in; null: none.
    std::shared_ptr<const RegexDfa> regex;
    // kInteger / kNumber: `minimum` and friends. The value v must have lo <= v (lo < v when
    // lo_open) and v <= hi (v < hi when hi_open); integers then have closed bounds. Both
    // are within ±kMaxBound.
    bool bounded = false;
    bool lo_open = false;
    bool hi_open = false;
    int64_t lo = 0;
    int64_t hi = 0;
    // kEnum: each value's compact JSON text, sorted by bytes, no two equal.
    std::vector<std::string> literals;
    // kUnion: its alternatives, none of them a union.
    std::vector<uint16_t> alternatives;
    // The fewest containers its values nest (0: it has a scalar value; kNoValue: no finite
    // value). A value is started only where it can be finished within kMaxValueDepth, so
    // that every prefix an output reaches can be completed.
    uint8_t min_depth = kNoValue;
  };

  // Compiles the schema in `text` (a JSON document). Errors name the keyword and its place
  // as a JSON pointer.
  // `max_whitespace`: the longest run of whitespace allowed between tokens (the matcher's
  // default, or fewer: tool calls take a single space at most).
  static absl::StatusOr<std::shared_ptr<const JsonSchema>> Compile(std::string_view text,
                                                                   int max_whitespace = 48);

  const Node& node(uint16_t i) const { return nodes_[i]; }
  // Node 0 is kAny.
  uint16_t root() const { return root_; }
  int32_t size() const { return static_cast<int32_t>(nodes_.size()); }
  int max_whitespace() const { return max_whitespace_; }

 private:
  friend class JsonSchemaCompiler;
  std::vector<Node> nodes_;
  uint16_t root_ = 0;
  int max_whitespace_ = 48;
};

}  // namespace spanserve::engine
