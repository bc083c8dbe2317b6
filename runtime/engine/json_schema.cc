#include "runtime/engine/json_schema.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace spanserve::engine {

using Kind = JsonSchema::Kind;
using ojson = nlohmann::ordered_json;

namespace {

// Keywords that only describe (ignored) and those that hold definitions for $ref.
const std::set<std::string, std::less<>>& Annotations() {
  static const auto* const kSet = new std::set<std::string, std::less<>>{
      "title",     "description", "default",     "examples",     "example",
      "$schema",   "$id",         "$comment",    "deprecated",   "readOnly",
      "writeOnly", "$defs",       "definitions", "discriminator"};
  return *kSet;
}

const std::set<std::string, std::less<>>& Supported() {
  static const auto* const kSet = new std::set<std::string, std::less<>>{"type",
                                                                         "properties",
                                                                         "required",
                                                                         "additionalProperties",
                                                                         "items",
                                                                         "minItems",
                                                                         "maxItems",
                                                                         "minLength",
                                                                         "maxLength",
                                                                         "enum",
                                                                         "const",
                                                                         "anyOf",
                                                                         "oneOf",
                                                                         "allOf",
                                                                         "$ref",
                                                                         "nullable",
                                                                         "pattern",
                                                                         "format",
                                                                         "minimum",
                                                                         "maximum",
                                                                         "exclusiveMinimum",
                                                                         "exclusiveMaximum"};
  return *kSet;
}

// A string format: the strings a strict checker of it accepts, or a subset of them where
// the format is wider than a regular expression can say simply (an IPv6 address in full
// form only; no leap second or 29 February; at most 6 fraction digits of a second; e-mail
// addresses of the dot-atom form, a local part of at most three dot-separated runs of 20
// (a strict checker takes 64 at most), common top-level domains).
struct StringFormat {
  std::string_view name;
  std::string_view regex;
  uint32_t max_length;
};
#define SPANSERVE_DATE                                                                         \
  "\\d{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12]\\d|3[01])|(?:0[469]|11)-(?:0[1-9]|[12]\\d|30)|" \
  "02-(?:0[1-9]|1\\d|2[0-8]))"
#define SPANSERVE_TIME \
  "(?:[01]\\d|2[0-3]):[0-5]\\d:[0-5]\\d(?:\\.\\d{1,6})?(?:Z|[+-](?:[01]\\d|2[0-3]):[0-5]\\d)"
#define SPANSERVE_LABEL "[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#define SPANSERVE_TIME_PART "T(?:\\d+H(?:\\d+M)?(?:\\d+S)?|\\d+M(?:\\d+S)?|\\d+S)"
#define SPANSERVE_OCTET "(?:25[0-5]|2[0-4]\\d|1\\d\\d|[1-9]?\\d)"
constexpr StringFormat kStringFormats[] = {
    {"date", SPANSERVE_DATE, JsonSchema::kUnbounded},
    {"time", SPANSERVE_TIME, JsonSchema::kUnbounded},
    {"date-time", SPANSERVE_DATE "T" SPANSERVE_TIME, JsonSchema::kUnbounded},
    {"duration",
     "P(?:\\d+W|(?:\\d+Y(?:\\d+M)?(?:\\d+D)?|\\d+M(?:\\d+D)?|\\d+D)(?:" SPANSERVE_TIME_PART
     ")?|" SPANSERVE_TIME_PART ")",
     JsonSchema::kUnbounded},
    {"email",
     "[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}(?:\\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]{1,20}){0,2}@"
     "(?:" SPANSERVE_LABEL "\\.)+(?:com|org|net|edu|gov|io|co|ai|dev|app|info|biz|us|uk|de|fr|"
     "jp|cn|ca|au|in|br|es|it|nl|se|ch)",
     254},
    {"hostname", SPANSERVE_LABEL "(?:\\." SPANSERVE_LABEL ")*", 253},
    {"ipv4", SPANSERVE_OCTET "(?:\\." SPANSERVE_OCTET "){3}", JsonSchema::kUnbounded},
    {"ipv6", "(?:[0-9a-fA-F]{1,4}:){7}[0-9a-fA-F]{1,4}", JsonSchema::kUnbounded},
    {"uuid", "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}",
     JsonSchema::kUnbounded},
    {"uri",
     "[A-Za-z][A-Za-z0-9+.-]*://" SPANSERVE_LABEL "(?:\\." SPANSERVE_LABEL
     ")*(?::\\d{1,5})?(?:/[A-Za-z0-9._~!$&'()*+,;=:@-]*)*(?:\\?[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?"
     "(?:#[A-Za-z0-9._~!$&'()*+,;=:@/?-]*)?",
     JsonSchema::kUnbounded},
};
#undef SPANSERVE_DATE
#undef SPANSERVE_TIME
#undef SPANSERVE_LABEL
#undef SPANSERVE_TIME_PART
#undef SPANSERVE_OCTET

// A format's compiled pattern, compiled once per process.
absl::StatusOr<std::shared_ptr<const RegexDfa>> FormatRegex(const StringFormat& f) {
  static const auto* const kCompiled = [] {
    auto* compiled = new std::vector<absl::StatusOr<std::shared_ptr<const RegexDfa>>>;
    for (const StringFormat& format : kStringFormats) {
      compiled->push_back(RegexDfa::Compile(format.regex));
    }
    return compiled;
  }();
  return (*kCompiled)[&f - kStringFormats];
}

// A JSON pointer's token, escaped (RFC 6901).
std::string PointerToken(std::string_view s) {
  std::string out;
  for (const char c : s) {
    if (c == '~') {
      out += "~0";
    } else if (c == '/') {
      out += "~1";
    } else {
      out += c;
    }
  }
  return out;
}

bool MatchesType(const ojson& v, std::string_view type) {
  if (type == "string") return v.is_string();
  if (type == "number") return v.is_number();
  if (type == "integer") {
    return v.is_number_integer() || v.is_number_unsigned() ||
           (v.is_number_float() && v.dump().find_first_of(".eE") == std::string::npos);
  }
  if (type == "boolean") return v.is_boolean();
  if (type == "null") return v.is_null();
  if (type == "object") return v.is_object();
  if (type == "array") return v.is_array();
  return false;
}

}  // namespace

class JsonSchemaCompiler {
 public:
  explicit JsonSchemaCompiler(const ojson& doc) : doc_(doc) {
    nodes_.emplace_back();  // 0: kAny
  }

  absl::StatusOr<uint16_t> Build(const ojson& s, const std::string& at, int depth);
  absl::Status Finish(uint16_t root, JsonSchema* out);

 private:
  absl::Status Error(const std::string& at, std::string_view what) {
    return absl::InvalidArgumentError(
        absl::StrCat("json_schema at \"", at.empty() ? "/" : at, "\": ", std::string(what)));
  }
  absl::StatusOr<uint16_t> NewNode(const std::string& at) {
    if (static_cast<int>(nodes_.size()) >= JsonSchema::kMaxNodes) {
      return Error(at, absl::StrCat("the schema has more than ", JsonSchema::kMaxNodes, " nodes"));
    }
    nodes_.emplace_back();
    return static_cast<uint16_t>(nodes_.size() - 1);
  }
  absl::StatusOr<uint16_t> Union(std::vector<uint16_t> alternatives, const std::string& at) {
    auto id = NewNode(at);
    if (!id.ok()) return id.status();
    nodes_[*id].kind = Kind::kUnion;
    nodes_[*id].alternatives = std::move(alternatives);
    return *id;
  }
  absl::StatusOr<uint16_t> Ref(const ojson& s, const std::string& at, int depth);
  absl::StatusOr<uint16_t> Typed(const ojson& s, std::string_view type, const std::string& at,
                                 int depth);
  absl::StatusOr<uint32_t> Count(const ojson& s, std::string_view key, const std::string& at,
                                 uint32_t fallback);
  absl::Status Bounds(const ojson& s, std::string_view min_key, std::string_view max_key,
                      const std::string& at, JsonSchema::Node* n);
  absl::Status StringPattern(const ojson& s, const std::string& at, JsonSchema::Node* n);
  absl::Status NumberBounds(const ojson& s, const std::string& at, JsonSchema::Node* n);
  absl::Status Flatten(uint16_t id, std::vector<uint16_t>* path, std::vector<uint16_t>* out);

  const ojson& doc_;
  std::vector<JsonSchema::Node> nodes_;
  std::map<std::string, uint16_t> refs_;
  uint64_t regex_work_ = RegexDfa::kMaxWork;
};

absl::StatusOr<uint32_t> JsonSchemaCompiler::Count(const ojson& s, std::string_view key,
                                                   const std::string& at, uint32_t fallback) {
  const auto it = s.find(key);
  if (it == s.end()) return fallback;
  if (!it->is_number_unsigned() && !(it->is_number_integer() && it->get<int64_t>() >= 0)) {
    return Error(at, absl::StrCat("\"", std::string(key), "\" must be a non-negative integer"));
  }
  const uint64_t v = it->get<uint64_t>();
  return v >= JsonSchema::kUnbounded ? JsonSchema::kUnbounded - 1 : static_cast<uint32_t>(v);
}

// n->min and n->max from the keywords `min_key` and `max_key` (absent: 0 and unbounded).
absl::Status JsonSchemaCompiler::Bounds(const ojson& s, std::string_view min_key,
                                        std::string_view max_key, const std::string& at,
                                        JsonSchema::Node* n) {
  auto min = Count(s, min_key, at, 0);
  if (!min.ok()) return min.status();
  auto max = Count(s, max_key, at, JsonSchema::kUnbounded);
  if (!max.ok()) return max.status();
  n->min = *min;
  n->max = *max;
  return absl::OkStatus();
}

// n->regex from `pattern` or `format`, with the length bounds folded in.
absl::Status JsonSchemaCompiler::StringPattern(const ojson& s, const std::string& at,
                                               JsonSchema::Node* n) {
  const auto pattern = s.find("pattern");
  const auto format = s.find("format");
  if (pattern == s.end() && format == s.end()) return absl::OkStatus();
  if (pattern != s.end() && format != s.end()) {
    return Error(at, "\"pattern\" beside \"format\" is not supported");
  }
  std::shared_ptr<const RegexDfa> regex;
  if (pattern != s.end()) {
    if (!pattern->is_string()) return Error(at, "\"pattern\" must be a string");
    // The schema's patterns share one allowance of work.
    auto compiled = RegexDfa::Compile(pattern->get_ref<const std::string&>(),
                                      RegexDfa::Match::kSearch, &regex_work_);
    if (!compiled.ok()) {
      return Error(at, absl::StrCat("\"pattern\" ", compiled.status().message()));
    }
    regex = *std::move(compiled);
  } else {
    if (!format->is_string()) return Error(at, "\"format\" must be a string");
    const std::string& name = format->get_ref<const std::string&>();
    const StringFormat* f = nullptr;
    std::string names;
    for (const StringFormat& known : kStringFormats) {
      if (known.name == name) f = &known;
      absl::StrAppend(&names, names.empty() ? "" : ", ", std::string(known.name));
    }
    if (f == nullptr) {
      return Error(
          at, absl::StrCat("\"format\" \"", name, "\" is not supported for strings (", names, ")"));
    }
    auto compiled = FormatRegex(*f);
    if (!compiled.ok()) return compiled.status();
    regex = *compiled;
    n->max = std::min(n->max, f->max_length);
    if (n->min > n->max) return Error(at, "\"minLength\" is over the format's longest string");
  }
  if (n->min > 0 || n->max != JsonSchema::kUnbounded) {
    // Folded into the automaton; where that makes too many states and there is only a
    // maxLength, the matcher checks it by each state's shortest way to a match.
    auto bounded = regex->WithLength(n->min, n->max);
    if (!bounded.ok() && n->min == 0 && regex->min_chars(regex->start()) <= n->max) {
      bounded = regex;
    }
    if (!bounded.ok()) {
      return Error(at, absl::StrCat("\"pattern\" / \"format\" with \"minLength\" / "
                                    "\"maxLength\": ",
                                    bounded.status().message()));
    }
    regex = *std::move(bounded);
  }
  n->regex = std::move(regex);
  return absl::OkStatus();
}

// n->bounded and its bounds from `minimum`, `maximum`, `exclusiveMinimum` and
// `exclusiveMaximum` (numbers, or draft 4's booleans beside minimum / maximum), and an int32
// format.
absl::Status JsonSchemaCompiler::NumberBounds(const ojson& s, const std::string& at,
                                              JsonSchema::Node* n) {
  const bool integer = n->kind == Kind::kInteger;
  const int64_t limit = integer ? JsonSchema::kMaxIntegerBound : JsonSchema::kMaxNumberBound;
  double lo = -static_cast<double>(limit), hi = static_cast<double>(limit);
  bool lo_open = false, hi_open = false;
  if (const auto format = s.find("format"); format != s.end()) {
    static const std::set<std::string, std::less<>> kNumeric = {"int32", "int64", "float",
                                                                "double"};
    if (!format->is_string() || kNumeric.count(format->get_ref<const std::string&>()) == 0) {
      return Error(at, absl::StrCat("\"format\" ", format->dump(),
                                    " is not supported for numbers (int32, int64, float, double)"));
    }
    if (integer && *format == "int32") {
      n->bounded = true;
      lo = -2147483648.0;
      hi = 2147483647.0;
    }
  }
  for (const char* key : {"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"}) {
    const auto it = s.find(key);
    if (it == s.end()) continue;
    const std::string_view k(key);
    const bool lower = k == "minimum" || k == "exclusiveMinimum";
    const bool exclusive = k.substr(0, 9) == "exclusive";
    double v;
    bool open = exclusive;
    if (exclusive && it->is_boolean()) {  // draft 4: it makes minimum / maximum exclusive
      const auto plain = s.find(lower ? "minimum" : "maximum");
      if (plain == s.end() || !plain->is_number()) {
        return Error(at, absl::StrCat("\"", key, "\" as a boolean needs \"",
                                      lower ? "minimum" : "maximum", "\""));
      }
      if (!it->get<bool>()) continue;
      v = plain->get<double>();
    } else if (it->is_number()) {
      v = it->get<double>();
      if (!exclusive) {
        const auto other = s.find(lower ? "exclusiveMinimum" : "exclusiveMaximum");
        open = other != s.end() && other->is_boolean() && other->get<bool>();
      }
    } else {
      return Error(at, absl::StrCat("\"", key, "\" must be a number"));
    }
    if (!std::isfinite(v)) return Error(at, absl::StrCat("\"", key, "\" must be finite"));
    if (integer) {
      // An integer's bounds, closed.
      v = lower ? (open ? std::floor(v) + 1 : std::ceil(v))
                : (open ? std::ceil(v) - 1 : std::floor(v));
      open = false;
    } else if (v != std::floor(v)) {
      return Error(at, absl::StrCat("\"", key, "\" ", it->dump(),
                                    ": a number's bounds must be integers (an integer's may be "
                                    "any number)"));
    }
    if (lower ? v > static_cast<double>(limit) : v < -static_cast<double>(limit)) {
      return Error(at, absl::StrCat("\"", key, "\" ", it->dump(), " is beyond ±", limit,
                                    ", the bounds supported"));
    }
    n->bounded = true;
    if (lower && (v > lo || (v == lo && open))) {
      lo = v;
      lo_open = open;
    } else if (!lower && (v < hi || (v == hi && open))) {
      hi = v;
      hi_open = open;
    }
  }
  if (!n->bounded) return absl::OkStatus();
  lo = std::max(lo, -static_cast<double>(limit));
  hi = std::min(hi, static_cast<double>(limit));
  n->lo = static_cast<int64_t>(lo);
  n->hi = static_cast<int64_t>(hi);
  n->lo_open = lo_open;
  n->hi_open = hi_open;
  if (n->lo > n->hi || (n->lo == n->hi && (n->lo_open || n->hi_open))) {
    return Error(at, absl::StrCat("no ", integer ? "integer" : "number", " is within the bounds"));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint16_t> JsonSchemaCompiler::Ref(const ojson& s, const std::string& at, int depth) {
  const ojson& ref = s["$ref"];
  if (!ref.is_string()) return Error(at, "\"$ref\" must be a string");
  const std::string target = ref.get<std::string>();
  if (const auto it = refs_.find(target); it != refs_.end()) return it->second;
  const ojson* def = nullptr;
  if (target == "#") {
    def = &doc_;
  } else {
    for (const char* defs : {"#/$defs/", "#/definitions/"}) {
      const std::string_view prefix(defs);
      if (target.size() <= prefix.size() || target.compare(0, prefix.size(), prefix) != 0) {
        continue;
      }
      // One token: unescape ~1 and ~0.
      std::string name;
      const std::string_view token = std::string_view(target).substr(prefix.size());
      if (token.find('/') != std::string_view::npos) break;
      for (size_t i = 0; i < token.size(); ++i) {
        if (token[i] == '~' && i + 1 < token.size() &&
            (token[i + 1] == '0' || token[i + 1] == '1')) {
          name += token[i + 1] == '0' ? '~' : '/';
          ++i;
        } else {
          name += token[i];
        }
      }
      const std::string key(prefix.substr(2, prefix.size() - 3));
      if (doc_.is_object() && doc_.contains(key) && doc_[key].is_object() &&
          doc_[key].contains(name)) {
        def = &doc_[key][name];
      }
      break;
    }
  }
  if (def == nullptr) {
    return Error(at, absl::StrCat("\"$ref\" ", ref.dump(),
                                  " does not name \"#\", \"#/$defs/…\" or \"#/definitions/…\" "
                                  "of this schema"));
  }
  // A one-alternative union stands for the target while it is built, so a definition may
  // refer to itself; Finish resolves it.
  auto id = Union({}, at);
  if (!id.ok()) return id.status();
  refs_[target] = *id;
  auto built = Build(*def, target.substr(1), depth + 1);
  if (!built.ok()) return built.status();
  nodes_[*id].alternatives = {*built};
  return *id;
}

absl::StatusOr<uint16_t> JsonSchemaCompiler::Typed(const ojson& s, std::string_view type,
                                                   const std::string& at, int depth) {
  JsonSchema::Node n;
  if (type == "object") {
    n.kind = Kind::kObject;
    std::map<std::string, uint16_t, std::less<>> index;
    if (const auto props = s.find("properties"); props != s.end()) {
      if (!props->is_object()) return Error(at, "\"properties\" must be an object");
      if (props->size() > static_cast<size_t>(JsonSchema::kMaxProperties)) {
        return Error(at, absl::StrCat("more than ", JsonSchema::kMaxProperties, " properties"));
      }
      for (auto it = props->begin(); it != props->end(); ++it) {
        const std::string where = absl::StrCat(at, "/properties/", PointerToken(it.key()));
        auto child = Build(it.value(), where, depth + 1);
        if (!child.ok()) return child.status();
        std::string key = ojson(it.key()).dump();
        index[it.key()] = static_cast<uint16_t>(n.properties.size());
        n.properties.push_back({key.substr(1, key.size() - 2), *child, false});
      }
    }
    if (const auto req = s.find("required"); req != s.end()) {
      if (!req->is_array()) return Error(at, "\"required\" must be an array of names");
      for (const ojson& name : *req) {
        if (!name.is_string()) return Error(at, "\"required\" must be an array of names");
        const auto it = index.find(name.get<std::string>());
        if (it == index.end()) {
          return Error(at, absl::StrCat("\"required\" names ", name.dump(),
                                        ", which is not in \"properties\""));
        }
        n.properties[it->second].required = true;
      }
    }
    if (n.properties.empty() && !s.contains("properties")) {
      n.free = true;
      if (const auto extra = s.find("additionalProperties"); extra != s.end()) {
        if (extra->is_boolean() && !extra->get<bool>()) {
          n.free = false;  // no key at all: {}
        } else {
          auto values = Build(*extra, at + "/additionalProperties", depth + 1);
          if (!values.ok()) return values.status();
          n.values = *values;
        }
      }
    } else if (const auto extra = s.find("additionalProperties");
               extra != s.end() && !extra->is_boolean()) {
      // Checked for what it holds, though keys beyond `properties` are never generated.
      auto values = Build(*extra, at + "/additionalProperties", depth + 1);
      if (!values.ok()) return values.status();
    }
    const size_t count = n.properties.size();
    for (size_t i = 0; i < count; ++i) n.by_key.push_back(static_cast<uint16_t>(i));
    std::sort(n.by_key.begin(), n.by_key.end(),
              [&](uint16_t a, uint16_t b) { return n.properties[a].key < n.properties[b].key; });
    n.next_required.assign(count + 1, static_cast<uint16_t>(count));
    for (size_t i = count; i-- > 0;) {
      n.next_required[i] =
          n.properties[i].required ? static_cast<uint16_t>(i) : n.next_required[i + 1];
    }
  } else if (type == "array") {
    n.kind = Kind::kArray;
    if (auto st = Bounds(s, "minItems", "maxItems", at, &n); !st.ok()) return st;
    if (const auto items = s.find("items"); items != s.end()) {
      if (items->is_array()) {
        return Error(at, "\"items\" as an array (a tuple) is not supported");
      }
      if (items->is_boolean() && !items->get<bool>()) {
        n.max = 0;
      } else {
        auto child = Build(*items, at + "/items", depth + 1);
        if (!child.ok()) return child.status();
        n.values = *child;
      }
    }
    if (n.min > 0xFFFF) return Error(at, "\"minItems\" over 65535 is not supported");
    if (n.max > 0xFFFF) n.max = JsonSchema::kUnbounded;
    if (n.min > n.max) return Error(at, "\"minItems\" is over \"maxItems\"");
  } else if (type == "string") {
    n.kind = Kind::kString;
    if (auto st = Bounds(s, "minLength", "maxLength", at, &n); !st.ok()) return st;
    if (n.min > n.max) return Error(at, "\"minLength\" is over \"maxLength\"");
    if (auto st = StringPattern(s, at, &n); !st.ok()) return st;
  } else if (type == "number" || type == "integer") {
    n.kind = type == "number" ? Kind::kNumber : Kind::kInteger;
    if (auto st = NumberBounds(s, at, &n); !st.ok()) return st;
  } else if (type == "boolean") {
    n.kind = Kind::kBoolean;
  } else if (type == "null") {
    n.kind = Kind::kNull;
  } else {
    return Error(at, absl::StrCat("unknown type \"", std::string(type), "\""));
  }
  auto id = NewNode(at);
  if (!id.ok()) return id.status();
  nodes_[*id] = std::move(n);
  return *id;
}

absl::StatusOr<uint16_t> JsonSchemaCompiler::Build(const ojson& s, const std::string& at,
                                                   int depth) {
  if (depth > JsonSchema::kMaxDepth) {
    return Error(at, absl::StrCat("nested more than ", JsonSchema::kMaxDepth, " deep"));
  }
  if (s.is_boolean()) {
    if (s.get<bool>()) return uint16_t{0};
    return Error(at, "the schema false accepts nothing");
  }
  if (!s.is_object()) return Error(at, "a schema must be an object or a boolean");
  std::vector<std::string_view> constraints;
  for (auto it = s.begin(); it != s.end(); ++it) {
    if (Annotations().count(it.key()) != 0) continue;
    if (Supported().count(it.key()) == 0) {
      return Error(at, absl::StrCat("\"", it.key(), "\" is not supported"));
    }
    constraints.push_back(it.key());
  }
  const auto only = [&](std::string_view keyword) -> absl::Status {
    for (const std::string_view c : constraints) {
      if (c != keyword && c != "nullable") {
        return Error(at, absl::StrCat("\"", std::string(c), "\" beside \"", std::string(keyword),
                                      "\" is not supported"));
      }
    }
    return absl::OkStatus();
  };
  if (const auto nullable = s.find("nullable"); nullable != s.end()) {
    if (!nullable->is_boolean()) return Error(at, "\"nullable\" must be a boolean");
    if (nullable->get<bool>()) {
      ojson rest = s;
      rest.erase("nullable");
      auto inner = Build(rest, at, depth + 1);
      if (!inner.ok()) return inner.status();
      auto null = Typed(ojson::object(), "null", at, depth);
      if (!null.ok()) return null.status();
      return Union({*inner, *null}, at);
    }
  }
  if (s.contains("$ref")) {
    if (auto st = only("$ref"); !st.ok()) return st;
    return Ref(s, at, depth);
  }
  if (const auto all = s.find("allOf"); all != s.end()) {
    if (auto st = only("allOf"); !st.ok()) return st;
    if (!all->is_array() || all->size() != 1) {
      return Error(at, "\"allOf\" is supported with one schema only");
    }
    return Build((*all)[0], at + "/allOf/0", depth + 1);
  }
  for (const char* keyword : {"anyOf", "oneOf"}) {
    const auto any = s.find(keyword);
    if (any == s.end()) continue;
    if (auto st = only(keyword); !st.ok()) return st;
    if (!any->is_array() || any->empty() ||
        any->size() > static_cast<size_t>(JsonSchema::kMaxAlternatives)) {
      return Error(at, absl::StrCat("\"", keyword, "\" must be an array of 1 to ",
                                    JsonSchema::kMaxAlternatives, " schemas"));
    }
    std::vector<uint16_t> alternatives;
    for (size_t i = 0; i < any->size(); ++i) {
      auto child = Build((*any)[i], absl::StrCat(at, "/", keyword, "/", i), depth + 1);
      if (!child.ok()) return child.status();
      alternatives.push_back(*child);
    }
    return Union(std::move(alternatives), at);
  }
  // The types it may have: "type" (one or a list), else those its keywords imply, else any.
  std::vector<std::string> types;
  bool any_type = false;
  if (const auto type = s.find("type"); type != s.end()) {
    if (type->is_string()) {
      types.push_back(type->get<std::string>());
    } else if (type->is_array() && !type->empty()) {
      for (const ojson& t : *type) {
        if (!t.is_string()) return Error(at, "\"type\" must be a name or a list of names");
        if (std::find(types.begin(), types.end(), t.get<std::string>()) == types.end()) {
          types.push_back(t.get<std::string>());
        }
      }
    } else {
      return Error(at, "\"type\" must be a name or a list of names");
    }
  } else {
    any_type = true;
  }
  if (s.contains("enum") || s.contains("const")) {
    std::vector<ojson> values;
    if (const auto e = s.find("enum"); e != s.end()) {
      if (!e->is_array() || e->empty()) return Error(at, "\"enum\" must be a non-empty array");
      values.assign(e->begin(), e->end());
    }
    if (const auto c = s.find("const"); c != s.end()) {
      if (s.contains("enum")) {
        std::vector<ojson> both;
        for (const ojson& v : values) {
          if (v == *c) both.push_back(v);
        }
        values = std::move(both);
      } else {
        values = {*c};
      }
    }
    JsonSchema::Node n;
    n.kind = Kind::kEnum;
    for (const ojson& v : values) {
      bool typed = any_type;
      for (const std::string& t : types) typed = typed || MatchesType(v, t);
      if (typed) n.literals.push_back(v.dump());
    }
    if (n.literals.empty()) return Error(at, "no value of \"enum\" / \"const\" fits \"type\"");
    if (n.literals.size() > static_cast<size_t>(JsonSchema::kMaxLiterals)) {
      return Error(at, absl::StrCat("more than ", JsonSchema::kMaxLiterals, " enum values"));
    }
    std::sort(n.literals.begin(), n.literals.end());
    n.literals.erase(std::unique(n.literals.begin(), n.literals.end()), n.literals.end());
    auto id = NewNode(at);
    if (!id.ok()) return id.status();
    nodes_[*id] = std::move(n);
    return *id;
  }
  if (any_type) {
    if (s.contains("properties") || s.contains("additionalProperties") || s.contains("required")) {
      types = {"object"};
    } else if (s.contains("items") || s.contains("minItems") || s.contains("maxItems")) {
      types = {"array"};
    } else if (s.contains("minLength") || s.contains("maxLength") || s.contains("pattern") ||
               s.contains("format")) {
      types = {"string"};
    } else if (s.contains("minimum") || s.contains("maximum") || s.contains("exclusiveMinimum") ||
               s.contains("exclusiveMaximum")) {
      types = {"number"};
    } else {
      return uint16_t{0};
    }
  }
  std::vector<uint16_t> alternatives;
  for (const std::string& t : types) {
    auto child = Typed(s, t, at, depth);
    if (!child.ok()) return child.status();
    alternatives.push_back(*child);
  }
  if (alternatives.size() == 1) return alternatives[0];
  return Union(std::move(alternatives), at);
}

absl::Status JsonSchemaCompiler::Flatten(uint16_t id, std::vector<uint16_t>* path,
                                         std::vector<uint16_t>* out) {
  const JsonSchema::Node& n = nodes_[id];
  if (n.kind != Kind::kUnion) {
    if (std::find(out->begin(), out->end(), id) == out->end()) out->push_back(id);
    return absl::OkStatus();
  }
  if (std::find(path->begin(), path->end(), id) != path->end()) {
    return absl::InvalidArgumentError(
        "json_schema: a \"$ref\" or \"anyOf\" reaches itself before any value is read");
  }
  path->push_back(id);
  for (const uint16_t a : n.alternatives) {
    if (auto st = Flatten(a, path, out); !st.ok()) return st;
  }
  path->pop_back();
  if (out->size() > static_cast<size_t>(JsonSchema::kMaxAlternatives)) {
    return absl::InvalidArgumentError(absl::StrCat("json_schema: a value has more than ",
                                                   JsonSchema::kMaxAlternatives, " alternatives"));
  }
  return absl::OkStatus();
}

absl::Status JsonSchemaCompiler::Finish(uint16_t root, JsonSchema* out) {
  // Every union's alternatives flattened (no union among them); a union of one stands for
  // that one everywhere.
  std::vector<uint16_t> canon(nodes_.size());
  for (size_t i = 0; i < nodes_.size(); ++i) {
    canon[i] = static_cast<uint16_t>(i);
    if (nodes_[i].kind != Kind::kUnion) continue;
    std::vector<uint16_t> path, flat;
    if (auto st = Flatten(static_cast<uint16_t>(i), &path, &flat); !st.ok()) return st;
    nodes_[i].alternatives = flat;
    if (flat.size() == 1) canon[i] = flat[0];
  }
  for (JsonSchema::Node& n : nodes_) {
    for (JsonSchema::Property& p : n.properties) p.node = canon[p.node];
    n.values = canon[n.values];
  }
  root = canon[root];
  // Each node's shallowest value: how many containers deep it must go (kNoValue: it has no
  // finite value), to a fixpoint.
  bool changed = true;
  while (changed) {
    changed = false;
    for (JsonSchema::Node& n : nodes_) {
      int d = JsonSchema::kNoValue;
      switch (n.kind) {
        case Kind::kObject: {
          d = 1;
          for (const JsonSchema::Property& p : n.properties) {
            if (p.required) d = std::max(d, 1 + nodes_[p.node].min_depth);
          }
          break;
        }
        case Kind::kArray:
          d = n.min == 0 ? 1 : 1 + nodes_[n.values].min_depth;
          break;
        case Kind::kUnion:
          for (const uint16_t a : n.alternatives) d = std::min<int>(d, nodes_[a].min_depth);
          break;
        default:
          d = 0;
          break;
      }
      d = std::min<int>(d, JsonSchema::kNoValue);
      if (d != n.min_depth) {
        n.min_depth = static_cast<uint8_t>(d);
        changed = true;
      }
    }
  }
  if (nodes_[root].min_depth > JsonSchema::kMaxValueDepth) {
    return absl::InvalidArgumentError(absl::StrCat(
        "json_schema: the schema accepts no value nested at most ", JsonSchema::kMaxValueDepth,
        " deep (a required property or item that always needs another)"));
  }
  // The top level must end with its last byte.
  std::vector<uint16_t> tops =
      nodes_[root].kind == Kind::kUnion ? nodes_[root].alternatives : std::vector<uint16_t>{root};
  for (const uint16_t t : tops) {
    const JsonSchema::Node& n = nodes_[t];
    bool number = n.kind == Kind::kNumber || n.kind == Kind::kInteger;
    for (const std::string& l : n.literals) {
      number = number || l[0] == '-' || (l[0] >= '0' && l[0] <= '9');
    }
    if (number) {
      return absl::InvalidArgumentError(
          "json_schema: the top level may be a bare number, which never shows it is complete; "
          "put it in an object");
    }
  }
  out->nodes_ = std::move(nodes_);
  out->root_ = root;
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<const JsonSchema>> JsonSchema::Compile(std::string_view text,
                                                                      int max_whitespace) {
  // Size, nesting and members per object are bounded before parsing: a deep document is
  // costly to build and free, and an ordered object's insertions cost its size each.
  if (text.size() > kMaxText) {
    return absl::InvalidArgumentError(
        absl::StrCat("json_schema: the schema is over ", kMaxText, " bytes"));
  }
  std::vector<std::pair<bool, int>> open;  // (an object, its members so far)
  bool in_string = false, escaped = false;
  for (const char c : text) {
    if (in_string) {
      if (escaped) {
        escaped = false;
      } else if (c == '\\') {
        escaped = true;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '{' || c == '[') {
      if (open.size() >= 4 * kMaxDepth) {
        return absl::InvalidArgumentError(
            absl::StrCat("json_schema: nested more than ", 4 * kMaxDepth, " deep"));
      }
      open.emplace_back(c == '{', 1);
    } else if (c == '}' || c == ']') {
      if (!open.empty()) open.pop_back();
    } else if (c == ',' && !open.empty() && open.back().first &&
               ++open.back().second > kMaxMembers) {
      return absl::InvalidArgumentError(
          absl::StrCat("json_schema: an object with more than ", kMaxMembers, " members"));
    }
  }
  ojson doc = ojson::parse(text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return absl::InvalidArgumentError("json_schema: not valid JSON");
  JsonSchemaCompiler compiler(doc);
  auto root = compiler.Build(doc, "", 0);
  if (!root.ok()) return root.status();
  auto schema = std::make_shared<JsonSchema>();
  schema->max_whitespace_ = std::clamp(max_whitespace, 0, 48);
  if (auto st = compiler.Finish(*root, schema.get()); !st.ok()) return st;
  return std::shared_ptr<const JsonSchema>(std::move(schema));
}

}  // namespace spanserve::engine
