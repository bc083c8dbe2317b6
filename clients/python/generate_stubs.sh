#!/usr/bin/env bash
# Regenerates the gRPC stubs the spanserve package ships (src/spanserve/v1/spanserve_pb2.py,
# spanserve_pb2.pyi, spanserve_pb2_grpc.py) from proto/spanserve/v1/spanserve.proto with
# grpcio-tools, pinned in requirements-test.txt. protoc runs with proto/ as the include root,
# so the stubs import each other as `spanserve.v1.spanserve_pb2`, the package's own path.
# The Python client test fails when the committed stubs differ from a regeneration.
# Usage: clients/python/generate_stubs.sh [OUT_DIR]   (default: clients/python/src)
# PYTHON: a Python with grpcio-tools (default: .venv-clients/bin/python; scripts/setup).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
python="${PYTHON:-$root/.venv-clients/bin/python}"
out="${1:-$here/src}"
mkdir -p "$out/spanserve/v1"
"$python" -m grpc_tools.protoc --proto_path="$root/proto" --python_out="$out" \
  --pyi_out="$out" --grpc_python_out="$out" "$root/proto/spanserve/v1/spanserve.proto"
