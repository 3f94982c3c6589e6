"""A tiny real `zss-bench run --save-predictions` (issue #16): the record keeps detectron2's training
curves and the first test predictions (loader order, GT as the evaluator reads it, a small image copy),
and `zss-bench plot` draws all three pictures from that record alone."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from run_helpers import tiny, world_fixtures
from zss_bench.records import load_run
from zss_bench.records.predictions import load_predictions


small_world, prepared = world_fixtures(n_train=16, n_val=6, seed=2)


def _val_dicts(root: Path) -> list[dict]:
    from detectron2.data import DatasetCatalog

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.protocol import load_protocol

    names = register_protocol(load_protocol("synth-15-5"), root)
    return names["val"], DatasetCatalog.get(names["val"])


def test_run_keeps_curves_and_the_first_predictions_and_plot_draws_them(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "out"),
                           "--save-predictions", "2", *tiny(4))
    assert rc == 0, err
    run = load_run(Path(out.strip().splitlines()[-1].split("record: ")[1]))
    rec = run.record
    # the training curves: detectron2's metrics.json, copied
    assert rec["training"]["curves"] == "metrics.json"
    assert (run.path / "metrics.json").read_bytes() == (tmp_path / "out" / "metrics.json").read_bytes()
    assert '"total_loss"' in (run.path / "metrics.json").read_text()
    # the first two test images in loader order, as the evaluator saw them
    items = rec["predictions"]["items"]
    assert rec["predictions"]["n"] == 2 and len(items) == 2
    assert sorted(rec["files"]["extra"]) == sorted(["metrics.json", *(it[k] for it in items for k in ("image", "gt", "pred"))])
    _, val = _val_dicts(prepared)
    saved = load_predictions(run)
    for item, pred, d in zip(items, saved, val[:2]):
        assert item["id"] == str(d.get("image_id") or d["file_name"])
        with Image.open(d["sem_seg_file_name"]) as im:
            np.testing.assert_array_equal(pred.gt, np.array(im))  # the evaluation view, 255 = ignore kept
        assert pred.pred.shape == pred.gt.shape and pred.pred.dtype == np.uint8
        assert set(np.unique(pred.pred)) <= set(range(20))
        with Image.open(d["file_name"]) as im:
            assert pred.image.shape == (im.height, im.width, 3)  # 32 px: no downscale needed
        assert item["image"].endswith(".jpg")  # the synth world's images are JPEGs
    # every picture from the record alone
    rc, out, err = run_cli(capsys, "plot", str(run.path), "--out", str(tmp_path / "pics"))
    assert rc == 0, err
    assert sorted(Path(p).name.split("-")[0] for p in out.split()) == ["curves", "overlays", "per"]


def test_the_evaluator_keeps_predictions_in_its_own_records_too(prepared, tmp_path):
    import torch

    from zss_bench.engine.evaluator import ZSSEvaluator

    name, val = _val_dicts(prepared)
    evaluator = ZSSEvaluator(name, results_dir=str(tmp_path / "results"), save_predictions=1)
    evaluator.reset()
    for d in val[:3]:
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": torch.zeros(20, d["height"], d["width"])}])
    assert len(evaluator.kept) == 1 and evaluator.kept[0].image_file == val[0]["file_name"]
    run = load_run(evaluator.evaluate()["sem_seg"]["record"])
    assert run.record["predictions"]["n"] == 1 and not load_predictions(run)[0].pred.any()
    with pytest.raises(ValueError, match="save_predictions must be >= 0"):
        ZSSEvaluator(name, save_predictions=-1)
