"""``make demo`` / ``zss-bench demo``: the most complete end-to-end job that exists today.

Stage of the project: protocols, metrics, ``evaluate``, run records, ``leaderboard`` and
``compare`` exist; the synthetic world generator and the Chimera-Seg trainer do not yet.
So the demo scores *simulated* predictions on simple synthetic label maps in the
``synth-15-5`` index space, and says so. The two simulated predictors are deliberately
simple models of ZSS behaviour (a seen-only model that maps unseen objects to seen classes,
and one that recognises some unseen objects), each run with three seeds; nothing is tuned.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from zss_bench.cli import main as cli_main
from zss_bench.protocol import load_protocol

PROTOCOL = "synth-15-5"
N_IMAGES, SIZE = 48, 96
# (method name, P(seen object right), P(unseen object right))
SIMULATED = (("simulated-seen-only", 0.90, 0.0), ("simulated-aligned", 0.85, 0.55))


def _palette() -> list[int]:
    rng = np.random.default_rng(0)
    pal = rng.integers(0, 256, size=(256, 3)).astype(int)
    pal[0] = 0
    pal[255] = 255
    return pal.ravel().tolist()


def _save_png(path: Path, arr: np.ndarray) -> None:
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    img.putpalette(_palette())
    img.save(path)


def make_ground_truth(folder: Path, num_classes: int, seed: int = 0) -> list[tuple[str, np.ndarray, list]]:
    """Label maps (native ids: 0 background, k = class k-1, 255 boundary) of 1-3 boxes each."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(N_IMAGES):
        native = np.zeros((SIZE, SIZE), np.uint8)
        objects = []
        for _ in range(rng.integers(1, 4)):
            cls = int(rng.integers(0, num_classes))
            h, w = rng.integers(16, 48, size=2)
            y, x = rng.integers(0, SIZE - h), rng.integers(0, SIZE - w)
            native[y:y + h, x:x + w] = 255
            native[y + 1:y + h - 1, x + 1:x + w - 1] = cls + 1
            objects.append((cls, (y, x, h, w)))
        stem = f"synth_{i:04d}"
        _save_png(folder / f"{stem}.png", native)
        out.append((stem, native, objects))
    return out


def make_predictions(folder: Path, gt, protocol, p_seen: float, p_unseen: float, seed: int) -> None:
    """Object-level simulated predictions: right with the given probability, else a seen class."""
    rng = np.random.default_rng(seed)
    unseen = set(protocol.unseen_ids)
    seen = np.array(protocol.seen_ids)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, native, objects in gt:
        pred = np.full(native.shape, 255, np.uint8)  # background: no prediction (it is ignored anyway)
        for cls, (y, x, h, w) in objects:
            right = rng.random() < (p_unseen if cls in unseen else p_seen)
            label = cls if right else int(rng.choice(seen[seen != cls]))
            pred[y:y + h, x:x + w] = label
        noise = rng.random(pred.shape) < 0.03  # scattered pixel errors
        pred[noise] = rng.choice(seen, size=int(noise.sum()))
        _save_png(folder / f"{stem}.png", pred)


def run_demo(out: Path) -> int:
    print("zss-bench demo (foundation stage): the synthetic world and Chimera-Seg are not built yet,\n"
          "so this scores SIMULATED predictions on synthetic label maps to exercise\n"
          "protocol -> evaluate -> run records -> leaderboard -> compare.\n")
    cli_main(["protocols"])
    protocol = load_protocol(PROTOCOL)
    if out.exists():
        shutil.rmtree(out)
    gt = make_ground_truth(out / "gt", protocol.num_classes)
    results = out / "results"
    first_runs = {}
    for method, p_seen, p_unseen in SIMULATED:
        for seed in (0, 1, 2):
            pred_dir = out / "pred" / method / f"seed{seed}"
            make_predictions(pred_dir, gt, protocol, p_seen, p_unseen, seed=1000 * seed + len(method))
            print(f"\n$ zss-bench evaluate --protocol {PROTOCOL} --pred-dir {pred_dir} --gt-dir {out / 'gt'} "
                  f"--method {method} --seed {seed} --out {results}")
            rc = cli_main(["evaluate", "--protocol", PROTOCOL, "--pred-dir", str(pred_dir), "--gt-dir", str(out / "gt"),
                           "--method", method, "--seed", str(seed), "--out", str(results), "--quiet"])
            if rc:
                return rc
            if seed == 0:
                first_runs[method] = next((results / "runs" / PROTOCOL / method).iterdir())
    print(f"\n$ zss-bench leaderboard --results {results}")
    cli_main(["leaderboard", "--results", str(results)])
    a, b = (first_runs[m] for m, _, _ in SIMULATED)
    print(f"$ zss-bench compare {a} {b}")
    return cli_main(["compare", str(a), str(b), "--n-boot", "1000"])
