#!/usr/bin/env python3
"""Writes tests/data/chat/jinja_goldens.json: renderings of real Hugging Face chat templates
by transformers' own chat-template machinery (`PreTrainedTokenizerFast.apply_chat_template(...,
tokenize=False)`: jinja2 ImmutableSandboxedEnvironment with trim_blocks, lstrip_blocks,
loopcontrols, transformers' `tojson` filter, `raise_exception` and `strftime_now` globals and
the `generation` tag), the reference of the C++ Jinja2 interpreter (runtime/chat/jinja.*).

Inputs: the chat templates llama.cpp keeps in models/templates/*.jinja, read straight from
PyPI's llama-cpp-python==0.3.16 sdist (vendor/llama.cpp/models/templates/), cached as
.cache/llamacpp/llama_cpp_python-0.3.16.tar.gz (pip-downloaded there if missing). TEMPLATES
below names the ones kept, each with its model's bos/eos strings as its tokenizer_config has
them; a bos_token of None there (Qwen) is not passed to the template (transformers leaves it
undefined) and is written as "" (those templates never read it: checked). None of the listed
templates had to be dropped: transformers compiles and renders every one of them.

Cases per template, each with add_generation_prompt true and false:
  CONVERSATIONS  plain chats (single turn, with/without system, multi-turn with assistant
                 turns, empty content, non-ASCII and emoji, newlines and surrounding
                 whitespace, template-like text in content, system only, assistant first);
  TOOL_CASES     `tools` = TOOLS (two OpenAI-style function tools) with a user question, with
                 a system message too, and conversations holding an assistant `tool_calls`
                 message: content None, id "call_1", arguments a dict / the JSON string OpenAI
                 clients send, then the `tool` result and a final user turn; content "", the
                 9-character ids Mistral's templates insist on, one call / two parallel calls,
                 ending on the tool results (the agent loop's shape; Mistral's alternation
                 check refuses a user turn straight after a tool result);
  REASONING      an assistant turn holding <think>...</think> (reasoning templates only);
  EXTRA_CASES    template-specific ones (Qwen3 enable_thinking=false and reasoning_content,
                 Llama 3.x tools_in_user_message=false and builtin_tools, gpt-oss
                 reasoning_effort, builtin_tools and a `thinking` field, Granite thinking=true,
                 Hermes tools=[], Mistral a tool call id that is not 9 characters long).
Every case passes date_string="26 Jul 2024"; strftime_now (called by Mistral-Small-3.2 and
gpt-oss always, by Granite 3.3 without a system message) runs on a clock frozen at 2024-07-26
12:00:00, so no rendering depends on today's date: a C++ test has to inject the same date.
transformers always passes `tools` (None when absent) and `documents` (None) to the template.
A case on which transformers raises jinja2's TemplateError itself (what `raise_exception`
raises: Gemma's system role, alternation and tool-call-id checks) is kept with
"error": the exception's message instead of "text"; a case that fails with any other
exception (UndefinedError, TypeError, ... : a template that needs something the case lacks)
is left out and counted (printed per template and exception type): Hermes-3 iterates `tools`
unconditionally (every case without tools fails), DeepSeek-R1 and functionary concatenate
`arguments` (string form only), Qwen3, QwQ, gpt-oss, Phi-3.5, Granite and Devstral fail on
content None.

Format: {"generator": {...versions, "source"}, "templates": [{"name": "<file stem>",
"template": "<jinja source>", "bos_token", "eos_token", "cases": [{"messages",
"add_generation_prompt", "kwargs", "tools" (only when given), "text" | "error"}]}]}
Dict keys keep their insertion order (no sort_keys), ensure_ascii=False, indent=1.
Deterministic: rerunning writes identical bytes.

Regenerate: scripts/regen_goldens jinja   (or .venv/bin/python tools/golden/make_jinja_goldens.py)
  --features  also prints every Jinja filter, test, method, global and loop attribute the kept
              templates use, with counts (what the C++ interpreter must implement).
"""

from __future__ import annotations

import collections
import copy
import datetime
import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "chat", "jinja_goldens.json")
SDIST_VERSION = "0.3.16"
SDIST = os.path.join(ROOT, ".cache", "llamacpp", f"llama_cpp_python-{SDIST_VERSION}.tar.gz")
TEMPLATE_DIR = f"llama_cpp_python-{SDIST_VERSION}/vendor/llama.cpp/models/templates/"
DATE_STRING = "26 Jul 2024"
FROZEN_NOW = (2024, 7, 26, 12, 0, 0)

LLAMA3 = ("<|begin_of_text|>", "<|eot_id|>")
QWEN = (None, "<|im_end|>")
MISTRAL = ("<s>", "</s>")
DEEPSEEK = ("<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>")
# file stem -> (bos_token, eos_token) of the model's tokenizer_config.json
TEMPLATES = {
    "meta-llama-Llama-3.1-8B-Instruct": LLAMA3,
    "meta-llama-Llama-3.2-3B-Instruct": LLAMA3,
    "meta-llama-Llama-3.3-70B-Instruct": LLAMA3,
    "Qwen-Qwen2.5-7B-Instruct": QWEN,
    "Qwen-Qwen3-0.6B": QWEN,
    "Qwen-QwQ-32B": QWEN,
    "google-gemma-2-2b-it": ("<bos>", "<eos>"),
    "microsoft-Phi-3.5-mini-instruct": ("<s>", "<|endoftext|>"),
    "mistralai-Mistral-Nemo-Instruct-2407": MISTRAL,
    "Mistral-Small-3.2-24B-Instruct-2506": MISTRAL,
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": DEEPSEEK,
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": DEEPSEEK,
    "ibm-granite-granite-3.3-2B-Instruct": ("<|end_of_text|>", "<|end_of_text|>"),
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": ("<|begin_of_text|>", "<|im_end|>"),
    "CohereForAI-c4ai-command-r7b-12-2024-tool_use": ("<BOS_TOKEN>", "<|END_OF_TURN_TOKEN|>"),
    "openai-gpt-oss-120b": ("<|startoftext|>", "<|return|>"),
    "moonshotai-Kimi-K2": ("[BOS]", "[EOS]"),
    "unsloth-mistral-Devstral-Small-2507": MISTRAL,
    "meetkai-functionary-medium-v3.2": LLAMA3,
}
REASONING_TEMPLATES = {"Qwen-Qwen3-0.6B", "Qwen-QwQ-32B",
                       "deepseek-ai-DeepSeek-R1-Distill-Llama-8B",
                       "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B"}


def U(c):
    return {"role": "user", "content": c}


def A(c):
    return {"role": "assistant", "content": c}


def S(c):
    return {"role": "system", "content": c}


CONVERSATIONS = [
    [U("Hello!")],
    [S("You are a concise assistant."), U("Name three primary colors.")],
    [U("Hi!"), A("Hello! How can I help you today?"), U("Tell me a joke.")],
    [S("You are a pirate."), U("Where is the treasure?"), A("Arr, buried on the island!"),
     U("Which island?"), A("The one with the palm tree.")],
    [U("")],
    [S(""), U("Is an empty system message kept?")],
    [U("Größe, café, naïve — 東京は日本の首都です。🤖🍕 ¿Qué tal?")],
    [S("  Leading and trailing spaces.  "), U("\n\nLine one\nLine two\n\n  indented line\n\n")],
    [U("Literal markup: {{ not_a_variable }} {% if x %} <|im_end|> <|eot_id|> \\n")],
    [A("An assistant message first."), U("Then the user.")],
    [S("Only a system message.")],
]

# Properties deliberately not in alphabetical order: templates must keep the given order.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. Paris"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit (°C or °F)"},
                "options": {"type": "object", "description": "Extra options",
                            "properties": {
                                "forecast_days": {"type": "integer", "minimum": 0, "maximum": 7,
                                                  "description": "Days of forecast"},
                                "include_wind": {"type": "boolean"}}},
            },
            "required": ["city", "unit"]}}},
    {"type": "function", "function": {
        "name": "search_docs",
        "description": "Search the documentation and return matching snippets.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "Search terms"},
                "limit": {"type": "integer", "description": "Maximum number of results",
                          "default": 5},
                "tags": {"type": "array", "items": {"type": "string"},
                         "description": "Only documents with these tags"},
            },
            "required": ["query"]}}},
]


def call(call_id, name, arguments):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def tool_calls_message(content, calls):
    return {"role": "assistant", "content": content, "tool_calls": calls}


def tool_result(call_id, name, content):
    return {"role": "tool", "tool_call_id": call_id, "name": name, "content": content}


QUESTION = "What's the weather like in Paris today?"
PARIS = {"city": "Paris", "unit": "celsius"}
TOKYO = {"city": "Tokyo", "unit": "celsius"}
TOOL_CASES = [
    [U(QUESTION)],
    [S("You are a weather bot."), U(QUESTION)],
    # arguments as a dict (what HF chat templates expect), content None as OpenAI sends it
    [U(QUESTION), tool_calls_message(None, [call("call_1", "get_weather", PARIS)]),
     tool_result("call_1", "get_weather", "{\"temperature\": 21}"), U("Do I need a coat?")],
    # arguments as the JSON string OpenAI clients send
    [U(QUESTION), tool_calls_message(None, [call("call_1", "get_weather", json.dumps(PARIS))]),
     tool_result("call_1", "get_weather", "{\"temperature\": 21}"), U("Do I need a coat?")],
    # generation right after the tool result (the agent loop; the only tool-call shape
    # Mistral's alternation check accepts), 9-char alphanumeric ids (Mistral's templates raise
    # otherwise), "" content
    [U(QUESTION), tool_calls_message("", [call("a1B2c3D4e", "get_weather", PARIS)]),
     tool_result("a1B2c3D4e", "get_weather", "{\"temperature\": 21}")],
    # two parallel calls, two results
    [U("Weather in Paris and Tokyo?"),
     tool_calls_message("", [call("a1B2c3D4e", "get_weather", PARIS),
                             call("f5G6h7I8j", "get_weather", TOKYO)]),
     tool_result("a1B2c3D4e", "get_weather", "{\"temperature\": 21}"),
     tool_result("f5G6h7I8j", "get_weather", "{\"temperature\": 28}")],
]

THINK = "<think>\nThe user asks for 2 + 2. That is 4.\n</think>\n\n2 + 2 = 4."
REASONING = [
    [U("What is 2 + 2?"), A(THINK), U("And 3 + 3?")],
    [U("What is 2 + 2?"), A(THINK)],
]

# (messages, tools or None, extra kwargs) per template
LLAMA31_EXTRA = [
    ([U(QUESTION)], TOOLS, {"tools_in_user_message": False}),
    ([U(QUESTION)], TOOLS,
     {"builtin_tools": ["code_interpreter", "brave_search", "wolfram_alpha"]}),
    ([U("Search the web for the weather in Paris."),
      tool_calls_message(None, [call("call_1", "brave_search", {"query": "weather in Paris"})]),
      tool_result("call_1", "brave_search", "Sunny, 21 °C")],
     TOOLS, {"builtin_tools": ["brave_search", "wolfram_alpha"]}),
]
MISTRAL_EXTRA = [  # a tool call id that is not 9 characters long
    ([U(QUESTION), tool_calls_message("", [call("call_1", "get_weather", PARIS)]),
      tool_result("call_1", "get_weather", "{\"temperature\": 21}")], TOOLS, {}),
]
EXTRA_CASES = {
    "mistralai-Mistral-Nemo-Instruct-2407": MISTRAL_EXTRA,
    "Mistral-Small-3.2-24B-Instruct-2506": MISTRAL_EXTRA,
    "meta-llama-Llama-3.1-8B-Instruct": LLAMA31_EXTRA,
    "meta-llama-Llama-3.3-70B-Instruct": LLAMA31_EXTRA,
    "meta-llama-Llama-3.2-3B-Instruct": [([U(QUESTION)], TOOLS, {"tools_in_user_message": False})],
    "Qwen-Qwen3-0.6B": [
        ([U("Hello!")], None, {"enable_thinking": False}),
        ([U("What is 2 + 2?"), {"role": "assistant", "content": "2 + 2 = 4.",
                                "reasoning_content": "The user asks for 2 + 2. That is 4."}],
         None, {}),
    ],
    "openai-gpt-oss-120b": [
        ([U("Hello!")], None, {"reasoning_effort": "high"}),
        ([U("Hello!")], None, {"builtin_tools": ["browser", "python"]}),
        ([U("What is 2 + 2?"), {"role": "assistant", "content": "2 + 2 = 4.",
                                "thinking": "The user asks for 2 + 2. That is 4."}], None, {}),
    ],
    "ibm-granite-granite-3.3-2B-Instruct": [([U("What is 2 + 2?")], None, {"thinking": True})],
    "NousResearch-Hermes-3-Llama-3.1-8B-tool_use": [([U("Hello!")], [], {})],
}


def case_inputs(name):
    """(messages, tools, kwargs) in the order they are written."""
    out = [(c, None, {}) for c in CONVERSATIONS]
    out += [(c, TOOLS, {}) for c in TOOL_CASES]
    if name in REASONING_TEMPLATES:
        out += [(c, None, {}) for c in REASONING]
    out += EXTRA_CASES.get(name, [])
    return [(m, t, {"date_string": DATE_STRING, **kw}) for m, t, kw in out]


def ensure_sdist():
    if os.path.exists(SDIST):
        return
    os.makedirs(os.path.dirname(SDIST), exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary",
                    ":all:", f"llama-cpp-python=={SDIST_VERSION}", "-d", os.path.dirname(SDIST)],
                   check=True)


def read_templates():
    with tarfile.open(SDIST, "r:gz") as tar:
        out = {}
        for name in TEMPLATES:
            f = tar.extractfile(TEMPLATE_DIR + name + ".jinja")
            out[name] = f.read().decode("utf-8")
        return out


def freeze_clock():
    """strftime_now reads chat_template_utils' module-level `datetime`: make its now() fixed."""
    from transformers.utils import chat_template_utils

    class FrozenDatetime(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(*FROZEN_NOW, tzinfo=tz)

    chat_template_utils.datetime = FrozenDatetime


def hf_tokenizer(template, bos, eos):
    """A fast tokenizer with no vocabulary to speak of: only its special tokens and
    chat_template matter to apply_chat_template(tokenize=False)."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast
    special = {"eos_token": eos} if bos is None else {"bos_token": bos, "eos_token": eos}
    vocab = Tokenizer(models.WordLevel({"<unk>": 0}, "<unk>"))
    tok = PreTrainedTokenizerFast(tokenizer_object=vocab, chat_template=template, **special)
    assert tok.special_tokens_map == special, tok.special_tokens_map
    return tok


def render_template(name, template, bos, eos, skipped):
    import jinja2
    if bos is None:
        assert "bos_token" not in template, name
    tok = hf_tokenizer(template, bos, eos)
    cases = []
    for messages, tools, kwargs in case_inputs(name):
        for gen in (True, False):
            msgs, tls = copy.deepcopy(messages), copy.deepcopy(tools)
            case = {"messages": messages, "add_generation_prompt": gen, "kwargs": kwargs}
            if tools is not None:
                case["tools"] = tools
            try:
                case["text"] = tok.apply_chat_template(msgs, tools=tls, add_generation_prompt=gen,
                                                       tokenize=False, **kwargs)
            except jinja2.exceptions.TemplateError as e:
                if type(e) is not jinja2.exceptions.TemplateError:  # UndefinedError, ...
                    skipped[name][type(e).__name__] += 1
                    continue
                case["error"] = str(e)
            except Exception as e:  # noqa: BLE001 - counted and printed
                skipped[name][type(e).__name__] += 1
                continue
            assert msgs == messages and tls == tools, f"{name}: the template changed its inputs"
            cases.append(case)
    return {"name": name, "template": template, "bos_token": bos or "", "eos_token": eos,
            "cases": cases}


def features(templates):
    """Filters, tests, methods (attribute calls), globals and loop attributes each template
    uses, counted over the parsed templates (jinja2's AST)."""
    from jinja2 import nodes
    from transformers.utils.chat_template_utils import _compile_jinja_template
    env = _compile_jinja_template("").environment
    kinds = collections.defaultdict(collections.Counter)
    where = collections.defaultdict(set)
    for name, src in templates.items():
        ast = env.parse(src)
        macros = {m.name for m in ast.find_all(nodes.Macro)}
        found = []
        for n in ast.find_all((nodes.Filter, nodes.FilterBlock, nodes.Test, nodes.Call,
                               nodes.Getattr, nodes.Stmt, nodes.Slice, nodes.Concat,
                               nodes.CondExpr)):
            if isinstance(n, nodes.Filter) and n.name is not None:
                found.append(("filter", n.name))
                found += [("filter keyword", f"{n.name}({k.key}=)") for k in n.kwargs]
                at = {"select": 0, "reject": 0, "selectattr": 1, "rejectattr": 1}.get(n.name)
                if at is not None and len(n.args) > at and isinstance(n.args[at], nodes.Const):
                    found.append(("test named in a filter", f"{n.args[at].value} ({n.name})"))
            elif isinstance(n, nodes.Test):
                found.append(("test", n.name))
            elif isinstance(n, nodes.Call) and isinstance(n.node, nodes.Getattr):
                found.append(("method", n.node.attr))
            elif isinstance(n, nodes.Call) and isinstance(n.node, nodes.Name):
                found.append(("macro call" if n.node.name in macros else "global", n.node.name))
            elif isinstance(n, nodes.Getattr) and isinstance(n.node, nodes.Name) \
                    and n.node.name == "loop":
                found.append(("loop attribute", n.attr))
            elif isinstance(n, nodes.Stmt):
                found.append(("statement", type(n).__name__))
                if isinstance(n, nodes.For):
                    if n.test is not None:
                        found.append(("statement", "For ... if"))
                    if n.else_:
                        found.append(("statement", "For ... else"))
                    if isinstance(n.target, nodes.Tuple):
                        found.append(("statement", "For a, b in"))
                    if n.recursive:
                        found.append(("statement", "For ... recursive"))
                if isinstance(n, nodes.Assign) and isinstance(n.target, nodes.NSRef):
                    found.append(("statement", "Assign ns.attr"))
                if isinstance(n, nodes.Macro) and n.defaults:
                    found.append(("statement", "Macro with default arguments"))
            elif isinstance(n, (nodes.Slice, nodes.Concat, nodes.CondExpr)):
                found.append(("expression", type(n).__name__))
        for n in ast.find_all(nodes.BinExpr):
            found.append(("operator", n.operator))
        for n in ast.find_all(nodes.UnaryExpr):
            found.append(("operator", "unary " + n.operator))
        for n in ast.find_all(nodes.Getitem):
            if isinstance(n.arg, nodes.Neg):
                found.append(("expression", "negative index"))
        for n in ast.find_all(nodes.Compare):
            for op in n.ops:
                found.append(("operator", op.op))
        for kind, what in found:
            kinds[kind][what] += 1
            where[(kind, what)].add(name)
    for kind in sorted(kinds):
        print(f"{kind}:")
        for what, n in sorted(kinds[kind].items(), key=lambda kv: (-kv[1], kv[0])):
            print(f"  {what:24} {n:4}  in {len(where[(kind, what)])}: "
                  f"{', '.join(sorted(where[(kind, what)]))}")


def main():
    import jinja2
    import transformers
    ensure_sdist()
    freeze_clock()
    sources = read_templates()
    skipped = collections.defaultdict(collections.Counter)
    templates = [render_template(name, sources[name], bos, eos, skipped)
                 for name, (bos, eos) in TEMPLATES.items()]
    golden = {"generator": {"transformers": transformers.__version__, "jinja2": jinja2.__version__,
                            "source": f"llama-cpp-python=={SDIST_VERSION} sdist, "
                                      "vendor/llama.cpp/models/templates/"},
              "templates": templates}
    text = json.dumps(golden, ensure_ascii=False, indent=1) + "\n"
    assert json.loads(text) == golden
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    for t in templates:
        n_text = sum("text" in c for c in t["cases"])
        n_err = len(t["cases"]) - n_text
        left = ", ".join(f"{k} {v}" for k, v in sorted(skipped[t["name"]].items()))
        print(f"  {t['name']:46} text {n_text:3}  error {n_err:3}  left out {left or '0'}")
    n = sum(len(t["cases"]) for t in templates)
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {len(templates)} templates, {n} cases, "
          f"{sum(sum(c.values()) for c in skipped.values())} left out, {len(text.encode())} bytes")
    if "--features" in sys.argv[1:]:
        features(sources)


if __name__ == "__main__":
    main()
