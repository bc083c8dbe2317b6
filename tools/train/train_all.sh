#!/usr/bin/env bash
# Trains the bundled models end to end, unattended: data split, tokenizer (once), then
# pre, post, span and span-MoE with the same data, tokenizer and hyper-parameters, the
# held-out perplexity of each, and a results JSON. Uses `python3` from PATH (or $PYTHON);
# needs torch, tokenizers, safetensors (no internet, no apt, no project venv).
#
#   tools/train/train_all.sh [--text kjv_verses.txt] [--out out/train] [--data .cache/data]
#                            [train.py options for every run, e.g. --steps 250 --batch 16]
#
# --text: the verse-per-line KJV dump (`bible -f gen1:1-rev22:21`); not needed where the
# `bible` reader is installed or <data>/kjv_verses.txt exists (prepare_data.py keeps a copy
# there: copy that one file to a machine without the Debian packages).
#
# Output: <out>/tokenizer.json, <out>/{pre,post,span,span_moe}/ (model directories with
# config.json, BF16 model.safetensors, tokenizer.json, training_log.jsonl, README.md,
# perplexity.json), <out>/results.json, and a log of each run in <out>/<run>.log.
set -euo pipefail
cd "$(dirname "$0")/../.."

PY=${PYTHON:-$(command -v python3 || command -v python)}
OUT=out/train
DATA=.cache/data
TEXT=""
EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --text) TEXT=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
if [ -z "$TEXT" ] && [ -f "$DATA/kjv_verses.txt" ]; then TEXT=$DATA/kjv_verses.txt; fi

mkdir -p "$OUT"
echo "== $(date -u +%FT%TZ) data -> $DATA"
"$PY" tools/train/prepare_data.py ${TEXT:+--text "$TEXT"} --out "$DATA"
echo "== tokenizer -> $OUT/tokenizer.json"
"$PY" tools/train/train_tokenizer.py --text "$DATA/train.txt" --out "$OUT/tokenizer.json"

runs=(pre post span span_moe)
declare -A run_args=(
  [pre]="--placement pre"
  [post]="--placement post"
  [span]="--placement span"
  [span_moe]="--placement span --moe"
)
for r in "${runs[@]}"; do
  echo "== $(date -u +%FT%TZ) train $r"
  # shellcheck disable=SC2086
  "$PY" tools/train/train.py ${run_args[$r]} --tokenizer "$OUT/tokenizer.json" \
    --train-text "$DATA/train.txt" --eval-text "$DATA/heldout.txt" --out "$OUT/$r" \
    "${EXTRA[@]}" 2>&1 | tee "$OUT/$r.log"
  echo "== eval $r"
  "$PY" tools/train/eval_perplexity.py --model "$OUT/$r" --text "$DATA/heldout.txt" \
    --window 256 --out "$OUT/$r/perplexity.json"
  "$PY" tools/train/eval_perplexity.py --model "$OUT/$r" --text tests/data/text/kjv_heldout.txt \
    --window 256 --out "$OUT/$r/perplexity_excerpt.json"
done

"$PY" - "$OUT" "$DATA" "${runs[@]}" <<'EOF'
import json, os, platform, sys
import torch
out, data, runs = sys.argv[1], sys.argv[2], sys.argv[3:]
def load(p):
    with open(p) as f:
        return json.load(f)
res = {"data": load(os.path.join(data, "split.json")), "torch": torch.__version__,
       "python": platform.python_version(),
       "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
       "runs": {}}
res["data"].pop("heldout_chapters", None)
for r in runs:
    s = load(os.path.join(out, r, "train_summary.json"))
    cfg = load(os.path.join(out, r, "config.json"))
    res["runs"][r] = {
        "placement": s["placement"], "moe": s["moe"], "skip_scale": cfg.get("skip_scale"),
        "params": s["params"], "active_params": s["active_params"],
        "steps": s["steps"], "steps_done": s["steps_done"], "batch": s["batch"],
        "lr": s["lr"], "warmup": s["warmup"], "wall_s": round(s["wall_s"], 1),
        "final_train_loss": s["final_train_loss"], "final_eval_loss": s.get("final_eval_loss"),
        "heldout": {k: v for k, v in load(os.path.join(out, r, "perplexity.json")).items()
                    if k in ("tokens_scored", "nll_sum", "perplexity", "bits_per_byte")},
        "heldout_excerpt": {k: v for k, v in load(os.path.join(out, r, "perplexity_excerpt.json")).items()
                            if k in ("tokens_scored", "nll_sum", "perplexity", "bits_per_byte")},
    }
with open(os.path.join(out, "results.json"), "w") as f:
    json.dump(res, f, indent=2)
    f.write("\n")
for r, v in res["runs"].items():
    print(f"{r:9s} train loss {v['final_train_loss']:.4f}  held-out ppl {v['heldout']['perplexity']:.3f}"
          f"  ({v['heldout']['bits_per_byte']:.4f} bits/byte)  {v['wall_s']:.0f} s")
print(f"results -> {os.path.join(out, 'results.json')}")
EOF
