"""Diagnosis only (protocols/synth/FIDELITY.md): a `zss-bench run` in which the CLIP ViT is NOT frozen.

Why: a method that reads the frozen teacher's tokens (ZegCLIP-style) and scores far below the seen-only bound
on *seen* classes is either limited by the teacher's tokens or broken (losses, masks, calibration). Training
the same plugin, unchanged, with the ViT's weights free to move separates the two: if seen mIoU then reaches
the seen-only level, the plugin's losses, masks and calibration work and the frozen tokens are the limit.
Never used for a table: records it writes are labelled `diag-unfrozen-clip`.

Usage: python scripts/fidelity/unfrozen_clip_run.py <zss-bench run arguments>
"""
import sys

from zss_bench.clip.partial import PartialViT


def _no_freeze(self):
    self._frozen = False
    return self


PartialViT.freeze = _no_freeze

if __name__ == "__main__":
    from zss_bench.cli import main

    sys.exit(main(["run", *sys.argv[1:], "--label", "diag-unfrozen-clip"]))
