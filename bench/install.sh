#!/usr/bin/env bash
# Time and size of the README's set-up on a fresh virtual environment of this machine.
#   bash bench/install.sh [requirements-dev.txt]
# Prints the wall time of `pip install -r FILE` and the size of the resulting environment.
set -euo pipefail
req="${1:-requirements-dev.txt}"
cd "$(dirname "$0")/.."
venv="$(mktemp -d)/venv"
python -m venv "$venv"
start=$(date +%s.%N)
"$venv/bin/pip" install -q --disable-pip-version-check -r "$req" >/dev/null 2>&1
end=$(date +%s.%N)
printf 'install of %s: %.0f s, environment %s\n' "$req" "$(echo "$end - $start" | bc)" \
  "$(du -sh "$venv" | cut -f1)"
"$venv/bin/python" -c "import safeclip, torch, open_clip, gradio; print('imports ok, torch', torch.__version__)"
rm -rf "$(dirname "$venv")"
