"""`zss-bench run` end to end on each method's REAL voc-15-5 configuration (about 45 s for both on 2 cores).

The method's ``configs/default.yaml`` as it is: ResNet-101 DeepLab body, CLIP ViT-B/16
(``--clip ViT-B-16:random``: open_clip's real architecture, seeded random weights, no download),
512 crops, 512 slide windows, the real resize ranges. Only what a CPU machine needs changes: BN
instead of SyncBN, ``MODEL.DEVICE cpu``, batch 2, one iteration, no loader workers, 10 bootstrap
resamples. The data is a generated VOC 2012 folder (2 train images and 1 val image of 512x384,
the real layout, prepared with ``zss-bench prepare voc``). The run is its own process, so its
wall time and peak resident memory are printed (``-s``) and attached as test properties.

``ZSS_TEST_REAL_SIZE`` (default 512) shrinks crops, windows, resize ranges and images to debug
quickly (e.g. 128); the real figures are only those at 512. ``ZSS_TEST_DEVICE`` (default ``cpu``) is
the ``MODEL.DEVICE`` of the run: ``cuda`` is the GPU smoke test of ``scripts/gpu_check.sh``.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import make_voc_layout, random_voc_native, run_cli
from zss_bench.records import load_run

SIZE = int(os.environ.get("ZSS_TEST_REAL_SIZE", "512"))
SHAPE = (SIZE * 3 // 4, SIZE)  # (H, W): 384 x 512 at the real size, a typical VOC image
CLIP = "ViT-B-16:random"
DEVICE = os.environ.get("ZSS_TEST_DEVICE", "cpu")


def _with_class(rng: np.random.Generator, native: np.ndarray, ids: range, corner: int = 0) -> np.ndarray:
    """``native`` plus, if it has none of ``ids`` (VOC native ids), a box of one of them."""
    if np.isin(native, np.array(ids)).any():
        return native
    h, w = native.shape
    native = native.copy()
    x0 = w // 8 if corner == 0 else w // 2
    native[h // 8:h // 2, x0:x0 + w // 3] = int(rng.integers(ids.start, ids.stop))
    return native


SEEN, UNSEEN = range(1, 16), range(16, 21)  # voc-15-5: VOC ids 16..20 are unseen


@pytest.fixture
def voc_root(tmp_path):
    rng = np.random.default_rng(11)
    train = {f"2007_{i:06d}": _with_class(rng, random_voc_native(rng, SHAPE), SEEN) for i in range(2)}
    # the val image has a seen and an unseen class, so S, U and hIoU are all defined
    val = {"2008_000001": _with_class(rng, _with_class(rng, random_voc_native(rng, SHAPE), SEEN), UNSEEN, corner=1)}
    root = tmp_path / "data"
    make_voc_layout(root, train, val)
    return root


def _overrides() -> list[str]:
    opts = ["MODEL.DEVICE", DEVICE, "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
            "MODEL.RESNETS.DEPTH", "101", "INPUT.CROP.SIZE", f"({SIZE}, {SIZE})", "ZSS.EVAL.SLIDE_CROP", str(SIZE),
            "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "1", "SOLVER.WARMUP_ITERS", "1",
            "DATALOADER.NUM_WORKERS", "0", "ZSS.N_BOOT", "10"]
    if SIZE != 512:  # debugging size only: keep the resize ranges in proportion
        opts += ["ZSS.EVAL.SLIDE_STRIDE", str(SIZE * 426 // 512), "INPUT.MIN_SIZE_TRAIN", f"({SIZE // 2}, {SIZE})",
                 "INPUT.MAX_SIZE_TRAIN", str(SIZE * 4), "INPUT.MIN_SIZE_TEST", str(SIZE),
                 "INPUT.MAX_SIZE_TEST", str(SIZE * 4)]
    return opts


TRAINED = ["chimera", "seen-only", "zegformer", "spnet", "clip-zss", "zegclip"]
# The default suite keeps one real-configuration run (Chimera-Seg, the harness's main job: about 1.5 min on a
# 2-core AVX-512 machine, 4x that on AVX2); the others are `slow` (`make test-all` runs them).
DEFAULT_SUITE = "chimera"


def _run_real(method: str, voc_root: Path, tmp_path: Path, capsys, *flags: str):
    """``zss-bench run`` of ``method`` on voc-15-5 in its own process -> (record, wall seconds, work dir)."""
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(voc_root))
    assert rc == 0, err
    results, work = tmp_path / "results", tmp_path / "work"
    cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--method", method, "--protocol", "voc-15-5", "--clip", CLIP,
           "--data-root", str(voc_root), "--results", str(results), "--work-dir", str(work), *flags, *_overrides()]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-6000:]
    run_dir = Path([ln for ln in proc.stdout.splitlines() if ln.startswith("record: ")][-1].split("record: ", 1)[1])
    return load_run(run_dir).record, wall, work


def _check_real_config(rec: dict) -> None:
    cfg = rec["method"]["config"]
    assert Path(cfg["ZSS"]["CONFIG_FILE"]).name == "default.yaml"
    assert list(cfg["INPUT"]["CROP"]["SIZE"]) == [SIZE, SIZE] and cfg["ZSS"]["EVAL"]["SLIDE_CROP"] == SIZE
    assert rec["leakage"]["unseen_names_before_eval"] == []
    assert rec["provenance"]["device"]["device"] == DEVICE == cfg["MODEL"]["DEVICE"]  # ZSS_TEST_DEVICE ran
    for key in ("hIoU", "mIoU_seen", "mIoU_unseen", "mIoU"):
        value = rec["metrics"].get(key)
        assert isinstance(value, (int, float)) and math.isfinite(value), (key, value)


@pytest.mark.slow
def test_maskclip_real_config_evaluates_without_training(voc_root, tmp_path, capsys):
    """MaskCLIP on ViT-B/16 at 512 windows (32x32 tokens, interpolated positions): nothing trains."""
    rec, wall, work = _run_real("maskclip", voc_root, tmp_path, capsys)
    _check_real_config(rec)
    assert rec["training"]["performed"] is False and rec["training"]["optimizer_built"] is False
    assert rec["clip"]["name"] == "ViT-B-16" and rec["efficiency"]["params_trainable"] == 0
    assert not list(work.rglob("*.pth"))
    with capsys.disabled():
        print(f"\n[real-config maskclip @ {SIZE}px] wall_s {wall:.1f}, eval_peak_memory_mb "
              f"{rec['efficiency']['peak_memory_mb']}")


@pytest.mark.parametrize("method", [m if m == DEFAULT_SUITE else pytest.param(m, marks=pytest.mark.slow)
                                    for m in TRAINED])
def test_real_config_end_to_end(method, voc_root, tmp_path, capsys, record_property):
    from zss_bench.plugins import get_method

    plugin = get_method(method)
    rec, wall, work = _run_real(method, voc_root, tmp_path, capsys)

    # the configuration that ran is the real one
    _check_real_config(rec)
    cfg = rec["method"]["config"]
    assert cfg["MODEL"]["RESNETS"]["DEPTH"] == 101 and cfg["MODEL"]["RESNETS"]["STEM_TYPE"] == "deeplab"
    # training: one real step
    assert rec["training"]["max_iter"] == 1 and rec["training"]["ims_per_batch"] == 2
    assert rec["training"]["eval_only"] is False and math.isfinite(rec["training"]["final_total_loss"])
    assert rec["dataset"]["train_images"] == 2
    if plugin.uses_clip:
        assert rec["clip"] and rec["clip"]["name"] == "ViT-B-16" and rec["clip"]["weights_hash"]
    else:
        assert not rec["clip"]
    finals = list(work.rglob("model_final.pth"))
    assert len(finals) == 1, finals
    ckpt_mb = finals[0].stat().st_size / 2**20

    # the checkpoint holds what was trained: neither the frozen CLIP nor (last iteration) the optimizer moments
    eff = rec["efficiency"]
    assert ckpt_mb * 2**20 < eff["params_trainable"] * 4 * 1.05 + 2**20, (ckpt_mb, eff["params_trainable"])
    assert eff["checkpoint_mb"] == round(ckpt_mb, 2) and eff["train_step_s"] > 0 and eff["peak_memory_mb"] > 0

    figures = {"wall_s": round(wall, 1), "eval_peak_memory_mb": eff["peak_memory_mb"],
               "checkpoint_mb": round(ckpt_mb, 1), "train_step_s": eff["train_step_s"],
               "test_images_per_s": eff["test_images_per_s"], "duration_s": rec["provenance"].get("duration_s")}
    for key, value in figures.items():
        record_property(key, value)
    with capsys.disabled():
        print(f"\n[real-config {method} @ {SIZE}px] " + ", ".join(f"{k} {v}" for k, v in figures.items()))
