"""mmseg bridges: the mmengine metric (mmseg 1.x) and ``summarize`` of pre_eval results (mmseg 0.x) give the
numbers ``zss-bench evaluate`` gives on the same prediction/ground-truth pairs, and the metric's record joins
the leaderboard."""
from __future__ import annotations

import importlib
import sys

import pytest

mmengine = pytest.importorskip(
    "mmengine", reason='the mmseg 1.x metric needs mmengine (pip install "zss-bench[mmseg]")')

import numpy as np  # noqa: E402
import torch  # noqa: E402
from mmengine.structures import BaseDataElement, PixelData  # noqa: E402
from PIL import Image  # noqa: E402

from conftest import random_voc_native, run_cli, run_cli_json, save_gray_png, save_palette_png  # noqa: E402
from zss_bench.evaluation import evaluate_directories, score  # noqa: E402
from zss_bench.protocol import load_protocol  # noqa: E402

PROTOCOL = "synth-15-5"
N_BOOT = 200
CONVENTIONS = ("mmseg", "detectron2")
KEYS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU")


# --------------------------------------------------------------------------- a small synthetic world


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """12 validation images of a generated world (native PNGs: 0 = background, k = class k-1) and perturbed
    predictions in contiguous ids: 25 % of pixels a random class (some of them classes no ground truth has,
    so the two conventions differ), 3 % no prediction (255), written as PNGs the way `evaluate` reads them;
    the protocol's own evaluation of them is the reference."""
    from zss_bench.data.synth import generate_world

    root = tmp_path_factory.mktemp("mmseg") / "world"
    generate_world(root, seed=3, size=64, n_train=1, n_val=12, progress=False)
    image_list = root / "ImageSets" / "Segmentation" / "val.txt"
    stems = image_list.read_text().split()
    rng = np.random.default_rng(0)
    pred_dir = root.parent / "pred"
    pred_dir.mkdir()
    natives, gts, preds = [], [], []
    for stem in stems:
        native = np.array(Image.open(root / "SegmentationClass" / f"{stem}.png")).astype(np.int64)
        gt = np.where(native == 0, 255, native - 1)
        pred = np.where(native == 0, rng.integers(0, 20, native.shape), native - 1)
        wrong = rng.random(gt.shape) < 0.25
        pred[wrong] = rng.integers(0, 20, int(wrong.sum()))
        pred[rng.random(gt.shape) < 0.03] = 255
        save_gray_png(pred_dir / f"{stem}.png", pred)
        natives.append(native)
        gts.append(gt)
        preds.append(pred)
    protocol = load_protocol(PROTOCOL)
    evaluation = evaluate_directories(protocol, pred_dir, root / "SegmentationClass", image_list=image_list,
                                      progress=False)
    assert evaluation.image_ids == stems  # sorted: the order the data samples come in below
    inter, gt_count, pred_count = evaluation.cm.totals()
    assert ((gt_count == 0) & (pred_count > 0)).any()  # predicted classes without ground truth: conventions differ
    return {"root": root, "stems": stems, "natives": natives, "gts": gts, "preds": preds, "pred_dir": pred_dir,
            "image_list": image_list, "protocol": protocol, "evaluation": evaluation,
            "reference": score(evaluation.cm, protocol, n_boot=N_BOOT, seed=0)}


def _sample(stem: str, pred: np.ndarray | None, gt: np.ndarray) -> BaseDataElement:
    """A data sample as mmseg 1.x's SegDataSample carries it: 1 x H x W int64 label maps in PixelData."""
    sample = BaseDataElement(metainfo={"img_path": f"data/JPEGImages/{stem}.jpg",
                                       "seg_map_path": f"data/SegmentationClass/{stem}.png"})
    sample.gt_sem_seg = PixelData(data=torch.from_numpy(gt[None].astype(np.int64)))
    if pred is not None:
        sample.pred_sem_seg = PixelData(data=torch.from_numpy(pred[None].astype(np.int64)))
    return sample


def _samples(pairs) -> list[BaseDataElement]:
    return [_sample(s, p, g) for s, p, g in zip(pairs["stems"], pairs["preds"], pairs["gts"])]


def _check_metric_output(out: dict, reference: dict, classes) -> None:
    """The metric's flat dict equals `evaluate`'s metrics (percent), key by key."""
    head = reference["convention"]
    assert out["aAcc"] == pytest.approx(reference["pAcc"], abs=1e-9)
    for key in KEYS:
        assert out[key] == pytest.approx(reference[key], abs=1e-9), key
    for conv in CONVENTIONS:
        if conv != head:
            for key in KEYS:
                assert out[f"{key}_{conv}"] == pytest.approx(reference["conventions"][conv][key], abs=1e-9), key
    for name in classes:
        want = reference["per_class"][name]
        assert (np.isnan(out[f"IoU.{name}"]) if want is None else out[f"IoU.{name}"] == pytest.approx(want, abs=1e-9))
    if reference["ci"]:
        assert out["hIoU_low"] == pytest.approx(reference["ci"]["hIoU"]["low"], abs=1e-9)
        assert out["hIoU_high"] == pytest.approx(reference["ci"]["hIoU"]["high"], abs=1e-9)


# --------------------------------------------------------------------------- mmseg 1.x: the metric


def test_config_dict_builds_the_metric_through_the_registries(tmp_path):
    """The documented config lines: custom_imports loads the module, the root METRICS registry builds
    'ZSSIoUMetric', and so does a child registry (mmseg's METRICS is one, scope 'mmseg')."""
    from mmengine.config import Config
    from mmengine.registry import METRICS, Registry

    from zss_bench.integrations.mmseg import ZSSIoUMetric

    cfg = Config.fromstring("custom_imports = dict(imports=['zss_bench.integrations.mmseg'], "
                            "allow_failed_imports=False)\n"
                            f"test_evaluator = dict(type='ZSSIoUMetric', protocol='{PROTOCOL}')\n", ".py")
    metric = METRICS.build(cfg.test_evaluator)
    assert isinstance(metric, ZSSIoUMetric)
    assert metric.ignore_index == 255 and metric.split.unseen_ids == load_protocol(PROTOCOL).unseen_ids
    child = Registry("metric", parent=METRICS, scope="mmseg_like")
    assert isinstance(child.build(dict(type="ZSSIoUMetric", protocol="voc-15-5")), ZSSIoUMetric)
    assert "mmseg" not in sys.modules and "mmcv" not in sys.modules  # it imports neither


def test_metric_equals_evaluate_on_the_same_pairs(pairs, tmp_path):
    """Fed the data samples batch by batch (as a test loop does), the metric's numbers are `evaluate`'s:
    headline, the other convention, per-class IoU, pAcc and the bootstrap interval; its record holds the same
    confusion matrix, per-image statistics and test-set fingerprint."""
    from zss_bench.records import load_run
    from zss_bench.records.store import CONFUSION_FILE
    from zss_bench.metrics import ConfusionMatrix
    from zss_bench.integrations.mmseg import ZSSIoUMetric

    metric = ZSSIoUMetric(protocol=PROTOCOL, results_dir=str(tmp_path), n_boot=N_BOOT)
    metric.dataset_meta = {"classes": pairs["protocol"].classes}
    samples = [s.to_dict() for s in _samples(pairs)]  # what mmengine's Evaluator hands process()
    for start in range(0, len(samples), 5):
        metric.process({}, samples[start:start + 5])
    kept = metric.results[0]
    assert set(kept) == {"id", "cells", "counts", "gt_digest"} and kept["id"] == pairs["stems"][0]
    assert kept["cells"].size <= 21 * 20 and not any(isinstance(v, torch.Tensor) for v in kept.values())
    out = metric.evaluate(len(samples))
    _check_metric_output(out, pairs["reference"], pairs["protocol"].classes)
    assert out["mIoU"] != out["mIoU_detectron2"]  # classes predicted without ground truth count under mmseg only

    run = load_run(metric.last_record)
    assert run.record["kind"] == "evaluate" and run.record["protocol"]["hash"] == pairs["protocol"].content_hash
    assert run.record["dataset"]["test_set"] == pairs["evaluation"].test_set
    assert run.record["metrics"]["hIoU"] == pytest.approx(pairs["reference"]["hIoU"], abs=1e-9)
    cm, ref = ConfusionMatrix.load(run.path / CONFUSION_FILE), pairs["evaluation"].cm
    np.testing.assert_array_equal(cm.matrix, ref.matrix)
    np.testing.assert_array_equal(cm.missed, ref.missed)
    assert cm.image_stats.ids == ref.image_stats.ids
    for a, b in ((cm.image_stats.inter, ref.image_stats.inter), (cm.image_stats.gt, ref.image_stats.gt),
                 (cm.image_stats.pred, ref.image_stats.pred)):
        np.testing.assert_array_equal(a, b)


def test_tensors_counted_on_their_device(pairs, monkeypatch):
    """Data samples on an accelerator are counted there (ConfusionMatrix's torch path; run on CPU tensors here
    with the numpy shortcut off): the same numbers."""
    from zss_bench.integrations.mmseg import ZSSIoUMetric
    from zss_bench.metrics import ConfusionMatrix

    monkeypatch.setattr(ConfusionMatrix, "_numpy_on_cpu", False)
    metric = ZSSIoUMetric(protocol=PROTOCOL, n_boot=N_BOOT)
    metric.process({}, [s.to_dict() for s in _samples(pairs)])
    _check_metric_output(metric.evaluate(len(pairs["stems"])), pairs["reference"], pairs["protocol"].classes)


def test_prediction_ids_outside_the_classes_name_the_image(pairs):
    """255 in a prediction is "no prediction" (scored above); an id past the classes (a 21-class model on a
    20-class protocol) is an error naming the image, not silently dropped as mmseg's IoUMetric drops it."""
    from zss_bench.integrations.mmseg import ZSSIoUMetric

    stem, gt = pairs["stems"][2], pairs["gts"][2]
    pred = pairs["preds"][2].copy()
    pred[0, 0] = 20
    with pytest.raises(ValueError, match=rf"^{stem}: prediction holds invalid class ids \[20\]"):
        ZSSIoUMetric(protocol=PROTOCOL).process({}, [_sample(stem, pred, gt).to_dict()])


def test_offline_evaluate(pairs):
    """mmengine's Evaluator(...).offline_evaluate over dumped data samples gives `evaluate`'s numbers."""
    from mmengine.evaluator import Evaluator

    evaluator = Evaluator(dict(type="ZSSIoUMetric", protocol=PROTOCOL, n_boot=N_BOOT))
    evaluator.dataset_meta = {"classes": list(pairs["protocol"].classes)}
    out = evaluator.offline_evaluate(_samples(pairs), chunk_size=4)
    _check_metric_output(out, pairs["reference"], pairs["protocol"].classes)


def test_explicit_class_lists_score_like_the_protocol(pairs):
    """classes= and unseen= (names or ids) instead of a protocol: the same numbers; no record without one."""
    from zss_bench.integrations.mmseg import ZSSIoUMetric

    proto = pairs["protocol"]
    metric = ZSSIoUMetric(classes=list(proto.classes), unseen=list(proto.unseen_names), n_boot=N_BOOT)
    metric.process({}, [s.to_dict() for s in _samples(pairs)])
    _check_metric_output(metric.evaluate(len(pairs["stems"])), pairs["reference"], proto.classes)
    by_id = ZSSIoUMetric(classes=list(proto.classes), unseen=list(proto.unseen_ids), n_boot=0)
    assert by_id.split.unseen_ids == proto.unseen_ids
    with pytest.raises(ValueError, match="results_dir= needs protocol="):
        ZSSIoUMetric(classes=list(proto.classes), unseen=[0], results_dir="out")
    with pytest.raises(ValueError, match="either protocol= or classes="):
        ZSSIoUMetric(protocol=PROTOCOL, classes=list(proto.classes), unseen=[0])


def test_dataset_meta_in_another_class_order_is_refused():
    """dataset_meta['classes'] must follow the protocol: the error names the first index that differs
    (mmseg's own VOC lists 'background' first); the protocol's aliases are accepted (ZegCLIP's 'pottedplant')."""
    from mmengine.evaluator import Evaluator

    proto = load_protocol(PROTOCOL)
    swapped = list(proto.classes)
    swapped[3], swapped[4] = swapped[4], swapped[3]
    evaluator = Evaluator(dict(type="ZSSIoUMetric", protocol=PROTOCOL))
    with pytest.raises(ValueError, match=r"at index 3 expected 'red cross', got 'red star'"):
        evaluator.dataset_meta = {"classes": swapped}
    voc = Evaluator(dict(type="ZSSIoUMetric", protocol="voc-15-5"))
    voc_classes = load_protocol("voc-15-5").classes
    with pytest.raises(ValueError, match=r"at index 0 expected 'aeroplane', got 'background' \(21 classes given"):
        voc.dataset_meta = {"classes": ("background",) + voc_classes}
    with pytest.raises(ValueError, match=r"at index 19 expected 'tvmonitor', got nothing"):
        voc.dataset_meta = {"classes": voc_classes[:19]}
    voc.dataset_meta = {"classes": tuple("pottedplant" if c == "potted plant" else c for c in voc_classes)}


def test_record_is_listed_by_the_leaderboard(pairs, tmp_path, capsys):
    """The metric's record and `zss-bench evaluate --out`'s record of the same pairs: both imported rows of one
    test set, with the same hIoU, in the leaderboard table and in `zss-bench leaderboard --results DIR`."""
    from mmengine.evaluator import Evaluator

    from zss_bench.tables import aggregate, collect_runs, render_leaderboard

    results = tmp_path / "results"
    evaluator = Evaluator(dict(type="ZSSIoUMetric", protocol=PROTOCOL, results_dir=str(results),
                               method="zegclip-mmseg", label="released-ckpt", seed=1, n_boot=0))
    evaluator.dataset_meta = {"classes": pairs["protocol"].classes}
    evaluator.offline_evaluate(_samples(pairs), chunk_size=6)
    run_cli_json(capsys, "evaluate", "--protocol", PROTOCOL, "--pred-dir", str(pairs["pred_dir"]),
                 "--gt-dir", str(pairs["root"] / "SegmentationClass"), "--image-list", str(pairs["image_list"]),
                 "--json", "--n-boot", "0", "--out", str(results), "--method", "pngs", "--seed", "1")
    skipped = []
    runs = collect_runs(results, on_skip=skipped.append)
    assert not skipped
    assert sorted(runs["method"]) == ["pngs", "zegclip-mmseg"]
    assert set(runs["origin"]) == {"imported"} and runs["test_set"].nunique() == 1
    assert runs["hIoU"].iloc[0] == pytest.approx(runs["hIoU"].iloc[1], abs=1e-9)
    text = render_leaderboard(aggregate(runs))
    assert "zegclip-mmseg" in text and "released-ckpt" in text
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--protocol", PROTOCOL)
    assert rc == 0, err
    assert "zegclip-mmseg" in out and "pngs" in out


def test_runner_test_loop_on_cpu(pairs, tmp_path):
    """Inside a minimal mmengine Runner test loop (a tiny nn.Module, CPU, no mmcv): the metric gets its
    dataset_meta from the dataset, the numbers equal `evaluate` on the model's predictions, the record is
    written."""
    from mmengine.model import BaseModel
    from mmengine.runner import Runner

    from zss_bench.records import iter_runs

    k = 20
    preds = [np.where(p == 255, 0, p) for p in pairs["preds"]]  # argmax has no "no prediction"

    class Logits(torch.utils.data.Dataset):
        metainfo = {"classes": pairs["protocol"].classes}

        def __len__(self):
            return len(preds)

        def __getitem__(self, i):
            logits = torch.nn.functional.one_hot(torch.from_numpy(preds[i]), k).permute(2, 0, 1).float()
            return {"inputs": logits, "data_samples": _sample(pairs["stems"][i], None, pairs["gts"][i])}

    class TinySegmentor(BaseModel):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Conv2d(k, k, 1, bias=False)
            with torch.no_grad():
                self.head.weight.copy_(torch.eye(k)[:, :, None, None])

        def forward(self, inputs, data_samples=None, mode="tensor"):
            logits = self.head(torch.stack(inputs))
            if mode != "predict":
                return logits
            for sample, seg in zip(data_samples, logits):
                sample.pred_sem_seg = PixelData(data=seg.argmax(0, keepdim=True))
            return data_samples

    results = tmp_path / "results"
    runner = Runner(
        model=TinySegmentor(), work_dir=str(tmp_path / "work"),
        test_dataloader=dict(dataset=Logits(), sampler=dict(type="DefaultSampler", shuffle=False), batch_size=5,
                             num_workers=0, collate_fn=dict(type="pseudo_collate")),
        test_cfg=dict(type="TestLoop"),
        test_evaluator=dict(type="ZSSIoUMetric", protocol=PROTOCOL, results_dir=str(results), n_boot=N_BOOT),
        default_hooks=dict(checkpoint=None), randomness=dict(seed=0), log_level="WARNING")
    out = runner.test()

    pred_dir = tmp_path / "argmax"
    for stem, pred in zip(pairs["stems"], preds):
        save_gray_png(pred_dir / f"{stem}.png", pred)
    evaluation = evaluate_directories(pairs["protocol"], pred_dir, pairs["root"] / "SegmentationClass",
                                      image_list=pairs["image_list"], progress=False)
    _check_metric_output(out, score(evaluation.cm, pairs["protocol"], n_boot=N_BOOT, seed=0),
                         pairs["protocol"].classes)
    (run,) = list(iter_runs(results))
    assert run.record["dataset"]["test_set"] == evaluation.test_set


def test_import_without_mmengine_names_the_extra(monkeypatch):
    """Without mmengine, importing the metric's module fails with one line naming the extra; the mmseg 0.x
    module still imports and scores (it needs no framework)."""
    import zss_bench.integrations as package

    for name in [m for m in sys.modules if m == "mmengine" or m.startswith("mmengine.")]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed (restored after the test)
    for name in ("zss_bench.integrations.mmseg", "zss_bench.integrations.mmseg0"):
        monkeypatch.delitem(sys.modules, name, raising=False)
        if hasattr(package, name.rsplit(".", 1)[1]):
            monkeypatch.delattr(package, name.rsplit(".", 1)[1])
    with pytest.raises(ImportError) as info:
        importlib.import_module("zss_bench.integrations.mmseg")
    assert str(info.value) == 'zss_bench.integrations.mmseg needs mmengine: pip install "zss-bench[mmseg]"'
    mmseg0 = importlib.import_module("zss_bench.integrations.mmseg0")
    counts = [(np.array([3.0, 0.0]), np.array([5.0, 1.0]), np.array([4.0, 1.0]), np.array([4.0, 0.0]))]
    res = mmseg0.summarize(counts, classes=["a", "b"], unseen=["b"], n_boot=0)
    assert res["mIoU_seen"] == pytest.approx(60.0) and res["mIoU_unseen"] == 0.0 and res["hIoU"] == 0.0


# --------------------------------------------------------------------------- mmseg 0.x: pre_eval results


def _mmseg0_intersect_and_union(pred, label, num_classes, ignore_index, reduce_zero_label=False):
    """mmseg 0.x's ``mmseg.core.evaluation.metrics.intersect_and_union`` (v0.30), line for line (file
    loading and label_map left out): what ``dataset.pre_eval`` returns per image."""
    pred_label = torch.from_numpy(pred)
    label = torch.from_numpy(label)
    if reduce_zero_label:
        label[label == 0] = 255
        label = label - 1
        label[label == 254] = 255
    mask = label != ignore_index
    pred_label = pred_label[mask]
    label = label[mask]
    intersect = pred_label[pred_label == label]
    area_intersect = torch.histc(intersect.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_pred_label = torch.histc(pred_label.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_label = torch.histc(label.float(), bins=num_classes, min=0, max=num_classes - 1)
    area_union = area_pred_label + area_label - area_intersect
    return area_intersect, area_union, area_pred_label, area_label


def _check_summary(res: dict, reference: dict) -> None:
    for conv in CONVENTIONS:
        block, ref = res["conventions"][conv], reference["conventions"][conv]
        for key in (*KEYS, "pAcc"):
            assert block[key] == pytest.approx(ref[key], abs=1e-9), (conv, key)
        assert block["per_class"] == pytest.approx(ref["per_class"], abs=1e-9, nan_ok=True)
        for key in (*KEYS, "pAcc"):
            if key in ref["ci"]:
                assert block["ci"][key] == pytest.approx(ref["ci"][key], abs=1e-9), (conv, key)
    assert res["convention"] == reference["convention"] and res["hIoU"] == reference["hIoU"]


def test_summarize_pre_eval_equals_evaluate(pairs):
    """mmseg 0.x pre_eval tuples (torch tensors from histc, native ground truth with reduce_zero_label) of the
    same pairs: summarize gives `evaluate`'s S, U, hIoU, both conventions and the bootstrap intervals, from a
    list of tuples or an (N, 4, K) array, with or without image ids."""
    from zss_bench.integrations.mmseg import summarize as reexported
    from zss_bench.integrations.mmseg0 import format_summary, summarize

    assert reexported is summarize
    results = [_mmseg0_intersect_and_union(p.astype(np.uint8), n.astype(np.uint8), 20, 255, reduce_zero_label=True)
               for p, n in zip(pairs["preds"], pairs["natives"])]
    res = summarize(results, PROTOCOL, image_ids=pairs["stems"], n_boot=N_BOOT)
    _check_summary(res, pairs["reference"])
    assert res["n_images"] == 12
    stacked = np.stack([np.stack([t.numpy() for t in r]) for r in results])  # what one would np.save
    _check_summary(summarize(stacked, load_protocol(PROTOCOL), n_boot=N_BOOT), pairs["reference"])
    text = format_summary(res)
    assert f"hIoU {res['hIoU']:.2f}" in text and text.index("mmseg") < text.index("detectron2")


def test_summarize_refuses_what_is_not_pre_eval_output(pairs):
    from zss_bench.integrations.mmseg0 import summarize

    with pytest.raises(ValueError, match="expected mmseg 0.x pre_eval output"):
        summarize(pairs["preds"], PROTOCOL)  # segmentation maps (single_gpu_test without pre_eval)
    good = _mmseg0_intersect_and_union(pairs["preds"][0].astype(np.uint8), pairs["natives"][0].astype(np.uint8),
                                       20, 255, reduce_zero_label=True)
    with pytest.raises(ValueError, match="do not fit together"):
        summarize([(good[0], good[2], good[1], good[3])], PROTOCOL)  # union and pred swapped
    with pytest.raises(ValueError, match="count 21 classes, the split has 20"):
        summarize([tuple(torch.cat([t, t[:1]]) for t in good)], PROTOCOL)


def test_png_path_of_mmseg0_predictions_for_voc(tmp_path, capsys):
    """The PNG path end to end for VOC with reduce_zero_label: predictions as a ZegCLIP-style mmseg 0.x model
    gives them (contiguous ids 0..19 for the 20 object classes) saved as PNGs, native VOC annotations
    (0 = background, 255 = void): `zss-bench evaluate --protocol voc-15-5` scores them as they are (contiguous
    ids are what it reads; no option needed) and agrees with summarize of mmseg's own pre_eval counts. mmseg
    1.x's IoUMetric(format_only=True) writes those ids + 1 under reduce_zero_label (native VOC ids): evaluate
    refuses an id 20 with the hint, and `--pred-ids native` scores them as the contiguous ones."""
    from zss_bench.integrations.mmseg0 import summarize

    rng = np.random.default_rng(11)
    natives, preds = [], []
    for i in range(10):
        native = random_voc_native(rng)
        pred = np.where((native >= 1) & (native <= 20), native.astype(np.int64) - 1, rng.integers(0, 20, native.shape))
        noise = rng.random(native.shape) < 0.2
        pred[noise] = rng.integers(0, 20, int(noise.sum()))
        pred[0, :] = 19  # tvmonitor somewhere in every image (the +1 case below reaches id 20)
        save_palette_png(tmp_path / "SegmentationClass" / f"2008_{i:06d}.png", native)
        save_gray_png(tmp_path / "pred" / f"2008_{i:06d}.png", pred)  # as mmseg writes them: Image.fromarray(uint8)
        natives.append(native)
        preds.append(pred.astype(np.uint8))
    out = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(tmp_path / "pred"),
                       "--gt-dir", str(tmp_path / "SegmentationClass"), "--json", "--n-boot", str(N_BOOT))
    results = [_mmseg0_intersect_and_union(p, n, 20, 255, reduce_zero_label=True) for p, n in zip(preds, natives)]
    res = summarize(results, "voc-15-5", n_boot=N_BOOT)
    for key in (*KEYS, "pAcc"):
        assert out[key] == pytest.approx(res[key], abs=1e-9), key
        assert out["other_conventions"]["detectron2"][key] == pytest.approx(
            res["conventions"]["detectron2"][key], abs=1e-9), key
    assert out["ci"]["hIoU"] == pytest.approx(res["ci"]["hIoU"], abs=1e-9)

    for i, pred in enumerate(preds):  # mmseg 1.x's format_only writer: output_mask + 1 under reduce_zero_label
        save_gray_png(tmp_path / "pred" / f"2008_{i:06d}.png", pred + 1)
    rc, _, err = run_cli(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(tmp_path / "pred"),
                         "--gt-dir", str(tmp_path / "SegmentationClass"), "--json", "--n-boot", "0")
    assert rc != 0 and "invalid class ids [20]" in err and "--pred-ids native" in err
    native = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(tmp_path / "pred"),
                          "--gt-dir", str(tmp_path / "SegmentationClass"), "--json", "--n-boot", str(N_BOOT),
                          "--pred-ids", "native")  # what that writer needs: the same numbers as contiguous ids
    for key in (*KEYS, "pAcc"):
        assert native[key] == pytest.approx(out[key], abs=1e-9), key
