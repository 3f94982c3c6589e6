#!/usr/bin/env bash
# Create the project's virtualenv and install everything zss-bench needs.
# Order matters: torch first (detectron2's setup.py imports it), then zss-bench itself
# (editable, with test extras), then detectron2 via its own script.
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch/torchvision pinned to the pair available on these machines' local disk.
"$PY" -m pip install --quiet --disable-pip-version-check "torch==2.14.1" "torchvision==0.29.1"
"$PY" -m pip install --quiet --disable-pip-version-check -e ".[test]"
bash scripts/install_detectron2.sh "$PY"
"$PY" -c "import zss_bench.detectron2_compat, open_clip, pandas, scipy; print('zss-bench environment ready')"
