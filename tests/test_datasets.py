"""Dataset adapters, `zss-bench prepare`, the training view and detectron2 registration."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from conftest import (SHARED_VOC_MASKS, make_voc_layout, random_voc_native, run_cli, save_palette_png,
                      stock_semantic_segmentor_cfg)
from zss_bench.data.prepare import PrepareError, prepare_dataset
from zss_bench.protocol import load_protocol

UNSEEN_NATIVE = {16, 17, 18, 19, 20}


def _expected(train: dict, val: dict) -> dict:
    """Independent counts straight from the native masks."""
    has_unseen = [bool(set(np.unique(m).tolist()) & UNSEEN_NATIVE) for m in train.values()]
    has_seen = [bool(((m >= 1) & (m <= 15)).any()) for m in train.values()]
    pixels = {n: sum(int((m == n).sum()) for m in train.values()) for n in range(1, 21)}
    unseen_pixels = sum(int(np.isin(m, list(UNSEEN_NATIVE)).sum()) for m in train.values())
    return {"train": {"images": len(train), "with_unseen": sum(has_unseen), "empty_after_masking": sum(not s for s in has_seen),
                      "unseen_pixels_masked": unseen_pixels}, "val": {"images": len(val)}, "pixels": pixels}


@pytest.fixture
def voc_root(tmp_path):
    rng = np.random.default_rng(3)
    train = {f"2008_{i:06d}": random_voc_native(rng) for i in range(24)}
    train["2008_only_unseen"] = np.where(random_voc_native(rng) > 0, 17, 0).astype(np.uint8)  # sheep only
    val = {f"2009_{i:06d}": random_voc_native(rng) for i in range(8)}
    make_voc_layout(tmp_path / "data", train, val)
    return {"root": tmp_path / "data", "train": train, "val": val}


def test_prepare_voc_counts_match_independent_computation(voc_root, capsys):
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(voc_root["root"]), "--json")
    assert rc == 0, err
    report = json.loads(out)
    exp = _expected(voc_root["train"], voc_root["val"])
    train = report["splits"]["train"]
    for key, value in exp["train"].items():
        assert train[key] == value, key
    assert train["kept"] == train["images"] and train["dropped_by_policy"] == 0  # policy: ignore
    assert train["empty_after_policy"] == exp["train"]["empty_after_masking"] >= 1
    assert report["splits"]["val"]["images"] == 8
    names = load_protocol("voc-15-5").classes
    for native, count in exp["pixels"].items():
        assert report["class_pixels"]["train"][names[native - 1]] == count
    warnings = [p for p in report["problems"] if p["severity"] == "warning"]
    assert any("expects 10582" in p["message"] for p in warnings)  # a subset, reported not fatal
    assert Path(report["cache"]).is_dir() and not str(report["cache"]).startswith(str(voc_root["root"]))


@pytest.mark.skipif(not SHARED_VOC_MASKS.is_dir(), reason="shared/ VOC mask sample not present beside the checkout")
def test_prepare_on_real_voc_masks(tmp_path, capsys):
    masks = {}
    for p in sorted(SHARED_VOC_MASKS.glob("*.png")):
        with Image.open(p) as img:
            masks[p.stem] = np.array(img)
    stems = list(masks)
    train = {s: masks[s] for s in stems[:40]}
    val = {s: masks[s] for s in stems[40:]}
    make_voc_layout(tmp_path / "data", train, val)
    # the real layout also works with train.txt + aug.txt instead of train_aug.txt
    lists = tmp_path / "data" / "VOCdevkit" / "VOC2012" / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").unlink()
    (lists / "train.txt").write_text("".join(f"{s}\n" for s in stems[:25]))
    (lists / "aug.txt").write_text("".join(f"{s}\n" for s in stems[20:40]))
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(tmp_path / "data"), "--json")
    assert rc == 0, err
    report = json.loads(out)
    exp = _expected(train, val)
    for key, value in exp["train"].items():
        assert report["splits"]["train"][key] == value, key
    assert exp["train"]["with_unseen"] > 0  # the sample really has unseen classes


def test_training_view_never_holds_unseen_ids(voc_root):
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from zss_bench.data.d2_datasets import register_protocol

    protocol = load_protocol("voc-15-5")
    prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    names = register_protocol(protocol, voc_root["root"])
    assert names == {"train": "zss_voc-15-5_train", "val": "zss_voc-15-5_val"}
    dicts = DatasetCatalog.get("zss_voc-15-5_train")
    assert len(dicts) == len(voc_root["train"])
    seen_values = set()
    for d in dicts:
        target = np.array(Image.open(d["sem_seg_file_name"]))
        values = set(np.unique(target).tolist())
        assert values <= set(range(15)) | {255}, d["sem_seg_file_name"]
        native = voc_root["train"][d["image_id"]]
        expected = np.where((native >= 1) & (native <= 15), native.astype(int) - 1, 255)
        np.testing.assert_array_equal(target, expected)
        seen_values |= values
    assert len(seen_values) > 5
    meta = MetadataCatalog.get("zss_voc-15-5_train")
    assert meta.stuff_classes == list(protocol.seen_names) and meta.ignore_label == 255
    assert not set(protocol.unseen_names) & set(json.dumps(meta.as_dict()).split('"'))
    assert meta.zss_leakage_audit["unseen_pixels_masked"] > 0
    val_meta = MetadataCatalog.get("zss_voc-15-5_val")
    assert val_meta.stuff_classes == list(protocol.classes) and val_meta.unseen_ids == [15, 16, 17, 18, 19]
    val_target = np.array(Image.open(DatasetCatalog.get("zss_voc-15-5_val")[0]["sem_seg_file_name"]))
    assert set(np.unique(val_target).tolist()) <= set(range(20)) | {255}


@pytest.mark.parametrize("policy,dropped", [("drop-images", "with_unseen"), ("drop-empty", "empty_after_masking")])
def test_unseen_pixel_policies(voc_root, tmp_path, policy, dropped):
    text = (Path(load_protocol("voc-15-5").path).read_text()
            .replace("unseen_pixels: ignore", f"unseen_pixels: {policy}"))
    path = tmp_path / "custom" / "voc-15-5.yaml"
    path.parent.mkdir()
    path.write_text(text)
    protocol = load_protocol(str(path))
    report = prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    train = report["splits"]["train"]
    exp = _expected(voc_root["train"], voc_root["val"])["train"]
    assert train["dropped_by_policy"] == exp[dropped] > 0
    assert train["kept"] == len(voc_root["train"]) - exp[dropped]
    assert train["empty_after_policy"] == 0
    index = json.loads((Path(report["cache"]) / "index.json").read_text())
    kept_ids = {img["id"] for img in index["splits"]["train"]}
    assert ("2008_only_unseen" in kept_ids) is False
    assert len(list((Path(report["cache"]) / "labels" / "train").glob("*.png"))) == train["kept"]


def test_mapper_guard_rejects_unseen_targets(voc_root):
    import torch
    from detectron2.config import get_cfg
    from detectron2.data import DatasetCatalog

    from zss_bench.data.d2_datasets import SeenOnlyDatasetMapper, register_protocol
    from zss_bench.data.inductive import LeakageError

    protocol = load_protocol("voc-15-5")
    prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    register_protocol(protocol, voc_root["root"])
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = ("zss_voc-15-5_train",)
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    mapper = SeenOnlyDatasetMapper(cfg, is_train=True)
    good = mapper(dict(DatasetCatalog.get("zss_voc-15-5_train")[0]))
    assert isinstance(good["sem_seg"], torch.Tensor)
    def has_unseen(d):
        target = np.array(Image.open(d["sem_seg_file_name"]))
        return bool(((target >= 15) & (target < 255)).any())

    # an eval-view target (full label space, unseen ids present) smuggled into training
    leaky = next(d for d in DatasetCatalog.get("zss_voc-15-5_val") if has_unseen(d))
    with pytest.raises(LeakageError, match="outside the 15 seen classes"):
        for _ in range(5):  # random flips cannot remove the ids
            mapper(dict(leaky))


def test_stock_detectron2_loader_and_model_train_on_registered_dataset(voc_root):
    import torch
    from detectron2.data import build_detection_train_loader
    from detectron2.modeling import build_model

    from zss_bench.data.d2_datasets import register_protocol

    protocol = load_protocol("voc-15-5")
    prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    register_protocol(protocol, voc_root["root"])
    cfg = stock_semantic_segmentor_cfg(num_classes=len(protocol.seen_ids))
    cfg.DATASETS.TRAIN = ("zss_voc-15-5_train",)
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.INPUT.MIN_SIZE_TRAIN = (40,)
    loader = iter(build_detection_train_loader(cfg))  # the stock DatasetMapper, an unseeded sampler
    for _ in range(50):  # a batch whose pixels are all ignored has no defined CE (NaN in stock d2)
        batch = next(loader)
        for b in batch:
            assert set(b["sem_seg"].unique().tolist()) <= set(range(15)) | {255}
        if any((b["sem_seg"] != 255).any() for b in batch):
            break
    model = build_model(cfg)
    losses = model(batch)
    assert torch.isfinite(losses["loss_sem_seg"])


# --- bad data: each case names the file -------------------------------------------------------

def _break(voc_root, case: str) -> str:
    base = voc_root["root"] / "VOCdevkit" / "VOC2012"
    stem = sorted(voc_root["train"])[3]
    if case == "corrupt image":
        (base / "JPEGImages" / f"{stem}.jpg").write_bytes(b"not a jpeg at all")
        return f"JPEGImages/{stem}.jpg: unreadable or corrupt image"
    if case == "corrupt mask":
        (base / "SegmentationClassAug" / f"{stem}.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
        return f"SegmentationClassAug/{stem}.png: unreadable or corrupt"
    if case == "size mismatch":
        save_palette_png(base / "SegmentationClassAug" / f"{stem}.png", np.zeros((10, 12), np.uint8))
        return f"SegmentationClassAug/{stem}.png: mask size 12x10 (WxH) differs from its image"
    if case == "bad label value":
        mask = voc_root["train"][stem].copy()
        mask[2, 2] = 42
        save_palette_png(base / "SegmentationClassAug" / f"{stem}.png", mask)
        return f"SegmentationClassAug/{stem}.png: annotation label ids [42] are not defined by the protocol"
    if case == "rgb mask":
        Image.fromarray(np.zeros((40, 56, 3), np.uint8)).save(base / "SegmentationClassAug" / f"{stem}.png")
        return f"SegmentationClassAug/{stem}.png: expected a single-channel or palette label PNG"
    if case == "missing image":
        (base / "JPEGImages" / f"{stem}.jpg").unlink()
        return f"JPEGImages/{stem}.jpg: listed in train_aug.txt but the image is missing"
    if case == "missing list":
        (base / "ImageSets" / "Segmentation" / "val.txt").unlink()
        return "val.txt: split list missing"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["corrupt image", "corrupt mask", "size mismatch", "bad label value", "rgb mask",
                                  "missing image", "missing list"])
def test_bad_data_gives_clear_error_naming_the_file(voc_root, capsys, case):
    expected = _break(voc_root, case)
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(voc_root["root"]))
    assert rc == 2
    assert expected in err, err


def test_report_only_lists_every_problem_and_writes_nothing(voc_root, capsys, isolated_cache):
    cases = ["corrupt image", "bad label value", "missing image"]
    stems = sorted(voc_root["train"])
    base = voc_root["root"] / "VOCdevkit" / "VOC2012"
    (base / "JPEGImages" / f"{stems[0]}.jpg").write_bytes(b"junk")
    mask = voc_root["train"][stems[1]].copy()
    mask[0, 0] = 99
    save_palette_png(base / "SegmentationClassAug" / f"{stems[1]}.png", mask)
    (base / "JPEGImages" / f"{stems[2]}.jpg").unlink()
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(voc_root["root"]), "--report-only", "--json")
    assert rc == 1
    report = json.loads(out)
    errors = [p for p in report["problems"] if p["severity"] == "error"]
    assert len(errors) == len(cases)
    assert {Path(p["path"]).stem for p in errors} == set(stems[:3])
    assert report["ok"] is False and "cache" not in report
    assert not any(isolated_cache.rglob("index.json"))


def test_failed_prepare_keeps_previous_index(voc_root, capsys):
    protocol = load_protocol("voc-15-5")
    first = prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    before = (Path(first["cache"]) / "index.json").read_text()
    _break(voc_root, "bad label value")
    with pytest.raises(PrepareError):
        prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    assert (Path(first["cache"]) / "index.json").read_text() == before
    assert [p.name for p in Path(first["cache"]).parent.iterdir()] == [Path(first["cache"]).name]


def test_unprepared_dataset_registration_says_what_to_run(tmp_path):
    from zss_bench.data.d2_datasets import register_protocol

    (tmp_path / "empty").mkdir()
    with pytest.raises(PrepareError, match=r"not prepared: run `zss-bench prepare voc --root"):
        register_protocol(load_protocol("voc-15-5"), tmp_path / "empty")


def test_wrong_dataset_for_protocol_and_missing_root(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "prepare", "coco-stuff", "--root", str(tmp_path), "--protocol", "voc-15-5")
    assert rc == 2 and "is for dataset 'voc', not 'coco-stuff'" in err
    rc, out, err = run_cli(capsys, "prepare", "voc", "--root", str(tmp_path / "nope"))
    assert rc == 2 and "does not exist" in err


def test_zss_evaluator_is_a_drop_in_detectron2_evaluator(voc_root, tmp_path):
    """A stock detectron2 project: SemanticSegmentor + build_detection_test_loader +
    inference_on_dataset, with ZSSEvaluator, reports hIoU and writes a record."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset
    from detectron2.modeling import build_model

    from zss_bench.integrations.detectron2 import ZSSEvaluator, register_protocol  # the README's recipe
    from zss_bench.records import load_run

    protocol = load_protocol("voc-15-5")
    prepare_dataset("voc", voc_root["root"], protocol, progress=False)
    register_protocol(protocol, voc_root["root"])
    cfg = stock_semantic_segmentor_cfg(num_classes=len(protocol.classes))
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TEST = 40
    model = build_model(cfg).eval()
    evaluator = ZSSEvaluator("zss_voc-15-5_val", results_dir=str(tmp_path / "results"), method="stock-d2")
    results = inference_on_dataset(model, build_detection_test_loader(cfg, "zss_voc-15-5_val"), evaluator)
    sem = results["sem_seg"]
    assert {"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"} <= set(sem)
    assert f"IoU-{protocol.classes[0]}" in sem and 0 <= sem["pAcc"] <= 100
    rec = load_run(sem["record"]).record
    assert rec["method"]["name"] == "stock-d2" and rec["metrics"]["hIoU"] == sem["hIoU"]
    assert rec["protocol"]["hash"] == protocol.content_hash
