#!/usr/bin/env python3
"""Writes the golden model directories under tests/data/models/ (run via scripts/regen_goldens).

Each case directory holds config.json, model.safetensors, golden.json
({"case", "source", "dtype", "tolerance", "sequences"}) and golden_logits.safetensors
(F32 "logits.i" = [len_i, vocab], the logits of every position of sequence i run alone,
positions starting at 0). Cases in HF_GENERATE also record "generations": [{"prompt",
"tokens"}], transformers' batch-1 greedy generate with its KV cache (the tokens after the
prompt).

Two sources:
  * reference   — random model from tools/reference/spannorm.py, saved with the stored
                  dtype, reloaded (widened to f32) and run in float32;
  * transformers — a tiny random Hugging Face model (LlamaForCausalLM, Qwen2ForCausalLM,
                  MixtralForCausalLM, Qwen2MoeForCausalLM, OlmoeForCausalLM,
                  GemmaForCausalLM, Gemma2ForCausalLM, Gemma3ForCausalLM, Qwen3ForCausalLM,
                  Qwen3MoeForCausalLM, Phi3ForCausalLM) written with save_pretrained; the
                  logits come from the HF model itself.

hf_qwen3, hf_qwen3_moe and hf_gemma3 need transformers >= 4.51 (Qwen3, Qwen3-MoE; Gemma 3
came with 4.50, its golden is 4.51.3's), which the pinned 4.46.3 lacks: a run with the
pinned version keeps the committed directories (and says so).
To regenerate them, run this script with transformers 4.51.3 and tokenizers 0.21 installed
over the project venv (e.g. a venv with a .pth file naming the project venv's
site-packages); on torch < 2 the script then fills in the few torch names transformers 4.51
imports but these models never use (torch_compat below) and loads the saved models through
load_state_dict.

Checks (the script fails if one does not hold):
  * every golden against an independent float64 numpy implementation
    (tools/reference/numpy_ref.py): max|f32 - f64| / max|f64| <= tolerance / 10 (not the
    Phi-3 cases: neither reference reads fused tensors or longrope; nor Gemma 2 and 3:
    neither has sandwich norms with soft-capping, alternating windows or two RoPE bases;
    their mutations are transformers models, hf_mutations);
  * the reference loads every transformers case and matches HF within 1e-5, and every
    reference case whose model type HF knows (llama, qwen2_moe, mixtral, olmoe; spanserve
    `pre` via a LlamaConfig) loads into HF and matches within 1e-5;
  * the goldens are sensitive: mutating RoPE, the norm names or the scalars of a case moves
    its logits by far more than its tolerance; MoE top-k choices are not near ties;
  * recorded generations are GEN_MARGIN away from a tie at every step and differ from the
    tokens of a full forward per step (they depend on how the cached keys are rotated;
    longrope prompts past original_max_position_embeddings excepted, whose keys are all
    rotated with the long factors either way; Gemma 2's and 3's, whose RoPE does not depend
    on the length, must instead equal the full forwards: their prompts are longer than the
    sliding window, as transformers 4.46.3's HybridCache drops position 0 of a sliding layer
    when a shorter prompt's generation reaches position sliding_window - 1). For Phi-3 the script
    also logs whether generate()'s own steps (Phi3ForCausalLM.prepare_inputs_for_generation
    drops the cache at the first step past original_max_position_embeddings) agree with
    them.

Deterministic: fixed seeds, one torch thread; rerunning rewrites identical bytes.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from reference import numpy_ref  # noqa: E402
from reference.spannorm import (ModelConfig, SpanModel, build_random, load_model,  # noqa: E402
                                read_tensors, save_model)

OUT = os.path.join(ROOT, "tests", "data", "models")
LENGTHS = (7, 19, 13)
STD = 0.15          # weight std of the golden models: large enough that attention is far
                    # from uniform and RoPE / routing errors show (0.02 would hide them)
MAX_DIR_BYTES = 300 * 1024
HF_MATCH = 1e-5
TOPK_GAP = 1e-3     # MoE: min distance of the k-th from the (k+1)-th router score

# Tiny, odd-sized, GQA.
BASE = {
    "model_type": "spanserve",
    "architectures": ["SpanServeForCausalLM"],
    "hidden_size": 40,
    "intermediate_size": 72,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 10,
    "vocab_size": 97,
    "max_position_embeddings": 128,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}


def cfg(**kw):
    c = copy.deepcopy(BASE)
    for k, v in kw.items():
        if v is None:
            c.pop(k, None)
        else:
            c[k] = v
    return c


L3 = BASE["num_hidden_layers"]
ALPHA3 = (2 * L3) ** 0.25  # (2L)^(1/4), L = 3

LLAMA_ARCH = ["LlamaForCausalLM"]

# name -> (config, stored dtype, seed). Some cases leave keys out on purpose so that the
# loader's defaults are exercised: pre_f16 / pre_rope_linear / pre_tied are plain `llama`
# configs without SpanServe keys; post, span, b2t, deepnorm, sandwich, mix rely on the
# per-placement default of final_norm; only span_layernorm sets norm_eps.
REF_CASES = {
    "pre": (cfg(norm_placement="pre", norm_type="rmsnorm"), "float32", 101),
    "post": (cfg(norm_placement="post"), "float32", 102),
    "span": (cfg(norm_placement="span"), "float32", 103),
    "b2t": (cfg(norm_placement="b2t", rope_theta=50000.0), "float32", 104),
    "deepnorm": (cfg(norm_placement="deepnorm", skip_scale=ALPHA3), "float32", 105),
    "sandwich": (cfg(norm_placement="sandwich"), "float32", 106),
    "mix": (cfg(norm_placement="mix", num_hidden_layers=4, mix_post_layers=2), "float32", 107),
    "span_layernorm": (cfg(norm_placement="span", norm_type="layernorm", norm_bias=True,
                           norm_eps=1e-5, skip_scale=ALPHA3), "float32", 108),
    "span_scaled": (cfg(norm_placement="span", skip_scale=2.21, branch_scale=0.7,
                        final_norm=True, tie_word_embeddings=False), "float32", 109),
    "span_bf16": (cfg(norm_placement="span", skip_scale=ALPHA3), "bfloat16", 110),
    "span_attnbias": (cfg(norm_placement="span", attention_bias=True, skip_scale=ALPHA3),
                      "float32", 111),
    "pre_f16": (cfg(model_type="llama", architectures=LLAMA_ARCH), "float16", 112),
    "pre_rope_linear": (cfg(model_type="llama", architectures=LLAMA_ARCH,
                            rope_scaling={"type": "linear", "factor": 2.0}), "float32", 113),
    "pre_tied": (cfg(model_type="llama", architectures=LLAMA_ARCH, tie_word_embeddings=True),
                 "float32", 114),
    # MoE (4 experts, top-2, tiny experts).
    "moe_qwen2_span": (cfg(norm_placement="span", skip_scale=ALPHA3, intermediate_size=48,
                           num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                           moe_intermediate_size=16, shared_expert_intermediate_size=16,
                           decoder_sparse_step=1, first_k_dense_replace=1),
                       "float32", 121),
    "moe_qwen2_pre": (cfg(model_type="qwen2_moe", architectures=["Qwen2MoeForCausalLM"],
                          head_dim=None, intermediate_size=48, num_experts=4,
                          num_experts_per_tok=2, norm_topk_prob=False,
                          moe_intermediate_size=16, shared_expert_intermediate_size=24,
                          decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False),
                      "float32", 122),
    "moe_mixtral_pre": (cfg(model_type="mixtral", architectures=["MixtralForCausalLM"],
                            head_dim=None, intermediate_size=20, num_local_experts=4,
                            num_experts_per_tok=2, sliding_window=None), "float32", 123),
    "moe_olmoe_pre": (cfg(model_type="olmoe", architectures=["OlmoeForCausalLM"],
                          head_dim=None, intermediate_size=20, num_experts=4,
                          num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None),
                      "float32", 124),
    "moe_sigmoid_span": (cfg(norm_placement="span", skip_scale=ALPHA3, intermediate_size=48,
                             num_experts=4, num_experts_per_tok=2, norm_topk_prob=True,
                             scoring_func="sigmoid", moe_intermediate_size=20,
                             decoder_sparse_step=2), "float32", 125),
}

HF_CASES = ["hf_llama", "hf_qwen2", "hf_mixtral", "hf_qwen2_moe", "hf_olmoe",
            "hf_llama3_rope", "hf_qwen2_yarn", "hf_mistral_sliding", "hf_qwen2_sliding",
            "hf_gemma", "hf_qwen3", "hf_qwen3_moe", "hf_llama_dynamic", "hf_phi3",
            "hf_phi3_longrope", "hf_gemma2", "hf_gemma3"]
# Model types whose goldens only transformers computes (see hf_mutations).
HF_ONLY = ("phi3", "gemma2", "gemma3_text")
# Cases whose Hugging Face class is newer than the pinned transformers (see the docstring).
HF_MIN_VERSION = {"hf_qwen3": (4, 51), "hf_qwen3_moe": (4, 51), "hf_gemma3": (4, 51)}
# Sequence lengths per case (default LENGTHS): the RoPE scaling cases go well past their
# original_max_position_embeddings (16 / 32).
# The sliding-window cases (window 8) run well past their window.
# Dynamic NTK (max_position_embeddings 32): one sequence within it, two past it.
CASE_LENGTHS = {"hf_llama3_rope": (40, 96, 70), "hf_qwen2_yarn": (50, 96, 80),
                "hf_mistral_sliding": (24, 45, 33), "hf_qwen2_sliding": (24, 45, 33),
                "hf_llama_dynamic": (24, 60, 45), "hf_phi3": (7, 29, 13),
                "hf_phi3_longrope": (24, 70, 45), "hf_gemma2": (9, 29, 13),
                "hf_gemma3": (9, 29, 13)}
# Greedy generations recorded per case: (prompt length, new tokens). Dynamic NTK: a prompt
# within max_position_embeddings generating past it, and one longer than it.
HF_GENERATE = {"hf_llama_dynamic": ((20, 40), (44, 30)),
               "hf_phi3_longrope": ((20, 40), (44, 30)),
               "hf_gemma2": ((8, 24), (15, 16)),
               "hf_gemma3": ((8, 24), (15, 16))}


def log(*a):
    print(*a, flush=True)


def rel_err(a, b) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def sequences_for(seed: int, vocab: int, attempt: int = 0, lengths=LENGTHS):
    g = torch.Generator().manual_seed(seed * 7919 + 17 + 1000003 * attempt)
    return [torch.randint(0, vocab, (n,), generator=g).tolist() for n in lengths]


def pick_sequences(model: SpanModel, seed: int, vocab: int, lengths=LENGTHS):
    """The first deterministic draw of sequences whose MoE top-k choices are all at least
    TOPK_GAP away from a tie (dense models: the first draw)."""
    for attempt in range(200):
        seqs = sequences_for(seed, vocab, attempt, lengths)
        gap = min_topk_gap(model, seqs)
        if gap >= TOPK_GAP:
            return seqs, gap
    raise RuntimeError("no sequences without router near ties")


def dir_bytes(d):
    return sum(os.path.getsize(os.path.join(d, f)) for f in os.listdir(d))


def write_golden(d, case, source, dtype, tol, seqs, logits, generations=()):
    from safetensors.torch import save_file
    tensors = {f"logits.{i}": torch.as_tensor(l, dtype=torch.float32).contiguous()
               for i, l in enumerate(logits)}
    save_file(tensors, os.path.join(d, "golden_logits.safetensors"), metadata={"format": "pt"})
    lines = ",\n".join("    " + json.dumps(s) for s in seqs)
    extra = ""
    if generations:
        gen_lines = ",\n".join("    " + json.dumps(g) for g in generations)
        extra = f',\n  "generations": [\n{gen_lines}\n  ]'
    text = ("{\n"
            f'  "case": {json.dumps(case)},\n'
            f'  "source": {json.dumps(source)},\n'
            f'  "dtype": {json.dumps(dtype)},\n'
            f'  "tolerance": {tol!r},\n'
            f'  "sequences": [\n{lines}\n  ]{extra}\n'
            "}\n")
    json.loads(text)
    with open(os.path.join(d, "golden.json"), "w") as f:
        f.write(text)


@torch.no_grad()
def ref_logits(model: SpanModel, seqs):
    return [model(torch.tensor(s)).numpy() for s in seqs]


@torch.no_grad()
def min_topk_gap(model: SpanModel, seqs) -> float:
    """Smallest gap between the k-th and (k+1)-th router score over all tokens and MoE
    layers (a near tie could pick different experts in another implementation)."""
    gap = math.inf
    for s in seqs:
        model(torch.tensor(s))
        for m in model.moe_layers():
            if m.k >= m.E:
                continue
            top = torch.sort(m.last_scores, dim=-1, descending=True).values
            gap = min(gap, float((top[:, m.k - 1] - top[:, m.k]).min()))
    return gap


def check_numpy(d, seqs, logits, tol, case):
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    tensors = read_tensors(d)
    err = max(rel_err(l, numpy_ref.forward(tensors, config, s)) for s, l in zip(seqs, logits))
    assert err <= tol / 10, f"{case}: float32 vs float64 numpy rel err {err:.3g} > tol/10"
    return err


# ---------------------------------------------------------------------------------------
# Sensitivity: the goldens must move when something plausible is done wrong.

@torch.no_grad()
def mutations(d):
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    base = load_model(d)
    c = base.cfg
    out = {}

    def run_cfg(name, **kw):
        m = SpanModel(dict(config, **kw))
        m.load_state_dict(base.state_dict())
        out[name] = m.eval()

    run_cfg("rope_theta_x2", rope_theta=c.rope_theta * 2)
    if c.rope_type != "default":
        run_cfg("rope_unscaled", rope_scaling=None)
    if c.rope_type in ("llama3", "yarn"):
        # The same factor applied to every frequency: the bands / ramp must matter.
        run_cfg("rope_linear_instead",
                rope_scaling={"type": "linear", "factor": c.rope_params["factor"]})
    if c.rope_type == "dynamic":
        # Another factor, and the scaling measured from half the context (as if from a
        # shorter original_max_position_embeddings) instead of max_position_embeddings.
        run_cfg("dynamic_factor_x2",
                rope_scaling=dict(c.rope_params, factor=c.rope_params["factor"] * 2))
        run_cfg("dynamic_from_half_context",
                max_position_embeddings=c.max_position_embeddings // 2)
    if c.rope_type == "yarn":
        rs = {k: v for k, v in c.rope_params.items() if k != "attention_factor"}
        run_cfg("yarn_attention_factor_1", rope_scaling=dict(rs, attention_factor=1.0))
    if c.sliding_window:
        run_cfg("no_sliding_window", sliding_window=None)
        run_cfg("sliding_window_plus_1", sliding_window=c.sliding_window + 1)
    if c.model_type == "gemma":
        # GeGLU vs SwiGLU; and without the embedding scale and the (1 + w) gains.
        run_cfg("silu_instead_of_gelu_tanh", hidden_activation="silu")
        run_cfg("as_llama", model_type="llama", hidden_act="gelu_pytorch_tanh",
                tie_word_embeddings=True)
    if c.skip_scale != 1.0:
        run_cfg("skip_scale_1", skip_scale=1.0)
    if c.branch_scale != 1.0:
        run_cfg("branch_scale_1", branch_scale=1.0)
    if c.num_experts and c.norm_topk_prob and c.moe_layout != "mixtral":
        run_cfg("no_renorm", norm_topk_prob=False)
    if c.qk_norm_per_head:
        # Qwen3's per-head q / k norms: swapped gains, and no norm at all.
        sd = base.state_dict()
        a, b = "model.layers.0.self_attn.q_norm.weight", "model.layers.0.self_attn.k_norm.weight"
        m = SpanModel(config)
        m.load_state_dict(dict(sd, **{a: sd[b], b: sd[a]}))
        out["qk_norms_swapped"] = m.eval()
        m = SpanModel(config)
        m.load_state_dict(sd)
        for layer in m.model.layers:
            layer.self_attn.q_norm = layer.self_attn.k_norm = None
        out["no_qk_norm"] = m.eval()
    # Swap the gains of the first two norms of layer 0 (a naming mix-up).
    sd = base.state_dict()
    names = base.model.layers[0].norm_names
    m = SpanModel(config)
    a, b = f"model.layers.0.{names[0]}.weight", f"model.layers.0.{names[1]}.weight"
    sd2 = dict(sd)
    sd2[a], sd2[b] = sd[b], sd[a]
    m.load_state_dict(sd2)
    out["norms_swapped"] = m.eval()
    return out


def check_sensitivity(d, seqs, logits, tol, case):
    worst = math.inf
    for name, m in mutations(d).items():
        diff = max(rel_err(m(torch.tensor(s)).detach().numpy(), l) for s, l in zip(seqs, logits))
        assert diff > 100 * tol, f"{case}: mutation {name} moves logits only {diff:.3g}"
        worst = min(worst, diff)
    return worst


# ---------------------------------------------------------------------------------------
# Hugging Face.

def hf_class(model_type):
    import transformers as T
    return {"llama": T.LlamaForCausalLM, "qwen2": T.Qwen2ForCausalLM,
            "mistral": T.MistralForCausalLM,
            "mixtral": T.MixtralForCausalLM, "qwen2_moe": T.Qwen2MoeForCausalLM,
            "olmoe": T.OlmoeForCausalLM, "gemma": T.GemmaForCausalLM,
            "gemma2": T.Gemma2ForCausalLM,
            "gemma3_text": getattr(T, "Gemma3ForCausalLM", None),
            "qwen3": getattr(T, "Qwen3ForCausalLM", None),
            "qwen3_moe": getattr(T, "Qwen3MoeForCausalLM", None),
            "phi3": T.Phi3ForCausalLM}.get(model_type)


def hf_reset_rope(model):
    """Puts every dynamic rotary embedding back to its initial state: transformers 4.46.3's
    grows its cached length and frequencies with each longer forward and resets them only
    below max_position_embeddings, so a sequence must not follow a longer one."""
    for m in model.modules():
        if hasattr(m, "original_inv_freq") and hasattr(m, "original_max_seq_len"):
            m.register_buffer("inv_freq", m.original_inv_freq, persistent=False)
            m.max_seq_len_cached = m.original_max_seq_len


@torch.no_grad()
def hf_logits(model, seqs):
    out = []
    for s in seqs:
        hf_reset_rope(model)
        out.append(model(input_ids=torch.tensor([s]), use_cache=False).logits[0].float().numpy())
    return out


GEN_MARGIN = 1e-3   # generations: min top-1 minus top-2 logit at every greedy step


@torch.no_grad()
def hf_greedy(model, prompt, new, use_cache=True):
    """Greedy tokens after `prompt` from a fresh rotary state, and the smallest top-1 minus
    top-2 margin. With the cache: what generate(do_sample=False) runs (the prompt is one
    forward, each new token its own); without: every step one forward over the whole text."""
    hf_reset_rope(model)
    toks, margin, past = [], math.inf, None
    inp = torch.tensor([prompt])
    gemma2 = model.config.model_type == "gemma2"
    gemma3 = model.config.model_type == "gemma3_text"
    if use_cache and gemma3:
        # generate()'s HybridCache of the whole text (transformers 4.51's signature).
        from transformers.cache_utils import HybridCache
        if not hasattr(torch, "_dynamo"):
            import types
            torch._dynamo = types.SimpleNamespace(mark_static_address=lambda t: None)
        past = HybridCache(model.config, max_batch_size=1, max_cache_len=len(prompt) + new,
                           device="cpu", dtype=torch.float32)
    if use_cache and gemma2:
        # What generate() builds for Gemma 2: a HybridCache of the whole text (the model's
        # own default holds the prompt only), addressed by cache_position.
        from transformers.cache_utils import HybridCache
        if not hasattr(torch, "_dynamo"):
            # torch < 2: HybridCache only marks its tensors for torch.compile.
            import types
            torch._dynamo = types.SimpleNamespace(mark_static_address=lambda t: None)
        past = HybridCache(model.config, batch_size=1, max_cache_len=len(prompt) + new,
                           device="cpu", dtype=torch.float32)
    for _ in range(new):
        if use_cache:
            kw = {}
            if gemma2 or gemma3:
                start = len(prompt) + len(toks) - inp.shape[1]
                kw["cache_position"] = torch.arange(start, start + inp.shape[1])
            if gemma3:
                # As generate() passes it: the sliding layers slice their mask at the text's
                # length (attention_mask.shape[-1]).
                kw["attention_mask"] = torch.ones(1, start + inp.shape[1], dtype=torch.long)
            out = model(input_ids=inp, past_key_values=past, use_cache=True, **kw)
            past = out.past_key_values
        else:
            hf_reset_rope(model)
            out = model(input_ids=torch.tensor([prompt + toks]), use_cache=False)
        top2 = torch.topk(out.logits[0, -1].float(), 2)
        toks.append(int(top2.indices[0]))
        margin = min(margin, float(top2.values[0] - top2.values[1]))
        inp = torch.tensor([[toks[-1]]])
    hf_reset_rope(model)
    return toks, margin


@torch.no_grad()
def hf_generate_steps(model, prompt, new):
    """generate(do_sample=False)'s greedy loop, step by step (prepare_inputs_for_generation,
    forward, cache_position + 1), without generate() itself (which imports torch modules the
    project's torch lacks)."""
    from transformers.cache_utils import DynamicCache
    hf_reset_rope(model)
    ids = torch.tensor([prompt])
    past = DynamicCache()
    cache_position = torch.arange(len(prompt))
    for _ in range(new):
        inputs = model.prepare_inputs_for_generation(
            ids, past_key_values=past, attention_mask=torch.ones_like(ids),
            cache_position=cache_position, use_cache=True, num_logits_to_keep=1)
        out = model(**inputs, return_dict=True)
        past = out.past_key_values
        ids = torch.cat([ids, out.logits[:, -1].argmax(-1, keepdim=True)], dim=1)
        cache_position = cache_position[-1:] + 1
    hf_reset_rope(model)
    return ids[0, len(prompt):].tolist()


def hf_generations(model, case, seed, vocab):
    """The HF_GENERATE generations of `case`: the first deterministic prompts whose greedy
    steps are all GEN_MARGIN away from a tie and whose tokens differ from those of a full
    forward per step (so that they depend on the rotation of the cached keys)."""
    out = []
    for k, (prompt_len, new) in enumerate(HF_GENERATE.get(case, ())):
        # LongRoPE: a prompt past original_max_position_embeddings rotates every key with the
        # long factors whichever way it is cut, so its tokens equal the full forwards'.
        rs = getattr(model.config, "rope_scaling", None) or {}
        same_ok = (rs.get("type") == "longrope"
                   and prompt_len > model.config.original_max_position_embeddings)
        gemma2 = model.config.model_type in ("gemma2", "gemma3_text")
        if gemma2:
            # See the docstring: prompts past the window, where the HybridCache is exact.
            assert prompt_len > model.config.sliding_window, case
        for attempt in range(200):
            g = torch.Generator().manual_seed(seed * 31 + 1009 * k + 1000003 * attempt)
            prompt = torch.randint(3, vocab, (prompt_len,), generator=g).tolist()
            tokens, margin = hf_greedy(model, prompt, new)
            full, _ = hf_greedy(model, prompt, new, use_cache=False)
            if margin >= GEN_MARGIN and (tokens != full or same_ok or gemma2):
                break
        else:
            raise RuntimeError(f"{case}: no generation away from ties")
        if gemma2:
            assert tokens == full, f"{case}: cached generation {tokens} != full forwards {full}"
        first = next((i for i, (a, b) in enumerate(zip(tokens, full)) if a != b), None)
        log(f"{case}: generation {k}: prompt {prompt_len} + {new} tokens, margin {margin:.2e}, "
            f"first difference from full forwards at token {first}")
        if model.config.model_type == "phi3":
            # Phi3ForCausalLM.prepare_inputs_for_generation (4.46.3) drops the cache when the
            # text first passes original_max_position_embeddings; say whether generate()
            # nonetheless agrees with the cached forwards recorded here.
            gen = hf_generate_steps(model, prompt, new)
            d = next((i for i, (a, b) in enumerate(zip(tokens, gen)) if a != b), None)
            d_full = next((i for i, (a, b) in enumerate(zip(full, gen)) if a != b), None)
            log(f"{case}: generation {k}: generate()'s steps "
                + ("agree" if d is None else f"differ from token {d}")
                + ("; equal the full forwards" if d_full is None
                   else f"; differ from the full forwards from token {d_full}"))
        out.append({"prompt": prompt, "tokens": tokens})
    return out


def hf_load(d):
    with open(os.path.join(d, "config.json")) as f:
        config = json.load(f)
    mt = config.get("model_type")
    if mt == "spanserve":  # a spanserve `pre` model is a Llama
        import transformers as T
        assert ModelConfig(config).norm_placement == "pre"
        keep = {k: v for k, v in config.items() if k not in ("model_type", "architectures")}
        hc = T.LlamaConfig(**keep)
        m = T.LlamaForCausalLM(hc)
        sd = {k: v.float() for k, v in read_tensors(d).items()}
        missing, unexpected = m.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("rotary_emb.inv_freq")]
        assert not missing and not unexpected, (missing, unexpected)
        return m.float().eval()
    cls = hf_class(mt)
    if cls is None:
        return None
    if mt == "gemma3_text" and int(torch.__version__.split(".")[0]) < 2:
        # As Qwen3 below, with the eager attention; the tied lm_head is not in the file.
        m = cls(cls.config_class.from_pretrained(d, attn_implementation="eager"))
        missing, unexpected = m.load_state_dict(
            {k: v.float() for k, v in read_tensors(d).items()}, strict=False)
        assert not unexpected and missing == (["lm_head.weight"] if
                                              m.config.tie_word_embeddings else []), missing
        m.tie_weights()
        return m.float().eval()
    if mt in ("phi3", "gemma2", "gemma3_text"):
        # The eager attention (its mask applies sliding_window as Mistral's; Gemma 2's
        # soft-capping is in the eager path only).
        return cls.from_pretrained(d, torch_dtype=torch.float32,
                                   attn_implementation="eager").eval()
    if mt in ("qwen3", "qwen3_moe") and int(torch.__version__.split(".")[0]) < 2:
        # transformers 4.51's from_pretrained needs torch >= 2: build the model from the
        # saved config and load the saved tensors into it.
        m = cls(cls.config_class.from_pretrained(d))
        m.load_state_dict({k: v.float() for k, v in read_tensors(d).items()}, strict=True)
        return m.float().eval()
    return cls.from_pretrained(d, torch_dtype=torch.float32).eval()


@torch.no_grad()
def randomize_hf(model, seed):
    gen = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if "norm" in name and name.endswith(".weight"):
            p.copy_(1.0 + 0.5 * (2 * torch.rand(p.shape, generator=gen) - 1))
        elif name.endswith(".bias"):
            p.copy_(0.1 * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(STD * torch.randn(p.shape, generator=gen))


def hf_config(case):
    import transformers as T
    common = dict(vocab_size=97, hidden_size=40, num_hidden_layers=3, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5,
                  tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)
    if case == "hf_llama":
        # head_dim 6, 6 heads over 2 kv heads, odd vocab
        return T.LlamaConfig(**dict(common, vocab_size=89, hidden_size=36,
                                    num_attention_heads=6, num_key_value_heads=2,
                                    intermediate_size=60, rope_theta=10000.0)), 201
    if case == "hf_qwen2":
        return T.Qwen2Config(**dict(common, intermediate_size=72, rope_theta=1000000.0,
                                    use_sliding_window=False)), 202
    if case == "hf_mixtral":
        return T.MixtralConfig(**dict(common, intermediate_size=20, num_local_experts=4,
                                      num_experts_per_tok=2, rope_theta=1000000.0,
                                      sliding_window=None)), 203
    if case == "hf_qwen2_moe":
        return T.Qwen2MoeConfig(**dict(common, intermediate_size=48, moe_intermediate_size=16,
                                       shared_expert_intermediate_size=24, num_experts=4,
                                       num_experts_per_tok=2, norm_topk_prob=True,
                                       decoder_sparse_step=1, mlp_only_layers=[2],
                                       use_sliding_window=False)), 204
    if case == "hf_llama3_rope":
        # Llama 3.1's rope_scaling with an original context of 32 (sequences up to 96):
        # head_dim 16's wavelengths 6.3, 19.9, 62.8, ... fall in all three bands (kept below
        # 32/4, interpolated up to 32/1, divided by 8 above).
        return T.LlamaConfig(**dict(common, intermediate_size=60, head_dim=16,
                                    rope_theta=10000.0,
                                    rope_scaling={"rope_type": "llama3", "factor": 8.0,
                                                  "low_freq_factor": 1.0,
                                                  "high_freq_factor": 4.0,
                                                  "original_max_position_embeddings": 32})), 206
    if case == "hf_qwen2_yarn":
        # Qwen2.5's long-context spelling. transformers 4.46.3 reads only factor (and the
        # optional attention_factor / beta_fast / beta_slow) and measures the correction
        # range on max_position_embeddings (128): original_max_position_embeddings is kept
        # in the config as the Qwen2.5 README writes it but does not change the logits.
        return T.Qwen2Config(**dict(common, intermediate_size=72, rope_theta=10000.0,
                                    use_sliding_window=False,
                                    rope_scaling={"type": "yarn", "factor": 4.0,
                                                  "original_max_position_embeddings": 32})), 207
    if case == "hf_llama_dynamic":
        # Dynamic NTK over a context of 32 (sequences and generations up to 74): head_dim 16,
        # so the base grows as ((4·L/32) − 3)^(16/14) past 32 tokens.
        return T.LlamaConfig(**dict(common, intermediate_size=60, head_dim=16,
                                    max_position_embeddings=32, rope_theta=10000.0,
                                    rope_scaling={"type": "dynamic", "factor": 4.0})), 213
    if case == "hf_mistral_sliding":
        # Mistral-7B-v0.1's sliding window, shrunk to 8 positions (sequences up to 45).
        return T.MistralConfig(**dict(common, intermediate_size=72, rope_theta=10000.0,
                                      sliding_window=8)), 208
    if case == "hf_qwen2_sliding":
        # max_window_layers 0: transformers 4.46.3's eager/sdpa mask applies the window to
        # every layer whatever max_window_layers says (only its flash-attention path, and
        # later releases, skip the layers below it, as SpanServe does), so the two agree
        # only when every layer has the window.
        return T.Qwen2Config(**dict(common, intermediate_size=72, rope_theta=1000000.0,
                                    use_sliding_window=True, sliding_window=8,
                                    max_window_layers=0)), 209
    if case == "hf_gemma":
        # head_dim 16 with 4 heads over hidden 48 (q is 64 wide), tied embeddings, GeGLU.
        return T.GemmaConfig(**dict(common, hidden_size=48, num_hidden_layers=2,
                                    intermediate_size=64, head_dim=16, rope_theta=10000.0,
                                    hidden_activation="gelu_pytorch_tanh",
                                    tie_word_embeddings=True, pad_token_id=0)), 210
    if case == "hf_qwen3":
        # head_dim 12 (q is 48 wide over hidden 40), no biases, per-head q / k norms.
        return T.Qwen3Config(**dict(common, intermediate_size=72, head_dim=12,
                                    rope_theta=1000000.0, use_sliding_window=False,
                                    attention_bias=False)), 211
    if case == "hf_qwen3_moe":
        # Qwen3 attention (head_dim 12, per-head q / k norms) with Qwen2-MoE's sparse block
        # minus the shared expert: 4 experts top-2 renormalised, layer 1 dense.
        return T.Qwen3MoeConfig(**dict(common, intermediate_size=48, head_dim=12,
                                       moe_intermediate_size=16, num_experts=4,
                                       num_experts_per_tok=2, norm_topk_prob=True,
                                       decoder_sparse_step=1, mlp_only_layers=[1],
                                       rope_theta=1000000.0, use_sliding_window=False,
                                       attention_bias=False)), 212
    if case == "hf_gemma2":
        # Gemma 2 with 4 layers (windows on 0 and 2, full attention on 1 and 3), head_dim 16
        # with 4 heads over hidden 32 (q is 64 wide), a window of 6 (sequences up to 29),
        # query_pre_attn_scalar 24 (not head_dim 16), and soft-caps small enough to bind:
        # attention scores at 5, logits at 3.
        return T.Gemma2Config(**dict(common, hidden_size=32, num_hidden_layers=4,
                                     intermediate_size=48, head_dim=16, rope_theta=10000.0,
                                     hidden_activation="gelu_pytorch_tanh",
                                     query_pre_attn_scalar=24, sliding_window=6,
                                     attn_logit_softcapping=5.0, final_logit_softcapping=3.0,
                                     tie_word_embeddings=True, pad_token_id=0)), 216
    if case == "hf_gemma3":
        # Gemma 3 with 6 layers, global every third (layers 2 and 5: sliding_window_pattern 3),
        # the others local with a window of 5 (sequences up to 29); head_dim 16 with 4 heads
        # over hidden 32, query_pre_attn_scalar 24 (not head_dim 16); the global layers rotate
        # with rope_theta 10000 scaled linearly by 4, the local ones with base 100 unscaled.
        # No soft-capping (Gemma 3's default).
        return T.Gemma3TextConfig(**dict(common, hidden_size=32, num_hidden_layers=6,
                                         intermediate_size=48, head_dim=16, rope_theta=10000.0,
                                         rope_local_base_freq=100.0,
                                         rope_scaling={"rope_type": "linear", "factor": 4.0},
                                         hidden_activation="gelu_pytorch_tanh",
                                         query_pre_attn_scalar=24, sliding_window=5,
                                         sliding_window_pattern=3,
                                         final_logit_softcapping=None,
                                         attn_logit_softcapping=None,
                                         tie_word_embeddings=True, pad_token_id=0)), 217
    if case == "hf_phi3":
        # Phi-3 (fused qkv_proj / gate_up_proj, head_dim = hidden / heads = 16) with
        # Phi-3-mini-4k's sliding window shrunk to 12 positions (sequences up to 29).
        return T.Phi3Config(**dict(common, hidden_size=64, num_hidden_layers=2,
                                   intermediate_size=48, rope_theta=10000.0,
                                   original_max_position_embeddings=128, sliding_window=12,
                                   pad_token_id=0)), 214
    if case == "hf_phi3_longrope":
        # Phi-3-128k's longrope over an original context of 32 (max 128: attention factor
        # sqrt(1 + ln 4 / ln 32)), 8 distinct short and long factors; sequences and
        # generations up to 74.
        return T.Phi3Config(**dict(common, hidden_size=64, num_hidden_layers=2,
                                   intermediate_size=48, rope_theta=10000.0,
                                   original_max_position_embeddings=32, sliding_window=None,
                                   pad_token_id=0,
                                   rope_scaling={"type": "longrope",
                                                 "short_factor": list(PHI3_SHORT),
                                                 "long_factor": list(PHI3_LONG)})), 215
    if case == "hf_olmoe":
        return T.OlmoeConfig(**dict(common, intermediate_size=20, num_experts=4,
                                    num_experts_per_tok=2, norm_topk_prob=False,
                                    clip_qkv=None, pad_token_id=0)), 205
    raise KeyError(case)


PHI3_SHORT = (1.0, 1.05, 1.12, 1.25, 1.4, 1.6, 1.85, 2.1)
PHI3_LONG = (1.0, 1.3, 1.9, 2.8, 4.1, 6.0, 9.5, 14.0)


@torch.no_grad()
def hf_mutations(d, model):
    """Phi-3 and Gemma 2 (which the reference implementations do not cover): transformers
    models with a changed config or permuted weights."""
    cls = hf_class(model.config.model_type)
    config = model.config
    sd = model.state_dict()
    out = {}

    def with_config(name, **kw):
        c = copy.deepcopy(config)
        for k, v in kw.items():
            setattr(c, k, v)
        m = cls(c).float().eval()
        m.load_state_dict(sd)
        out[name] = m

    def with_weights(name, fn):
        m = cls(copy.deepcopy(config)).float().eval()
        m.load_state_dict({k: fn(k, v) for k, v in sd.items()})
        out[name] = m

    with_config("rope_theta_x2", rope_theta=config.rope_theta * 2)
    if config.model_type == "gemma3_text":
        gemma3_mutations(model, with_config, with_weights, out)
        return out
    if config.model_type == "gemma2":
        gemma2_mutations(model, with_config, with_weights, out)
        return out
    q_dim = config.hidden_size
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    inter = config.intermediate_size

    def swap_kv(k, v):  # qkv_proj read as q, v, k
        if not k.endswith("qkv_proj.weight"):
            return v
        return torch.cat([v[:q_dim], v[q_dim + kv:], v[q_dim:q_dim + kv]])

    def swap_gate_up(k, v):  # gate_up_proj read as up, gate
        if not k.endswith("gate_up_proj.weight"):
            return v
        return torch.cat([v[inter:], v[:inter]])

    with_weights("qkv_k_v_swapped", swap_kv)
    with_weights("gate_up_swapped", swap_gate_up)
    if config.sliding_window:
        with_config("no_sliding_window", sliding_window=None)
        with_config("sliding_window_plus_1", sliding_window=config.sliding_window + 1)
    rs = config.rope_scaling
    if rs:
        with_config("rope_unscaled", rope_scaling=None)
        with_config("short_factors_only", rope_scaling=dict(rs, long_factor=rs["short_factor"]))
        with_config("long_factors_only", rope_scaling=dict(rs, short_factor=rs["long_factor"]))
        # max == original: attention factor 1, the same switch.
        with_config("attention_factor_1",
                    max_position_embeddings=config.original_max_position_embeddings)
    return out


def swap_weights(sd, a, b):
    """A with_weights function that reads every `a` weight as the matching `b` and back."""
    def fn(k, v):
        for x, y in ((a, b), (b, a)):
            if k.endswith(f".{x}.weight"):
                return sd[k[:-len(f"{x}.weight")] + f"{y}.weight"]
        return v
    return fn


def sandwich_norm_swaps(sd, with_weights):
    """Gemma 2 / 3: each sandwich pair of norms read the other way round."""
    with_weights("attn_pre_post_norms_swapped",
                 swap_weights(sd, "input_layernorm", "post_attention_layernorm"))
    with_weights("ffn_pre_post_norms_swapped",
                 swap_weights(sd, "pre_feedforward_layernorm", "post_feedforward_layernorm"))


@torch.no_grad()
def gemma2_mutations(model, with_config, with_weights, out):
    """Each Gemma 2 feature must matter: either soft-cap off, the head_dim scale instead of
    query_pre_attn_scalar's, the window widened by one or moved to the odd layers, the norms
    before and after a sublayer swapped."""
    config = model.config
    sd = model.state_dict()
    with_config("no_attn_softcap", attn_logit_softcapping=None)
    with_config("no_final_softcap", final_logit_softcapping=None)
    with_config("scale_head_dim", query_pre_attn_scalar=config.head_dim)
    with_config("sliding_window_plus_1", sliding_window=config.sliding_window + 1)

    sandwich_norm_swaps(sd, with_weights)
    # The window on the odd layers (the eager mask reads the decoder layer's is_sliding).
    m = copy.deepcopy(model)
    for i, layer in enumerate(m.model.layers):
        layer.is_sliding = bool(i % 2)
        layer.self_attn.sliding_window = config.sliding_window if i % 2 else None
    out["window_on_odd_layers"] = m


@torch.no_grad()
def gemma3_mutations(model, with_config, with_weights, out):
    """Each Gemma 3 feature must matter: the local base equal to the global one, the global
    scaling off (or on the local layers too), the q / k norms off or swapped, the head_dim
    scale, the layer pattern shifted by one, the window widened by one, the sandwich norms
    swapped, a final soft-cap."""
    config = model.config
    sd = model.state_dict()
    with_config("local_base_is_rope_theta", rope_local_base_freq=config.rope_theta)
    with_config("rope_unscaled", rope_scaling=None)
    with_config("scale_head_dim", query_pre_attn_scalar=config.head_dim)
    with_config("sliding_window_plus_1", sliding_window=config.sliding_window + 1)
    with_config("pattern_plus_1", sliding_window_pattern=config.sliding_window_pattern + 1)
    with_config("final_softcap_2", final_logit_softcapping=2.0)

    sandwich_norm_swaps(sd, with_weights)
    with_weights("qk_norms_swapped", swap_weights(sd, "q_norm", "k_norm"))
    # Without the q / k norms; with the pattern moved one layer earlier (globals 1 and 4);
    # with the global scaling on the local layers too.
    m = copy.deepcopy(model)
    for layer in m.model.layers:
        layer.self_attn.q_norm = layer.self_attn.k_norm = torch.nn.Identity()
    out["no_qk_norm"] = m
    m = copy.deepcopy(model)
    for i, layer in enumerate(m.model.layers):
        sliding = bool((i + 2) % config.sliding_window_pattern)
        layer.is_sliding = layer.self_attn.is_sliding = sliding
        layer.self_attn.sliding_window = config.sliding_window if sliding else None
    out["pattern_shifted_by_one"] = m
    c = copy.deepcopy(config)
    c.rope_theta = config.rope_local_base_freq
    m = copy.deepcopy(model)
    m.model.rotary_emb_local = type(model.model.rotary_emb)(config=c)
    out["local_layers_scaled"] = m
    # transformers' Gemma 3 attention ignores attn_logit_softcapping (SpanServe refuses it).
    c = copy.deepcopy(config)
    c.attn_logit_softcapping = 1.0
    m = type(model)(c).float().eval()
    m.load_state_dict(sd)
    seqs = sequences_for(1, config.vocab_size)
    assert all(np.array_equal(a, b) for a, b in zip(hf_logits(m, seqs), hf_logits(model, seqs)))


@torch.no_grad()
def check_hf_sensitivity(d, model, seqs, logits, tol, case):
    worst = math.inf
    for name, m in hf_mutations(d, model).items():
        diff = max(rel_err(l2, l) for l2, l in zip(hf_logits(m, seqs), logits))
        assert diff > 100 * tol, f"{case}: mutation {name} moves logits only {diff:.3g}"
        log(f"{case}: mutation {name}: {diff:.2e}")
        worst = min(worst, diff)
    return worst


def make_hf_case(case, report):
    d = os.path.join(OUT, case)
    shutil.rmtree(d, ignore_errors=True)
    hc, seed = hf_config(case)
    torch.manual_seed(seed)
    cls = hf_class(hc.model_type)
    model = cls(hc).float().eval()
    randomize_hf(model, seed)
    model.save_pretrained(d, safe_serialization=True)
    for extra in ("generation_config.json",):
        p = os.path.join(d, extra)
        if os.path.exists(p):
            os.remove(p)
    model = hf_load(d)  # what is on disk
    tol = 1e-4
    if hc.model_type in HF_ONLY:
        # Neither reference implementation reads Phi-3's fused tensors or longrope, nor has
        # Gemma 2's soft-caps and alternating windows: the goldens are transformers' own
        # logits, and the mutations are transformers models.
        seqs = sequences_for(seed, hc.vocab_size, 0, CASE_LENGTHS.get(case, LENGTHS))
        gap = math.inf
        logits = hf_logits(model, seqs)
        ref_err = np_err = float("nan")
        sens = check_hf_sensitivity(d, model, seqs, logits, tol, case)
    else:
        ref = load_model(d)
        seqs, gap = pick_sequences(ref, seed, hc.vocab_size, CASE_LENGTHS.get(case, LENGTHS))
        logits = hf_logits(model, seqs)
        ref_err = max(rel_err(l, r) for l, r in zip(logits, ref_logits(ref, seqs)))
        assert ref_err <= HF_MATCH, f"{case}: reference vs transformers rel err {ref_err:.3g}"
        np_err = check_numpy(d, seqs, logits, tol, case)
        sens = check_sensitivity(d, seqs, logits, tol, case)
    generations = hf_generations(model, case, seed, hc.vocab_size)
    write_golden(d, case, "transformers", "float32", tol, seqs, logits, generations)
    report[case] = dict(source="transformers", dtype="float32", tolerance=tol,
                        ref_vs_hf=ref_err, f32_vs_f64=np_err, min_mutation=sens,
                        topk_gap=gap, bytes=dir_bytes(d))


def make_ref_case(case, report):
    config, dtype, seed = REF_CASES[case]
    d = os.path.join(OUT, case)
    shutil.rmtree(d, ignore_errors=True)
    model = build_random(config, seed=seed, std=STD)
    save_model(model, d, dtype=dtype, config=config)
    model = load_model(d)  # computes from the stored (possibly bf16/f16) weights, in f32
    seqs, gap = pick_sequences(model, seed, model.cfg.vocab_size)
    logits = ref_logits(model, seqs)
    tol = 1e-4
    np_err = check_numpy(d, seqs, logits, tol, case)
    sens = check_sensitivity(d, seqs, logits, tol, case)
    entry = dict(source="reference", dtype=dtype, tolerance=tol, f32_vs_f64=np_err,
                 min_mutation=sens, topk_gap=gap)
    hf = hf_load(d) if (config["model_type"] != "spanserve"
                        or ModelConfig(config).norm_placement == "pre") else None
    if hf is not None:
        hf_err = max(rel_err(l, h) for l, h in zip(logits, hf_logits(hf, seqs)))
        assert hf_err <= HF_MATCH, f"{case}: reference vs transformers rel err {hf_err:.3g}"
        entry["ref_vs_hf"] = hf_err
    write_golden(d, case, "reference", dtype, tol, seqs, logits)
    entry["bytes"] = dir_bytes(d)
    report[case] = entry


def transformers_version():
    from importlib.metadata import version
    return tuple(int(x) for x in version("transformers").split(".")[:2])


def torch_compat():
    """transformers >= 4.51 on torch 1.13: define the torch names it imports at module level
    (torch.distributed.tensor, torch.compiler, torch.float8_e4m3fn) but never uses for these
    f32 eager models. Not applied with the pinned transformers, whose goldens stay as they
    are."""
    import types
    if transformers_version() < (4, 51):
        return
    try:
        import torch.distributed.tensor  # noqa: F401
    except ImportError:
        import torch.distributed
        m = types.ModuleType("torch.distributed.tensor")
        m.DTensor = type("DTensor", (), {})
        sys.modules["torch.distributed.tensor"] = m
        torch.distributed.tensor = m
    if not hasattr(torch, "compiler"):
        c = types.ModuleType("torch.compiler")
        c.disable = lambda fn=None, recursive=True: fn if fn is not None else (lambda f: f)
        c.is_compiling = lambda: False
        sys.modules["torch.compiler"] = c
        torch.compiler = c
    if not hasattr(torch, "float8_e4m3fn"):
        torch.float8_e4m3fn = torch.uint8  # a name in a dtype table only


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="only these cases (default: all)")
    ap.add_argument("--report", help="also write the check report as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import warnings
    warnings.filterwarnings("ignore", message=".*sigmoid is deprecated.*")
    torch_compat()
    import transformers
    transformers.logging.set_verbosity_error()
    all_cases = list(REF_CASES) + HF_CASES
    cases = args.cases or all_cases
    unknown = set(cases) - set(all_cases)
    if unknown:
        sys.exit(f"unknown cases {sorted(unknown)}; known: {all_cases}")
    os.makedirs(OUT, exist_ok=True)
    report = {}
    for case in cases:
        need = HF_MIN_VERSION.get(case)
        if need is not None and transformers_version() < need:
            msg = (f"{case}: needs transformers >= {need[0]}.{need[1]} (have "
                   f"{transformers.__version__})")
            if args.cases:
                sys.exit(msg)
            log(f"{msg}; committed directory kept")
            continue
        (make_hf_case if case in HF_CASES else make_ref_case)(case, report)
        e = report[case]
        assert e["bytes"] < MAX_DIR_BYTES, f"{case}: {e['bytes']} bytes"
        log(f"{case:18s} {e['source']:12s} {e['dtype']:9s} tol {e['tolerance']:g}  "
            f"f32-vs-f64 {e['f32_vs_f64']:.2e}  "
            + (f"ref-vs-HF {e['ref_vs_hf']:.2e}  " if "ref_vs_hf" in e else "")
            + f"min-mutation {e['min_mutation']:.2e}  "
            + (f"topk-gap {e['topk_gap']:.2e}  " if e["topk_gap"] != math.inf else "")
            + f"{e['bytes'] // 1024} KiB")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report, f, indent=2, default=str)


if __name__ == "__main__":
    main()
