#!/usr/bin/env bash
# Runs python_client_test.py with .venv-clients (scripts/setup): first installs the spanserve
# package from a copy of clients/python into a temporary folder (no network: its
# dependencies are the venv's), so the test exercises the installed package and its
# spanserve-lm-eval console script. Exits 77 (CTest: skipped) when .venv-clients is missing,
# and with --http (lm-eval's local-completions against /v1/completions) when the server
# has no --http_address flag.
# Usage: run_python_client_test.sh <source dir> <spanserve-server binary> [--http] [TEST...]
# (TEST: a class or Class.method of python_client_test.py, e.g. ClientTest.test_score)
set -euo pipefail
src="$1" server="$2"
shift 2
mode=""
[[ " $* " == *" --http "* ]] && mode=--http
python="$src/.venv-clients/bin/python"
if [[ ! -x "$python" ]] ||
  ! "$python" -c "import grpc, grpc_tools, grpc_health.v1, lm_eval, transformers" 2>/dev/null; then
  echo ".venv-clients is missing or incomplete (scripts/setup makes it): skipping"
  exit 77
fi
if [[ "$mode" == --http ]] && [[ "$("$server" --help 2>&1 || true)" != *--http_address* ]]; then
  echo "spanserve-server has no --http_address (the OpenAI-compatible HTTP front): skipping"
  exit 77
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cp -r "$src/clients/python" "$tmp/package"
rm -rf "$tmp/package/build" "$tmp/package"/src/*.egg-info
"$python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation \
  --no-index --target "$tmp/site" "$tmp/package"
export PYTHONPATH="$tmp/site" PATH="$tmp/site/bin:$PATH"
# No hub: the tasks' data and the tokenizer come from local files; caches stay in $tmp.
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HOME="$tmp/hf" TOKENIZERS_PARALLELISM=false
"$python" "$(dirname "$0")/python_client_test.py" --source_dir "$src" --server "$server" "$@"
