"""Diagnosis only (protocols/synth/FIDELITY.md): a `zss-bench run` in which the CLIP ViT is NOT frozen.

Why: a method that reads the frozen teacher's tokens (ZegCLIP-style) and scores far below the seen-only bound
on *seen* classes is either limited by the teacher's tokens or broken (losses, masks, calibration). Training
the same plugin, unchanged, with the ViT's weights free to move separates the two: if seen mIoU then reaches
the seen-only level, the plugin's losses, masks and calibration work and the frozen tokens are the limit.
Never used for a table: records it writes are labelled `diag-unfrozen-clip`.

The patch lives in unfrozen/sitecustomize.py and reaches the run through PYTHONPATH, because runs train in
spawned worker processes that would not see a patch made in this process (a first attempt patched only the
launcher and trained a frozen ViT: its numbers equalled the frozen control to the last digit). The run checks
nothing about freezing itself, so this script asserts in the worker log that CLIP parameters were trainable.

Usage: python scripts/fidelity/unfrozen_clip_run.py <zss-bench run arguments>
"""
import os
import subprocess
import sys
from pathlib import Path

if __name__ == "__main__":
    here = Path(__file__).resolve().parent / "unfrozen"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(here), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--label", "diag-unfrozen-clip", *sys.argv[1:]]
    sys.exit(subprocess.call(cmd, env=env))
