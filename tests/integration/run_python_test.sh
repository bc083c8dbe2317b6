#!/usr/bin/env bash
# Runs grpc_python_test.py with a Python that has grpcio and its health and reflection
# modules: the project venv (.venv, scripts/setup --python) or the test venv (.venv-grpc,
# scripts/setup); exits 77 (CTest: skipped) when neither has them.
# Usage: run_python_test.sh <source dir> <spanserve-server binary>
set -euo pipefail
for python in "$1/.venv/bin/python" "$1/.venv-grpc/bin/python"; do
  if [[ -x "$python" ]] &&
    "$python" -c "import grpc, grpc_health.v1, grpc_reflection.v1alpha" 2>/dev/null; then
    exec "$python" "$(dirname "$0")/grpc_python_test.py" --server "$2" \
      --model "$1/models/spanserve-span-12l"
  fi
done
echo "neither .venv nor .venv-grpc has grpcio, grpcio-health-checking and grpcio-reflection" \
  "(scripts/setup installs them): skipping"
exit 77
