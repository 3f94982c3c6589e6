"""IoU summaries (mIoU, seen/unseen mIoU, hIoU, pAcc) from per-class totals.

Everything is computed from three per-class vectors: intersection ``I`` (true
positives), ground-truth count ``G`` and prediction count ``P``. ``G`` includes ground-truth
pixels whose prediction was "no prediction" (they are misses), so ``union = G + P - I``.
Because only totals are needed, the bootstrap can resample images and call
:func:`summarize_batch` on a whole stack of resampled totals at once.

Two conventions decide which classes count toward a mean. They differ only for classes with no
ground-truth pixels:

* ``"mmseg"`` (also MESS, ZegCLIP-style code): a class counts iff ``union > 0``, so a
  class that is predicted but absent from the ground truth scores 0 and counts.
* ``"detectron2"`` (also ZegFormer, zsseg): a class counts iff ``G > 0``; predictions of
  absent classes are not punished.

A class with neither ground truth nor predictions is excluded under both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

__all__ = ["CONVENTIONS", "MetricSummary", "summarize", "summarize_batch"]

CONVENTIONS = ("mmseg", "detectron2")
_METRICS = ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc")


def _check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(
            f"unknown IoU convention {convention!r}; valid conventions: {', '.join(CONVENTIONS)}"
        )


def _check_ids(seen_ids, unseen_ids, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate the split index lists; returns them as int64 arrays."""
    out = []
    for name, ids in (("seen_ids", seen_ids), ("unseen_ids", unseen_ids)):
        arr = np.asarray(list(ids) if ids is not None else [], dtype=np.int64).reshape(-1)
        bad = arr[(arr < 0) | (arr >= num_classes)]
        if bad.size:
            raise ValueError(
                f"{name} has ids outside [0, {num_classes}): {sorted(set(bad.tolist()))[:10]}"
            )
        if np.unique(arr).size != arr.size:
            raise ValueError(f"{name} lists some class ids more than once")
        out.append(arr)
    both = np.intersect1d(out[0], out[1])
    if both.size:
        raise ValueError(f"class ids in both seen_ids and unseen_ids: {both[:10].tolist()}")
    return out[0], out[1]


def _as_2d(name: str, x, num_classes: int | None = None) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape (B, K), got {arr.shape}")
    if num_classes is not None and arr.shape != (arr.shape[0], num_classes):
        raise ValueError(f"{name} has shape {arr.shape}, expected (B, {num_classes})")
    return arr


def _counted(inter: np.ndarray, gt: np.ndarray, pred: np.ndarray, convention: str) -> np.ndarray:
    if convention == "detectron2":
        return gt > 0
    return (gt + pred - inter) > 0


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den == 0, without RuntimeWarnings."""
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _split_mean(iou0: np.ndarray, counted: np.ndarray, cols: np.ndarray | None) -> np.ndarray:
    """Mean IoU over counted classes in ``cols`` (all if None); NaN where none counts."""
    if cols is not None:
        iou0, counted = iou0[:, cols], counted[:, cols]
    return _safe_div(iou0.sum(axis=1), counted.sum(axis=1).astype(np.float64))


def _harmonic(s: np.ndarray, u: np.ndarray) -> np.ndarray:
    """2SU/(S+U); 0 where S+U == 0; NaN where either is NaN."""
    total = s + u
    out = np.zeros_like(total)
    np.divide(2.0 * s * u, total, out=out, where=total > 0)
    out[np.isnan(total)] = np.nan
    return out


def summarize_batch(inter, gt, pred, seen_ids, unseen_ids, convention: str = "mmseg") -> dict:
    """Vectorised summaries of B sets of per-class totals, each array (B, K).

    Returns ``{"mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc"}``, each a float64 (B,)
    array of fractions (NaN where undefined). Float totals are fine (the bootstrap uses them).
    """
    _check_convention(convention)
    inter = _as_2d("inter", inter)
    k = inter.shape[1]
    gt = _as_2d("gt", gt, k)
    pred = _as_2d("pred", pred, k)
    if not inter.shape == gt.shape == pred.shape:
        raise ValueError(f"shape mismatch: inter {inter.shape}, gt {gt.shape}, pred {pred.shape}")
    seen, unseen = _check_ids(seen_ids, unseen_ids, k)
    counted = _counted(inter, gt, pred, convention)
    union = gt + pred - inter
    iou0 = np.zeros_like(inter)  # IoU where counted, 0 elsewhere (so plain sums work)
    np.divide(inter, union, out=iou0, where=counted)
    s = _split_mean(iou0, counted, seen)
    u = _split_mean(iou0, counted, unseen)
    return {
        "mIoU": _split_mean(iou0, counted, None),
        "mIoU_seen": s,
        "mIoU_unseen": u,
        "hIoU": _harmonic(s, u),
        "pAcc": _safe_div(inter.sum(axis=1), gt.sum(axis=1)),
    }


def _none_if_nan(x: float, scale: float):
    return None if np.isnan(x) else float(x) * scale


@dataclass(frozen=True, eq=False)
class MetricSummary:
    """Metrics of one evaluation, as fractions in [0, 1]; NaN where undefined.

    ``iou`` is NaN for classes that do not count under ``convention`` (``counted`` False);
    ``acc`` (per-class TP / G) is NaN where a class has no ground-truth pixels.
    """

    convention: str
    iou: np.ndarray
    acc: np.ndarray
    mIoU: float
    mIoU_seen: float
    mIoU_unseen: float
    hIoU: float
    pAcc: float
    counted: np.ndarray

    def to_dict(self, class_names: Sequence[str] | None = None, percent: bool = True) -> dict:
        """JSON-friendly dict; NaN becomes None, ``percent`` multiplies values by 100."""
        k = len(self.iou)
        if class_names is None:
            class_names = [str(i) for i in range(k)]
        elif len(class_names) != k:
            raise ValueError(f"got {len(class_names)} class names for {k} classes")
        scale = 100.0 if percent else 1.0
        out: dict = {"convention": self.convention}
        for name in _METRICS:
            out[name] = _none_if_nan(getattr(self, name), scale)
        out["per_class"] = {n: _none_if_nan(v, scale) for n, v in zip(class_names, self.iou)}
        out["per_class_acc"] = {n: _none_if_nan(v, scale) for n, v in zip(class_names, self.acc)}
        return out


def summarize(inter, gt, pred, seen_ids, unseen_ids, convention: str = "mmseg") -> MetricSummary:
    """:class:`MetricSummary` from per-class totals ``inter``, ``gt``, ``pred`` (each length K)."""
    _check_convention(convention)
    vecs = [np.asarray(x, dtype=np.float64) for x in (inter, gt, pred)]
    for name, v in zip(("inter", "gt", "pred"), vecs):
        if v.ndim != 1:
            raise ValueError(f"{name} must be a 1-D per-class vector, got shape {v.shape}")
    inter_v, gt_v, pred_v = vecs
    scalars = summarize_batch(inter_v[None], gt_v[None], pred_v[None], seen_ids, unseen_ids, convention)
    counted = _counted(inter_v, gt_v, pred_v, convention)
    iou = np.full(inter_v.shape, np.nan)
    np.divide(inter_v, gt_v + pred_v - inter_v, out=iou, where=counted)
    return MetricSummary(
        convention=convention,
        iou=iou,
        acc=_safe_div(inter_v, gt_v),
        counted=counted,
        **{name: float(scalars[name][0]) for name in _METRICS},
    )
