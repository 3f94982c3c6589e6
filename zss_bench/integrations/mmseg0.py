"""mmseg 0.x codebases (mmcv 1.x: ZegCLIP and its family): hIoU from what ``dataset.pre_eval`` returns.

mmseg 0.x's ``single_gpu_test(..., pre_eval=True)`` / ``multi_gpu_test`` hand ``dataset.evaluate`` a list with,
per image, ``(area_intersect, area_union, area_pred_label, area_label)``: four per-class pixel counts from
``mmseg.core.intersect_and_union``. Those are exactly the per-image statistics zss-bench's metrics work from
(intersection I, prediction count P, ground-truth count G, union = G + P - I; a predicted id outside 0..K-1,
such as 255, counts for no class, as zss-bench's "no prediction" does), so :func:`summarize` scores them with the
same code as ``zss-bench evaluate`` (:func:`zss_bench.evaluation.score`): S, U and hIoU under both conventions
and image-level bootstrap intervals. A few lines in ``ZeroPascalVOCDataset20.evaluate`` print hIoU::

    from zss_bench.integrations.mmseg0 import format_summary, summarize
    print(format_summary(summarize(results, "voc-15-5")))

This module needs numpy and zss-bench's metrics only: no mmengine, mmcv, mmseg or torch (tensors in the
results are read through ``.cpu().numpy()``). It also holds :class:`ClassSplit`, the protocol-or-class-list
resolution the mmengine metric (:mod:`zss_bench.integrations.mmseg`) shares.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from zss_bench.metrics import ImageStats
from zss_bench.metrics import summarize as _summarize_totals
from zss_bench.metrics.summary import CONVENTIONS

__all__ = ["ClassSplit", "format_summary", "pre_eval_image_stats", "resolve_split", "summarize"]

_PRE_EVAL = "(area_intersect, area_union, area_pred_label, area_label)"


@dataclass(frozen=True)
class ClassSplit:
    """What scoring needs of a protocol: class names in id order, seen/unseen ids, the ignore id and the
    headline convention. ``protocol`` is the :class:`~zss_bench.protocol.Protocol` it came from (None for
    explicit class lists: such a split can score, but a run record needs a protocol)."""

    classes: tuple[str, ...]
    seen_ids: tuple[int, ...]
    unseen_ids: tuple[int, ...]
    ignore_label: int
    headline_convention: str
    protocol: Any = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def source(self) -> str:
        return f"protocol {self.protocol.name}" if self.protocol is not None else "the given class list"

    def _matches(self, index: int, name) -> bool:
        if self.protocol is not None:  # a protocol knows its aliases (ZegCLIP's 'pottedplant' is 'potted plant')
            from zss_bench.registry import UnknownNameError

            try:
                return self.protocol.class_index(str(name)) == index
            except UnknownNameError:
                return False
        return str(name).strip().casefold() == self.classes[index].casefold()

    def check_class_order(self, names: Sequence, where: str = "dataset_meta['classes']") -> None:
        """Raise ValueError naming the first index where ``names`` differs from this split's class order
        (names compared case-insensitively, through the protocol's aliases)."""
        names = list(names)
        k = self.num_classes
        for i in range(max(len(names), k)):
            if i < len(names) and i < k and self._matches(i, names[i]):
                continue
            expected = repr(self.classes[i]) if i < k else f"nothing ({self.source} has {k} classes)"
            got = repr(names[i]) if i < len(names) else f"nothing ({where} has {len(names)} classes)"
            raise ValueError(f"{where} does not follow {self.source}'s class order: at index {i} expected "
                             f"{expected}, got {got} ({len(names)} classes given, {k} expected); scoring would "
                             "credit the wrong classes")


def resolve_split(protocol=None, *, classes: Sequence[str] | None = None, unseen: Sequence | None = None,
                  ignore_index: int | None = None, convention: str | None = None) -> ClassSplit:
    """A :class:`ClassSplit` from ``protocol`` (a shipped name, a YAML path or a Protocol) or from explicit
    ``classes`` (names in id order) and ``unseen`` (names or ids). ``ignore_index`` defaults to the protocol's
    (255 for class lists); ``convention`` (headline) is the protocol's, or ``"mmseg"`` for class lists."""
    if protocol is not None:
        if classes is not None or unseen is not None:
            raise ValueError("pass either protocol= or classes= and unseen=, not both")
        from zss_bench.protocol import Protocol, load_protocol

        proto = protocol if isinstance(protocol, Protocol) else load_protocol(protocol)
        if convention is not None and convention != proto.headline_convention:
            raise ValueError(f"protocol {proto.name} names its headline convention "
                             f"({proto.headline_convention!r}); convention= is only for explicit class lists "
                             "(both conventions are reported anyway)")
        ignore = proto.ignore_label if ignore_index is None else ignore_index
        return ClassSplit(tuple(proto.classes), tuple(proto.seen_ids), tuple(proto.unseen_ids),
                          _ignore(ignore, proto.num_classes), proto.headline_convention, proto)
    if classes is None or unseen is None:
        raise ValueError("say which classes are unseen: protocol= (a shipped name or a YAML path), or classes= "
                         "(names in id order) and unseen= (names or ids)")
    if isinstance(classes, str) or not classes:
        raise ValueError(f"classes= must be a non-empty list of names, got {classes!r}")
    names = tuple(str(c) for c in classes)
    folded = [c.strip().casefold() for c in names]
    if len(set(folded)) != len(folded):
        raise ValueError(f"classes= names a class twice: {sorted({c for c in names if folded.count(c.strip().casefold()) > 1})}")
    if isinstance(unseen, (str, int)):
        unseen = [unseen]
    ids = set()
    for u in unseen:
        if isinstance(u, (int, np.integer)) and not isinstance(u, bool):
            if not 0 <= int(u) < len(names):
                raise ValueError(f"unseen= id {u} is outside 0..{len(names) - 1}")
            ids.add(int(u))
        elif str(u).strip().casefold() in folded:
            ids.add(folded.index(str(u).strip().casefold()))
        else:
            raise ValueError(f"unseen= names {u!r}, which is not one of classes=")
    if not ids or len(ids) == len(names):
        raise ValueError(f"unseen= must name at least one class and leave at least one seen, got {list(unseen)!r}")
    conv = "mmseg" if convention is None else convention
    if conv not in CONVENTIONS:
        raise ValueError(f"unknown convention {conv!r}; valid conventions: {', '.join(CONVENTIONS)}")
    seen = tuple(i for i in range(len(names)) if i not in ids)
    return ClassSplit(names, seen, tuple(sorted(ids)), _ignore(255 if ignore_index is None else ignore_index,
                                                                len(names)), conv)


def _ignore(value, num_classes: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"ignore_index must be an int, got {value!r}")
    if 0 <= value < num_classes:
        raise ValueError(f"ignore_index {value} is a class id (there are {num_classes} classes)")
    return int(value)


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def pre_eval_image_stats(results, num_classes: int, image_ids: Sequence[str] | None = None) -> ImageStats:
    """Per-image statistics from mmseg 0.x ``pre_eval`` results: a list with, per image, the four per-class
    counts ``(area_intersect, area_union, area_pred_label, area_label)`` (tensors or arrays), or one (N, 4, K)
    array of them. Checks that they are counts of one image each and consistent (union = pred + label -
    intersect), so a segmentation map or the union in the wrong place fails here, naming the image (pred and
    label swapped cannot be told apart). ``image_ids``
    default to the positions ``"0"``, ``"1"``... (the dataset's order)."""
    if isinstance(results, np.ndarray) or hasattr(results, "detach"):
        arr = _array(results)
        if arr.ndim != 3 or arr.shape[1] != 4:
            raise ValueError(f"expected an (N, 4, K) array of pre_eval results {_PRE_EVAL}, got shape {arr.shape}")
    else:
        rows = []
        for i, item in enumerate(results):
            if not isinstance(item, (tuple, list)) or len(item) != 4:
                what = type(item).__name__ + (f" of shape {tuple(item.shape)}" if hasattr(item, "shape") else "")
                raise ValueError(f"results[{i}] is a {what}: expected mmseg 0.x pre_eval output, per image "
                                 f"{_PRE_EVAL}; segmentation maps or file names (single_gpu_test without "
                                 "pre_eval=True, or --format-only) cannot be summarised")
            parts = [_array(p) for p in item]
            if any(p.ndim != 1 or p.shape != parts[0].shape for p in parts):
                raise ValueError(f"results[{i}]: expected four per-class vectors of one length, got shapes "
                                 f"{[p.shape for p in parts]}")
            rows.append(np.stack(parts))
        if not rows:
            raise ValueError("no pre_eval results: nothing was scored")
        if len({r.shape for r in rows}) > 1:
            raise ValueError(f"pre_eval results have different class counts: {sorted({r.shape[1] for r in rows})}")
        arr = np.stack(rows)
    n, _, k = arr.shape
    if n == 0:
        raise ValueError("no pre_eval results: nothing was scored")
    if k != num_classes:
        raise ValueError(f"pre_eval results count {k} classes, the split has {num_classes}")
    counts = np.rint(arr)
    bad = ~np.isfinite(arr) | (arr < 0) | (np.abs(arr - counts) > 1e-3)
    if bad.any():
        i = int(np.argwhere(bad)[0][0])
        raise ValueError(f"pre_eval results of image {i} are not pixel counts (negative, fractional or not finite)")
    inter, union, pred, label = (counts[:, j].astype(np.int64) for j in range(4))
    wrong = (union != pred + label - inter) | (inter > np.minimum(pred, label))
    if wrong.any():
        i, c = (int(v) for v in np.argwhere(wrong)[0])
        raise ValueError(f"pre_eval results of image {i}, class {c}: intersect {inter[i, c]}, union {union[i, c]}, "
                         f"pred {pred[i, c]}, label {label[i, c]} do not fit together; expected per image "
                         f"{_PRE_EVAL} (union = pred + label - intersect)")
    if image_ids is None:
        ids = [str(i) for i in range(n)]
    else:
        ids = [str(i) for i in image_ids]
        if len(ids) != n:
            raise ValueError(f"got {len(ids)} image_ids for {n} images")
        if len(set(ids)) != n:
            raise ValueError("image_ids name an image more than once")
    return ImageStats(ids, inter, label, pred)


class _Totals:
    """What :func:`zss_bench.evaluation.score` reads of a confusion matrix (the summary of the totals and the
    per-image statistics), from per-image statistics alone: pre_eval has no confusions to build a matrix of."""

    def __init__(self, stats: ImageStats):
        self.image_stats = stats

    def summary(self, seen_ids, unseen_ids, convention: str = "mmseg"):
        return _summarize_totals(*self.image_stats.totals(), seen_ids, unseen_ids, convention)


def summarize(results, protocol=None, *, classes: Sequence[str] | None = None, unseen: Sequence | None = None,
              convention: str | None = None, image_ids: Sequence[str] | None = None, n_boot: int = 1000,
              seed: int = 0) -> dict:
    """Score mmseg 0.x ``pre_eval`` results (see :func:`pre_eval_image_stats`) under ``protocol`` (a shipped
    name, a YAML path or a Protocol) or explicit ``classes``/``unseen`` (names or ids).

    Returns what ``zss-bench evaluate --json`` computes, in percent (None where undefined): the headline
    convention's ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``, ``pAcc``, ``mIoU``, ``per_class`` and ``ci``
    (bootstrap intervals over images, ``n_boot`` resamples; 0 = none) at the top level, both conventions
    under ``conventions``, plus ``n_images``. The class order must be the protocol's (ZegCLIP's VOC20 and
    voc-15-5 agree); ``image_ids`` only name the images."""
    split = resolve_split(protocol, classes=classes, unseen=unseen, convention=convention)
    stats = pre_eval_image_stats(results, split.num_classes, image_ids)
    from zss_bench.evaluation.scoring import score

    metrics = score(_Totals(stats), split, n_boot=n_boot, seed=seed)
    metrics["n_images"] = len(stats)
    return metrics


def _fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def format_summary(metrics: dict) -> str:
    """A few lines for a log: S, U, hIoU, mIoU and pAcc under each convention (the headline first) with the
    hIoU interval, from :func:`summarize`'s result."""
    head = metrics["convention"]
    lines = [f"zss-bench: {metrics.get('n_images', '?')} images, headline convention {head}"]
    for conv in sorted(metrics["conventions"], key=lambda c: c != head):
        block = metrics["conventions"][conv]
        ci = block.get("ci", {}).get("hIoU")
        ci_txt = f"  hIoU 95% CI [{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else ""
        lines.append(f"  {conv:<11}S {_fmt(block['mIoU_seen'])}  U {_fmt(block['mIoU_unseen'])}  "
                     f"hIoU {_fmt(block['hIoU'])}  mIoU {_fmt(block['mIoU'])}  pAcc {_fmt(block['pAcc'])}{ci_txt}")
    return "\n".join(lines)
