// A Jinja2 interpreter for chat templates: the subset of Jinja that Hugging Face chat
// templates are written in, with the environment transformers renders them in
// (trim_blocks, lstrip_blocks, no trailing newline, loop controls, the `generation` tag,
// `tojson` as json.dumps(ensure_ascii=False), `raise_exception`, `strftime_now`).
//
// Supported: text, {{ }}, {# #}, whitespace control (-, +); if / elif / else, for (with
// `loop`, unpacking, an `if` filter and `else`), set (names, tuples, namespace attributes,
// blocks), macro, break / continue, filter blocks, generation; literals (strings with
// Python escapes, numbers, lists, tuples, dicts, true / false / none in either case);
// operators (or, and, not, comparisons and chains, in / not in, ~, + - * / // % **,
// unary -, conditional expressions); attribute and item access, slices; Python's string,
// dict and list methods that templates call; Jinja's built-in filters and tests that
// templates use (an unknown filter or test is refused when the template is parsed).
// Values print as Python prints them (True, None, ['a', 1], 1.0).
//
// Bounded: a template and its context cannot make rendering run away: output, loop
// iterations and calls, and macro recursion are capped (RenderLimits), as is the parser's
// nesting. Errors are INVALID_ARGUMENT naming the template line; raise_exception(msg)
// gives INVALID_ARGUMENT with msg.
//
// Thread-safety: a Template is immutable; Render may be called from any thread.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "nlohmann/json.hpp"

namespace spanserve::chat::jinja {

namespace internal {
struct Program;
}  // namespace internal

struct RenderLimits {
  int64_t max_output_bytes = int64_t{64} << 20;
  // Statements executed, loop iterations and calls, together.
  int64_t max_steps = 2'000'000;
  int max_call_depth = 64;
  // What strftime_now formats: seconds since the epoch, read as UTC (for tests); when
  // negative, the current local time, as transformers does.
  int64_t fixed_now = -1;
};

class Template {
 public:
  // INVALID_ARGUMENT "chat template line N: ..." for a syntax error, an unclosed block, or a
  // filter / test this interpreter does not have.
  [[nodiscard]] static absl::StatusOr<Template> Parse(absl::string_view source);

  // Renders with the members of `context` (a JSON object) as variables, e.g. messages,
  // tools, add_generation_prompt, bos_token, eos_token. JSON values become Jinja values:
  // objects keep their key order.
  [[nodiscard]] absl::StatusOr<std::string> Render(const nlohmann::ordered_json& context,
                                                   const RenderLimits& limits = {}) const;

 private:
  std::shared_ptr<const internal::Program> program_;
};

}  // namespace spanserve::chat::jinja
