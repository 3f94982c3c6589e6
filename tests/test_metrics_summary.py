"""IoU summaries under the "mmseg" and "detectron2" conventions, on hand-computed examples."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from zss_bench.metrics import ConfusionMatrix, summarize, summarize_batch

NAN = float("nan")


def hand_example():
    """4 classes; seen = {0, 1}, unseen = {2, 3}.

    pixel (gt -> pred): 0->0, 0->0, 0->1, 0->255 (no prediction), 1->1, 1->2, 255->2 (ignored), 1->1
    I = [2, 2, 0, 0]; G = [4, 3, 0, 0]; P = [2, 3, 1, 0]
    class 2: predicted but absent from gt; class 3: neither.
    """
    gt = np.array([[0, 0, 0, 0], [1, 1, 255, 1]], np.uint8)
    pred = np.array([[0, 0, 1, 255], [1, 2, 2, 1]], np.uint8)
    cm = ConfusionMatrix(4)
    cm.update(pred, gt)
    return cm


def test_hand_example_counts():
    cm = hand_example()
    np.testing.assert_array_equal(cm.missed, [1, 0, 0, 0])
    np.testing.assert_array_equal(
        cm.matrix, [[2, 1, 0, 0], [0, 2, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    )


def test_hand_example_mmseg():
    s = hand_example().summary([0, 1], [2, 3], "mmseg")
    np.testing.assert_allclose(s.iou, [0.5, 0.5, 0.0, NAN])  # 2/(4+2-2), 2/(3+3-2), 0/1
    np.testing.assert_array_equal(s.counted, [True, True, True, False])
    assert s.mIoU == pytest.approx(1 / 3)
    assert s.mIoU_seen == pytest.approx(0.5)
    assert s.mIoU_unseen == 0.0  # the hallucinated unseen class counts as 0
    assert s.hIoU == 0.0
    assert s.pAcc == pytest.approx(4 / 7)  # the "no prediction" pixel is a miss
    np.testing.assert_allclose(s.acc, [0.5, 2 / 3, NAN, NAN])


def test_hand_example_detectron2():
    s = hand_example().summary([0, 1], [2, 3], "detectron2")
    np.testing.assert_allclose(s.iou, [0.5, 0.5, NAN, NAN])
    np.testing.assert_array_equal(s.counted, [True, True, False, False])
    assert s.mIoU == pytest.approx(0.5)
    assert s.mIoU_seen == pytest.approx(0.5)
    assert math.isnan(s.mIoU_unseen)  # no unseen class has gt pixels
    assert math.isnan(s.hIoU)
    assert s.pAcc == pytest.approx(4 / 7)


def test_hiou_values():
    # I, G, P chosen so that IoU = [0.5, 0.25, 0.8]
    inter = np.array([1, 1, 4])
    gt = np.array([2, 4, 5])
    pred = np.array([1, 1, 4])
    s = summarize(inter, gt, pred, [0], [1, 2], "mmseg")
    np.testing.assert_allclose(s.iou, [0.5, 0.25, 0.8])
    u = (0.25 + 0.8) / 2
    assert s.mIoU_unseen == pytest.approx(u)
    assert s.hIoU == pytest.approx(2 * 0.5 * u / (0.5 + u))
    assert s.mIoU == pytest.approx((0.5 + 0.25 + 0.8) / 3)
    assert s.pAcc == pytest.approx(6 / 11)


def test_empty_split_and_no_gt():
    s = summarize([0, 0], [0, 0], [0, 0], [0], [], "mmseg")
    assert all(math.isnan(x) for x in (s.mIoU, s.mIoU_seen, s.mIoU_unseen, s.hIoU, s.pAcc))
    s = summarize([0, 0], [3, 3], [0, 0], [0], [1], "detectron2")
    assert (s.mIoU_seen, s.mIoU_unseen, s.hIoU) == (0.0, 0.0, 0.0)  # S + U == 0 -> 0


def test_to_dict():
    s = hand_example().summary([0, 1], [2, 3], "detectron2")
    d = s.to_dict(["bg", "cat", "dog", "cow"])
    json.dumps(d)  # JSON friendly (no NaN)
    assert d["convention"] == "detectron2"
    assert d["mIoU"] == pytest.approx(50.0)
    assert d["mIoU_unseen"] is None and d["hIoU"] is None
    assert d["per_class"] == {"bg": pytest.approx(50.0), "cat": pytest.approx(50.0), "dog": None, "cow": None}
    assert d["per_class_acc"]["cat"] == pytest.approx(200 / 3)
    frac = s.to_dict(percent=False)
    assert frac["pAcc"] == pytest.approx(4 / 7) and set(frac["per_class"]) == {"0", "1", "2", "3"}
    with pytest.raises(ValueError, match="3 class names for 4 classes"):
        s.to_dict(["a", "b", "c"])


def test_argument_errors():
    v = [1, 1, 1]
    with pytest.raises(ValueError, match="mmseg, detectron2"):
        summarize(v, v, v, [0], [1], "mess")
    with pytest.raises(ValueError, match="both seen_ids and unseen_ids: \\[1\\]"):
        summarize(v, v, v, [0, 1], [1, 2])
    with pytest.raises(ValueError, match=r"unseen_ids has ids outside \[0, 3\): \[3\]"):
        summarize(v, v, v, [0], [3])
    with pytest.raises(ValueError, match="more than once"):
        summarize(v, v, v, [0, 0], [1])
    with pytest.raises(ValueError, match="convention"):
        hand_example().summary([0], [1], convention="nope")


@pytest.mark.parametrize("convention", ["mmseg", "detectron2"])
def test_batch_matches_single(convention):
    rng = np.random.default_rng(0)
    k, b = 12, 40
    inter = rng.integers(0, 5, (b, k))
    gt = inter + rng.integers(0, 4, (b, k))
    pred = inter + rng.integers(0, 4, (b, k))
    gt[rng.random((b, k)) < 0.2] = 0  # make some classes absent in gt ...
    inter = np.minimum(inter, gt)  # ... keeping I <= G, I <= P
    seen, unseen = [0, 2, 4, 6, 8], [1, 3, 5, 7]
    batch = summarize_batch(inter, gt, pred, seen, unseen, convention)
    for i in range(b):
        one = summarize(inter[i], gt[i], pred[i], seen, unseen, convention)
        for name, values in batch.items():
            assert values.shape == (b,)
            np.testing.assert_allclose(values[i], getattr(one, name))


def test_batch_matches_slow_definition():
    """Cross-check mIoU/seen/unseen against a plain loop over classes."""
    rng = np.random.default_rng(1)
    k = 9
    inter = rng.integers(0, 3, k)
    gt = inter + rng.integers(0, 3, k)
    pred = inter + rng.integers(0, 3, k)
    gt[[2, 5]] = 0
    inter[[2, 5]] = 0
    pred[5] = 0
    seen, unseen = [0, 1, 2, 3], [4, 5, 6, 7, 8]
    for conv, counts in (("mmseg", lambda c: gt[c] + pred[c] - inter[c] > 0), ("detectron2", lambda c: gt[c] > 0)):
        def mean(ids):
            vals = [inter[c] / (gt[c] + pred[c] - inter[c]) for c in ids if counts(c)]
            return sum(vals) / len(vals)
        s = summarize(inter, gt, pred, seen, unseen, conv)
        assert s.mIoU == pytest.approx(mean(range(k)))
        assert s.mIoU_seen == pytest.approx(mean(seen))
        assert s.mIoU_unseen == pytest.approx(mean(unseen))
