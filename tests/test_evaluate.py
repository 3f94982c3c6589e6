"""`zss-bench evaluate`: agreement with an independent computation, and clear errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import (SHARED_VOC_MASKS, corrupt_prediction, reference_scores, run_cli, run_cli_json,
                      save_gray_png, save_palette_png)
from zss_bench.data.masks import LabelFileError, read_label_png

VOC_SEEN, VOC_UNSEEN = list(range(15)), list(range(15, 20))
KEYS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "pAcc")


def _check(result: dict, ref: dict) -> None:
    for key in KEYS:
        assert result[key] == pytest.approx(ref[key], abs=1e-6), key


@pytest.mark.parametrize("convention", ["mmseg", "detectron2"])
def test_evaluate_matches_independent_computation(voc_folders, capsys, convention):
    out = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(voc_folders["pred_dir"]),
                       "--gt-dir", str(voc_folders["gt_dir"]), "--json", "--n-boot", "200")
    assert out["convention"] == "mmseg"  # voc-15-5's headline
    block = out if convention == "mmseg" else out["other_conventions"]["detectron2"]
    ref = reference_scores(voc_folders["natives"], voc_folders["preds"], 20, VOC_SEEN, VOC_UNSEEN, convention)
    _check(block, ref)
    if convention == "mmseg":
        names = list(out["per_class"])
        assert names[15] == "potted plant" and len(names) == 20
        for i, name in enumerate(names):
            expected = ref["iou"][i]
            assert (out["per_class"][name] is None) == np.isnan(expected)
            if not np.isnan(expected):
                assert out["per_class"][name] == pytest.approx(expected, abs=1e-6)
        ci = out["ci"]["hIoU"]
        assert ci["low"] <= out["hIoU"] <= ci["high"]
    assert out["n_images"] == 12


def test_conventions_differ_on_hallucinated_absent_class(tmp_path, capsys):
    """A class absent from GT but predicted scores 0 under mmseg and is excluded under detectron2."""
    native = np.zeros((20, 20), np.uint8)
    native[:, :10] = 1  # aeroplane (seen 0)
    native[:, 10:] = 16  # potted plant (unseen 15)
    pred = np.full((20, 20), 0, np.uint8)
    pred[:, 10:] = 15
    pred[0, 0] = 19  # one hallucinated tvmonitor pixel: tvmonitor has no GT
    save_palette_png(tmp_path / "gt" / "a.png", native)
    save_gray_png(tmp_path / "pred" / "a.png", pred)
    out = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(tmp_path / "pred"),
                       "--gt-dir", str(tmp_path / "gt"), "--json", "--n-boot", "0")
    assert out["per_class"]["tvmonitor"] == 0.0
    assert out["mIoU_unseen"] == pytest.approx(50.0)  # (100 + 0) / 2
    d2 = out["other_conventions"]["detectron2"]
    assert d2["mIoU_unseen"] == pytest.approx(100.0)
    assert out["mIoU_seen"] == pytest.approx(100 * 199 / 200) == d2["mIoU_seen"]


@pytest.mark.skipif(not SHARED_VOC_MASKS.is_dir(), reason="shared/ VOC mask sample not present beside the checkout")
def test_evaluate_on_real_voc_masks(tmp_path, capsys):
    rng = np.random.default_rng(0)
    natives, preds = [], []
    pred_dir = tmp_path / "pred"
    stems = sorted(p.stem for p in SHARED_VOC_MASKS.glob("*.png"))
    assert len(stems) == 50
    for stem in stems:
        with Image.open(SHARED_VOC_MASKS / f"{stem}.png") as img:
            assert img.mode == "P"  # real VOC annotations are palette PNGs
            native = np.array(img)
        pred = corrupt_prediction(rng, native, p_noise=0.1)
        save_gray_png(pred_dir / f"{stem}.png", pred)
        natives.append(native)
        preds.append(pred)
    assert max(int(n[n != 255].max()) for n in natives) <= 20
    out = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(pred_dir),
                       "--gt-dir", str(SHARED_VOC_MASKS), "--json", "--n-boot", "100")
    for convention, block in (("mmseg", out), ("detectron2", out["other_conventions"]["detectron2"])):
        _check(block, reference_scores(natives, preds, 20, VOC_SEEN, VOC_UNSEEN, convention))


def test_palette_png_is_read_as_indices_not_rgb(tmp_path):
    arr = np.array([[0, 1, 15], [20, 255, 3]], np.uint8)
    save_palette_png(tmp_path / "m.png", arr)
    with Image.open(tmp_path / "m.png") as img:
        assert img.mode == "P" and np.array(img.convert("RGB"))[0, 1].tolist() != [1, 1, 1]
    np.testing.assert_array_equal(read_label_png(tmp_path / "m.png"), arr)


def test_rgb_label_png_is_rejected(tmp_path):
    Image.fromarray(np.zeros((4, 4, 3), np.uint8), mode="RGB").save(tmp_path / "rgb.png")
    with pytest.raises(LabelFileError, match=r"rgb\.png.*single-channel or palette.*'RGB'"):
        read_label_png(tmp_path / "rgb.png")


def test_corrupt_label_png_names_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(LabelFileError, match=r"bad\.png: unreadable or corrupt"):
        read_label_png(tmp_path / "bad.png")


def _evaluate(capsys, gt_dir, pred_dir, *extra):
    return run_cli(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(pred_dir),
                   "--gt-dir", str(gt_dir), "--json", "--n-boot", "0", *extra)


def test_missing_predictions_are_an_error_listing_stems(voc_folders, capsys):
    for stem in voc_folders["stems"][:7]:
        (voc_folders["pred_dir"] / f"{stem}.png").unlink()
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"])
    assert rc == 2
    assert "7 ground-truth image(s)" in err and voc_folders["stems"][0] in err and "(7 in all)" in err
    assert "--allow-missing" in err and "pass --image-list FILE" in err  # a folder of several splits: the list is the fix


def test_native_id_predictions_get_a_contiguous_id_hint(voc_folders, capsys):
    from conftest import save_gray_png

    stem = voc_folders["stems"][0]
    native_like = np.full_like(voc_folders["preds"][0], 20)  # VOC's native id of the 20th class
    save_gray_png(voc_folders["pred_dir"] / f"{stem}.png", native_like)
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"])
    assert rc == 2 and f"{stem}.png" in err and "invalid class ids [20]" in err
    assert "contiguous ids 0..19 in the protocol's class order" in err and "need --pred-ids native" in err


def test_allow_missing_scores_missing_images_as_all_wrong(voc_folders, capsys):
    missing = voc_folders["stems"][:3]
    for stem in missing:
        (voc_folders["pred_dir"] / f"{stem}.png").unlink()
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"], "--allow-missing")
    assert rc == 0, err
    result = json.loads(out)
    preds = [np.full_like(p, 255) if s in missing else p
             for s, p in zip(voc_folders["stems"], voc_folders["preds"])]
    _check(result, reference_scores(voc_folders["natives"], preds, 20, VOC_SEEN, VOC_UNSEEN, "mmseg"))


def test_size_mismatch_names_both_files(voc_folders, capsys):
    stem = voc_folders["stems"][4]
    save_gray_png(voc_folders["pred_dir"] / f"{stem}.png", np.zeros((10, 10), np.uint8))
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"])
    assert rc == 2
    assert f"pred/{stem}.png: prediction size 10x10" in err and "56x40" in err


def test_ground_truth_id_outside_protocol_names_file(voc_folders, capsys):
    stem = voc_folders["stems"][2]
    native = voc_folders["natives"][2].copy()
    native[0, 0] = 21
    save_palette_png(voc_folders["gt_dir"] / f"{stem}.png", native)
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"])
    assert rc == 2
    assert f"{stem}.png: ground-truth label ids [21]" in err and "(allowed: 0-20, 255)" in err


def test_prediction_id_outside_protocol_names_file(voc_folders, capsys):
    stem = voc_folders["stems"][5]
    pred = voc_folders["preds"][5].copy()
    pred[0, 0] = 20  # contiguous ids are 0..19
    save_gray_png(voc_folders["pred_dir"] / f"{stem}.png", pred)
    rc, out, err = _evaluate(capsys, voc_folders["gt_dir"], voc_folders["pred_dir"])
    assert rc == 2
    assert f"pred/{stem}.png" in err and "20" in err


def test_unknown_protocol_suggests(voc_folders, capsys):
    rc, out, err = run_cli(capsys, "evaluate", "--protocol", "voc-15-6", "--pred-dir", str(voc_folders["pred_dir"]),
                           "--gt-dir", str(voc_folders["gt_dir"]))
    assert rc == 2 and "voc-15-5" in err


@pytest.mark.parametrize("protocol", ["voc-15-5", "coco-stuff-156-15"])
def test_native_id_predictions_score_like_contiguous_ones(tmp_path, capsys, protocol):
    """mmseg's format_only writes the dataset's own ids (VOC with reduce_zero_label: ids + 1; COCO-Stuff-171 its
    182-id space): --pred-ids native maps them like the ground truth, to the same numbers as contiguous ids."""
    from conftest import save_gray_png

    from zss_bench.protocol import load_protocol

    proto = load_protocol(protocol)
    lut = proto.native_lut()
    native_of = {int(c): int(n) for n, c in enumerate(lut) if 0 <= c < proto.num_classes}  # contiguous -> native
    rng = np.random.default_rng(3)
    dirs = {k: tmp_path / k for k in ("gt", "contiguous", "native")}
    for i in range(6):
        gt = rng.integers(0, proto.num_classes, size=(24, 32))
        pred = np.where(rng.random(gt.shape) < 0.3, rng.integers(0, proto.num_classes, size=gt.shape), gt)
        to_native = np.vectorize(native_of.get)
        save_gray_png(dirs["gt"] / f"{i:04d}.png", to_native(gt).astype(np.uint8))
        save_gray_png(dirs["contiguous"] / f"{i:04d}.png", pred.astype(np.uint8))
        save_gray_png(dirs["native"] / f"{i:04d}.png", to_native(pred).astype(np.uint8))
    common = ["evaluate", "--protocol", protocol, "--gt-dir", str(dirs["gt"]), "--json", "--n-boot", "20"]
    contiguous = run_cli_json(capsys, *common, "--pred-dir", str(dirs["contiguous"]))
    native = run_cli_json(capsys, *common, "--pred-dir", str(dirs["native"]), "--pred-ids", "native")
    assert native["hIoU"] == contiguous["hIoU"] and native["per_class"] == contiguous["per_class"]
    assert native["n_images"] == 6 and contiguous["hIoU"] is not None
    if protocol == "voc-15-5":  # ids + 1 read as contiguous ids: refused (the id 20), with the hint
        rc, _, err = run_cli(capsys, *common, "--pred-dir", str(dirs["native"]))
        assert rc == 2 and "--pred-ids native" in err
