#!/usr/bin/env bash
# Runs openai_sdk_test.py with the Python of .venv-clients (scripts/setup: the official openai
# SDK, pinned in clients/python/requirements-test.txt); exits 77 (CTest: skipped) without it.
# Usage: run_openai_sdk_test.sh <source dir> <spanserve-server binary>
set -euo pipefail
python="$1/.venv-clients/bin/python"
if [[ -x "$python" ]] && "$python" -c "import openai" 2>/dev/null; then
  exec "$python" "$(dirname "$0")/openai_sdk_test.py" --server "$2" --source "$1"
fi
echo ".venv-clients has no openai SDK (scripts/setup installs it): skipping"
exit 77
