#!/usr/bin/env python3
"""Trains a bundled SpanServe model: the reference module of tools/reference/spannorm.py
(the same code that makes the goldens), on random 256-token windows of the KJV training
text, with AdamW, linear warm-up + cosine decay, gradient clipping 1.0, a fixed seed.
Runs on CUDA when available, else CPU; torch 1.13 and 2.x.

Writes to --out: config.json, model.safetensors (BF16), tokenizer.json (copied),
training_log.jsonl (loss every --log-every steps, held-out loss every --eval-every),
README.md (model card).

    train.py --placement span --tokenizer T/tokenizer.json --train-text .cache/data/train.txt \\
             --out out/train/span [--moe] [--steps N] [--batch B] [--lr LR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from reference.spannorm import PLACEMENTS, SpanModel, init_weights, save_model  # noqa: E402

# Defaults sized so one run takes <= 15 min on 2 CPU cores (docs/TRAINING.md).
DEFAULT_STEPS = 250
DEFAULT_BATCH = 16
DEFAULT_LR = 2e-3
SEQ_LEN = 256


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--placement", choices=PLACEMENTS, default="span")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--kv-heads", type=int, default=2)
    ap.add_argument("--intermediate", type=int, default=384)
    ap.add_argument("--moe", action="store_true",
                    help="MoE FFN: --experts experts, top --top-k, experts of "
                         "--moe-intermediate, one gated shared expert of --shared-expert")
    ap.add_argument("--experts", type=int, default=8)
    ap.add_argument("--top-k", type=int, default=2)
    ap.add_argument("--moe-intermediate", type=int, default=128)
    ap.add_argument("--shared-expert", type=int, default=128)
    ap.add_argument("--aux-loss", type=float, default=0.01,
                    help="MoE load-balancing loss coefficient (Switch Transformer)")
    ap.add_argument("--skip-scale", type=float, default=None,
                    help="alpha (span, deepnorm); default (2L)^0.25 for span/deepnorm, else 1")
    ap.add_argument("--branch-scale", type=float, default=1.0, help="beta (span)")
    ap.add_argument("--final-norm", choices=("default", "true", "false"), default="default")
    ap.add_argument("--norm-type", choices=("rmsnorm", "layernorm"), default="rmsnorm")
    ap.add_argument("--mix-post-layers", type=int, default=0)
    ap.add_argument("--tie", action="store_true", help="tie lm_head to the embeddings")
    ap.add_argument("--max-positions", type=int, default=1024,
                    help="max_position_embeddings written to config.json")
    ap.add_argument("--rope-theta", type=float, default=10000.0)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    ap.add_argument("--seq-len", type=int, default=SEQ_LEN)
    ap.add_argument("--lr", type=float, default=DEFAULT_LR)
    ap.add_argument("--min-lr-ratio", type=float, default=0.1)
    ap.add_argument("--warmup", type=int, default=None,
                    help="warm-up steps (default: 10%% of --steps, at least 10)")
    ap.add_argument("--weight-decay", type=float, default=0.1)
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--tokenizer", required=True, help="tokenizer.json")
    ap.add_argument("--train-text", required=True)
    ap.add_argument("--eval-text", help="held-out text for the loss logged every --eval-every")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--eval-windows", type=int, default=32)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch default)")
    ap.add_argument("--out", required=True)
    return ap.parse_args(argv)


def model_config(a, vocab_size: int) -> dict:
    skip = a.skip_scale
    if skip is None:
        skip = (2 * a.layers) ** 0.25 if a.placement in ("span", "deepnorm") else 1.0
    c = {
        "model_type": "spanserve",
        "architectures": ["SpanServeForCausalLM"],
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "head_dim": a.hidden // a.heads,
        "vocab_size": vocab_size,
        "max_position_embeddings": a.max_positions,
        "rms_norm_eps": 1e-6,
        "rope_theta": a.rope_theta,
        "rope_scaling": None,
        "tie_word_embeddings": bool(a.tie),
        "attention_bias": False,
        "bos_token_id": 0,
        "eos_token_id": 0,
        "norm_placement": a.placement,
        "norm_type": a.norm_type,
        "norm_eps": 1e-6,
        "skip_scale": skip,
        "branch_scale": a.branch_scale,
    }
    if a.norm_type == "layernorm":
        c["norm_bias"] = True
    if a.final_norm != "default":
        c["final_norm"] = a.final_norm == "true"
    if a.placement == "mix":
        c["mix_post_layers"] = a.mix_post_layers
    if a.moe:
        c.update({
            "num_experts": a.experts,
            "num_experts_per_tok": a.top_k,
            "norm_topk_prob": True,
            "moe_intermediate_size": a.moe_intermediate,
            "shared_expert_intermediate_size": a.shared_expert,
            "decoder_sparse_step": 1,
            "mlp_only_layers": [],
            "first_k_dense_replace": 0,
            "scoring_func": "softmax",
        })
    return c


def load_ids(tok, path):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    return torch.tensor(tok.encode(text, add_special_tokens=False).ids, dtype=torch.long)


def balance_loss(model: SpanModel):
    """Switch-Transformer load balancing, mean over MoE layers: E * sum_e f_e * P_e
    (f_e: share of top-k slots routed to e, P_e: mean router probability of e)."""
    losses = []
    for m in model.moe_layers():
        scores, top = m.last_scores, m.last_topk
        probs = scores / scores.sum(-1, keepdim=True)
        f = torch.zeros(m.E, device=scores.device).index_add_(
            0, top.reshape(-1), torch.ones(top.numel(), device=scores.device)) / top.numel()
        losses.append(m.E * (f * probs.mean(0)).sum())
    return torch.stack(losses).mean() if losses else None


@torch.no_grad()
def eval_loss(model, ids, seq_len, windows, device):
    """Mean next-token loss over the first `windows` consecutive windows of `ids`."""
    model.eval()
    n = min(windows, (len(ids) - 1) // seq_len)
    x = torch.stack([ids[i * seq_len:(i + 1) * seq_len + 1] for i in range(n)]).to(device)
    loss = 0.0
    for i in range(0, n, 8):
        xb = x[i:i + 8]
        logits = model(xb[:, :-1])
        loss += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1),
                                reduction="sum").item()
    model.train()
    return loss / (n * seq_len)


def count_params(model: SpanModel, cfg: dict):
    total = sum(p.numel() for p in model.parameters())
    active = total
    if cfg.get("num_experts"):
        for m in model.moe_layers():
            per = sum(p.numel() for p in m.experts[0].parameters())
            active -= per * (m.E - m.k)
    return total, active


def lr_factor(step, warmup, steps, min_ratio):
    """step is 1-based: linear warm-up to 1 over `warmup` steps, cosine to min_ratio."""
    if step <= warmup:
        return step / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def model_card(a, cfg, summary) -> str:
    moe = ""
    if a.moe:
        moe = (f"- MoE FFN in every layer: {a.experts} SwiGLU experts of {a.moe_intermediate}, "
               f"top-{a.top_k} (softmax, renormalised), one shared expert of {a.shared_expert} "
               f"with a sigmoid gate; load-balancing loss coefficient {a.aux_loss}\n")
    hp = {k: summary[k] for k in ("steps", "batch", "seq_len", "lr", "warmup", "min_lr_ratio",
                                  "weight_decay", "clip", "init_std", "seed")}
    return f"""# SpanServe toy model: `{a.placement}`{' MoE' if a.moe else ''}, {a.layers} layers

A small decoder-only language model trained with `tools/train/train.py` of SpanServe, to
exercise the `{a.placement}` norm placement end to end. A toy: it writes KJV-flavoured text
and nothing else; do not use it for anything that matters.

## Data and licence

- Training text: the King James Version of the Bible (1611), **public domain**, from
  Debian's `bible-kjv-text` package; held out: every chapter whose canonical number is a
  multiple of 20 (see tools/train/prepare_data.py). Trained on the rest only.
- Tokenizer: byte-level BPE, vocabulary {cfg['vocab_size']}, trained on the same training text
  (`tokenizer.json`, "<|endoftext|>" = id 0).
- The weights were produced by SpanServe's own training script from public-domain text.

## Architecture

- `norm_placement` = `{a.placement}`, {a.norm_type}, skip scale alpha = {cfg['skip_scale']:.6g},
  branch scale beta = {cfg['branch_scale']:.6g}, final norm: {summary['final_norm']}
- {a.layers} layers, hidden {a.hidden}, {a.heads} heads / {a.kv_heads} KV heads (head_dim
  {a.hidden // a.heads}), SwiGLU intermediate {a.intermediate}, RoPE theta {a.rope_theta:g},
  {'tied' if a.tie else 'untied'} LM head
{moe}- Parameters: {summary['params']:,} ({summary['active_params']:,} active per token)
- Weights stored as BF16 (`model.safetensors`); trained in float32.

## Training

{json.dumps(hp)}

AdamW (betas 0.9/0.95, weight decay on matrices only), linear warm-up then cosine decay to
{a.min_lr_ratio} x lr, gradient clipping {a.clip}, random {a.seq_len}-token windows of the training
text. Device: {summary['device']}; wall time {summary['wall_s']:.0f} s.

- Final train loss (mean of the last {summary['last_n']} steps): {summary['final_train_loss']:.4f} nats/token
- Held-out loss (first {a.eval_windows} windows, last eval): {summary.get('final_eval_loss', 'n/a')}

The loss curve is in `training_log.jsonl`.
"""


def main(argv=None):
    a = parse_args(argv)
    from tokenizers import Tokenizer
    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(a.seed)
    warmup = a.warmup if a.warmup is not None else min(a.steps, max(10, a.steps // 10))

    tok = Tokenizer.from_file(a.tokenizer)
    train_ids = load_ids(tok, a.train_text)
    eval_ids = load_ids(tok, a.eval_text) if a.eval_text else None
    cfg = model_config(a, tok.get_vocab_size())
    model = SpanModel(dict(cfg))
    init_weights(model, a.seed, std=a.init_std, random_norms=False)
    model.to(device).train()
    total, active = count_params(model, cfg)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": a.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=a.lr, betas=(0.9, 0.95), eps=1e-8)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: lr_factor(i + 1, warmup, a.steps, a.min_lr_ratio))

    os.makedirs(a.out, exist_ok=True)
    log_path = os.path.join(a.out, "training_log.jsonl")
    logf = open(log_path, "w")

    def log(rec):
        logf.write(json.dumps(rec) + "\n")
        logf.flush()

    print(f"train: {a.placement}{' moe' if a.moe else ''} L={a.layers} d={a.hidden} "
          f"params {total:,} (active {active:,}), {len(train_ids):,} train tokens, "
          f"device {device}, steps {a.steps} x batch {a.batch} x {a.seq_len}", flush=True)
    log({"event": "start", "config": cfg, "args": vars(a), "params": total,
         "active_params": active, "train_tokens": len(train_ids), "device": str(device)})

    gen = torch.Generator().manual_seed(a.seed)
    n_start = len(train_ids) - a.seq_len - 1
    losses, t0, last_eval = [], time.time(), None
    for step in range(1, a.steps + 1):
        starts = torch.randint(0, n_start + 1, (a.batch,), generator=gen)
        xb = torch.stack([train_ids[s:s + a.seq_len + 1] for s in starts.tolist()]).to(device)
        logits = model(xb[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), xb[:, 1:].reshape(-1))
        aux = balance_loss(model) if a.moe else None
        total_loss = loss + a.aux_loss * aux if aux is not None else loss
        opt.zero_grad(set_to_none=True)
        total_loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), a.clip)
        opt.step()
        sched.step()
        lv = loss.item()
        losses.append(lv)
        if not math.isfinite(lv):
            print(f"train: loss is {lv} at step {step}; stopping", flush=True)
            log({"event": "diverged", "step": step, "loss": lv})
            break
        if step % a.log_every == 0 or step == 1 or step == a.steps:
            rec = {"step": step, "loss": round(lv, 5), "lr": opt.param_groups[0]["lr"],
                   "grad_norm": round(float(gnorm), 5), "tokens": step * a.batch * a.seq_len,
                   "elapsed_s": round(time.time() - t0, 2)}
            if aux is not None:
                rec["aux_loss"] = round(aux.item(), 5)
            log(rec)
            print(json.dumps(rec), flush=True)
        if eval_ids is not None and a.eval_every and (step % a.eval_every == 0 or step == a.steps):
            last_eval = eval_loss(model, eval_ids, a.seq_len, a.eval_windows, device)
            log({"step": step, "eval_loss": round(last_eval, 5)})
            print(json.dumps({"step": step, "eval_loss": round(last_eval, 5)}), flush=True)
    wall = time.time() - t0
    logf.close()

    model.eval()
    save_model(model, a.out, dtype="bfloat16", config=cfg)
    shutil.copyfile(a.tokenizer, os.path.join(a.out, "tokenizer.json"))
    last_n = min(len(losses), max(1, a.steps // 20))
    summary = {
        "placement": a.placement, "moe": a.moe, "steps": a.steps, "steps_done": len(losses),
        "batch": a.batch, "seq_len": a.seq_len, "lr": a.lr, "warmup": warmup,
        "min_lr_ratio": a.min_lr_ratio, "weight_decay": a.weight_decay, "clip": a.clip,
        "init_std": a.init_std, "seed": a.seed, "params": total, "active_params": active,
        "device": str(device), "wall_s": wall, "step_s": wall / max(1, len(losses)),
        "last_n": last_n, "final_train_loss": sum(losses[-last_n:]) / last_n,
        "final_norm": model.cfg.final_norm,
    }
    if last_eval is not None:
        summary["final_eval_loss"] = round(last_eval, 5)
    with open(os.path.join(a.out, "train_summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    with open(os.path.join(a.out, "README.md"), "w") as f:
        f.write(model_card(a, cfg, summary))
    print(f"train: done in {wall:.1f} s ({summary['step_s']:.3f} s/step), final train loss "
          f"{summary['final_train_loss']:.4f} -> {a.out}", flush=True)
    return summary


if __name__ == "__main__":
    main()
