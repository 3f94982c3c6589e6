#!/usr/bin/env bash
# Create the project's virtualenv and install everything zss-bench needs.
# Order matters: torch first (detectron2's setup.py imports it), then zss-bench itself (editable, every
# extra and the test tools), then detectron2 via its own script. The exact torch pair comes from
# scripts/constraints.txt, never from the package metadata (a user's `pip install zss-bench` keeps their torch).
set -euo pipefail
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV with $($PYTHON --version)"
    "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
# torch/torchvision: the tested pair (available on these machines' local disk).
"$PY" -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt torch torchvision
"$PY" -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt -e ".[all,test]"
bash scripts/install_detectron2.sh "$PY"
"$PY" -c "import zss_bench.detectron2_compat, open_clip, pandas, scipy; print('zss-bench environment ready')"
