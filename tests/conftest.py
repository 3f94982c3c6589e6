"""Shared fixtures: small VOC-format label folders generated on the fly."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_VOC_MASKS = REPO.parent / "shared" / "data" / "voc2012-aug-masks-sample" / "SegmentationClassAug"


def save_palette_png(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` as a palette PNG whose colours differ from the indices (as VOC's do)."""
    img = Image.fromarray(arr.astype(np.uint8), mode="P")
    pal = np.zeros((256, 3), np.uint8)
    rng = np.random.default_rng(123)
    pal[1:255] = rng.integers(1, 255, size=(254, 3))
    pal[255] = 224
    img.putpalette(pal.ravel().tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def save_gray_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def random_voc_native(rng: np.random.Generator, shape=(40, 56)) -> np.ndarray:
    """A VOC-style native map: background 0, a few boxes of ids 1..20 with 255 borders."""
    native = np.zeros(shape, np.uint8)
    for _ in range(rng.integers(1, 4)):
        cls = int(rng.integers(1, 21))
        h, w = rng.integers(6, shape[0] // 2), rng.integers(6, shape[1] // 2)
        y, x = rng.integers(0, shape[0] - h), rng.integers(0, shape[1] - w)
        native[y:y + h, x:x + w] = 255
        native[y + 1:y + h - 1, x + 1:x + w - 1] = cls
    return native


def corrupt_prediction(rng: np.random.Generator, native: np.ndarray, p_noise=0.2, p_none=0.05) -> np.ndarray:
    """Contiguous-id prediction derived from a VOC native map, with random errors and holes."""
    pred = np.where((native >= 1) & (native <= 20), native.astype(np.int64) - 1, rng.integers(0, 20, native.shape))
    noise = rng.random(native.shape) < p_noise
    pred[noise] = rng.integers(0, 20, int(noise.sum()))
    pred[rng.random(native.shape) < p_none] = 255
    return pred.astype(np.uint8)


def reference_scores(natives: list[np.ndarray], preds: list[np.ndarray], num_classes: int, seen, unseen, convention):
    """Independent slow computation: per-class loops straight from native VOC ids (k -> k-1)."""
    inter = np.zeros(num_classes)
    gt_count = np.zeros(num_classes)
    pred_count = np.zeros(num_classes)
    for native, pred in zip(natives, preds):
        valid = (native >= 1) & (native <= num_classes)
        gt = native.astype(int) - 1
        for c in range(num_classes):
            g = valid & (gt == c)
            p = valid & (pred == c)
            inter[c] += np.sum(g & p)
            gt_count[c] += np.sum(g)
            pred_count[c] += np.sum(p)
    union = gt_count + pred_count - inter
    counted = gt_count > 0 if convention == "detectron2" else union > 0
    iou = np.where(counted, inter / np.maximum(union, 1), np.nan)

    def mean(ids):
        vals = [iou[i] for i in ids if counted[i]]
        return float(np.mean(vals)) if vals else float("nan")

    s, u = mean(seen), mean(unseen)
    h = 2 * s * u / (s + u) if s + u > 0 else 0.0
    return {"mIoU_seen": 100 * s, "mIoU_unseen": 100 * u, "hIoU": 100 * h,
            "mIoU": 100 * mean(range(num_classes)), "pAcc": 100 * inter.sum() / gt_count.sum(), "iou": 100 * iou}


@pytest.fixture
def voc_folders(tmp_path):
    """A generated VOC-format ground-truth folder and a matching prediction folder (12 images)."""
    rng = np.random.default_rng(7)
    gt_dir, pred_dir = tmp_path / "SegmentationClassAug", tmp_path / "pred"
    natives, preds, stems = [], [], []
    for i in range(12):
        native = random_voc_native(rng)
        pred = corrupt_prediction(rng, native)
        stem = f"2007_{i:06d}"
        save_palette_png(gt_dir / f"{stem}.png", native)
        save_gray_png(pred_dir / f"{stem}.png", pred)
        natives.append(native)
        preds.append(pred)
        stems.append(stem)
    return {"gt_dir": gt_dir, "pred_dir": pred_dir, "natives": natives, "preds": preds, "stems": stems}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    from zss_bench.cli import main

    rc = main(list(argv))
    out = capsys.readouterr()
    return rc, out.out, out.err


def run_cli_json(capsys, *argv) -> dict:
    rc, out, err = run_cli(capsys, *argv)
    assert rc == 0, err
    return json.loads(out)


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own zss-bench cache: tests never touch ~/.cache."""
    cache = tmp_path_factory.mktemp("zss-cache")
    monkeypatch.setenv("ZSS_BENCH_CACHE", str(cache))
    return cache


def save_jpeg(path: Path, height: int, width: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8), mode="RGB").save(path, quality=90)


def make_voc_layout(root: Path, train: dict[str, np.ndarray], val: dict[str, np.ndarray],
                    train_list: str = "train_aug") -> Path:
    """Write a VOC 2012 folder in the real layout: JPEGs, SegmentationClassAug (train),
    SegmentationClass (val), ImageSets/Segmentation/{train_aug,val}.txt."""
    base = root / "VOCdevkit" / "VOC2012"
    for i, (stem, mask) in enumerate({**train, **val}.items()):
        save_jpeg(base / "JPEGImages" / f"{stem}.jpg", *mask.shape, seed=i)
    for stem, mask in train.items():
        save_palette_png(base / "SegmentationClassAug" / f"{stem}.png", mask)
    for stem, mask in val.items():
        save_palette_png(base / "SegmentationClass" / f"{stem}.png", mask)
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"{train_list}.txt").write_text("".join(f"{s}\n" for s in train))
    (lists / "val.txt").write_text("".join(f"{s}\n" for s in val))
    return base


def stock_semantic_segmentor_cfg(num_classes: int):
    """A stock detectron2 SemanticSegmentor config (R-18 FPN, CPU): what a detectron2 user has."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.config import get_cfg

    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SemanticSegmentor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.BACKBONE.NAME = "build_resnet_fpn_backbone"
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 64
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.SEM_SEG_HEAD.NUM_CLASSES = num_classes
    return cfg
