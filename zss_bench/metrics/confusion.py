"""Streaming confusion matrix for semantic segmentation, with optional per-image stats.

Design (measured; see ``benchmarks/test_bench_metrics.py``):

* Every update is one ``bincount`` over a flat index ``gt * S + pred`` with
  ``S = max(num_classes, ignore_index + 1)`` (256 for the usual ignore 255). No masking pass:
  ignore rows/columns and out-of-range ids land in their own bins and are read off the
  ``S x S`` counts afterwards, which also validates the ids for free on uint8 inputs. The index
  is built in uint16/uint32 (never in the input dtype: ``K*gt + pred`` on uint8 wraps around,
  see mmseg issues #1969/#3583); numpy's bincount is faster on the narrower index.
* When ``S*S`` is large (huge ``ignore_index``, very many classes) or the ignore id is
  negative, we mask the ignored pixels and use stride ``K + 1`` instead.
* Only a ``K x (K+1)`` block is kept: rows are ground truth, columns predictions, the last
  column counts "no prediction" (``pred == ignore_index``): a miss for the row's class and no
  class's false positive.
* numpy and CPU tensors go through ``np.bincount`` (torch's CPU bincount is ~2x slower);
  tensors on an accelerator use ``torch.bincount`` on their device and stay there until
  ``matrix`` (or the per-image stats) is read.
"""
from __future__ import annotations

import math
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .summary import CONVENTIONS, MetricSummary, summarize

__all__ = ["ConfusionMatrix", "ImageStats"]

_DENSE_MAX_BINS = 2**18  # above this many S*S bins, fall back to masking
_FORMAT_VERSION = 1


@dataclass
class ImageStats:
    """Per-image, per-class pixel counts; each array is (N, K) int64.

    ``inter``: true positives; ``gt``: ground-truth pixels (including those predicted as
    "no prediction"); ``pred``: pixels predicted as the class on non-ignored ground truth.
    Kept so that image-level bootstrap resampling needs no second pass over the data.
    """

    ids: list[str]
    inter: np.ndarray
    gt: np.ndarray
    pred: np.ndarray

    @property
    def union(self) -> np.ndarray:
        return self.gt + self.pred - self.inter

    @property
    def num_classes(self) -> int:
        return int(self.inter.shape[1])

    def __len__(self) -> int:
        return len(self.ids)

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-class sums (I, G, P) over all images."""
        return self.inter.sum(0), self.gt.sum(0), self.pred.sum(0)


def _torch():
    """torch if it has been imported (no tensor can exist otherwise); keeps imports cheap."""
    return sys.modules.get("torch")


def _is_tensor(x) -> bool:
    torch = _torch()
    return torch is not None and isinstance(x, torch.Tensor)


def _check_dtype(name: str, x) -> None:
    if _is_tensor(x):
        ok = not (x.dtype.is_floating_point or x.dtype.is_complex) and x.dtype != _torch().bool
    else:
        ok = x.dtype.kind in "iu"
    if not ok:
        raise TypeError(f"{name} must hold integer class ids, got dtype {x.dtype}")


def _fits(dtype: np.dtype, size: int) -> bool:
    """True if every value of ``dtype`` lies in [0, size)."""
    info = np.iinfo(dtype)
    return info.min >= 0 and info.max < size


def _stats_from_block(block):
    """(I, G, P) of (..., K, K+1) blocks (numpy or torch); fresh arrays, no views."""
    k = block.shape[-2]
    sq = block[..., :k]
    if _is_tensor(block):
        inter = _torch().diagonal(sq, dim1=-2, dim2=-1).clone()
    else:
        inter = np.diagonal(sq, axis1=-2, axis2=-1).copy()
    return inter, block.sum(-1), sq.sum(-2)


class ConfusionMatrix:
    """Accumulates a ``K x K`` confusion matrix (rows: ground truth, cols: prediction).

    ``gt == ignore_index`` pixels are not counted; ``pred == ignore_index`` means "no
    prediction" and is counted in :attr:`missed` (a false negative of the ground-truth class).
    With ``track_images`` the per-image (I, G, P) vectors are kept for the bootstrap.
    """

    # CPU tensors go through numpy (2x faster than torch.bincount); tests turn this off to run
    # the accelerator code path on CPU tensors.
    _numpy_on_cpu = True

    def __init__(self, num_classes: int, ignore_index: int = 255, track_images: bool = True):
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise ValueError(f"ignore_index must be an int, got {ignore_index!r}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(
                f"ignore_index {ignore_index} is a valid class id (num_classes={num_classes})"
            )
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.track_images = bool(track_images)
        stride = max(self.num_classes, self.ignore_index + 1)
        self._stride = stride
        self._dense = self.ignore_index >= 0 and stride * stride <= _DENSE_MAX_BINS
        self._idx_dtype = np.uint16 if stride * stride <= 2**16 else np.uint32
        self.reset()

    def reset(self) -> None:
        """Forget everything accumulated so far."""
        k = self.num_classes
        self._acc = np.zeros((k, k + 1), dtype=np.int64)
        self._dev_acc: dict = {}  # device -> torch (K, K+1) accumulator
        self._num_images = 0
        self._ids: list[str] = []
        self._parts: list = []  # per update: (inter, gt, pred), each (b, K), numpy or torch
        self._stats_cache: ImageStats | None = None
        self._reduced = False

    # ------------------------------------------------------------------ updating
    def update(self, pred, gt, image_ids: Sequence[str] | str | None = None) -> None:
        """Add one image (H, W) or a batch (B, H, W) of integer label maps.

        Validates everything before touching the state, so a failed update changes nothing.
        """
        pred, gt = self._coerce(pred, gt)
        if pred.ndim not in (2, 3):
            raise ValueError(f"expected (H, W) or (B, H, W) label maps, got shape {tuple(pred.shape)}")
        batch = pred.shape[0] if pred.ndim == 3 else 1
        ids = self._new_ids(image_ids, batch)
        on_device = _is_tensor(pred)
        count = self._count_torch if on_device else self._count_np
        if self.track_images:
            blocks = count(pred if pred.ndim == 3 else pred[None], gt if gt.ndim == 3 else gt[None], True)
            part = _stats_from_block(blocks)  # each (B, K)
            total = blocks[0] if blocks.shape[0] == 1 else blocks.sum(0)
        else:
            total = count(pred, gt, False)
        # commit (nothing below can fail on valid state)
        if on_device:
            key = str(pred.device)
            if key in self._dev_acc:
                self._dev_acc[key] += total
            else:
                self._dev_acc[key] = total
        else:
            self._acc += total
        self._num_images += batch
        if self.track_images:
            self._ids.extend(ids)
            self._parts.append(part)
            self._stats_cache = None

    def _coerce(self, pred, gt):
        """Return (pred, gt) both numpy, or both torch tensors on one non-CPU device."""
        if _is_tensor(pred) or _is_tensor(gt):
            torch = _torch()
            for name, x in (("prediction", pred), ("ground truth", gt)):
                if _is_tensor(x):
                    _check_dtype(name, x)
            device = pred.device if _is_tensor(pred) else gt.device
            if _is_tensor(pred) and _is_tensor(gt) and pred.device != gt.device:
                raise ValueError(f"prediction is on {pred.device} but ground truth on {gt.device}")
            if device.type == "cpu" and self._numpy_on_cpu:  # faster; .numpy() is zero-copy
                pred = pred.detach().numpy() if _is_tensor(pred) else np.asarray(pred)
                gt = gt.detach().numpy() if _is_tensor(gt) else np.asarray(gt)
            else:
                if not _is_tensor(pred):
                    pred = torch.as_tensor(np.asarray(pred), device=device)
                if not _is_tensor(gt):
                    gt = torch.as_tensor(np.asarray(gt), device=device)
        else:
            pred, gt = np.asarray(pred), np.asarray(gt)
        _check_dtype("prediction", pred)
        _check_dtype("ground truth", gt)
        if tuple(pred.shape) != tuple(gt.shape):
            raise ValueError(
                f"prediction shape {tuple(pred.shape)} != ground truth shape {tuple(gt.shape)}"
            )
        return pred, gt

    def _new_ids(self, image_ids, batch: int) -> list[str]:
        if image_ids is None:
            return [str(self._num_images + i) for i in range(batch)]
        if isinstance(image_ids, (str, bytes)):
            image_ids = [image_ids]
        ids = [i.decode() if isinstance(i, bytes) else str(i) for i in image_ids]
        if len(ids) != batch:
            raise ValueError(f"got {len(ids)} image_ids for a batch of {batch} image(s)")
        return ids

    def _invalid(self, name: str, values) -> ValueError:
        values = sorted(set(int(v) for v in values))
        more = f" (first 10 of {len(values)})" if len(values) > 10 else ""
        return ValueError(
            f"{name} holds invalid class ids {values[:10]}{more}: valid ids are "
            f"0..{self.num_classes - 1} (num_classes={self.num_classes}) or the ignore id "
            f"{self.ignore_index}"
        )

    def _bad_values_np(self, x: np.ndarray) -> np.ndarray:
        # compare in the input dtype (numpy compares with Python ints exactly; a cast could wrap)
        bad = x >= self.num_classes
        if x.dtype.kind == "i":
            bad |= x < 0
        return np.unique(x[bad & (x != self.ignore_index)])

    def _check_range(self, pred: np.ndarray, gt: np.ndarray) -> None:
        """Dense path: ids must lie in [0, S) or they would alias other bins."""
        for name, x in (("prediction", pred), ("ground truth", gt)):
            if x.size and not _fits(x.dtype, self._stride):
                if x.min() < 0 or x.max() >= self._stride:
                    raise self._invalid(name, self._bad_values_np(x))

    def _block_from_dense(self, c, n: int):
        """(..., K, K+1) blocks from (..., S, S) counts; raises if any pixel had an invalid id."""
        k, ign = self.num_classes, self.ignore_index
        cols = (c[..., :k, :k], c[..., :k, ign : ign + 1])
        block = _torch().cat(cols, -1) if _is_tensor(c) else np.concatenate(cols, -1)
        valid = block.sum() + c[..., ign, :k].sum() + c[..., ign, ign].sum()
        if int(valid) != n:  # some ids in [K, S) other than ignore: the bins say which
            c = c.cpu().numpy() if _is_tensor(c) else c
            c = c.reshape(-1, self._stride, self._stride).sum(0)
            bad = np.ones(self._stride, dtype=bool)
            bad[:k] = False
            bad[ign] = False
            for name, sums in (("prediction", c.sum(0)), ("ground truth", c.sum(1))):
                vals = np.flatnonzero(bad & (sums > 0))
                if vals.size:
                    raise self._invalid(name, vals)
        return block

    def _count_np(self, pred: np.ndarray, gt: np.ndarray, per_image: bool) -> np.ndarray:
        """(K, K+1) counts, or (B, K, K+1) for (B, H, W) inputs when ``per_image``.

        One bincount per image: a batched bincount would need a wider (slower) index.
        """
        if per_image:
            if len(pred) == 1:  # the common single-image case: skip np.stack's copy
                return self._count_np(pred[0], gt[0], False)[None]
            k = self.num_classes
            blocks = [self._count_np(p, g, False) for p, g in zip(pred, gt)]
            return np.stack(blocks) if blocks else np.zeros((0, k, k + 1), np.int64)
        if not self._dense:
            return self._count_masked_np(pred, gt)
        self._check_range(pred, gt)
        s = self._stride
        idx = gt.astype(self._idx_dtype)
        np.multiply(idx, s, out=idx, casting="unsafe")
        np.add(idx, pred, out=idx, casting="unsafe")
        c = np.bincount(idx.reshape(-1), minlength=s * s).reshape(s, s)
        return self._block_from_dense(c, idx.size)

    def _count_masked_np(self, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
        k, ign = self.num_classes, self.ignore_index
        for name, x in (("prediction", pred), ("ground truth", gt)):
            bad = self._bad_values_np(x)
            if bad.size:
                raise self._invalid(name, bad)
        g = gt.astype(np.int64).reshape(-1)
        p = pred.astype(np.int64).reshape(-1)
        keep = g != ign
        g, p = g[keep], p[keep]
        p[p == ign] = k
        return np.bincount(g * (k + 1) + p, minlength=k * (k + 1)).reshape(k, k + 1)

    def _count_torch(self, pred, gt, per_image: bool):
        """As ``_count_np`` with torch ops on the tensors' device.

        Per-image counts come from one bincount over the batch (image b offset by b * bins),
        so a batch costs one kernel and one host sync for validation.
        """
        torch = _torch()
        k, ign, s = self.num_classes, self.ignore_index, self._stride
        both_u8 = pred.dtype == torch.uint8 and gt.dtype == torch.uint8
        n_img = pred.shape[0] if per_image else 1
        shape = (n_img, math.prod(pred.shape[1:]) if per_image else pred.numel())
        pred, gt = pred.long().reshape(shape), gt.long().reshape(shape)
        if not self._dense:
            for name, x in (("prediction", pred), ("ground truth", gt)):
                bad = ((x < 0) | (x >= k)) & (x != ign)
                if bool(bad.any()):
                    raise self._invalid(name, torch.unique(x[bad]).tolist())
            bins = k * (k + 1)
            idx = gt * (k + 1) + torch.where(pred == ign, torch.full_like(pred, k), pred)
            idx += torch.arange(n_img, device=idx.device)[:, None] * bins
            c = torch.bincount(idx[gt != ign], minlength=n_img * bins)
            c = c.reshape(n_img, k, k + 1)
            return c if per_image else c[0]
        if not (both_u8 and s >= 256) and pred.numel():  # one sync for all four limits
            lims = torch.stack([pred.min(), pred.max(), gt.min(), gt.max()]).tolist()
            for name, x, lo, hi in (("prediction", pred, *lims[:2]), ("ground truth", gt, *lims[2:])):
                if lo < 0 or hi >= s:
                    raise self._invalid(name, self._bad_values_np(x.cpu().numpy()))
        idx = gt * s + pred
        idx += torch.arange(n_img, device=idx.device)[:, None] * (s * s)
        c = torch.bincount(idx.reshape(-1), minlength=n_img * s * s).reshape(n_img, s, s)
        block = self._block_from_dense(c, pred.numel())
        return block if per_image else block[0]

    # ------------------------------------------------------------------ reading
    def _cpu_acc(self) -> np.ndarray:
        """The full K x (K+1) accumulator on CPU (folds device accumulators in)."""
        for t in self._dev_acc.values():
            self._acc += t.cpu().numpy()
        self._dev_acc.clear()
        return self._acc

    @property
    def matrix(self) -> np.ndarray:
        """(K, K) int64 counts; rows ground truth, columns prediction."""
        return self._cpu_acc()[:, : self.num_classes].copy()

    @property
    def missed(self) -> np.ndarray:
        """(K,) int64: ground-truth pixels of each class whose prediction was ignore_index."""
        return self._cpu_acc()[:, self.num_classes].copy()

    @property
    def num_images(self) -> int:
        return self._num_images

    @property
    def image_stats(self) -> ImageStats | None:
        """Per-image stats (None when ``track_images`` is False)."""
        if not self.track_images:
            return None
        if self._stats_cache is None:
            k = self.num_classes
            cols = [[], [], []]
            for part in self._parts:
                for j, arr in enumerate(part):
                    cols[j].append(arr if isinstance(arr, np.ndarray) else arr.cpu().numpy())
            arrays = [
                np.concatenate(c).astype(np.int64, copy=False) if c else np.zeros((0, k), np.int64)
                for c in cols
            ]
            for arr in arrays:  # shared with our state: make accidental edits fail loudly
                arr.flags.writeable = False
            self._parts = [tuple(arrays)] if self._parts else []
            self._stats_cache = ImageStats(list(self._ids), *arrays)
        return self._stats_cache

    def totals(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-class (I, G, P): true positives, ground-truth pixels, predicted pixels."""
        acc = self._cpu_acc()
        return _stats_from_block(acc)

    def summary(self, seen_ids, unseen_ids, convention: str = "mmseg") -> MetricSummary:
        return summarize(*self.totals(), seen_ids, unseen_ids, convention)

    def summaries(self, seen_ids, unseen_ids) -> dict[str, MetricSummary]:
        return {c: self.summary(seen_ids, unseen_ids, c) for c in CONVENTIONS}

    # ------------------------------------------------------------------ combining
    def merge(self, other: "ConfusionMatrix") -> None:
        """Add ``other``'s counts (and per-image stats) into this matrix, in place."""
        if not isinstance(other, ConfusionMatrix):
            raise TypeError(f"can only merge a ConfusionMatrix, got {type(other).__name__}")
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                "cannot merge confusion matrices with different settings: "
                f"num_classes {self.num_classes} vs {other.num_classes}, "
                f"ignore_index {self.ignore_index} vs {other.ignore_index}"
            )
        if self.track_images and not other.track_images:
            raise ValueError("cannot merge: this matrix tracks per-image stats but the other does not")
        stats = other.image_stats if self.track_images else None
        self._cpu_acc()
        self._acc += other._cpu_acc()
        self._num_images += other._num_images
        if stats is not None:
            self._ids.extend(stats.ids)
            self._parts.append((stats.inter, stats.gt, stats.pred))
            self._stats_cache = None

    def __add__(self, other: "ConfusionMatrix") -> "ConfusionMatrix":
        if not isinstance(other, ConfusionMatrix):
            return NotImplemented
        out = ConfusionMatrix(
            self.num_classes, self.ignore_index, self.track_images and other.track_images
        )
        out.merge(self)
        out.merge(other)
        return out

    def all_reduce(self) -> None:
        """Sum counts (and gather per-image stats, in rank order) across torch.distributed ranks.

        No-op unless torch.distributed is initialised. Call once, after the last update:
        a second call would count every rank's pixels again, so it raises.
        """
        torch = _torch()
        if torch is None:
            import torch
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            return
        if self._reduced:
            raise RuntimeError("all_reduce() was already called on this ConfusionMatrix")
        acc = self._cpu_acc()
        device = torch.device("cpu")
        if dist.get_backend() == "nccl":
            device = torch.device("cuda", torch.cuda.current_device())
        flat = np.concatenate([acc.reshape(-1), [self._num_images]]).astype(np.int64)
        tensor = torch.from_numpy(flat).to(device)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        flat = tensor.cpu().numpy()
        if self.track_images:
            st = self.image_stats
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, (st.ids, st.inter, st.gt, st.pred))
            self._ids = [i for g in gathered for i in g[0]]
            self._parts = [tuple(np.concatenate([g[j] for g in gathered]) for j in (1, 2, 3))]
            self._stats_cache = None
        self._acc = flat[:-1].reshape(self._acc.shape).copy()
        self._num_images = int(flat[-1])
        self._reduced = True

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write an .npz atomically (temp file in the same folder, then os.replace)."""
        path = os.fspath(path)
        arrays = {
            "format_version": np.int64(_FORMAT_VERSION),
            "matrix": self.matrix,
            "missed": self.missed,
            "num_classes": np.int64(self.num_classes),
            "ignore_index": np.int64(self.ignore_index),
            "track_images": np.bool_(self.track_images),
            "num_images": np.int64(self._num_images),
        }
        if self.track_images:
            st = self.image_stats
            arrays.update(ids=np.array(st.ids, dtype=str), inter=st.inter, gt=st.gt, pred=st.pred)
        folder = os.path.dirname(os.path.abspath(path))
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, **arrays)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    @classmethod
    def load(cls, path) -> "ConfusionMatrix":
        with np.load(os.fspath(path), allow_pickle=False) as z:
            cm = cls(int(z["num_classes"]), int(z["ignore_index"]), bool(z["track_images"]))
            k = cm.num_classes
            if z["matrix"].shape != (k, k) or z["missed"].shape != (k,):
                raise ValueError(f"{path}: matrix/missed shapes do not match num_classes={k}")
            cm._acc[:, :k] = z["matrix"]
            cm._acc[:, k] = z["missed"]
            cm._num_images = int(z["num_images"])
            if cm.track_images:
                cm._ids = [str(i) for i in z["ids"]]
                cm._parts = [tuple(z[n].astype(np.int64) for n in ("inter", "gt", "pred"))]
        return cm

    def __repr__(self) -> str:
        return (
            f"ConfusionMatrix(num_classes={self.num_classes}, ignore_index={self.ignore_index}, "
            f"track_images={self.track_images}, num_images={self._num_images})"
        )
