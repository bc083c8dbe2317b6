#!/usr/bin/env bash
# Runs score_harness_test.py (Score against lm-evaluation-harness's own TemplateLM code) with
# .venv-clients (scripts/setup); exits 77 (CTest: skipped) when that venv is missing or lacks
# grpcio, grpcio-tools or lm_eval.
# Usage: run_score_harness_test.sh <source dir> <spanserve-server binary> [unittest args...]
set -euo pipefail
src="$1" server="$2"
shift 2
python="$src/.venv-clients/bin/python"
if [[ ! -x "$python" ]] ||
  ! "$python" -c "import grpc, grpc_tools, importlib.util as u; assert u.find_spec('lm_eval')" \
    2>/dev/null; then
  echo ".venv-clients is missing or lacks grpcio, grpcio-tools or lm_eval (scripts/setup" \
    "makes it): skipping"
  exit 77
fi
# No hub: the tokenizers come from the models' own files.
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec "$python" "$(dirname "$0")/score_harness_test.py" --source_dir "$src" --server "$server" "$@"
