#!/usr/bin/env bash
# Runs grpc_python_test.py with the project venv; exits 77 (CTest: skipped) without one.
# Usage: run_python_test.sh <source dir> <spanserve-server binary>
set -euo pipefail
python="$1/.venv/bin/python"
if [[ ! -x "$python" ]]; then
  echo "no $python (scripts/setup creates it): skipping"
  exit 77
fi
if ! "$python" -c "import grpc, grpc_health.v1, grpc_reflection.v1alpha" 2>/dev/null; then
  echo "the venv lacks grpcio / grpcio-health-checking / grpcio-reflection: skipping"
  exit 77
fi
exec "$python" "$(dirname "$0")/grpc_python_test.py" --server "$2" \
  --model "$1/models/spanserve-span-12l"
