// The Jinja interpreter (runtime/chat/jinja.h): real chat templates against transformers'
// renderings (tests/data/chat/jinja_goldens.json, tools/golden/make_jinja_goldens.py), and
// the language's corners one by one.
#include "runtime/chat/jinja.h"

#include <fstream>
#include <sstream>
#include <string>

#include "absl/status/status.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace spanserve::chat::jinja {
namespace {

using json = nlohmann::ordered_json;

// Renders `source` with `context` (JSON text); the output, or "ERROR: <message>".
std::string R(const std::string& source, const std::string& context = "{}",
              const RenderLimits& limits = {}) {
  absl::StatusOr<Template> t = Template::Parse(source);
  if (!t.ok()) return "PARSE: " + std::string(t.status().message());
  absl::StatusOr<std::string> out = t->Render(json::parse(context), limits);
  if (!out.ok()) {
    EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument) << out.status();
    return "ERROR: " + std::string(out.status().message());
  }
  return *out;
}

TEST(JinjaTest, MatchesTransformersOnRealChatTemplates) {
  std::ifstream in(std::string(SPANSERVE_TEST_DATA) + "/chat/jinja_goldens.json");
  ASSERT_TRUE(in) << "tests/data/chat/jinja_goldens.json is missing";
  std::stringstream text;
  text << in.rdbuf();
  const json goldens = json::parse(text.str());
  int rendered = 0, raised = 0;
  RenderLimits limits;
  limits.fixed_now = 1721995200;  // 2024-07-26 12:00:00 UTC, the generator's frozen clock
  for (const json& t : goldens.at("templates")) {
    const std::string name = t.at("name").get<std::string>();
    absl::StatusOr<Template> tmpl = Template::Parse(t.at("template").get<std::string>());
    ASSERT_TRUE(tmpl.ok()) << name << ": " << tmpl.status();
    for (const json& c : t.at("cases")) {
      json context = json::object();
      context["messages"] = c.at("messages");
      context["add_generation_prompt"] = c.at("add_generation_prompt");
      context["bos_token"] = t.at("bos_token");
      context["eos_token"] = t.at("eos_token");
      // As transformers passes them: None when the case has none.
      context["tools"] = c.contains("tools") ? c.at("tools") : json();
      context["documents"] = json();
      for (const auto& [k, v] : c.at("kwargs").items()) context[k] = v;
      absl::StatusOr<std::string> out = tmpl->Render(context, limits);
      if (c.contains("error")) {
        ASSERT_FALSE(out.ok()) << name << " should raise: " << c.dump();
        EXPECT_EQ(out.status().code(), absl::StatusCode::kInvalidArgument);
        EXPECT_EQ(out.status().message(), c.at("error").get<std::string>()) << name;
        ++raised;
        continue;
      }
      ASSERT_TRUE(out.ok()) << name << ": " << out.status() << "\n" << c.dump();
      EXPECT_EQ(*out, c.at("text").get<std::string>()) << name << " case " << c.dump();
      ++rendered;
    }
  }
  EXPECT_GT(rendered, 500);
  EXPECT_GT(raised, 20);
}

TEST(JinjaTest, WhitespaceControlAsTransformersConfiguresIt) {
  // trim_blocks: the newline after a block tag goes; lstrip_blocks: indentation before it.
  EXPECT_EQ(R("{% if true %}\n  a\n  {% endif %}\nb"), "  a\nb");
  EXPECT_EQ(R("x  {%- if true -%}  y  {%- endif %}"), "xy");
  EXPECT_EQ(R("a {{- ' b ' -}} c"), "a b c");
  EXPECT_EQ(R("  {%+ if true %}x{% endif %}"), "  x");
  EXPECT_EQ(R("{# note #}\nz"), "z");
  EXPECT_EQ(R("{{ 'a' }}\nb"), "a\nb");  // no trim after an expression
  EXPECT_EQ(R("{{ 'a' }}\n"), "a");      // keep_trailing_newline=False
  EXPECT_EQ(R("{{ 'a' }}\n\n"), "a\n");
  EXPECT_EQ(R("{% raw %}{{ x }}{% endraw %}"), "{{ x }}");
}

TEST(JinjaTest, ValuesPrintAsPythonPrintsThem) {
  EXPECT_EQ(R("{{ none }} {{ true }} {{ 1 }} {{ 1.0 }} {{ 2.5e-7 }} {{ 1e16 }} {{ 0.1 + 0.2 }}"),
            "None True 1 1.0 2.5e-07 1e+16 0.30000000000000004");
  EXPECT_EQ(R("{{ ['a', 1, none, {'k': \"it's\"}] }}"), "['a', 1, None, {'k': \"it's\"}]");
  EXPECT_EQ(R("{{ x }}|{{ x.y is defined }}", R"({"x": {"z": 1}})"), "{'z': 1}|False");
  EXPECT_EQ(R("[{{ undefined_name }}]"), "[]");
  EXPECT_EQ(R("{{ 7 // 2 }} {{ -7 // 2 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 'ab' * 2 }}"),
            "3 -4 2 3.5 1024 abab");
}

TEST(JinjaTest, TojsonIsJsonDumpsWithoutAsciiEscaping) {
  const std::string ctx = R"({"v": {"b": [1, 2.0, true, null], "a": "é\n\"x\"", "c": {}}})";
  EXPECT_EQ(R("{{ v | tojson }}", ctx), R"({"b": [1, 2.0, true, null], "a": "é\n\"x\"", "c": {}})");
  EXPECT_EQ(R("{{ v.b | tojson(indent=2) }}", ctx), "[\n  1,\n  2.0,\n  true,\n  null\n]");
  EXPECT_EQ(R("{{ v | tojson(sort_keys=true) }}", ctx),
            R"({"a": "é\n\"x\"", "b": [1, 2.0, true, null], "c": {}})");
  EXPECT_EQ(R("{{ v.a | tojson(ensure_ascii=true) }}", ctx), R"("\u00e9\n\"x\"")");
}

TEST(JinjaTest, LoopsScopesAndNamespaces) {
  EXPECT_EQ(R("{% for x in [1,2,3] if x != 2 %}{{ loop.index }}{{ x }}{{ ',' if not loop.last }}{% "
              "endfor %}"),
            "11,23");
  EXPECT_EQ(R("{% for k, v in {'a': 1, 'b': 2}.items() %}{{ k }}={{ v }};{% endfor %}"),
            "a=1;b=2;");
  EXPECT_EQ(R("{% for x in [] %}x{% else %}empty{% endfor %}"), "empty");
  EXPECT_EQ(R("{% for x in range(10) %}{% if x == 3 %}{% break %}{% endif %}"
              "{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}"),
            "02");
  // A set inside a loop does not leak out of it; a namespace carries state out.
  EXPECT_EQ(R("{% set n = 0 %}{% set ns = namespace(n=0) %}{% for x in [1,2] %}{% set n = n + x %}"
              "{% set ns.n = ns.n + x %}{% endfor %}{{ n }} {{ ns.n }}"),
            "0 3");
  EXPECT_EQ(R("{% macro greet(who, punct='!') %}Hi {{ who }}{{ punct }}{% endmacro %}"
              "{{ greet('a') }} {{ greet('b', punct='?') }}"),
            "Hi a! Hi b?");
  EXPECT_EQ(R("{% set block %}in {{ 1 + 1 }}{% endset %}[{{ block }}]"), "[in 2]");
  EXPECT_EQ(R("{{ [3,1,2] | sort | join(',') }} {{ ['a','b'] | map('upper') | list }} "
              "{{ [{'r':'u'},{'r':'a'}] | selectattr('r', 'equalto', 'a') | list | length }}"),
            "1,2,3 ['A', 'B'] 1");
  EXPECT_EQ(
      R("{{ 'a,b,,c'.split(',') }} {{ '  x '.strip() }} {{ 'abc'[::-1] }} {{ 'héllo'[1:3] }}"),
      "['a', 'b', '', 'c'] x cba él");
  EXPECT_EQ(R("{{ 'x' if false }}|{{ 1 < 2 < 3 }}|{{ 'b' in 'abc' }}|{{ 3 is divisibleby 3 }}"),
            "|True|True|True");
}

TEST(JinjaTest, ErrorsNameTheLineAndRaiseExceptionPassesItsMessage) {
  EXPECT_EQ(R("a\n{% if x %}\nb"),
            "PARSE: chat template line 2: the block is never closed: "
            "expected 'elif' or 'else' or 'endif'");
  EXPECT_EQ(R("{{ x | no_such_filter }}"),
            "PARSE: chat template line 1: no filter named 'no_such_filter'");
  EXPECT_EQ(R("{% include 'x' %}"),
            "PARSE: chat template line 1: 'include' tags are not supported");
  EXPECT_EQ(R("{{ raise_exception('Roles must alternate') }}"), "ERROR: Roles must alternate");
  EXPECT_EQ(R("\n\n{{ 1 + 'a' }}"),
            "ERROR: chat template line 3: unsupported operand types for +: 'int' and 'string'");
  EXPECT_EQ(R("{{ x.y.z }}"),
            "ERROR: chat template line 1: an undefined value has no attribute 'y'");
  EXPECT_EQ(R("{{ x.y is defined }}"),
            "ERROR: chat template line 1: an undefined value has no attribute 'y'");
  EXPECT_EQ(R("{{ 'unterminated }}"), "PARSE: chat template line 1: '{{' is never closed");
  EXPECT_EQ(R("{{ 'a' ) }}"),
            "PARSE: chat template line 1: unexpected text at the end of the tag before ')'");
}

TEST(JinjaTest, RunawayTemplatesStopWithAnError) {
  // Each of these would run forever, fill memory or overflow the stack if unbounded.
  RenderLimits small;
  small.max_steps = 20'000;
  EXPECT_NE(R("{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
              "{}", small)
                .find("more than 20000 steps"),
            std::string::npos);
  EXPECT_EQ(R("{% for a in range(100) %}{% for b in range(100) %}{% endfor %}{% endfor %}ok", "{}",
              small),
            "ok");
  EXPECT_NE(R("{% set ns = namespace(s='x') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s "
              "%}{% endfor %}")
                .find("bytes"),
            std::string::npos);
  EXPECT_NE(R("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}").find("deep"),
            std::string::npos);
  EXPECT_NE(
      R("{% set x = [] %}{% for i in range(1000) %}{% set x = [x] %}{% endfor %}").find("deep"),
      std::string::npos);
  EXPECT_NE(R("{% set ns = namespace() %}{% set ns.me = ns %}").find("namespace"),
            std::string::npos);
  EXPECT_NE(R("{{ [namespace()] }}").find("namespace"), std::string::npos);
  EXPECT_NE(
      R("{{ " + std::string(1000, '(') + "1" + std::string(1000, ')') + " }}").find("too deep"),
      std::string::npos);
  EXPECT_NE(R("{{ range(100000000) | length }}").find("items"), std::string::npos);
}

}  // namespace
}  // namespace spanserve::chat::jinja
