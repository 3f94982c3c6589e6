"""ConfusionMatrix: agreement with a slow reference, validation, merge, save/load, all_reduce."""
from __future__ import annotations

import os
from contextlib import nullcontext
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from zss_bench.metrics import ConfusionMatrix, ImageStats

IGN = 255
DTYPES = [np.uint8, np.int16, np.int32, np.int64]


def random_maps(k, shape, seed=0, ign=IGN, p_ign_gt=0.05, p_ign_pred=0.03, p_err=0.3):
    """Label maps with some ignore in gt, some "no prediction" in pred, ~30% errors."""
    rng = np.random.default_rng(seed)
    gt = rng.integers(0, k, shape)
    pred = gt.copy()
    err = rng.random(shape) < p_err
    pred[err] = rng.integers(0, k, int(err.sum()))
    gt[rng.random(shape) < p_ign_gt] = ign
    pred[rng.random(shape) < p_ign_pred] = ign
    return pred, gt


def reference(pred, gt, k, ign=IGN):
    """Slow, independent reference: a pixel loop for the matrix, a class loop for I/G/P."""
    pred = np.asarray(pred).astype(np.int64).reshape(-1)
    gt = np.asarray(gt).astype(np.int64).reshape(-1)
    matrix = np.zeros((k, k), np.int64)
    missed = np.zeros(k, np.int64)
    for p, g in zip(pred.tolist(), gt.tolist()):
        if g == ign:
            continue
        if p == ign:
            missed[g] += 1
        else:
            matrix[g, p] += 1
    inter, g_cnt, p_cnt = (np.zeros(k, np.int64) for _ in range(3))
    for c in range(k):
        inter[c] = np.count_nonzero((gt == c) & (pred == c))
        g_cnt[c] = np.count_nonzero(gt == c)
        p_cnt[c] = np.count_nonzero((pred == c) & (gt != ign))
    return matrix, missed, inter, g_cnt, p_cnt


def per_image_reference(pred, gt, k, ign=IGN):
    rows = [reference(p, g, k, ign)[2:] for p, g in zip(pred, gt)]
    return [np.stack([r[j] for r in rows]) for j in range(3)]


def assert_state_equal(a: ConfusionMatrix, b: ConfusionMatrix):
    np.testing.assert_array_equal(a.matrix, b.matrix)
    np.testing.assert_array_equal(a.missed, b.missed)
    assert a.num_images == b.num_images
    sa, sb = a.image_stats, b.image_stats
    assert (sa is None) == (sb is None)
    if sa is not None:
        assert sa.ids == sb.ids
        for name in ("inter", "gt", "pred"):
            np.testing.assert_array_equal(getattr(sa, name), getattr(sb, name))


# ---------------------------------------------------------------- agreement with the reference
@pytest.mark.parametrize("k", [3, 21, 171])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("batched", [False, True])
def test_matches_reference(k, dtype, lib, batched):
    shape = (3, 12, 17) if batched else (19, 23)
    pred, gt = random_maps(k, shape, seed=k + len(shape))
    pred, gt = pred.astype(dtype), gt.astype(dtype)
    cm = ConfusionMatrix(k)
    if lib == "torch":
        cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
    else:
        cm.update(pred, gt)
    matrix, missed, inter, g_cnt, p_cnt = reference(pred, gt, k)
    np.testing.assert_array_equal(cm.matrix, matrix)
    np.testing.assert_array_equal(cm.missed, missed)
    assert cm.matrix.dtype == np.int64 and cm.matrix.shape == (k, k)
    st = cm.image_stats
    n = shape[0] if batched else 1
    assert len(st) == n == cm.num_images
    per = per_image_reference(pred.reshape((n,) + shape[-2:]), gt.reshape((n,) + shape[-2:]), k)
    np.testing.assert_array_equal(st.inter, per[0])
    np.testing.assert_array_equal(st.gt, per[1])
    np.testing.assert_array_equal(st.pred, per[2])
    # per-image stats add up to the global matrix
    np.testing.assert_array_equal(st.inter.sum(0), np.diag(cm.matrix))
    np.testing.assert_array_equal(st.gt.sum(0), cm.matrix.sum(1) + cm.missed)
    np.testing.assert_array_equal(st.pred.sum(0), cm.matrix.sum(0))
    np.testing.assert_array_equal(st.union, st.gt + st.pred - st.inter)


@pytest.mark.parametrize(
    "k,ign,dtype",
    [
        (21, 65535, np.int32),  # S*S too large: masked fallback
        (21, -1, np.int16),  # negative ignore id: masked fallback
        (600, 700, np.int64),  # many classes: masked fallback
        (300, 400, np.int32),  # S = 401: dense with a uint32 index
        (300, 400, np.uint16),
    ],
)
@pytest.mark.parametrize("track", [True, False])
def test_other_layouts_match_reference(k, ign, dtype, track):
    pred, gt = random_maps(k, (2, 15, 16), seed=3, ign=ign)
    pred, gt = pred.astype(dtype), gt.astype(dtype)
    cm = ConfusionMatrix(k, ignore_index=ign, track_images=track)
    cm.update(pred, gt)
    matrix, missed, *_ = reference(pred, gt, k, ign)
    np.testing.assert_array_equal(cm.matrix, matrix)
    np.testing.assert_array_equal(cm.missed, missed)
    if track:
        per = per_image_reference(pred, gt, k, ign)
        np.testing.assert_array_equal(cm.image_stats.gt, per[1])
    else:
        assert cm.image_stats is None and cm.num_images == 2
    with pytest.raises(ValueError, match="prediction holds invalid class ids"):
        cm.update(np.full((2, 2), k, dtype), np.zeros((2, 2), dtype))


def test_mixed_numpy_and_torch_inputs():
    pred, gt = random_maps(21, (2, 9, 9), seed=1)
    ref = reference(pred, gt, 21)
    for p, g in [
        (torch.from_numpy(pred.astype(np.uint8)), gt.astype(np.int32)),
        (pred.astype(np.int16), torch.from_numpy(gt.astype(np.uint8))),
    ]:
        cm = ConfusionMatrix(21)
        cm.update(p, g)
        np.testing.assert_array_equal(cm.matrix, ref[0])
        np.testing.assert_array_equal(cm.missed, ref[1])


def test_uint8_overflow_regression_k171():
    """gt*171 + pred wraps around on uint8; the index must be built in a wider type."""
    gt = np.full((8, 8), 170, np.uint8)
    pred = np.full((8, 8), 169, np.uint8)
    pred[0, :4] = 170
    for lib in ("numpy", "torch"):
        cm = ConfusionMatrix(171)
        if lib == "torch":
            cm.update(torch.from_numpy(pred), torch.from_numpy(gt))
        else:
            cm.update(pred, gt)
        m = cm.matrix
        assert m[170, 169] == 60 and m[170, 170] == 4 and m.sum() == 64
        assert cm.image_stats.inter[0, 170] == 4


def test_default_and_explicit_image_ids():
    pred, gt = random_maps(3, (2, 4, 4))
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    cm.update(pred[0], gt[0], image_ids="img_x")
    cm.update(pred, gt, image_ids=["a", "b"])
    assert cm.image_stats.ids == ["0", "1", "img_x", "a", "b"]
    assert cm.num_images == 5


def test_image_stats_refresh_and_read_only():
    pred, gt = random_maps(3, (2, 4, 4))
    cm = ConfusionMatrix(3)
    cm.update(pred, gt)
    first = cm.image_stats
    with pytest.raises(ValueError):
        first.inter[0, 0] = 99
    cm.update(pred, gt)
    assert len(cm.image_stats) == 4
    np.testing.assert_array_equal(cm.image_stats.inter[2:], first.inter)


# ---------------------------------------------------------------- validation
def _state(cm):
    st = cm.image_stats
    return cm.matrix, cm.missed, cm.num_images, (st.ids, st.inter.copy()) if st else None


def _assert_unchanged(cm, before):
    after = _state(cm)
    np.testing.assert_array_equal(after[0], before[0])
    np.testing.assert_array_equal(after[1], before[1])
    assert after[2] == before[2]
    assert after[3][0] == before[3][0]
    np.testing.assert_array_equal(after[3][1], before[3][1])


@pytest.fixture
def filled():
    cm = ConfusionMatrix(21)
    pred, gt = random_maps(21, (2, 8, 8))
    cm.update(pred.astype(np.uint8), gt.astype(np.uint8))
    return cm


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize(
    "which,dtype,bad",
    [
        ("prediction", np.uint8, [21, 200]),  # found from the bincount bins
        ("ground truth", np.uint8, [254]),
        ("prediction", np.int16, [-3, 300]),  # found by min/max (would alias)
        ("ground truth", np.int64, [-1]),
        ("ground truth", np.int32, [22, 1000]),
    ],
)
def test_invalid_ids_raise_and_leave_state(filled, lib, which, dtype, bad):
    before = _state(filled)
    pred = np.zeros((2, 4, 4), dtype)
    gt = np.ones((2, 4, 4), dtype)
    target = pred if which == "prediction" else gt
    target[1, 0, : len(bad)] = bad
    if lib == "torch":
        pred, gt = torch.from_numpy(pred), torch.from_numpy(gt)
    with pytest.raises(ValueError) as exc:
        filled.update(pred, gt)
    msg = str(exc.value)
    assert msg.startswith(which)
    assert str(sorted(bad)) in msg
    assert "0..20" in msg and "255" in msg
    _assert_unchanged(filled, before)


def test_invalid_ids_lists_at_most_ten():
    cm = ConfusionMatrix(3)
    pred = np.arange(3, 43, dtype=np.uint8).reshape(5, 8)
    with pytest.raises(ValueError, match=r"\[3, 4, 5, 6, 7, 8, 9, 10, 11, 12\] \(first 10 of 40\)"):
        cm.update(pred, np.zeros_like(pred))


def test_shape_mismatch(filled):
    before = _state(filled)
    with pytest.raises(ValueError, match=r"prediction shape \(4, 5\) != ground truth shape \(5, 4\)"):
        filled.update(np.zeros((4, 5), np.uint8), np.zeros((5, 4), np.uint8))
    with pytest.raises(ValueError, match="got shape"):
        filled.update(np.zeros((4,), np.uint8), np.zeros((4,), np.uint8))
    _assert_unchanged(filled, before)


@pytest.mark.parametrize(
    "pred",
    [
        np.zeros((4, 4), np.float32),
        np.zeros((4, 4), bool),
        torch.zeros(4, 4),
        torch.zeros(4, 4, dtype=torch.bool),
        torch.zeros(4, 4, dtype=torch.bfloat16),
    ],
)
def test_non_integer_dtype(filled, pred):
    before = _state(filled)
    with pytest.raises(TypeError, match="prediction must hold integer class ids"):
        filled.update(pred, np.zeros((4, 4), np.uint8))
    _assert_unchanged(filled, before)


def test_image_ids_length_mismatch(filled):
    before = _state(filled)
    with pytest.raises(ValueError, match="got 3 image_ids for a batch of 2"):
        filled.update(np.zeros((2, 4, 4), np.uint8), np.zeros((2, 4, 4), np.uint8), image_ids=["a", "b", "c"])
    _assert_unchanged(filled, before)


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="is a valid class id"):
        ConfusionMatrix(21, ignore_index=5)
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


# ---------------------------------------------------------------- merge / save / load
def test_merge_equals_single_matrix():
    pred, gt = random_maps(21, (6, 10, 10), seed=5)
    whole = ConfusionMatrix(21)
    whole.update(pred, gt)
    a, b = ConfusionMatrix(21), ConfusionMatrix(21)
    a.update(pred[:2], gt[:2], image_ids=["0", "1"])
    b.update(torch.from_numpy(pred[2:]), torch.from_numpy(gt[2:]), image_ids=["2", "3", "4", "5"])
    summed = a + b
    assert_state_equal(summed, whole)
    a.merge(b)
    assert_state_equal(a, whole)
    assert b.num_images == 4  # the other operand is untouched


def test_merge_rejects_incompatible():
    with pytest.raises(ValueError, match="num_classes 21 vs 3"):
        ConfusionMatrix(21).merge(ConfusionMatrix(3))
    with pytest.raises(ValueError, match="per-image"):
        ConfusionMatrix(3).merge(ConfusionMatrix(3, track_images=False))
    untracked = ConfusionMatrix(3, track_images=False) + ConfusionMatrix(3)
    assert untracked.image_stats is None


@pytest.mark.parametrize("track", [True, False])
def test_save_load_round_trip(tmp_path, track):
    pred, gt = random_maps(21, (3, 10, 10), seed=9)
    cm = ConfusionMatrix(21, track_images=track)
    cm.update(pred, gt, image_ids=["x/a.png", "x/b.png", "ünïcode"])
    path = tmp_path / "cm_result"  # no .npz suffix: written exactly there
    cm.save(path)
    assert os.listdir(tmp_path) == ["cm_result"]  # the temp file is gone
    loaded = ConfusionMatrix.load(path)
    assert (loaded.num_classes, loaded.ignore_index, loaded.track_images) == (21, 255, track)
    assert_state_equal(loaded, cm)
    loaded.update(pred, gt, image_ids=["n1", "n2", "n3"])  # still usable
    assert loaded.num_images == 6
    with np.load(path) as z:
        assert {"matrix", "missed", "num_classes", "ignore_index"} <= set(z.files)
        assert ("ids" in z.files) == track
    cm.save(path)  # overwriting works
    assert_state_equal(ConfusionMatrix.load(path), cm)


def test_summary_shortcuts():
    cm = ConfusionMatrix(3)
    cm.update(np.array([[0, 1, 2, 2]], np.uint8), np.array([[0, 1, 1, 255]], np.uint8))
    s = cm.summaries([0, 1], [2])
    assert set(s) == {"mmseg", "detectron2"}
    assert s["mmseg"].mIoU_unseen == 0.0  # class 2 predicted, absent in gt
    assert np.isnan(s["detectron2"].mIoU_unseen)
    assert cm.summary([0, 1], [2]).convention == "mmseg"


@pytest.mark.parametrize(
    "k,ign,dtype",
    [(21, 255, torch.uint8), (171, 255, torch.int16), (171, 255, torch.int64), (21, 65535, torch.int32)],
)
@pytest.mark.parametrize("track", [True, False])
def test_torch_device_path_on_cpu(monkeypatch, k, ign, dtype, track):
    """The accelerator code path (torch.bincount, device accumulators), run on CPU tensors."""
    monkeypatch.setattr(ConfusionMatrix, "_numpy_on_cpu", False)
    pred, gt = random_maps(k, (3, 11, 13), seed=6, ign=ign)
    cm = ConfusionMatrix(k, ignore_index=ign, track_images=track)
    cm.update(torch.from_numpy(pred).to(dtype), torch.from_numpy(gt).to(dtype))
    cm.update(pred[0], torch.from_numpy(gt[0]).to(dtype))  # numpy side converted to torch
    assert set(cm._dev_acc) == {"cpu"}  # accumulated as a tensor until read
    both_p, both_g = np.concatenate([pred, pred[:1]]), np.concatenate([gt, gt[:1]])
    matrix, missed, *_ = reference(both_p, both_g, k, ign)
    np.testing.assert_array_equal(cm.matrix, matrix)
    np.testing.assert_array_equal(cm.missed, missed)
    if track:
        per = per_image_reference(both_p, both_g, k, ign)
        for got, want in zip((cm.image_stats.inter, cm.image_stats.gt, cm.image_stats.pred), per):
            np.testing.assert_array_equal(got, want)
    before = _state(cm) if track else None
    for bad, which in ((k + 1, "prediction"), (-1 if ign != -1 else k, "ground truth")):
        p = torch.zeros(2, 3, dtype=torch.int64)
        g = torch.zeros(2, 3, dtype=torch.int64)
        (p if which == "prediction" else g)[1, 1] = bad
        with pytest.raises(ValueError, match=rf"{which} holds invalid class ids \[{bad}\]"):
            cm.update(p, g)
    if track:
        _assert_unchanged(cm, before)
    np.testing.assert_array_equal(cm.matrix, matrix)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_accumulates_on_device():
    pred, gt = random_maps(171, (2, 32, 32), seed=2)
    cm = ConfusionMatrix(171)
    cm.update(torch.from_numpy(pred.astype(np.uint8)).cuda(), torch.from_numpy(gt.astype(np.uint8)).cuda())
    cm.update(pred.astype(np.int16), torch.from_numpy(gt).cuda())  # numpy converted to the device
    assert all(t.device.type == "cuda" for t in cm._dev_acc.values())
    matrix, missed, *_ = reference(np.concatenate([pred, pred]), np.concatenate([gt, gt]), 171)
    np.testing.assert_array_equal(cm.matrix, matrix)
    np.testing.assert_array_equal(cm.missed, missed)
    assert len(cm.image_stats) == 4
    bad = torch.zeros(4, 4, dtype=torch.uint8, device="cuda")
    bad[0, 0] = 200
    with pytest.raises(ValueError, match=r"prediction holds invalid class ids \[200\]"):
        cm.update(bad, torch.zeros_like(bad))
    np.testing.assert_array_equal(cm.matrix, matrix)


# ---------------------------------------------------------------- cross-check with detectron2
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning")
def test_agrees_with_detectron2_evaluator(monkeypatch):
    """Same data through detectron2's SemSegEvaluator (if installed): same per-class IoU/pAcc."""
    pytest.importorskip("zss_bench.detectron2_compat", reason="detectron2 not installed")
    from detectron2.data import DatasetCatalog, MetadataCatalog
    import detectron2
    from detectron2.evaluation import sem_seg_evaluation as d2eval

    k, n = 5, 3
    pred, gt = random_maps(k, (n, 12, 12), seed=4, p_ign_pred=0.0)
    pred[pred == 4] = 3  # class 4: no predictions
    gt[gt == 3] = 2  # class 3: predicted but absent from gt (the conventions differ here)
    name = "zss_bench_test_d2_agreement"
    DatasetCatalog.register(name, lambda: [{"file_name": str(i), "sem_seg_file_name": str(i)} for i in range(n)])
    MetadataCatalog.get(name).set(stuff_classes=[f"c{i}" for i in range(k)], ignore_label=IGN)
    try:
        for alias, typ in (("int", int), ("float", float), ("bool", bool)):
            if not hasattr(np, alias):  # numpy 2 has np.bool again (numpy.bool_): keep it
                monkeypatch.setattr(np, alias, typ, raising=False)
        # feed the in-memory gt instead of reading PNGs through PathManager + PIL
        monkeypatch.setattr(d2eval, "PathManager", SimpleNamespace(open=lambda key, mode: nullcontext(key)))
        monkeypatch.setattr(d2eval, "Image", SimpleNamespace(open=lambda key: gt[int(key)]))
        ev = d2eval.SemSegEvaluator(name, distributed=False)
        ev.reset()
        for i in range(n):
            onehot = torch.nn.functional.one_hot(torch.from_numpy(pred[i]), k).permute(2, 0, 1).float()
            ev.process([{"file_name": str(i)}], [{"sem_seg": onehot}])
        res = ev.evaluate()["sem_seg"]
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    cm = ConfusionMatrix(k)
    cm.update(pred, gt)
    d2 = cm.summary([0, 1, 2], [3, 4], "detectron2")
    mm = cm.summary([0, 1, 2], [3, 4], "mmseg")
    for i in range(k):
        ours = d2.iou[i] * 100
        theirs = res[f"IoU-c{i}"]
        assert (np.isnan(ours) and np.isnan(theirs)) or ours == pytest.approx(theirs)
    assert res["pACC"] == pytest.approx(100 * d2.pAcc)
    # detectron2 0.6 divides by the classes with union > 0, i.e. scores a predicted-but-absent
    # class as 0 (our "mmseg" mIoU); later versions count only classes with gt (our "detectron2").
    expected = mm if detectron2.__version__.startswith("0.6") else d2
    assert res["mIoU"] == pytest.approx(100 * expected.mIoU)
    assert mm.mIoU != pytest.approx(d2.mIoU)


# ---------------------------------------------------------------- distributed
def _dist_worker(rank, world, init_file, out_dir, pred, gt, ids):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        half = len(pred) // world
        sl = slice(rank * half, (rank + 1) * half)
        cm = ConfusionMatrix(21)
        cm.update(pred[sl], gt[sl], image_ids=ids[sl])
        cm.all_reduce()
        try:
            cm.all_reduce()
        except RuntimeError:
            pass
        else:
            raise AssertionError("second all_reduce did not raise")
        cm.save(os.path.join(out_dir, f"rank{rank}.npz"))
    finally:
        dist.destroy_process_group()


def test_all_reduce_two_processes(tmp_path):
    import torch.multiprocessing as mp

    pred, gt = random_maps(21, (4, 16, 16), seed=11)
    pred, gt = pred.astype(np.uint8), gt.astype(np.uint8)
    ids = [f"img{i}" for i in range(4)]
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path), pred, gt, ids), nprocs=2, join=True)
    single = ConfusionMatrix(21)
    single.update(pred, gt, image_ids=ids)
    for rank in range(2):
        assert_state_equal(ConfusionMatrix.load(tmp_path / f"rank{rank}.npz"), single)


def test_all_reduce_is_noop_without_distributed():
    cm = ConfusionMatrix(3)
    cm.update(np.zeros((2, 2), np.uint8), np.zeros((2, 2), np.uint8))
    cm.all_reduce()
    cm.all_reduce()
    assert cm.matrix[0, 0] == 4 and isinstance(cm.image_stats, ImageStats)
