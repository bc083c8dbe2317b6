#!/usr/bin/env python3
"""Encode throughput of SpanServe's tokenizer beside Hugging Face `tokenizers`, same text,
same run, one thread each.

Runs tools/bench/tokenizer_bench.cc's binary (C++), then `tokenizers` in this process with
RAYON_NUM_THREADS=1 / TOKENIZERS_PARALLELISM=false, per input (`encode`, the per-request
case) and as one `encode_batch` (no Python loop; still one thread). Prints a table and the
ratio against the faster of the two HF figures.

Usage:
  .venv/bin/python tools/tokenizer/bench_tokenizer.py \
      --bench build/tok/tools/spanserve_tokenizer_bench \
      --tokenizer tests/data/tokenizers/smollm2/tokenizer.json [--text FILE] [--passes 5]
"""

import argparse
import gzip
import json
import os
import subprocess
import time

os.environ["RAYON_NUM_THREADS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

from tokenizers import Tokenizer  # noqa: E402  (after the thread settings)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def read_inputs(text_path):
    if text_path:
        with open(text_path, encoding="utf-8") as f:
            data = f.read()
        return data.split("\n") if not data.endswith("\n") else data[:-1].split("\n")
    path = os.path.join(ROOT, "tests", "data", "tokenizers", "inputs.jsonl.gz")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def best_of(passes, fn):
    times = []
    for _ in range(passes):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times[0], min(times[1:]) if len(times) > 1 else times[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bench", default=os.path.join(ROOT, "build", "tok", "tools",
                                                        "spanserve_tokenizer_bench"))
    parser.add_argument("--tokenizer", default=os.path.join(
        ROOT, "tests", "data", "tokenizers", "smollm2", "tokenizer.json"))
    parser.add_argument("--text", default="", help="plain text, one input per line")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()

    cmd = [args.bench, f"--tokenizer={args.tokenizer}", f"--passes={args.passes}", "--threads=1"]
    if args.text:
        cmd.append(f"--text={args.text}")
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    print(out.strip())
    ours = json.loads(out.strip().splitlines()[-1])

    inputs = read_inputs(args.text)
    mb = sum(len(s.encode("utf-8")) for s in inputs) / 1e6
    tok = Tokenizer.from_file(args.tokenizer)
    cold, warm = best_of(args.passes, lambda: [tok.encode(s, add_special_tokens=False)
                                               for s in inputs])
    bcold, bwarm = best_of(args.passes, lambda: tok.encode_batch(inputs,
                                                                 add_special_tokens=False))
    # Same ids as ours? (A spot check; the C++ tests do the full comparison.)
    n_tokens = sum(len(e.ids) for e in tok.encode_batch(inputs, add_special_tokens=False))
    hf_best = max(mb / warm, mb / bwarm)
    rows = [
        ("spanserve Encode (cold cache)", ours["encode_cold_mb_s"]),
        ("spanserve Encode (warm cache)", ours["encode_warm_mb_s"]),
        ("HF tokenizers encode() per input (cold)", mb / cold),
        ("HF tokenizers encode() per input (warm)", mb / warm),
        ("HF tokenizers encode_batch, 1 thread (cold)", mb / bcold),
        ("HF tokenizers encode_batch, 1 thread (warm)", mb / bwarm),
    ]
    print(f"\n{os.path.relpath(args.tokenizer, ROOT)}: {len(inputs)} inputs, {mb:.3f} MB, "
          f"{n_tokens} tokens (ours {ours['tokens']})")
    for name, rate in rows:
        print(f"  {name:<46} {rate:8.2f} MB/s")
    print(f"  ratio spanserve warm / best HF warm: {ours['encode_warm_mb_s'] / hf_best:.2f}x")


if __name__ == "__main__":
    main()
