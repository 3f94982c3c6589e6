"""COCO-Stuff and PASCAL Context adapters on generated data in their real layouts."""
from __future__ import annotations

import numpy as np
import pytest

from conftest import run_cli_json, save_gray_png, save_jpeg, save_palette_png
from zss_bench.data.prepare import PrepareError, prepare_dataset
from zss_bench.protocol import load_protocol


def _coco_masks(rng, n, trainids=False):
    protocol = load_protocol("coco-stuff-156-15")
    natives = sorted(protocol.native_map)  # stuffthingmaps values that are classes
    masks = {}
    for i in range(n):
        m = np.full((24, 32), 255, np.uint8)
        for _ in range(3):
            v = int(rng.choice(natives))
            y, x = rng.integers(0, 16), rng.integers(0, 24)
            m[y:y + 8, x:x + 8] = protocol.native_map[v] if trainids else v
        masks[f"{i:012d}"] = m
    return masks


def _write_coco(root, split, masks, trainids=False):
    base = root / "coco_stuff164k"
    for i, (stem, m) in enumerate(masks.items()):
        save_jpeg(base / "images" / split / f"{stem}.jpg", *m.shape, seed=i)
        name = f"{stem}_labelTrainIds.png" if trainids else f"{stem}.png"
        save_gray_png(base / "annotations" / split / name, m)


@pytest.mark.parametrize("trainids", [False, True])
def test_coco_stuff_raw_and_labeltrainids(tmp_path, capsys, trainids):
    rng = np.random.default_rng(1)
    protocol = load_protocol("coco-stuff-156-15")
    train, val = _coco_masks(rng, 12, trainids), _coco_masks(rng, 5, trainids)
    _write_coco(tmp_path, "train2017", train, trainids)
    _write_coco(tmp_path, "val2017", val, trainids)
    report = run_cli_json(capsys, "prepare", "coco-stuff", "--root", str(tmp_path), "--json")
    lut = np.arange(256) if trainids else protocol.native_lut()
    unseen = set(protocol.unseen_ids)
    with_unseen = sum(bool(set(lut[np.unique(m)].tolist()) & unseen) for m in train.values())
    assert report["splits"]["train"]["images"] == 12 and report["splits"]["val"]["images"] == 5
    assert report["splits"]["train"]["with_unseen"] == with_unseen
    total = {name: 0 for name in protocol.classes}
    for m in train.values():
        for v, c in zip(*np.unique(m[m != 255], return_counts=True)):
            total[protocol.classes[int(lut[v])]] += int(c)
    assert report["class_pixels"]["train"] == total


def test_coco_stuff_unused_native_id_is_rejected(tmp_path):
    rng = np.random.default_rng(2)
    train = _coco_masks(rng, 3)
    first = next(iter(train))
    train[first][0, 0] = 11  # COCO id 12 ("street sign") was never annotated in COCO-Stuff
    _write_coco(tmp_path, "train2017", train)
    _write_coco(tmp_path, "val2017", _coco_masks(rng, 2))
    with pytest.raises(PrepareError, match=rf"annotations/train2017/{first}\.png: annotation label ids \[11\]"):
        prepare_dataset("coco-stuff", tmp_path, load_protocol("coco-stuff-156-15"), progress=False)


@pytest.mark.parametrize("protocol_name", ["context-59-zs3", "context-59-cascade"])
def test_context_layout_and_both_splits(tmp_path, capsys, protocol_name):
    rng = np.random.default_rng(4)
    protocol = load_protocol(protocol_name)
    base = tmp_path / "VOCdevkit" / "VOC2010"
    stems = {"train": [f"2008_{i:06d}" for i in range(10)], "val": [f"2010_{i:06d}" for i in range(4)]}
    masks = {}
    for split, names in stems.items():
        for stem in names:
            m = rng.integers(0, 60, size=(20, 30)).astype(np.uint8)  # 0 = background, 1..59 classes
            masks[stem] = m
            save_jpeg(base / "JPEGImages" / f"{stem}.jpg", *m.shape)
            save_palette_png(base / "SegmentationClassContext" / f"{stem}.png", m)
        lists = base / "ImageSets" / "SegmentationContext"
        lists.mkdir(parents=True, exist_ok=True)
        (lists / f"{split}.txt").write_text("\n".join(names) + "\n")
    report = run_cli_json(capsys, "prepare", "context", "--root", str(tmp_path), "--protocol", protocol_name, "--json")
    unseen_native = {i + 1 for i in protocol.unseen_ids}
    seen_native = {i + 1 for i in protocol.seen_ids}
    train_masks = [masks[s] for s in stems["train"]]
    assert report["splits"]["train"]["with_unseen"] == sum(bool(set(np.unique(m)) & unseen_native) for m in train_masks)
    masked = sum(int(np.isin(m, list(unseen_native)).sum()) for m in train_masks)
    assert report["splits"]["train"]["unseen_pixels_masked"] == masked > 0
    assert report["class_pixels"]["train"][protocol.classes[0]] == sum(int((m == 1).sum()) for m in train_masks)
    assert any("expects 4998" in p["message"] for p in report["problems"])
