"""The synthetic world goes through the same prepare / registration / evaluate path as VOC."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from conftest import run_cli, run_cli_json, save_gray_png
from zss_bench.protocol import load_protocol


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zss_bench.data.synth import generate_world

    out = tmp_path_factory.mktemp("world")
    generate_world(out, seed=5, size=48, n_train=40, n_val=20, progress=False)
    return out


def _masks(world, split):
    stems = (world / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
    return {s: np.array(Image.open(world / "SegmentationClass" / f"{s}.png")) for s in stems}


def test_generate_prepare_evaluate_end_to_end(world, tmp_path, capsys):
    protocol = load_protocol("synth-15-5")
    report = run_cli_json(capsys, "prepare", "synth", "--root", str(world), "--json")
    train = _masks(world, "train")
    unseen_native = {i + 1 for i in protocol.unseen_ids}
    seen_native = {i + 1 for i in protocol.seen_ids}
    assert report["splits"]["train"]["images"] == 40 and report["splits"]["val"]["images"] == 20
    assert report["splits"]["train"]["with_unseen"] == sum(bool(set(np.unique(m)) & unseen_native) for m in train.values())
    assert report["splits"]["train"]["empty_after_masking"] == sum(not set(np.unique(m)) & seen_native
                                                                   for m in train.values())
    assert report["ok"] and not [p for p in report["problems"] if p["severity"] == "error"]

    # perfect predictions score 100; predictions that swap every unseen class for a seen one score U = 0
    val = _masks(world, "val")
    lut = protocol.native_lut()
    perfect, seen_only = tmp_path / "perfect", tmp_path / "seen_only"
    for stem, native in val.items():
        full = lut[native]
        pred = np.where(full == 255, 255, full).astype(np.uint8)
        save_gray_png(perfect / f"{stem}.png", pred)
        swapped = pred.copy()
        swapped[np.isin(pred, protocol.unseen_ids)] = protocol.seen_ids[0]
        save_gray_png(seen_only / f"{stem}.png", swapped)
    image_list = world / "ImageSets" / "Segmentation" / "val.txt"
    common = ("--protocol", "synth-15-5", "--gt-dir", str(world / "SegmentationClass"), "--image-list", str(image_list),
              "--json", "--n-boot", "50")
    best = run_cli_json(capsys, "evaluate", "--pred-dir", str(perfect), *common)
    assert best["hIoU"] == 100.0 and best["n_images"] == 20
    worst = run_cli_json(capsys, "evaluate", "--pred-dir", str(seen_only), *common)
    assert worst["mIoU_unseen"] == 0.0 and worst["hIoU"] == 0.0 and 0 < worst["mIoU_seen"] < 100


def test_image_list_must_exist_in_gt_dir(world, tmp_path, capsys):
    bad_list = tmp_path / "list.txt"
    bad_list.write_text("synth_val_000001\nnot_an_image\n")
    rc, out, err = run_cli(capsys, "evaluate", "--protocol", "synth-15-5", "--pred-dir", str(world / "SegmentationClass"),
                           "--gt-dir", str(world / "SegmentationClass"), "--image-list", str(bad_list))
    assert rc == 2 and "list.txt: 1 listed image(s) have no ground truth" in err and "not_an_image" in err


def test_synth_training_view_in_detectron2(world):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.data.prepare import prepare_dataset

    protocol = load_protocol("synth-15-5")
    prepare_dataset("synth", world, protocol, progress=False)
    register_protocol(protocol, world)
    dicts = DatasetCatalog.get("zss_synth-15-5_train")
    assert len(dicts) == 40
    for d in dicts:
        values = set(np.unique(np.array(Image.open(d["sem_seg_file_name"]))).tolist())
        assert values <= set(range(15)) | {255}
    meta = MetadataCatalog.get("zss_synth-15-5_train")
    assert not any("star" in name for name in meta.stuff_classes) and "blue triangle" not in meta.stuff_classes
    captions = [json.loads(line) for line in (world / "captions.jsonl").read_text().splitlines()]
    assert any("star" in c["caption"] for c in captions)  # image-level text names unseen objects, like web captions
