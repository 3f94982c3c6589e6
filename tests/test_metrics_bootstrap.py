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


def test_undefined_replicates_widen_the_interval():
    """An unseen class present in a single image: about a third of the replicates have no unseen
    ground truth (U undefined, detectron2). Dropping them would leave U = 1 in every replicate
    and claim certainty from one image; they count as "could be anything" instead."""
    cm = ConfusionMatrix(3)
    for i in range(20):
        gt = np.full((4, 4), i % 2, np.uint8)
        if i == 0:
            gt[0] = 2
        cm.update(gt.copy(), gt, image_ids=[str(i)])
    res = bootstrap_ci(cm.image_stats, [0, 1], [2], convention="detectron2", n_boot=300)
    assert res["undefined"]["mIoU_unseen"] == pytest.approx((19 / 20) ** 20, abs=0.08)
    assert res["undefined"]["mIoU_seen"] == 0.0
    assert (res["mIoU_unseen"]["low"], res["mIoU_unseen"]["estimate"], res["mIoU_unseen"]["high"]) == (0.0, 1.0, 1.0)
    assert (res["hIoU"]["low"], res["hIoU"]["high"]) == (0.0, 1.0)
    # the seen split is perfect in every image and every replicate: no width to invent
    assert res["mIoU_seen"]["low"] == res["mIoU_seen"]["high"] == 1.0
    assert res["absent_classes"] == []


def test_single_image_gives_the_whole_range():
    """One image: the jackknife is undefined and the replicates all equal the estimate; an
    interval of zero width would claim a certainty that one image cannot give."""
    st = make_run(0.3, n=1)
    res = bootstrap_ci(st, SEEN, UNSEEN, n_boot=50)
    for m in METRICS:
        assert (res[m]["low"], res[m]["high"]) == (0.0, 1.0), m


def _run_without_class_3(err: float, seed: int) -> ImageStats:
    """40 images in which seen class 3 has no ground truth but is predicted now and then."""
    drng = np.random.default_rng(5)
    gt = drng.integers(0, K, (40, 24, 24))
    gt[gt == 3] = 4
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(gt.shape) < err, rng.integers(0, K, gt.shape), gt)
    cm = ConfusionMatrix(K)
    cm.update(pred.astype(np.uint8), gt.astype(np.uint8), image_ids=[str(i) for i in range(40)])
    return cm.image_stats


def _seen_ious(st: ImageStats) -> np.ndarray:
    inter, gt, pred = (x.astype(float) for x in st.totals())
    shown = [c for c in SEEN if gt[c] > 0]
    return (inter / (gt + pred - inter))[shown]


def test_absent_class_gets_room_within_its_split():
    """Seen class 3 has no ground truth in the test set, so nothing measures its IoU, yet the
    population has it. The interval makes room for it anywhere between the worst and the best
    seen class that is measured: mmseg scores it 0, so S can only be higher (by up to the best
    IoU / 7); detectron2 leaves it out, so S can be lower or higher."""
    st = _run_without_class_3(0.3, seed=0)
    ious = _seen_ious(st)
    assert ious.size == 6
    res = bootstrap_ci(st, SEEN, UNSEEN, n_boot=500)
    assert res["absent_classes"] == [3]
    s = res["mIoU_seen"]
    assert s["estimate"] == pytest.approx(ious.sum() / 7)  # mmseg: class 3 counts, as 0
    assert s["high"] >= (ious.sum() + ious.max()) / 7 - 1e-12
    assert s["high"] < (ious.sum() + 1.0) / 7 + 0.1  # not the whole [0, 1] for class 3
    d2 = bootstrap_ci(st, SEEN, UNSEEN, convention="detectron2", n_boot=500)["mIoU_seen"]
    assert d2["estimate"] == pytest.approx(ious.mean())
    assert d2["low"] <= (ious.sum() + ious.min()) / 7 + 1e-12
    assert d2["high"] >= (ious.sum() + ious.max()) / 7 - 1e-12
    # U has every class: no room added there (same interval as a run with all classes shown)
    assert res["mIoU_unseen"]["high"] - res["mIoU_unseen"]["estimate"] < 0.1


def test_absent_class_in_a_paired_comparison():
    """A better run B on the same images: class 3's difference is assumed to lie among the
    differences of the measured seen classes (all positive here), so the delta's lower bound
    gets no room below what they allow, and the improvement stays significant."""
    a, b = _run_without_class_3(0.45, seed=1), _run_without_class_3(0.25, seed=2)
    res = paired_bootstrap(a, b, SEEN, UNSEEN, n_boot=500)
    assert res["absent_classes"] == [3]
    diffs = _seen_ious(b) - _seen_ious(a)
    assert diffs.min() > 0.1
    for m in ("mIoU_seen", "hIoU", "mIoU"):
        r = res[m]
        assert 0 < r["low"] <= r["delta"] <= r["high"] and r["p_value"] < 0.05, (m, r)
    # room above: class 3 may have improved as much as the most improved seen class
    s_b_best = (_seen_ious(b).sum() + _seen_ious(a).mean() + diffs.max()) / 7
    s_a_mean = (_seen_ious(a).sum() + _seen_ious(a).mean()) / 7
    assert res["mIoU_seen"]["high"] >= s_b_best - s_a_mean - 1e-12


def _issue_24_world(tmp_path, noise: float = 0.3):
    """The case of issue #24: ``zss-bench synth generate --seed 3 --train 8 --val 20``, predictions
    with 30 % (``noise``) of the pixels replaced by a uniformly random class."""
    from PIL import Image

    from zss_bench.data.synth import generate_world

    root = tmp_path / "world"
    generate_world(root, seed=3, size=64, n_train=8, n_val=20, progress=False)
    rng = np.random.default_rng(0)
    cm = ConfusionMatrix(20)
    for stem in (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split():
        native = np.array(Image.open(root / "SegmentationClass" / f"{stem}.png")).astype(np.int64)
        gt = np.where(native == 0, 255, native - 1)  # native 0 = background, ignored
        pred = np.where(native == 0, 0, native - 1)
        wrong = rng.random(gt.shape) < noise
        pred[wrong] = rng.integers(0, 20, int(wrong.sum()))
        cm.update(pred.astype(np.uint8), gt.astype(np.uint8), image_ids=[stem])
    return cm


def test_issue_24_interval_contains_its_estimate(tmp_path):
    from zss_bench.evaluation.scoring import score
    from zss_bench.protocol import load_protocol

    cm = _issue_24_world(tmp_path)
    proto = load_protocol("synth-15-5")
    seen, unseen = list(proto.seen_ids), list(proto.unseen_ids)
    # the issue's numbers (S 48.75 with a percentile CI [34.15, 47.85] at 5,000 resamples)
    old = bootstrap_ci(cm.image_stats, seen, unseen, n_boot=5000, method="percentile")
    assert round(100 * old["mIoU_seen"]["estimate"], 2) == 48.75
    assert (round(100 * old["mIoU_seen"]["low"], 2), round(100 * old["mIoU_seen"]["high"], 2)) == (34.15, 47.85)
    assert old["hIoU"]["high"] < old["hIoU"]["estimate"]
    out = score(cm, proto, n_boot=2000)
    for conv, block in out["conventions"].items():
        for m in METRICS:
            ci = block["ci"][m]  # score rounds the interval (not the value) to 6 decimals
            assert ci["low"] <= ci["estimate"] <= ci["high"], (conv, m, ci)
            assert ci["estimate"] == pytest.approx(block[m], abs=1e-6)
    # the interval now reaches above the estimate, towards the population value (about 55 for
    # every class: 30 % uniform noise over 20 classes gives IoU 0.715 / 1.285)
    assert out["ci"]["hIoU"]["high"] > 55.6 > out["ci"]["hIoU"]["low"]


def test_issue_24_paired_delta_contains_its_estimate(tmp_path):
    """The same world, a noisier run A against a cleaner run B: A's replicates lose more to
    classes absent from the resample than B's, so the old interval of B - A slid off its delta."""
    from zss_bench.protocol import load_protocol

    proto = load_protocol("synth-15-5")
    seen, unseen = list(proto.seen_ids), list(proto.unseen_ids)
    a = _issue_24_world(tmp_path / "a", noise=0.5).image_stats
    b = _issue_24_world(tmp_path / "b", noise=0.1).image_stats
    old = paired_bootstrap(a, b, seen, unseen, n_boot=2000, method="percentile")
    assert old["mIoU_seen"]["high"] < old["mIoU_seen"]["delta"]  # the issue, for the paired delta
    new = paired_bootstrap(a, b, seen, unseen, n_boot=2000)
    for m in METRICS:
        r = new[m]
        assert r["low"] <= r["delta"] <= r["high"], (m, r)
        assert r["p_value"] < 0.05 and r["low"] > 0  # B is far better, and the interval says so


@pytest.mark.parametrize("convention", ["mmseg", "detectron2"])
def test_tiny_paired_sets_keep_the_estimate_inside(convention):
    """A handful of images: many paired replicates have no seen or no unseen class (undefined).
    Every interval still contains its estimate and stays in range."""
    undefined = 0.0
    for trial in range(40):
        rng = np.random.default_rng(trial)
        n = int(rng.integers(2, 8))
        # one or two classes per image, unseen ones (4, 5) rare; errors only among the image's
        # own classes or "no prediction", so a resample without an unseen image has no U at all
        gt = np.empty((n, 6, 6), np.int64)
        for i in range(n):
            pair = rng.choice(6, 2, p=[0.22, 0.22, 0.22, 0.22, 0.06, 0.06])
            gt[i, :, :3], gt[i, :, 3:] = pair
        runs = []
        for err in (0.5, 0.3):
            wrong = rng.random(gt.shape) < err
            pred = np.where(wrong, np.where(rng.random(gt.shape) < 0.5, gt[:, ::-1, ::-1], 255), gt)
            cm = ConfusionMatrix(6)
            cm.update(pred.astype(np.uint8), gt.astype(np.uint8), image_ids=[str(i) for i in range(n)])
            runs.append(cm.image_stats)
        new = paired_bootstrap(runs[0], runs[1], [0, 1, 2, 3], [4, 5], convention, n_boot=200, seed=trial)
        ci = bootstrap_ci(runs[1], [0, 1, 2, 3], [4, 5], convention, n_boot=200, seed=trial)
        undefined = max(undefined, new["undefined"]["hIoU"])
        for m in METRICS:
            r = new[m]
            if math.isnan(r["delta"]):
                assert math.isnan(r["low"]) and math.isnan(r["p_value"])
                continue
            assert -1.0 <= r["low"] <= r["delta"] <= r["high"] <= 1.0, (trial, m, r)
            c = ci[m]
            assert math.isnan(c["estimate"]) or 0.0 <= c["low"] <= c["estimate"] <= c["high"] <= 1.0
    assert undefined > 0.1  # the case is exercised


def test_p_value_inverts_the_interval():
    """For every alpha: the (1 - alpha) interval excludes 0 exactly when p < alpha. Checked just
    above and just below each p, on deltas of either sign, with and without classes the test set
    misses (which shift the bound on 0's side by an allowance) and with undefined replicates."""
    checked = 0
    for trial in range(12):
        rng = np.random.default_rng(100 + trial)
        n = 12 + 4 * (trial % 3)
        gt = rng.integers(0, K, (n, 16, 16))
        if trial % 2:
            gt[gt == 8] = 9  # an unseen class missing from the ground truth
        runs = []
        for err in (0.45, 0.45 - 0.02 * (trial % 4 - 1)):
            pred = np.where(rng.random(gt.shape) < err, rng.integers(0, K, gt.shape), gt)
            cm = ConfusionMatrix(K)
            cm.update(pred.astype(np.uint8), gt.astype(np.uint8), image_ids=[str(i) for i in range(n)])
            runs.append(cm.image_stats)
        base = paired_bootstrap(runs[0], runs[1], SEEN, UNSEEN, n_boot=400, seed=trial)
        assert base["absent_classes"] == ([8] if trial % 2 else [])
        for m in METRICS:
            p = base[m]["p_value"]
            assert 0.0 <= p <= 1.0
            if not 0.002 < p < 0.98:
                continue
            for alpha in (p * 0.999, p * 1.001):
                r = paired_bootstrap(runs[0], runs[1], SEEN, UNSEEN, n_boot=400, seed=trial, alpha=alpha)[m]
                assert (r["low"] > 0 or r["high"] < 0) == (p < alpha), (trial, m, p, alpha, r)
                checked += 1
    assert checked >= 20


def test_unknown_method():
    with pytest.raises(ValueError, match=r"basic\+jackknife, percentile"):
        bootstrap_ci(make_run(0.4, n=5), SEEN, UNSEEN, method="bca")


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
