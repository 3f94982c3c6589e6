#!/usr/bin/env bash
# The one GPU check, for whoever has a CUDA machine (under 5 minutes on one GPU):
#   1. tests/test_cuda.py: `--device cuda` on synth (the record says cuda), `--num-gpus` above the visible
#      count (one line), CPU gloo processes on a GPU machine, two GPUs over NCCL (in-run evaluation ==
#      --eval-only; skipped on one GPU, saying so), deterministic mode twice (identical);
#   2. the real configuration's smoke test on CUDA: tests/test_real_config.py -k chimera with
#      ZSS_TEST_DEVICE=cuda (R-101 DeepLab body, CLIP ViT-B/16 with random weights, 512 crops, one step);
#   3. `zss-bench speed --device cuda --out results/speed/<gpu>.json`: every method's real configuration, fp32 and
#      bf16 (train/eval img/s, peak memory, schedule hours).
#
# Usage: scripts/gpu_check.sh [PYTEST_ARGS...]   (Python: $PYTHON, else .venv/bin/python, else python3)
# Exit status: pytest's (0 = all passed or skipped with a reason; -rs lists the reasons).
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
"$PY" - <<'PY' || exit 2
import sys, torch
if not torch.cuda.is_available():
    sys.exit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); nothing to check here")
n = torch.cuda.device_count()
print(f"gpu_check: torch {torch.__version__}, CUDA {torch.version.cuda}, {n} GPU(s): "
      + ", ".join(torch.cuda.get_device_name(i) for i in range(n)), flush=True)
PY
start=$SECONDS
"$PY" -m pytest tests/test_cuda.py -p no:randomly -q -rs "$@"
cuda_tests=$?
ZSS_TEST_DEVICE=cuda "$PY" -m pytest tests/test_real_config.py -k "chimera and end_to_end" -p no:randomly -q -s -rs "$@"
real_config=$?
# 3. what every method's real configuration costs on this GPU, fp32 and bf16: commit the JSON, put the table in the README
gpu=$("$PY" -c "import torch, re; print(re.sub(r'[^A-Za-z0-9]+', '-', torch.cuda.get_device_name(0)).strip('-').lower())")
mkdir -p results/speed
"$PY" -m zss_bench.cli speed --device cuda --out "results/speed/$gpu.json"
speed=$?
echo "gpu_check: tests/test_cuda.py exit $cuda_tests, real-config smoke on cuda exit $real_config, speed exit $speed" \
     "(results/speed/$gpu.json), $((SECONDS - start)) s"
[ "$cuda_tests" -eq 0 ] && [ "$real_config" -eq 0 ] && [ "$speed" -eq 0 ]
