"""A second, independent implementation of the forward pass: numpy, float64, written
straight from the tensor names (docs/MODEL_FORMAT.md) and the block equations (DESIGN.md
§4), with per-position loops instead of batched matrices. make_goldens.py checks every
golden of spannorm.py against it, which catches both float32 noise larger than the
tolerance and a mistake in one of the two implementations."""

from __future__ import annotations

import numpy as np

from .spannorm import ModelConfig, read_tensors


def _norm(x, W, prefix, cfg: ModelConfig, kind=None, eps=None):
    kind = kind or cfg.norm_type
    eps = cfg.norm_eps if eps is None else eps
    w = W[prefix + ".weight"] + cfg.norm_gain_offset  # Gemma: 1 + w
    b = W.get(prefix + ".bias")
    if kind == "rmsnorm":
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w
    else:
        mu = x.mean(-1, keepdims=True)
        var = ((x - mu) ** 2).mean(-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps) * w
    return y + b if b is not None else y


def _lin(x, W, name):
    y = x @ W[name + ".weight"].T
    if name + ".bias" in W:
        y = y + W[name + ".bias"]
    return y


def _silu(x):
    return x / (1.0 + np.exp(-x))


def _gelu_tanh(x):
    return 0.5 * x * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (x + 0.044715 * x ** 3)))


def _swiglu(x, W, p, mixtral=False, activation="silu"):
    act = _silu if activation == "silu" else _gelu_tanh
    if mixtral:
        return _lin(act(_lin(x, W, p + ".w1")) * _lin(x, W, p + ".w3"), W, p + ".w2")
    return _lin(act(_lin(x, W, p + ".gate_proj")) * _lin(x, W, p + ".up_proj"), W, p + ".down_proj")


def _inv_freq(cfg: ModelConfig, D, T):
    """theta^(-2i/D), scaled by rope_scaling (llama3: kept above, divided by factor below,
    interpolated in between the wavelength band; yarn: a linear ramp over the dimensions
    between the correction range, on max_position_embeddings as transformers 4.46.3; dynamic:
    theta grown for a sequence of T tokens past max_position_embeddings), and the factor
    yarn multiplies cos and sin with."""
    i = np.arange(D // 2, dtype=np.float64)
    inv = cfg.rope_theta ** (-2.0 * i / D)
    p = cfg.rope_params
    if cfg.rope_type == "dynamic":
        f, L = p["factor"], cfg.max_position_embeddings
        theta = cfg.rope_theta
        if T > L:
            theta *= ((f * T / L) - (f - 1)) ** (D / (D - 2))
        return theta ** (-2.0 * i / D), 1.0
    if cfg.rope_type == "llama3":
        f, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        L = p["original_max_position_embeddings"]
        wavelen = 2 * np.pi / inv
        smooth = (L / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / f + smooth * inv
        return np.where(wavelen < L / hi, inv, np.where(wavelen > L / lo, inv / f, mid)), 1.0
    if cfg.rope_type == "yarn":
        f = p["factor"]
        L = cfg.max_position_embeddings
        rot_fast, rot_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

        def dim(rot):
            return D * np.log(L / (rot * 2 * np.pi)) / (2 * np.log(cfg.rope_theta))

        low = max(np.floor(dim(rot_fast)), 0.0)
        high = min(np.ceil(dim(rot_slow)), D - 1.0)
        if high == low:
            high += 0.001
        ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
        att = p.get("attention_factor")
        att = 0.1 * np.log(f) + 1.0 if att is None else att
        return inv / f * ramp + inv * (1 - ramp), att
    return inv, 1.0


def _rope(v, pos, cfg: ModelConfig, T):
    """v [D] at position pos of a sequence of T tokens: pairs (i, i + D/2) rotated by
    pos/factor * inv_freq[i] (scaled as rope_scaling says), times yarn's attention factor."""
    D = v.shape[-1]
    h = D // 2
    inv, att = _inv_freq(cfg, D, T)
    ang = (pos / cfg.rope_factor) * inv
    c, s = att * np.cos(ang), att * np.sin(ang)
    out = np.empty_like(v)
    out[:h] = v[:h] * c - v[h:] * s
    out[h:] = v[h:] * c + v[:h] * s
    return out


def _attention(x, W, p, cfg: ModelConfig, window=0):
    T = x.shape[0]
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    q, k, v = _lin(x, W, p + ".q_proj"), _lin(x, W, p + ".k_proj"), _lin(x, W, p + ".v_proj")
    if cfg.qk_norm and cfg.qk_norm_per_head:  # Qwen3: each head's D values
        q = _norm(q.reshape(T, H, D), W, p + ".q_norm", cfg, kind="rmsnorm").reshape(T, H * D)
        k = _norm(k.reshape(T, KV, D), W, p + ".k_norm", cfg, kind="rmsnorm").reshape(T, KV * D)
    elif cfg.qk_norm:
        q = _norm(q, W, p + ".q_norm", cfg, kind="rmsnorm")
        k = _norm(k, W, p + ".k_norm", cfg, kind="rmsnorm")
    out = np.zeros((T, H * D))
    for t in range(T):
        for hh in range(H):
            g = hh // (H // KV)
            qt = _rope(q[t, hh * D:(hh + 1) * D], t, cfg, T)
            lo = max(0, t - window + 1) if window > 0 else 0
            sc = np.array([qt @ _rope(k[s, g * D:(g + 1) * D], s, cfg, T)
                           for s in range(lo, t + 1)])
            sc = sc / np.sqrt(D)
            pr = np.exp(sc - sc.max())
            pr /= pr.sum()
            out[t, hh * D:(hh + 1) * D] = pr @ v[lo:t + 1, g * D:(g + 1) * D]
    return _lin(out, W, p + ".o_proj")


def _moe(x, W, p, cfg: ModelConfig):
    mixtral = cfg.moe_layout == "mixtral"
    out = np.zeros_like(x)
    for t in range(x.shape[0]):
        logits = W[p + ".gate.weight"] @ x[t]
        if cfg.scoring_func == "softmax":
            sc = np.exp(logits - logits.max())
            sc /= sc.sum()
        else:
            sc = 1.0 / (1.0 + np.exp(-logits))
        top = np.argsort(-sc, kind="stable")[:cfg.num_experts_per_tok]
        w = sc[top]
        if cfg.norm_topk_prob:
            w = w / w.sum()
        for e, we in zip(top, w):
            out[t] += we * _swiglu(x[t:t + 1], W, f"{p}.experts.{e}", mixtral)[0]
        if p + ".shared_expert_gate.weight" in W:
            gt = 1.0 / (1.0 + np.exp(-(W[p + ".shared_expert_gate.weight"] @ x[t])))
            out[t] += gt * _swiglu(x[t:t + 1], W, p + ".shared_expert")[0]
    return out


def forward(model_dir_or_tensors, config=None, ids=None):
    """float64 logits [T, vocab] for one sequence."""
    if isinstance(model_dir_or_tensors, str):
        import json
        import os
        with open(os.path.join(model_dir_or_tensors, "config.json")) as f:
            config = json.load(f)
        tensors = read_tensors(model_dir_or_tensors)
    else:
        tensors = model_dir_or_tensors
    cfg = ModelConfig(config)
    W = {k: v.double().numpy() for k, v in tensors.items()}
    x = W["model.embed_tokens.weight"][np.asarray(ids)]
    if cfg.scale_embeddings:  # Gemma
        x = x * np.sqrt(cfg.hidden_size)
    a, b = cfg.skip_scale, cfg.branch_scale
    for i in range(cfg.num_hidden_layers):
        L = f"model.layers.{i}"
        pl = cfg.layer_placement(i)
        N = lambda name, t: _norm(t, W, f"{L}.{name}", cfg)  # noqa: E731
        A = lambda t, i=i: _attention(t, W, f"{L}.self_attn", cfg, cfg.layer_window(i))  # noqa: E731
        if cfg.is_moe_layer(i):
            ffp = f"{L}.block_sparse_moe" if cfg.moe_layout == "mixtral" else f"{L}.mlp"
            Fn = lambda t: _moe(t, W, ffp, cfg)  # noqa: E731
        else:
            Fn = lambda t: _swiglu(t, W, f"{L}.mlp", activation=cfg.activation)  # noqa: E731
        if pl == "pre":
            h = x + A(N("input_layernorm", x))
            x = h + Fn(N("post_attention_layernorm", h))
        elif pl == "post":
            h = N("post_attention_layernorm", x + A(x))
            x = N("output_layernorm", h + Fn(h))
        elif pl == "span":
            at = A(N("input_layernorm", x))
            f = Fn(N("post_attention_layernorm", x + at))
            x = N("output_layernorm", a * x + b * (at + f))
        elif pl == "b2t":
            h = N("post_attention_layernorm", x + A(x))
            x = N("output_layernorm", x + h + Fn(h))
        elif pl == "deepnorm":
            h = N("post_attention_layernorm", a * x + A(x))
            x = N("output_layernorm", a * h + Fn(h))
        elif pl == "sandwich":
            h = x + N("post_attention_layernorm", A(N("input_layernorm", x)))
            x = h + N("post_feedforward_layernorm", Fn(N("pre_feedforward_layernorm", h)))
        else:
            raise AssertionError(pl)
    if cfg.final_norm:
        x = _norm(x, W, "model.norm", cfg)
    head = W["model.embed_tokens.weight"] if cfg.tie_word_embeddings else W["lm_head.weight"]
    return x @ head.T
