"""PyTorch reference of the SpanServe model family (DESIGN.md §4, docs/MODEL_FORMAT.md).

A plain decoder-only transformer written from the block equations, in float32, with every
norm placement (pre, post, span, b2t, deepnorm, sandwich, mix), RMSNorm or LayerNorm,
HF-Llama RoPE (optionally linearly scaled), grouped-query causal attention, a SwiGLU MLP
and a Mixture-of-Experts FFN (Qwen2-MoE, Mixtral and OLMoE tensor layouts).

Parameter names of the torch modules are exactly the tensor names of docs/MODEL_FORMAT.md,
so `model.state_dict()` is what goes into model.safetensors.

    cfg = ModelConfig(json.load(open("config.json")))
    model = build_random(config_dict, seed=0)        # deterministic
    save_model(model, "dir", dtype="bfloat16")       # config.json + model.safetensors
    model = load_model("dir")                        # weights widened to float32
    logits = model(torch.tensor(ids))                # [T, vocab] (or [B, T, vocab])
"""

from __future__ import annotations

import json
import math
import os
from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

PLACEMENTS = ("pre", "post", "span", "b2t", "deepnorm", "sandwich", "mix")

# Tensor names of the block norms N1..N4 per (effective) placement: MODEL_FORMAT.md table.
NORM_NAMES = {
    "pre": ("input_layernorm", "post_attention_layernorm"),
    "post": ("post_attention_layernorm", "output_layernorm"),
    "b2t": ("post_attention_layernorm", "output_layernorm"),
    "deepnorm": ("post_attention_layernorm", "output_layernorm"),
    "span": ("input_layernorm", "post_attention_layernorm", "output_layernorm"),
    "sandwich": ("input_layernorm", "post_attention_layernorm",
                 "pre_feedforward_layernorm", "post_feedforward_layernorm"),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ConfigError(ValueError):
    pass


class ModelConfig:
    """The config.json keys of docs/MODEL_FORMAT.md, with their defaults resolved."""

    def __init__(self, d: Dict):
        self.raw = dict(d)
        g = d.get

        def need(key):
            if key not in d or d[key] is None:
                raise ConfigError(f"config.json: missing required key '{key}'")
            return d[key]

        self.model_type = g("model_type", "llama")
        self.hidden_size = int(need("hidden_size"))
        self.intermediate_size = int(need("intermediate_size"))
        self.num_hidden_layers = int(need("num_hidden_layers"))
        self.num_attention_heads = int(need("num_attention_heads"))
        self.num_key_value_heads = int(g("num_key_value_heads") or self.num_attention_heads)
        hd = g("head_dim")
        if hd is None:
            if self.hidden_size % self.num_attention_heads:
                raise ConfigError("config.json: hidden_size not divisible by num_attention_heads "
                                  "and no head_dim")
            hd = self.hidden_size // self.num_attention_heads
        self.head_dim = int(hd)
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError("config.json: num_attention_heads must be a multiple of "
                              "num_key_value_heads")
        if self.head_dim % 2:
            raise ConfigError("config.json: head_dim must be even (RoPE)")
        self.vocab_size = int(need("vocab_size"))
        self.max_position_embeddings = int(g("max_position_embeddings", 2048))
        # transformers >= 5 writes `rope_parameters` {"rope_type", "rope_theta", "factor"...}
        # instead of rope_theta / rope_scaling; accept both spellings.
        rp = g("rope_parameters") or {}
        self.rope_theta = float(g("rope_theta", rp.get("rope_theta", 10000.0)))
        # rope_type: default, linear (positions / rope_factor), llama3, yarn or dynamic (the
        # scaled inverse frequencies of transformers 4.46.3, rope_params = the rope_scaling
        # dict; dynamic scales with the length of the forward's sequence).
        self.rope_factor = 1.0
        self.rope_type = "default"
        self.rope_params = {}
        rs = g("rope_scaling") or (rp if rp.get("rope_type", "default") != "default" else None)
        if rs is not None:
            kind = rs.get("rope_type", rs.get("type"))
            if kind == "linear":
                self.rope_factor = float(rs["factor"])
                self.rope_type = kind
            elif kind in ("llama3", "yarn", "dynamic"):
                self.rope_type = kind
                self.rope_params = dict(rs)
            elif kind != "default":
                raise ConfigError(f"config.json: rope_scaling type '{kind}' is not supported")
        # Gemma (transformers' GemmaForCausalLM): tied embeddings by default, the embedding
        # rows times sqrt(hidden_size) (in the activations' dtype), RMSNorm gains (1 + w),
        # and the GeGLU activation hidden_activation (null: gelu_pytorch_tanh; hidden_act is
        # ignored). Other families read hidden_act (default silu).
        gemma = self.model_type == "gemma"
        self.tie_word_embeddings = bool(g("tie_word_embeddings", gemma))
        self.scale_embeddings = gemma
        self.norm_gain_offset = 1.0 if gemma else 0.0
        act_key = "hidden_activation" if gemma else "hidden_act"
        self.activation = g(act_key) or ("gelu_pytorch_tanh" if gemma else "silu")
        if self.activation not in ("silu", "gelu_pytorch_tanh"):
            raise ConfigError(f"config.json: {act_key} '{self.activation}' is not supported")
        if self.model_type in ("qwen2", "qwen2_moe"):
            self.attention_bias = True
        else:
            self.attention_bias = bool(g("attention_bias", False))
        if self.model_type == "olmoe" and g("clip_qkv") is not None:
            raise ConfigError("config.json: clip_qkv is not supported")
        # q_norm / k_norm before RoPE: OLMoE over the whole projections, Qwen3 over each
        # head (one gain of head_dim shared by the heads).
        self.qk_norm = self.model_type in ("olmoe", "qwen3", "qwen3_moe")
        self.qk_norm_per_head = self.model_type in ("qwen3", "qwen3_moe")
        # Sliding-window attention as SpanServe reads it (runtime/model/config.h): a row at
        # position p attends to positions > p - window. Mistral/Mixtral: every layer;
        # Qwen2/Qwen2-MoE/Qwen3: with use_sliding_window, layers >= max_window_layers.
        self.sliding_window = 0
        self.max_window_layers = 0
        if self.model_type in ("mistral", "mixtral"):
            sw = d["sliding_window"] if "sliding_window" in d else (
                None if self.model_type == "mixtral" else 4096)
            self.sliding_window = int(sw or 0)
        elif (self.model_type in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")
              and g("use_sliding_window", False)):
            sw = d["sliding_window"] if "sliding_window" in d else 4096
            self.sliding_window = int(sw or 0)
            self.max_window_layers = int(g("max_window_layers", 28))

        # SpanServe keys.
        self.norm_placement = g("norm_placement", "pre")
        if self.norm_placement not in PLACEMENTS:
            raise ConfigError(f"config.json: norm_placement '{self.norm_placement}' is not one "
                              f"of {PLACEMENTS}")
        self.norm_type = g("norm_type", "rmsnorm")
        if self.norm_type not in ("rmsnorm", "layernorm"):
            raise ConfigError(f"config.json: norm_type '{self.norm_type}' is not rmsnorm/layernorm")
        self.norm_bias = bool(g("norm_bias", self.norm_type == "layernorm"))
        self.norm_eps = float(g("norm_eps", g("rms_norm_eps", 1e-6)))
        self.skip_scale = float(g("skip_scale", 1.0))
        self.branch_scale = float(g("branch_scale", 1.0))
        self.final_norm = bool(g("final_norm", self.norm_placement in ("pre", "sandwich", "mix")))
        self.mix_post_layers = int(g("mix_post_layers", 0))
        if not 0 <= self.mix_post_layers <= self.num_hidden_layers:
            raise ConfigError("config.json: mix_post_layers out of range")

        # MoE keys.
        self.num_experts = int(g("num_local_experts") or g("num_experts") or 0)
        self.moe_layout = {"mixtral": "mixtral", "olmoe": "olmoe"}.get(self.model_type, "qwen2")
        if self.num_experts > 0:
            self.num_experts_per_tok = int(need("num_experts_per_tok"))
            if not 0 < self.num_experts_per_tok <= self.num_experts:
                raise ConfigError("config.json: num_experts_per_tok out of range")
        else:
            self.num_experts_per_tok = 0
        if self.model_type == "mixtral":
            self.norm_topk_prob = True  # Mixtral always renormalises the top-k weights
        else:
            self.norm_topk_prob = bool(g("norm_topk_prob", False))
        if self.moe_layout == "qwen2":
            self.moe_intermediate_size = int(g("moe_intermediate_size") or self.intermediate_size)
            # Qwen3-MoE has no shared expert (Qwen3MoeConfig has no such key).
            self.shared_expert_intermediate_size = (
                0 if self.model_type == "qwen3_moe"
                else int(g("shared_expert_intermediate_size") or 0))
        else:  # Mixtral and OLMoE experts use intermediate_size
            self.moe_intermediate_size = self.intermediate_size
            self.shared_expert_intermediate_size = 0
        self.decoder_sparse_step = int(g("decoder_sparse_step") or 1)
        self.mlp_only_layers = [int(i) for i in (g("mlp_only_layers") or [])]
        self.first_k_dense_replace = int(g("first_k_dense_replace") or 0)
        self.scoring_func = g("scoring_func", "softmax")
        if self.scoring_func not in ("softmax", "sigmoid"):
            raise ConfigError(f"config.json: scoring_func '{self.scoring_func}' is not "
                              "softmax/sigmoid")

    def layer_placement(self, i: int) -> str:
        if self.norm_placement == "mix":
            return "post" if i < self.mix_post_layers else "pre"
        return self.norm_placement

    def layer_window(self, i: int) -> int:
        """Layer i's sliding window (0: full causal attention)."""
        return self.sliding_window if i >= self.max_window_layers else 0

    def is_moe_layer(self, i: int) -> bool:
        return (self.num_experts > 0 and (i + 1) % self.decoder_sparse_step == 0
                and i not in self.mlp_only_layers and i >= self.first_k_dense_replace)


class Norm(nn.Module):
    """RMSNorm (x * rsqrt(mean(x^2) + eps) * w) or LayerNorm (optional bias), in float32."""

    def __init__(self, dim: int, kind: str, eps: float, bias: bool, offset: float = 0.0):
        super().__init__()
        self.kind, self.eps, self.offset = kind, eps, offset
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x):
        if self.kind == "rmsnorm":
            # Gemma: (1.0 + w) in float32, as transformers' GemmaRMSNorm.
            w = self.weight if self.offset == 0.0 else self.offset + self.weight.float()
            y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * w
            return y + self.bias if self.bias is not None else y
        return F.layer_norm(x, (x.shape[-1],), self.weight, self.bias, self.eps)


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def rope_inv_freq(cfg: ModelConfig, device, seq_len=None):
    """(inv_freq [head_dim/2] f32, attention scale): the f32 tensor steps of transformers
    4.46.3's rope init functions (default, llama3, yarn, dynamic; dynamic for a forward over
    seq_len tokens)."""
    d = cfg.head_dim
    base = cfg.rope_theta
    if cfg.rope_type == "dynamic":
        # _compute_dynamic_ntk_parameters: past max_position_embeddings seq_len is the int64
        # tensor max(position_ids) + 1, so the base is an f32 0-dim tensor.
        factor, mp = cfg.rope_params["factor"], cfg.max_position_embeddings
        n = torch.tensor(seq_len) if seq_len is not None and seq_len > mp else mp
        base = base * ((factor * n / mp) - (factor - 1)) ** (d / (d - 2))
    pos_freqs = base ** (torch.arange(0, d, 2, device=device).float() / d)
    inv_freq = 1.0 / pos_freqs
    p = cfg.rope_params
    if cfg.rope_type == "llama3":
        factor, lo, hi = p["factor"], p["low_freq_factor"], p["high_freq_factor"]
        old = p["original_max_position_embeddings"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old / lo, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wavelen < old / hi) * ~(wavelen > old / lo)
        return torch.where(medium, smoothed, scaled), 1.0
    if cfg.rope_type == "yarn":
        factor = p["factor"]
        attention = p.get("attention_factor")
        if attention is None:
            attention = 0.1 * math.log(factor) + 1.0
        beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1
        # transformers 4.46.3 measures the correction range on max_position_embeddings.
        L = cfg.max_position_embeddings

        def corr_dim(rot):
            return (d * math.log(L / (rot * 2 * math.pi))) / (2 * math.log(base))

        low = max(math.floor(corr_dim(beta_fast)), 0)
        high = min(math.ceil(corr_dim(beta_slow)), d - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float32, device=device) - low)
                           / (high - low), 0, 1)
        extrapolation = 1 - ramp
        interpolation_freq = 1.0 / (factor * pos_freqs)
        return (interpolation_freq * (1 - extrapolation) + inv_freq * extrapolation,
                float(attention))
    return inv_freq, 1.0


def rope_cos_sin(cfg: ModelConfig, T: int, device, dtype=torch.float32):
    inv_freq, attention = rope_inv_freq(cfg, device, seq_len=T)
    pos = torch.arange(T, device=device).float() / cfg.rope_factor
    freqs = torch.outer(pos, inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos(), emb.sin()
    if attention != 1.0:
        cos, sin = cos * attention, sin * attention
    return cos.to(dtype), sin.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, window: int = 0):
        super().__init__()
        self.window = window
        H, KV, D, E = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.H, self.KV, self.D = H, KV, D
        self.q_proj = nn.Linear(E, H * D, bias=cfg.attention_bias)
        self.k_proj = nn.Linear(E, KV * D, bias=cfg.attention_bias)
        self.v_proj = nn.Linear(E, KV * D, bias=cfg.attention_bias)
        self.o_proj = nn.Linear(H * D, E, bias=False)
        self.qk_norm_per_head = cfg.qk_norm_per_head
        if cfg.qk_norm:  # OLMoE: RMSNorm over the full q / k projections, before RoPE
            # (Qwen3: over each head's D values)
            self.q_norm = Norm(D if cfg.qk_norm_per_head else H * D, "rmsnorm", cfg.norm_eps, False)
            self.k_norm = Norm(D if cfg.qk_norm_per_head else KV * D, "rmsnorm", cfg.norm_eps,
                               False)
        else:
            self.q_norm = self.k_norm = None

    def forward(self, x, cos, sin):
        B, T, _ = x.shape
        q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        if self.q_norm is not None and self.qk_norm_per_head:
            q = self.q_norm(q.view(B, T, self.H, self.D)).reshape(B, T, self.H * self.D)
            k = self.k_norm(k.view(B, T, self.KV, self.D)).reshape(B, T, self.KV * self.D)
        elif self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        q = q.view(B, T, self.H, self.D).transpose(1, 2)
        k = k.view(B, T, self.KV, self.D).transpose(1, 2)
        v = v.view(B, T, self.KV, self.D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.KV != self.H:  # query head h reads kv head h // (H / KV)
            k = k.repeat_interleave(self.H // self.KV, dim=1)
            v = v.repeat_interleave(self.H // self.KV, dim=1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(self.D)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
        if self.window > 0:  # key k <= p - window is out of the window
            mask |= torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-self.window)
        s = s.masked_fill(mask, float("-inf"))
        o = torch.softmax(s, dim=-1) @ v
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.H * self.D))


class MLP(nn.Module):
    """SwiGLU: down(silu(gate(x)) * up(x)); Mixtral names w1=gate, w3=up, w2=down."""

    def __init__(self, hidden: int, inter: int, mixtral_names: bool = False,
                 activation: str = "silu"):
        super().__init__()
        self.mixtral_names = mixtral_names
        self.act = (F.silu if activation == "silu"
                    else (lambda t: F.gelu(t, approximate="tanh")))
        if mixtral_names:
            self.w1 = nn.Linear(hidden, inter, bias=False)
            self.w3 = nn.Linear(hidden, inter, bias=False)
            self.w2 = nn.Linear(inter, hidden, bias=False)
        else:
            self.gate_proj = nn.Linear(hidden, inter, bias=False)
            self.up_proj = nn.Linear(hidden, inter, bias=False)
            self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x):
        if self.mixtral_names:
            return self.w2(self.act(self.w1(x)) * self.w3(x))
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Router `gate` [E, hidden], softmax/sigmoid scores, top-k, optional renormalisation,
    SwiGLU experts, optional shared expert with sigmoid gate (Qwen2-MoE semantics)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, h = cfg.num_experts, cfg.hidden_size
        self.E, self.k = E, cfg.num_experts_per_tok
        self.norm_topk_prob, self.scoring = cfg.norm_topk_prob, cfg.scoring_func
        self.gate = nn.Linear(h, E, bias=False)
        mixtral = cfg.moe_layout == "mixtral"
        self.experts = nn.ModuleList(MLP(h, cfg.moe_intermediate_size, mixtral) for _ in range(E))
        if cfg.shared_expert_intermediate_size > 0:
            self.shared_expert = MLP(h, cfg.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(h, 1, bias=False)
        else:
            self.shared_expert = self.shared_expert_gate = None
        self.last_scores = None  # [N, E] scores of the last call (training: balance loss)
        self.last_topk = None    # [N, k] expert ids of the last call

    def forward(self, x):
        shape = x.shape
        z = x.reshape(-1, shape[-1])
        logits = self.gate(z)
        scores = torch.softmax(logits, -1) if self.scoring == "softmax" else torch.sigmoid(logits)
        w, idx = torch.topk(scores, self.k, dim=-1)
        if self.norm_topk_prob:
            w = w / w.sum(-1, keepdim=True)
        self.last_scores, self.last_topk = scores, idx
        out = torch.zeros_like(z)
        for e in range(self.E):
            tok, slot = (idx == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            out = out.index_add(0, tok, self.experts[e](z[tok]) * w[tok, slot].unsqueeze(-1))
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(z)) * self.shared_expert(z)
        return out.view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, i: int):
        super().__init__()
        self.placement = cfg.layer_placement(i)
        self.alpha, self.beta = cfg.skip_scale, cfg.branch_scale
        self.self_attn = Attention(cfg, cfg.layer_window(i))
        if cfg.is_moe_layer(i):
            ffn = MoE(cfg)
        else:
            ffn = MLP(cfg.hidden_size, cfg.intermediate_size, activation=cfg.activation)
        self.ffn_name = "block_sparse_moe" if (cfg.is_moe_layer(i) and cfg.moe_layout == "mixtral") else "mlp"
        setattr(self, self.ffn_name, ffn)
        self.norm_names = NORM_NAMES[self.placement]
        for name in self.norm_names:
            setattr(self, name, Norm(cfg.hidden_size, cfg.norm_type, cfg.norm_eps, cfg.norm_bias,
                                     cfg.norm_gain_offset))

    def forward(self, x, cos, sin):
        N = [getattr(self, n) for n in self.norm_names]
        A = lambda t: self.self_attn(t, cos, sin)  # noqa: E731
        Fn = getattr(self, self.ffn_name)
        a, b, p = self.alpha, self.beta, self.placement
        if p == "pre":
            h = x + A(N[0](x))
            return h + Fn(N[1](h))
        if p == "post":
            h = N[0](x + A(x))
            return N[1](h + Fn(h))
        if p == "span":
            att = A(N[0](x))
            f = Fn(N[1](x + att))
            return N[2](a * x + b * (att + f))
        if p == "b2t":
            h = N[0](x + A(x))
            return N[1](x + h + Fn(h))
        if p == "deepnorm":
            h = N[0](a * x + A(x))
            return N[1](a * h + Fn(h))
        if p == "sandwich":
            h = x + N[1](A(N[0](x)))
            return h + N[3](Fn(N[2](h)))
        raise AssertionError(p)


class Inner(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = (Norm(cfg.hidden_size, cfg.norm_type, cfg.norm_eps, cfg.norm_bias,
                          cfg.norm_gain_offset) if cfg.final_norm else None)


class SpanModel(nn.Module):
    def __init__(self, config):
        super().__init__()
        if isinstance(config, dict):
            config = ModelConfig(config)
        self.cfg = config
        self.model = Inner(config)
        self.lm_head = (None if config.tie_word_embeddings
                        else nn.Linear(config.hidden_size, config.vocab_size, bias=False))

    def moe_layers(self) -> List[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(self, ids):
        """ids [T] -> logits [T, vocab]; ids [B, T] -> [B, T, vocab]. Causal, positions 0.."""
        single = ids.dim() == 1
        if single:
            ids = ids.unsqueeze(0)
        T = ids.shape[1]
        x = self.model.embed_tokens(ids).float()
        if self.cfg.scale_embeddings:  # Gemma's normalizer, in the activations' dtype
            x = x * torch.tensor(self.cfg.hidden_size ** 0.5, dtype=x.dtype)
        cos, sin = rope_cos_sin(self.cfg, T, ids.device, x.dtype)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        if self.model.norm is not None:
            x = self.model.norm(x)
        w = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        logits = x @ w.t()
        return logits[0] if single else logits


# ---------------------------------------------------------------------------------------
# Construction, saving, loading.

def is_norm_param(model: nn.Module, name: str) -> bool:
    mod = model.get_submodule(name.rsplit(".", 1)[0])
    return isinstance(mod, Norm)


@torch.no_grad()
def init_weights(model: SpanModel, seed: int, std: float = 0.02, random_norms: bool = True,
                 norm_spread: float = 0.5, bias_std: float = 0.1):
    """Deterministic init: N(0, std) for matrices/embeddings/linear biases; norm gains
    uniform in 1 +- norm_spread and norm biases N(0, bias_std) when random_norms (so a
    wrong norm is detected), else gains 1 and biases 0."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if is_norm_param(model, name):
            if not random_norms:
                p.fill_(1.0 if name.endswith(".weight") else 0.0)
            elif name.endswith(".weight"):
                p.copy_(1.0 + norm_spread * (2 * torch.rand(p.shape, generator=gen) - 1))
            else:
                p.copy_(bias_std * torch.randn(p.shape, generator=gen))
        else:
            p.copy_(std * torch.randn(p.shape, generator=gen))
    return model


def build_random(config: Dict, seed: int = 0, std: float = 0.02, random_norms: bool = True,
                 **kw) -> SpanModel:
    model = SpanModel(dict(config))
    init_weights(model, seed, std=std, random_norms=random_norms, **kw)
    return model.eval()


def state_dict_for_save(model: SpanModel, dtype: str = "float32") -> Dict[str, torch.Tensor]:
    dt = DTYPES[dtype]
    return {k: v.detach().to("cpu", dt).contiguous() for k, v in model.state_dict().items()}


def save_model(model: SpanModel, out_dir: str, dtype: str = "float32",
               config: Optional[Dict] = None):
    """config.json (the model's raw config dict, `torch_dtype` set) + model.safetensors."""
    from safetensors.torch import save_file
    os.makedirs(out_dir, exist_ok=True)
    cfg = dict(config if config is not None else model.cfg.raw)
    cfg["torch_dtype"] = dtype
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    save_file(state_dict_for_save(model, dtype), os.path.join(out_dir, "model.safetensors"),
              metadata={"format": "pt"})


def read_tensors(model_dir: str) -> Dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return load_file(single)
    with open(os.path.join(model_dir, "model.safetensors.index.json")) as f:
        index = json.load(f)
    out = {}
    for shard in sorted(set(index["weight_map"].values())):
        out.update(load_file(os.path.join(model_dir, shard)))
    return out


def load_model(model_dir: str, device="cpu") -> SpanModel:
    """Loads config.json + safetensors; every tensor widened to float32. Missing, misshapen
    or unused tensors raise (a tied model may carry a redundant lm_head.weight)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    model = SpanModel(config)
    tensors = read_tensors(model_dir)
    if model.cfg.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unused = sorted(set(tensors) - set(own))
    if missing:
        raise KeyError(f"{model_dir}: missing tensors {missing[:8]}")
    if unused:
        raise KeyError(f"{model_dir}: tensors not used by this config {unused[:8]}")
    for k, v in own.items():
        if tuple(tensors[k].shape) != tuple(v.shape):
            raise ValueError(f"{model_dir}: tensor {k} has shape {tuple(tensors[k].shape)}, "
                             f"expected {tuple(v.shape)}")
    model.load_state_dict({k: t.float() for k, t in tensors.items()})
    return model.to(device).eval()
