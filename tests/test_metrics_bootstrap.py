"""Image-level bootstrap intervals and paired comparisons."""
from __future__ import annotations

import math

import numpy as np
import pytest

import zss_bench.metrics.bootstrap as bootstrap_mod
from zss_bench.metrics import ConfusionMatrix, ImageStats, bootstrap_ci, paired_bootstrap

K = 10
SEEN, UNSEEN = [0, 1, 2, 3, 4, 5, 6], [7, 8, 9]
METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "pAcc")


def make_run(err: float, n: int = 60, seed: int = 0, data_seed: int = 123, ids=None) -> ImageStats:
    """n images of 24x24 with a fixed gt; predictions wrong on about ``err`` of the pixels."""
    drng = np.random.default_rng(data_seed)
    gt = drng.integers(0, K, (n, 24, 24))
    gt[drng.random(gt.shape) < 0.05] = 255
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(gt.shape) < err, rng.integers(0, K, gt.shape), gt)
    pred[pred == 255] = 0
    cm = ConfusionMatrix(K)
    cm.update(pred.astype(np.uint8), gt.astype(np.uint8), image_ids=ids or [f"im{i:03d}" for i in range(n)])
    return cm.image_stats


def test_deterministic_and_seed_dependent():
    st = make_run(0.4)
    a = bootstrap_ci(st, SEEN, UNSEEN, n_boot=200, seed=7)
    b = bootstrap_ci(st, SEEN, UNSEEN, n_boot=200, seed=7)
    c = bootstrap_ci(st, SEEN, UNSEEN, n_boot=200, seed=8)
    assert a == b
    assert a["hIoU"]["low"] != c["hIoU"]["low"]
    assert (a["n_boot"], a["seed"], a["alpha"], a["n_images"]) == (200, 7, 0.05, 60)


@pytest.mark.parametrize("convention", ["mmseg", "detectron2"])
def test_interval_contains_estimate(convention):
    st = make_run(0.4)
    res = bootstrap_ci(st, SEEN, UNSEEN, convention=convention, n_boot=500)
    for m in METRICS:
        r = res[m]
        assert 0.0 < r["low"] <= r["estimate"] <= r["high"] < 1.0, (m, r)
        assert r["std"] > 0
        assert r["high"] - r["low"] < 0.1  # 60 images x 576 pixels: a tight interval
    # the estimate is the plain full-set value
    tot = st.totals()
    assert res["pAcc"]["estimate"] == pytest.approx(tot[0].sum() / tot[1].sum())
    narrow = bootstrap_ci(st, SEEN, UNSEEN, convention=convention, n_boot=500, alpha=0.5)
    assert narrow["mIoU"]["high"] - narrow["mIoU"]["low"] < res["mIoU"]["high"] - res["mIoU"]["low"]


def test_chunking_does_not_change_results(monkeypatch):
    st = make_run(0.4, n=30)
    whole = bootstrap_ci(st, SEEN, UNSEEN, n_boot=100, seed=3)
    monkeypatch.setattr(bootstrap_mod, "_CHUNK_BYTES", 1000)  # ~ 2 replicates per chunk
    chunked = bootstrap_ci(st, SEEN, UNSEEN, n_boot=100, seed=3)
    # rows of one multinomial draw come off the generator in order, so chunks see the same draws
    assert chunked == whole


def test_nan_replicates_are_skipped():
    """An unseen class present in a single image: many replicates have no unseen gt at all."""
    cm = ConfusionMatrix(3)
    for i in range(20):
        gt = np.full((4, 4), i % 2, np.uint8)
        if i == 0:
            gt[0] = 2
        cm.update(gt.copy(), gt, image_ids=[str(i)])
    res = bootstrap_ci(cm.image_stats, [0, 1], [2], convention="detectron2", n_boot=300)
    assert res["mIoU_unseen"]["low"] == res["mIoU_unseen"]["high"] == 1.0
    assert res["hIoU"]["estimate"] == 1.0


def test_paired_with_itself():
    st = make_run(0.4)
    res = paired_bootstrap(st, st, SEEN, UNSEEN, "mmseg", n_boot=200)
    for m in METRICS:
        assert res[m]["delta"] == 0.0
        assert res[m]["low"] == res[m]["high"] == 0.0
        assert res[m]["p_value"] == 1.0
        assert res[m]["a"] == res[m]["b"]


def test_paired_clearly_better_run():
    a = make_run(0.4, seed=1)
    b = make_run(0.3, seed=2)
    res = paired_bootstrap(a, b, SEEN, UNSEEN, "mmseg", n_boot=1000, seed=0)
    for m in METRICS:
        r = res[m]
        assert r["delta"] == pytest.approx(r["b"] - r["a"])
        assert r["delta"] > 0 and r["low"] > 0, (m, r)
        assert r["p_value"] < 0.05
    back = paired_bootstrap(b, a, SEEN, UNSEEN, "mmseg", n_boot=1000, seed=0)
    assert back["hIoU"]["delta"] == pytest.approx(-res["hIoU"]["delta"])
    assert back["hIoU"]["high"] < 0


def test_paired_aligns_by_id():
    a = make_run(0.4, seed=1)
    b = make_run(0.35, seed=2)
    perm = np.random.default_rng(0).permutation(len(b))
    shuffled = ImageStats([b.ids[i] for i in perm], b.inter[perm], b.gt[perm], b.pred[perm])
    assert paired_bootstrap(a, shuffled, SEEN, UNSEEN, n_boot=100) == paired_bootstrap(a, b, SEEN, UNSEEN, n_boot=100)


def test_paired_rejects_mismatched_runs():
    a = make_run(0.4, n=10)
    other_ids = [f"im{i:03d}" for i in range(8)] + ["zz1", "zz2"]
    b = make_run(0.4, n=10, ids=other_ids)
    with pytest.raises(ValueError, match=r"4 ids differ .*'im008', 'im009'.*'zz1', 'zz2'"):
        paired_bootstrap(a, b, SEEN, UNSEEN)
    narrow = ImageStats(a.ids, a.inter[:, :5], a.gt[:, :5], a.pred[:, :5])
    with pytest.raises(ValueError, match="num_classes: 10 vs 5"):
        paired_bootstrap(a, narrow, SEEN, UNSEEN)
    dup = ImageStats(["x"] * 10, a.inter, a.gt, a.pred)
    with pytest.raises(ValueError, match="duplicate image ids"):
        paired_bootstrap(dup, dup, SEEN, UNSEEN)


def test_argument_errors():
    st = make_run(0.4, n=5)
    empty = ImageStats([], np.zeros((0, K)), np.zeros((0, K)), np.zeros((0, K)))
    with pytest.raises(ValueError, match="zero images"):
        bootstrap_ci(empty, SEEN, UNSEEN)
    with pytest.raises(ValueError, match="n_boot"):
        bootstrap_ci(st, SEEN, UNSEEN, n_boot=0)
    with pytest.raises(ValueError, match="alpha"):
        bootstrap_ci(st, SEEN, UNSEEN, alpha=1.5)
    with pytest.raises(ValueError, match="mmseg, detectron2"):
        bootstrap_ci(st, SEEN, UNSEEN, convention="x")
    with pytest.raises(TypeError, match="ImageStats"):
        bootstrap_ci(ConfusionMatrix(K), SEEN, UNSEEN)
    assert math.isnan(bootstrap_ci(st, [], UNSEEN, n_boot=10)["mIoU_seen"]["low"])
