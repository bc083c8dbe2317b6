#!/usr/bin/env bash
# The OpenAI HTTP front against gRPC through one server: spanserve_grpc_load's streamed
# requests at concurrency 1 and 64 on each protocol, interleaved rounds, token rate and
# client-side TTFT p50, with the load average of each run.
# Usage: tools/bench/http_vs_grpc.sh [BUILD_DIR=build/release] [ROUNDS=2] [MODEL=models/spanserve-span-12l]
set -euo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build/release}
rounds=${2:-2}
model=${3:-models/spanserve-span-12l}
grpc_port=50071
http_port=8071
"$build/server/spanserve-server" --model="$model" --listen=127.0.0.1:$grpc_port \
  --http_address=127.0.0.1:$http_port --kv_cache_bytes=400000000 >/dev/null 2>&1 &
pid=$!
trap 'kill -INT $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -sf "127.0.0.1:$http_port/health" >/dev/null && break
  sleep 0.1
done
printf "%-6s %-5s %-4s %12s %14s %6s\n" round proto conc "tokens/s" "ttft_p50_ms" load
for round in $(seq "$rounds"); do
  for c in 1 64; do
    n=$([ "$c" = 1 ] && echo 24 || echo 256)
    for proto in grpc http; do
      port=$([ "$proto" = grpc ] && echo $grpc_port || echo $http_port)
      "$build/server/spanserve_grpc_load" --protocol=$proto --address=127.0.0.1:$port \
        --concurrency="$c" --requests="$n" --max_tokens=64 |
        python3 -c "import json, sys; d = json.load(sys.stdin); \
print('%-6s %-5s %-4d %12.1f %14.2f %6s' % ('$round', d['protocol'], d['concurrency'], \
d['output_tokens_per_s'], d['ttft_s']['p50'] * 1e3, open('/proc/loadavg').read().split()[0]))"
    done
  done
done
