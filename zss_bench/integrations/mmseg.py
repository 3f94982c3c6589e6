"""mmseg 1.x / mmengine: ``ZSSIoUMetric``, used in place of mmseg's ``IoUMetric``, reports hIoU.

In an mmseg 1.x config::

    custom_imports = dict(imports=['zss_bench.integrations.mmseg'], allow_failed_imports=False)
    test_evaluator = dict(type='ZSSIoUMetric', protocol='voc-15-5')   # + results_dir='zss-results'

It is registered in mmengine's root ``METRICS`` registry, which mmseg's own registry falls back to, and
imports nothing from mmseg or mmcv. ``process`` reads the data samples exactly as mmseg's ``IoUMetric`` does
(``pred_sem_seg['data']`` and ``gt_sem_seg['data']``: 1 x H x W contiguous class ids; ``ignore_index`` in the
ground truth is not scored, in the prediction it means no prediction, a miss; any other id outside the classes is
an error naming the image, where ``IoUMetric`` would silently drop it); ``compute_metrics`` returns, in
percent, ``mIoU``, ``mIoU_seen``, ``mIoU_unseen``, ``hIoU``, ``aAcc`` and ``IoU.<class>`` under the protocol's
headline convention, the other convention's summary as ``<key>_<convention>`` (``hIoU_detectron2``), and the
headline hIoU's bootstrap interval as ``hIoU_low``/``hIoU_high``. Every number comes from zss-bench's own
``ConfusionMatrix`` and :func:`zss_bench.evaluation.score`, the code behind ``zss-bench evaluate``.

Per image only compact statistics are kept (never the maps): the non-zero cells of the image's confusion
block (at most one row per ground-truth class present in the image), its image id and a digest of its ground
truth, so mmengine's cross-rank collection stays small. From them ``compute_metrics`` rebuilds the exact
confusion matrix with per-image statistics (for the bootstrap and the record) and the test-set fingerprint.
With ``results_dir`` it writes a zss-bench run record (``kind: evaluate``, origin imported, like
``zss-bench evaluate --out``) that ``zss-bench leaderboard --results DIR`` lists with the other runs.

mmseg 0.x codebases (no mmengine): :func:`summarize` (re-exported from :mod:`zss_bench.integrations.mmseg0`,
which imports without mmengine).
"""
from __future__ import annotations

try:
    from mmengine.evaluator import BaseMetric
    from mmengine.logging import print_log
    from mmengine.registry import METRICS
except ModuleNotFoundError as exc:
    if (exc.name or "").split(".")[0] != "mmengine":
        raise  # mmengine is there but something it needs is not: its own error says what
    raise ImportError('zss_bench.integrations.mmseg needs mmengine: pip install "zss-bench[mmseg]"') from None

import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from zss_bench.integrations.mmseg0 import ClassSplit, format_summary, resolve_split, summarize
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records.fingerprint import gt_digest

__all__ = ["ZSSIoUMetric", "format_summary", "summarize"]


def _field(obj, key: str):
    """``obj[key]`` of a dict (what mmengine's Evaluator passes) or ``obj.key`` of a data element."""
    if isinstance(obj, dict):
        if key not in obj:
            raise KeyError(f"data sample has no '{key}' (keys: {', '.join(map(str, obj))})")
        return obj[key]
    if not hasattr(obj, key):
        raise KeyError(f"data sample has no '{key}'")
    return getattr(obj, key)


def _label_map(sample, key: str):
    """The H x W map of ``sample[key]['data']`` (1 x H x W, as mmseg packs it)."""
    data = _field(_field(sample, key), "data")
    if data.ndim == 3 and data.shape[0] == 1:
        return data[0]
    if data.ndim != 2:
        raise ValueError(f"{key}['data'] has shape {tuple(data.shape)}; expected 1 x H x W class ids")
    return data


def _image_id(sample) -> str | None:
    """The image's file stem, the id ``zss-bench evaluate`` scores it under (None when the sample names no file)."""
    for key in ("img_path", "seg_map_path"):
        try:
            path = _field(sample, key)
        except KeyError:
            continue
        if isinstance(path, (str, os.PathLike)) and str(path):
            return Path(path).stem
    return None


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)


def _nan_if_none(value) -> float:
    return float("nan") if value is None else float(value)


@METRICS.register_module()
class ZSSIoUMetric(BaseMetric):
    """mmseg-style IoU metric with seen/unseen mIoU, hIoU, both conventions and bootstrap intervals.

    Args:
        protocol: a shipped protocol name (``'voc-15-5'``) or a protocol YAML path; gives the classes, the
            seen/unseen split, ``ignore_index`` and the headline convention. Or, instead:
        classes, unseen: class names in id order and the unseen ones (names or ids); ``convention`` then
            picks the headline (default ``'mmseg'``). Such a metric scores but writes no record.
        ignore_index: ground-truth id that is not scored (default: the protocol's ``ignore_label``, else 255).
        results_dir: write a zss-bench run record under ``results_dir/runs/<protocol>/<method>/<run-id>/``.
        method, label: the record's method name and config label (the leaderboard's row name).
        seed: the seed of the run that made the predictions (recorded; also seeds the bootstrap, 0 if None).
        n_boot: bootstrap resamples for the intervals (0 = none).
        collect_device, prefix, collect_dir: as mmengine's ``BaseMetric``.
    """

    default_prefix = None  # metric names as mmseg's IoUMetric gives them ('mIoU', ...), so save_best works

    def __init__(self, protocol: str | None = None, classes: Sequence[str] | None = None,
                 unseen: Sequence | None = None, ignore_index: int | None = None, convention: str | None = None,
                 results_dir: str | None = None, method: str = "external", label: str = "mmseg",
                 seed: int | None = None, n_boot: int = 1000, collect_device: str = "cpu",
                 prefix: str | None = None, collect_dir: str | None = None) -> None:
        extra = {"collect_dir": collect_dir} if collect_dir is not None else {}
        super().__init__(collect_device=collect_device, prefix=prefix, **extra)
        self.split: ClassSplit = resolve_split(protocol, classes=classes, unseen=unseen, ignore_index=ignore_index,
                                               convention=convention)
        if results_dir is not None and self.split.protocol is None:
            raise ValueError("results_dir= needs protocol= (a record names its protocol by hash); explicit "
                             "classes=/unseen= can score but not write a record")
        if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 0:
            raise ValueError(f"n_boot must be a whole number >= 0, got {n_boot!r}")
        self.ignore_index = self.split.ignore_label
        self.results_dir, self.method, self.label, self.seed, self.n_boot = results_dir, method, label, seed, n_boot
        self.last_record: Path | None = None  # the run directory compute_metrics wrote last
        self.last_metrics: dict | None = None  # zss-bench's full metrics block (both conventions, intervals)
        self._started: float | None = None

    @property
    def dataset_meta(self) -> dict | None:
        return self._dataset_meta

    @dataset_meta.setter
    def dataset_meta(self, dataset_meta: dict | None) -> None:
        """Refuses a dataset whose classes are not the protocol's, in its order (mmseg's VOC has 'background'
        first: 21 classes, where voc-15-5 has the 20 objects): scoring it would credit the wrong classes."""
        names = (dataset_meta or {}).get("classes")
        if names is not None:
            self.split.check_class_order(names)
        self._dataset_meta = dataset_meta

    def process(self, data_batch: Any, data_samples: Sequence[dict]) -> None:
        """Keep, per data sample, the non-zero cells of its confusion block, its id and its ground truth's digest."""
        if self._started is None:
            self._started = time.time()
        k = self.split.num_classes
        for sample in data_samples:
            pred, gt = _label_map(sample, "pred_sem_seg"), _label_map(sample, "gt_sem_seg")
            image_id = _image_id(sample)
            if tuple(pred.shape) != tuple(gt.shape):
                raise ValueError(f"{image_id or 'a data sample'}: prediction {tuple(pred.shape)} and ground truth "
                                 f"{tuple(gt.shape)} differ in size (resize the prediction to the label map)")
            if hasattr(gt, "to") and hasattr(pred, "device") and gt.device != pred.device:
                gt = gt.to(pred.device)  # as mmseg's IoUMetric: count where the prediction is
            one = ConfusionMatrix(k, ignore_index=self.ignore_index, track_images=False)
            try:
                one.update(pred, gt)
            except (TypeError, ValueError) as exc:
                raise ValueError(f"{image_id or 'a data sample'}: {exc}") from None
            block = np.concatenate([one.matrix, one.missed[:, None]], axis=1).reshape(-1)
            cells = np.flatnonzero(block)
            self.results.append({"id": image_id, "cells": cells.astype(np.int32), "counts": block[cells],
                                 "gt_digest": gt_digest(_numpy(gt))})

    def _matrix(self, results: list) -> tuple[ConfusionMatrix, dict[str, str]]:
        """The confusion matrix with per-image statistics, rebuilt exactly from the kept cells (each image's
        pixels regenerated as (ground truth, prediction) pairs and counted by ConfusionMatrix itself), and the
        ground-truth digest per image id."""
        ids = [r["id"] if r["id"] is not None else str(i) for i, r in enumerate(results)]
        if len(set(ids)) != len(ids):
            dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
            raise ValueError(f"data samples name one image more than once ({dup}): each image must be scored once "
                             "(image ids are the stems of img_path)")
        k, ignore = self.split.num_classes, self.ignore_index
        dtype = np.uint8 if max(k, ignore) < 256 else np.int64
        cm = ConfusionMatrix(k, ignore_index=ignore, track_images=True)
        for image_id, r in zip(ids, results):
            rows, cols = np.divmod(r["cells"].astype(np.int64), k + 1)
            cols[cols == k] = ignore  # the last column: no prediction
            gt = np.repeat(rows, r["counts"]).astype(dtype)
            pred = np.repeat(cols, r["counts"]).astype(dtype)
            cm.update(pred[None], gt[None], image_ids=[image_id])
        return cm, {i: r["gt_digest"] for i, r in zip(ids, results)}

    def compute_metrics(self, results: list) -> dict:
        """Metrics in percent (NaN where undefined); see the module docstring for the keys."""
        if not results:
            raise ValueError("ZSSIoUMetric got no data samples: nothing to score")
        from zss_bench.evaluation import score

        cm, digests = self._matrix(results)
        seed = 0 if self.seed is None else int(self.seed)
        metrics = score(cm, self.split, n_boot=self.n_boot, seed=seed)
        self.last_metrics = metrics
        head = metrics["convention"]
        out = {"aAcc": _nan_if_none(metrics["pAcc"])}
        for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU"):
            out[key] = _nan_if_none(metrics[key])
        ci = metrics["ci"].get("hIoU")
        if ci:
            out["hIoU_low"], out["hIoU_high"] = _nan_if_none(ci["low"]), _nan_if_none(ci["high"])
        for conv, block in metrics["conventions"].items():
            if conv != head:
                for key in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU"):
                    out[f"{key}_{conv}"] = _nan_if_none(block[key])
        for name, value in metrics["per_class"].items():
            out[f"IoU.{name}"] = _nan_if_none(value)
        print_log("\n" + format_summary({**metrics, "n_images": cm.num_images}), logger="current")
        if self.results_dir is not None:
            from zss_bench.records.fingerprint import fingerprint_block

            self.last_record = self._write_record(cm, metrics, fingerprint_block(digests))
            print_log(f"zss-bench record: {self.last_record}", logger="current")
        return out

    def _write_record(self, cm: ConfusionMatrix, metrics: dict, test_set: dict) -> Path:
        """A run record as ``zss-bench evaluate --out`` writes one (kind ``evaluate``: imported predictions)."""
        import mmengine

        from zss_bench.records import write_run
        from zss_bench.records.imported import imported_record

        record = imported_record(
            self.split.protocol, method=self.method, label=self.label, source="mmengine-metric", seed=self.seed,
            n_boot=self.n_boot, started=self._started or time.time(), metrics=metrics,
            inputs={"source": "zss_bench.integrations.mmseg.ZSSIoUMetric", "mmengine": mmengine.__version__,
                    "n_images": cm.num_images, "ignore_index": self.ignore_index,
                    "dataset_classes": list((self.dataset_meta or {}).get("classes") or []) or None},
            dataset={"test_set": test_set})
        self._started = None
        return write_run(self.results_dir, record, cm)

