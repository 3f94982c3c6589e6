"""Image-level bootstrap: confidence intervals and paired comparisons of two runs.

Why images, not pixels: pixels of one image are strongly correlated, so the image is the unit
of sampling. Each bootstrap replicate draws N images with replacement; a replicate is fully
described by how often each image was drawn, so we draw a (n_boot, N) matrix of multinomial
counts and get every replicate's per-class totals with one matrix product against the
per-image (N, K) stats, then summarise all replicates at once with ``summarize_batch``.
Replicates are processed in chunks so that memory stays bounded for large N.
"""
from __future__ import annotations

import numpy as np

from .confusion import ImageStats
from .summary import _check_convention, _check_ids, summarize_batch

__all__ = ["bootstrap_ci", "paired_bootstrap", "paired_bootstrap_seeds", "METRICS"]

METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "pAcc")
_CHUNK_BYTES = 200 * 2**20


def _check_args(stats: ImageStats, n_boot: int, alpha: float) -> None:
    if not isinstance(stats, ImageStats):
        raise TypeError(f"expected ImageStats (ConfusionMatrix.image_stats), got {type(stats).__name__}")
    if len(stats) == 0:
        raise ValueError("cannot bootstrap over zero images")
    if int(n_boot) < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _full(stats: ImageStats, seen_ids, unseen_ids, convention: str) -> dict[str, float]:
    tot = [x.sum(0)[None] for x in (stats.inter, stats.gt, stats.pred)]
    res = summarize_batch(*tot, seen_ids, unseen_ids, convention)
    return {m: float(res[m][0]) for m in METRICS}


def _replicates(runs: list[ImageStats], seen_ids, unseen_ids, convention, n_boot, seed) -> list[dict]:
    """Per run, {metric: (n_boot,) array}; every run uses the same resampled images."""
    n, k = len(runs[0]), runs[0].num_classes
    mats = [[x.astype(np.float64) for x in (r.inter, r.gt, r.pred)] for r in runs]
    per_row = 16 * n + 3 * 8 * k * len(runs)  # counts (int + float) and the totals
    chunk = int(max(1, min(n_boot, _CHUNK_BYTES // per_row)))
    rng = np.random.default_rng(seed)
    pvals = np.full(n, 1.0 / n)
    out: list[dict] = [{m: [] for m in METRICS} for _ in runs]
    for start in range(0, n_boot, chunk):
        counts = rng.multinomial(n, pvals, size=min(chunk, n_boot - start)).astype(np.float64)
        for res, (inter, gt, pred) in zip(out, mats):
            batch = summarize_batch(counts @ inter, counts @ gt, counts @ pred, seen_ids, unseen_ids, convention)
            for m in METRICS:
                res[m].append(batch[m])
    return [{m: np.concatenate(res[m]) for m in METRICS} for res in out]


def _interval(samples: np.ndarray, alpha: float) -> dict[str, float]:
    """Percentile interval and std of the finite replicates (NaN if there are none)."""
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return {"low": float("nan"), "high": float("nan"), "std": float("nan")}
    low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    std = float(finite.std(ddof=1)) if finite.size > 1 else 0.0
    return {"low": float(low), "high": float(high), "std": std}


def bootstrap_ci(
    stats: ImageStats,
    seen_ids,
    unseen_ids,
    convention: str = "mmseg",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Percentile bootstrap intervals (fractions) for mIoU_seen/unseen, hIoU, mIoU, pAcc.

    Each metric maps to ``{"estimate", "low", "high", "std"}`` (``estimate`` is the value on
    all images). Deterministic for a given ``seed``.
    """
    _check_args(stats, n_boot, alpha)
    _check_convention(convention)
    _check_ids(seen_ids, unseen_ids, stats.num_classes)
    point = _full(stats, seen_ids, unseen_ids, convention)
    (reps,) = _replicates([stats], seen_ids, unseen_ids, convention, int(n_boot), seed)
    out: dict = {m: {"estimate": point[m], **_interval(reps[m], alpha)} for m in METRICS}
    out.update(n_boot=int(n_boot), seed=seed, alpha=alpha, n_images=len(stats), convention=convention)
    return out


def _align(a: ImageStats, b: ImageStats) -> ImageStats:
    """``b`` reordered to ``a``'s image order; both must cover exactly the same ids."""
    if a.num_classes != b.num_classes:
        raise ValueError(f"runs have different num_classes: {a.num_classes} vs {b.num_classes}")
    for name, st in (("a", a), ("b", b)):
        if len(set(st.ids)) != len(st.ids):
            raise ValueError(f"run {name} has duplicate image ids; pass unique image_ids to update()")
    only_a = sorted(set(a.ids) - set(b.ids))
    only_b = sorted(set(b.ids) - set(a.ids))
    if only_a or only_b:
        raise ValueError(
            f"the two runs cover different images: {len(only_a) + len(only_b)} ids differ "
            f"({len(only_a)} only in a, e.g. {only_a[:5]}; {len(only_b)} only in b, e.g. {only_b[:5]})"
        )
    pos = {i: n for n, i in enumerate(b.ids)}
    order = np.array([pos[i] for i in a.ids], dtype=np.int64)
    return ImageStats(list(a.ids), b.inter[order], b.gt[order], b.pred[order])


def paired_bootstrap(
    a: ImageStats,
    b: ImageStats,
    seen_ids,
    unseen_ids,
    convention: str = "mmseg",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Paired bootstrap of run ``b`` minus run ``a`` on the same images.

    Both runs are resampled with the same image draws. Per metric: ``a``, ``b``, ``delta``
    (b - a on all images), ``low``/``high`` (percentile interval of the replicate deltas) and
    a two-sided ``p_value`` = min(1, 2 * min(P(delta* <= 0), P(delta* >= 0))).
    """
    out = paired_bootstrap_seeds([(a, b)], seen_ids, unseen_ids, convention, n_boot, seed, alpha)
    out.pop("seeds")
    return out


def paired_bootstrap_seeds(
    pairs: list[tuple[ImageStats, ImageStats]],
    seen_ids,
    unseen_ids,
    convention: str = "mmseg",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Paired bootstrap of B - A over several seeds: ``pairs`` holds (a, b) of each seed, all on the same
    test images. Every replicate draws one image resample, applied to every run of every seed (pairing on
    images), and its delta is the mean over seeds of that seed's b - a; the point ``delta`` is the mean of
    the seeds' deltas on all images. Per metric: ``a`` and ``b`` (means over seeds), ``delta``, ``low``/``high``
    and a two-sided ``p_value``, as :func:`paired_bootstrap`; plus ``seeds`` (the number of pairs)."""
    if not pairs:
        raise ValueError("paired_bootstrap_seeds needs at least one (a, b) pair")
    first = pairs[0][0]
    runs = []
    for a, b in pairs:
        _check_args(a, n_boot, alpha)
        _check_args(b, n_boot, alpha)
        runs += [_align(first, a), _align(first, b)]
    _check_convention(convention)
    _check_ids(seen_ids, unseen_ids, first.num_classes)
    points = [_full(r, seen_ids, unseen_ids, convention) for r in runs]
    reps = _replicates(runs, seen_ids, unseen_ids, convention, int(n_boot), seed)
    out: dict = {}
    for m in METRICS:
        pa = [points[2 * i][m] for i in range(len(pairs))]
        pb = [points[2 * i + 1][m] for i in range(len(pairs))]
        d = np.mean([reps[2 * i + 1][m] - reps[2 * i][m] for i in range(len(pairs))], axis=0)
        d = d[np.isfinite(d)]
        ci = _interval(d, alpha)
        p = float("nan") if d.size == 0 else min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0)))
        out[m] = {"a": float(np.mean(pa)), "b": float(np.mean(pb)), "delta": float(np.mean(pb) - np.mean(pa)),
                  "low": ci["low"], "high": ci["high"], "p_value": float(p)}
    out.update(n_boot=int(n_boot), seed=seed, alpha=alpha, n_images=len(first), convention=convention,
               seeds=len(pairs))
    return out
