#!/usr/bin/env python3
"""Held-out perplexity of a model directory: the reference definition that the C++ CLI
implements too.

  1. tokenize the whole text with the model's tokenizer.json, no special tokens;
  2. split the ids into consecutive, non-overlapping windows of --window tokens; the last,
     partial window is scored too when it has at least 2 tokens;
  3. score every window independently, positions starting at 0: the NLL (natural log) of
     tokens 1..n-1 of the window, each given the tokens before it in the same window;
  4. tokens_scored = sum of (n_i - 1), nll_sum = the sum of all those NLLs,
     perplexity = exp(nll_sum / tokens_scored).

The model runs in float32 (BF16/F16 weights widened), logits and log-softmax in float32,
the sum accumulated in float64. Prints the JSON and writes it to --out (default:
<model>/perplexity.json).

    eval_perplexity.py --model DIR --text tests/data/text/kjv_heldout.txt --window 256
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))

from reference.spannorm import load_model  # noqa: E402


def windows_of(ids, window: int):
    out = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in out if len(w) >= 2]


@torch.no_grad()
def score(model, ids, window: int, batch: int, device) -> dict:
    wins = windows_of(ids, window)
    nll_sum, scored = 0.0, 0
    full = [w for w in wins if len(w) == window]
    part = [w for w in wins if len(w) != window]
    groups = [full[i:i + batch] for i in range(0, len(full), batch)] + [[w] for w in part]
    for g in groups:
        x = torch.tensor(g, dtype=torch.long, device=device)
        logp = torch.log_softmax(model(x).float(), dim=-1)            # [B, n, V]
        tgt = x[:, 1:]
        nll = -logp[:, :-1].gather(-1, tgt.unsqueeze(-1)).squeeze(-1)  # [B, n-1]
        nll_sum += float(nll.double().sum())
        scored += tgt.numel()
    return {"tokens_scored": scored, "nll_sum": nll_sum,
            "perplexity": math.exp(nll_sum / scored) if scored else float("nan")}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="model directory (with tokenizer.json)")
    ap.add_argument("--text", required=True)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16, help="windows per forward (speed only)")
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--out", help="JSON output (default: <model>/perplexity.json)")
    args = ap.parse_args(argv)
    if args.window < 2:
        sys.exit("--window must be >= 2")
    from tokenizers import Tokenizer
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":  # keep the float32 definition exact on GPUs too
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    tok = Tokenizer.from_file(os.path.join(args.model, "tokenizer.json"))
    with open(args.text, encoding="utf-8") as f:
        text = f.read()
    ids = tok.encode(text, add_special_tokens=False).ids
    model = load_model(args.model, device=device)
    res = score(model, ids, args.window, args.batch, device)
    res.update({"model": os.path.abspath(args.model), "text": os.path.abspath(args.text),
                "window": args.window, "text_tokens": len(ids),
                "text_bytes": len(text.encode("utf-8")),
                "bits_per_byte": res["nll_sum"] / math.log(2) / max(1, len(text.encode("utf-8")))})
    out = args.out or os.path.join(args.model, "perplexity.json")
    with open(out, "w") as f:
        json.dump(res, f, indent=2)
        f.write("\n")
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
