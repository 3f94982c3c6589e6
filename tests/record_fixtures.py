"""Fixture run records for the picture and report tests: real confusion matrices and metrics, training
curves and saved predictions, written with ``write_run`` in a second (no model, no training)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from zss_bench.evaluation import score
from zss_bench.metrics import ConfusionMatrix
from zss_bench.protocol import load_protocol
from zss_bench.records import write_run
from zss_bench.records.predictions import KeptPrediction, prediction_files

PROTOCOL = load_protocol("synth-15-5")
N_IMAGES, SIZE = 12, 32
CLIP_HASH = "0bbd62d0" + "0" * 56


def world(seed: int = 0) -> list[np.ndarray]:
    """Ground-truth maps of contiguous ids with an ignored (255) border, as the evaluation view has."""
    rng = np.random.default_rng(seed)
    gts = []
    for _ in range(N_IMAGES):
        gt = np.full((SIZE, SIZE), 255, np.uint8)
        for cls in rng.choice(20, size=2, replace=False):
            y, x = rng.integers(2, SIZE // 2, size=2)
            gt[y:y + SIZE // 2, x:x + SIZE // 2] = cls
        gts.append(gt)
    return gts


def predictions(gts, p_wrong: float, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.where(rng.random(g.shape) < p_wrong, rng.integers(0, 20, g.shape), np.where(g == 255, 0, g)).astype(np.uint8)
            for g in gts]


def confusion(gts, preds) -> ConfusionMatrix:
    cm = ConfusionMatrix(20, ignore_index=255, track_images=True)
    for i, (gt, pred) in enumerate(zip(gts, preds)):
        cm.update(pred, gt, image_ids=[f"img{i:03d}"])
    return cm


def curves_file(path: Path, iterations: int = 20) -> Path:
    """A detectron2-style metrics.json: JSON lines with losses and lr, plus an evaluation line without iteration."""
    lines = [json.dumps({"iteration": it, "total_loss": 3.0 / (1 + it), "loss_sem_seg": 2.5 / (1 + it),
                         "loss_distill": 0.5 / (1 + it), "lr": 0.01 * min(1.0, (it + 1) / 5), "time": 0.1})
             for it in range(0, iterations, 2)]
    lines.append(json.dumps({"sem_seg/hIoU": 40.0}))
    path.write_text("\n".join(lines) + "\n")
    return path


def kept_predictions(tmp: Path, gts, preds, n: int, image_size=(SIZE, SIZE)) -> list[KeptPrediction]:
    kept = []
    for i in range(n):
        image = tmp / f"img{i:03d}.jpg"
        rng = np.random.default_rng(i)
        Image.fromarray(rng.integers(0, 255, (*image_size[::-1], 3), dtype=np.uint8)).save(image, quality=90)
        kept.append(KeptPrediction(str(image), f"img{i:03d}", preds[i], gts[i]))
    return kept


def record(run_id: str, method: str, seed: int, cm: ConfusionMatrix, label: str = "default",
           origin: str = "trained here", protocol=PROTOCOL) -> dict:
    """A run record of ``cm``; ``protocol``: any 20-class protocol (synth-15-5, or voc-15-5 for a fake VOC run)."""
    return {"run_id": run_id, "kind": "run",
            "protocol": {"name": protocol.name, "version": protocol.version, "hash": protocol.content_hash},
            "method": {"name": method, "label": label},
            "clip": {"spec": "zss-toy-vit:synth-v1", "weights_hash": CLIP_HASH},
            "training": {"performed": True, "max_iter": 20, "weights": {"origin": origin}},
            "provenance": {"seed": seed, "versions": {"zss_bench": "0.1.0"}, "git": {"commit": "abc123"}},
            "metrics": score(cm, protocol, n_boot=50, seed=seed)}


def write_fixture_results(root: Path, scratch: Path) -> dict[str, Path]:
    """Two methods x two seeds under ``root``; chimera seed 0 keeps curves and 3 predictions, seen-only
    seed 1 has neither. -> {"chimera-0": run dir, ...}."""
    gts = world()
    scratch.mkdir(parents=True, exist_ok=True)
    runs = {}
    n = 0
    for method, p_wrong in (("chimera", 0.2), ("seen-only", 0.5)):
        for seed in (0, 1):
            n += 1
            preds = predictions(gts, p_wrong, 10 * seed + n)
            cm = confusion(gts, preds)
            rec = record(f"20261202-00000{n}-aaaaaa", method, seed, cm)
            extra: dict = {}
            if (method, seed) != ("seen-only", 1):
                extra["metrics.json"] = curves_file(scratch / f"metrics-{n}.json")
                rec["training"]["curves"] = "metrics.json"
            if (method, seed) == ("chimera", 0):
                files, rec["predictions"] = prediction_files(kept_predictions(scratch, gts, preds, 3))
                extra.update(files)
            runs[f"{method}-{seed}"] = write_run(root, rec, cm, extra_files=extra)
    return runs
