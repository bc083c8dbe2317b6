#!/usr/bin/env bash
# The project-local Python environment for tools/: the PyTorch reference, golden-value
# generation, training, tokenizer parity. Debian's python3-torch (CPU) plus pinned
# PyPI packages in .venv. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
need=(python3-torch python3-venv python3-numpy)
missing=()
for p in "${need[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=.venv/.requirements.sha
want=$(sha256sum tools/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install -q --disable-pip-version-check -r tools/requirements.txt
  echo "$want" > "$stamp"
fi
