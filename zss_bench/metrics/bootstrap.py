"""Image-level bootstrap: confidence intervals and paired comparisons of two runs.

Why images, not pixels: pixels of one image are strongly correlated, so the image is the unit
of sampling. Each bootstrap replicate draws N images with replacement; a replicate is fully
described by how often each image was drawn, so we draw a (n_boot, N) matrix of multinomial
counts and get every replicate's per-class totals with one matrix product against the
per-image (N, K) stats, then summarise all replicates at once with ``summarize_batch``.
Replicates are processed in chunks so that memory stays bounded for large N.

Why not the percentile interval (issue #24): on small test sets S, U and hIoU are biased low
(IoU is a ratio that Jensen pulls down when a class has few images; under ``mmseg`` a class
predicted but absent from the ground truth scores 0). A resample repeats images and shows the
same bias once more, so the percentile interval sits below an estimate that already sits
below the population value. BCa does not rescue it: its bias correction z0 is 1-2 here, far
outside the regime it is built for, and it collapses onto the top of the replicates. What
works is to correct for the bias instead of copying it. The default ``"basic+jackknife"``
interval is, per metric, the union of

* the basic (reverse-percentile) bootstrap interval ``[2T - q_hi, 2T - q_lo]``: the replicates'
  spread mirrored about the estimate T, which moves the interval up by the bootstrap bias;
* Tukey's jackknife interval ``T - b ± t(N-1) * se`` (bias b and standard error se from the N
  leave-one-image-out values: one ``summarize_batch`` over total minus each image), which
  estimates the bias better where few images carry a class, and errs wide;

widened to contain T and then by an allowance for the classes the test set has no ground
truth for (``absent_classes``; none on a benchmark-sized test set): a small test set can miss
a rare class that the population has, and nothing in it measures that class. We assume its
IoU lies between the lowest and the highest IoU of the measured classes of its split (in a
paired comparison: its b - a between theirs), recompute the metric at both ends, and widen
the interval by how far they move it. Clipped to the metric's range. Coverage is checked by
simulation in ``tests/test_bootstrap_coverage.py``; README ("Confidence intervals") gives the
numbers.

Undefined replicates: a resample in which S or U has no counted class has no value. It is not
dropped (that would condition on the resamples that happen to contain the rare images): it
counts as below every value for the lower tail and above every value for the upper tail, so if
more than alpha/2 of the replicates are undefined the interval reaches the metric's range. An
undefined leave-one-out value (one image carries the whole split) makes the jackknife interval
the whole range too. ``undefined`` reports the fraction per metric.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import special as _sp

from .confusion import ImageStats
from .summary import _check_convention, _check_ids, summarize_batch

__all__ = ["bootstrap_ci", "paired_bootstrap", "paired_bootstrap_seeds", "METRICS", "METHODS"]

METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "mIoU", "pAcc")
#: ``"basic+jackknife"`` (default, see the module docstring) or ``"percentile"``: the interval
#: and p-value before issue #24, unchanged (no allowance, no guarantee that the estimate is
#: inside), kept to compare against; biased on small test sets, do not report it.
METHODS = ("basic+jackknife", "percentile")
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


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown interval method {method!r}; valid methods: {', '.join(METHODS)}")


def _full(stats: ImageStats, seen_ids, unseen_ids, convention: str) -> dict[str, float]:
    tot = [x.sum(0)[None] for x in (stats.inter, stats.gt, stats.pred)]
    res = summarize_batch(*tot, seen_ids, unseen_ids, convention)
    return {m: float(res[m][0]) for m in METRICS}


def _jackknife(run: ImageStats, seen_ids, unseen_ids, convention) -> dict[str, np.ndarray]:
    """{metric: (N,) values on all images but one}: total minus each image, one batch."""
    loo = [x.sum(0)[None] - x for x in (run.inter, run.gt, run.pred)]
    res = summarize_batch(*loo, seen_ids, unseen_ids, convention)
    return {m: res[m] for m in METRICS}


def _split_pools(k: int, seen_ids, unseen_ids):
    """(classes, the classes they borrow a range from): seen from seen, unseen from unseen,
    a class in neither split (it only enters mIoU) from all classes."""
    seen, unseen = (np.asarray(ids, dtype=np.int64).reshape(-1) for ids in (seen_ids, unseen_ids))
    rest = np.setdiff1d(np.arange(k), np.concatenate([seen, unseen]))
    return [(seen, seen), (unseen, unseen), (rest, np.arange(k))]


def _per_class_iou(tot) -> tuple[np.ndarray, np.ndarray]:
    """IoU of each class with ground truth in ``tot`` (0 elsewhere), and which those are."""
    inter, gt, pred = (x.astype(np.float64) for x in tot)
    present = gt > 0
    iou = np.zeros_like(inter)
    np.divide(inter, gt + pred - inter, out=iou, where=present)
    return iou, present


def _completed(tot, absent: np.ndarray, iou: np.ndarray, seen_ids, unseen_ids, convention) -> dict[str, np.ndarray]:
    """Metrics of the totals ``tot`` (I, G, P) with each absent class replaced by one ground-truth
    and one predicted pixel that overlap so as to give IoU ``iou`` (rows of (R, K): R at once)."""
    iou = np.atleast_2d(iou)
    fill = np.ones_like(iou)
    inter = 2 * iou / (1 + iou)  # I / (1 + 1 - I) = iou
    parts = (np.where(absent, f, x[None]) for x, f in zip(tot, (inter, fill, fill)))
    return summarize_batch(*parts, seen_ids, unseen_ids, convention)


def _absent_range(run: ImageStats, seen_ids, unseen_ids, convention) -> tuple[dict, dict, list[int]]:
    """The metrics with every class that has no ground truth in these images completed at the
    lowest and at the highest IoU among the classes of its split that have some (the range we
    assume an unmeasured class lies in; [0, 1] if its split has none), and those classes' ids."""
    tot = [x.sum(0) for x in (run.inter, run.gt, run.pred)]
    iou, present = _per_class_iou(tot)
    lo, hi = np.zeros(iou.size), np.ones(iou.size)
    for cols, pool in _split_pools(iou.size, seen_ids, unseen_ids):
        shown = pool[present[pool]]
        if cols.size and shown.size:
            lo[cols], hi[cols] = iou[shown].min(), iou[shown].max()
    res = _completed(tot, ~present, np.stack([lo, hi]), seen_ids, unseen_ids, convention)
    return ({m: float(res[m][0]) for m in METRICS}, {m: float(res[m][1]) for m in METRICS},
            np.flatnonzero(~present).tolist())


def _absent_delta_range(a: ImageStats, b: ImageStats, seen_ids, unseen_ids, convention) -> tuple[dict, dict]:
    """Lowest and highest b - a with every class that has no ground truth completed in both runs:
    in a at a's mean IoU over the classes of its split that have some, in b at that plus the
    lowest / highest b - a among those classes (the range we assume an unmeasured class's
    difference lies in). A split with no class shown: a at 1 and b at 0, or the other way round."""
    ta = [x.sum(0) for x in (a.inter, a.gt, a.pred)]
    tb = [x.sum(0) for x in (b.inter, b.gt, b.pred)]
    (iou_a, in_a), (iou_b, in_b) = _per_class_iou(ta), _per_class_iou(tb)
    present = in_a & in_b  # the same images: the same ground truth, unless the label maps changed
    k = iou_a.size
    a_at = np.stack([np.ones(k), np.zeros(k)])  # rows: (low delta, high delta)
    b_at = np.stack([np.zeros(k), np.ones(k)])
    for cols, pool in _split_pools(k, seen_ids, unseen_ids):
        shown = pool[present[pool]]
        if cols.size and shown.size:
            diff = iou_b[shown] - iou_a[shown]
            base = iou_a[shown].mean()
            a_at[:, cols] = base
            b_at[0, cols], b_at[1, cols] = np.clip(base + diff.min(), 0, 1), np.clip(base + diff.max(), 0, 1)
    ra = _completed(ta, ~present, a_at, seen_ids, unseen_ids, convention)
    rb = _completed(tb, ~present, b_at, seen_ids, unseen_ids, convention)
    return ({m: float(rb[m][0] - ra[m][0]) for m in METRICS}, {m: float(rb[m][1] - ra[m][1]) for m in METRICS})


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


def _std(samples: np.ndarray) -> float:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return float("nan")
    return float(finite.std(ddof=1)) if finite.size > 1 else 0.0


def _tails(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    """k-th smallest and k-th largest replicate, k = ceil(B alpha/2); an undefined (NaN)
    replicate counts as below every value for the first and above every value for the second."""
    k = max(1, math.ceil(samples.size * alpha / 2 - 1e-9))
    nan = np.isnan(samples)
    low = np.partition(np.where(nan, -np.inf, samples), k - 1)[k - 1]
    high = -np.partition(np.where(nan, -np.inf, -samples), k - 1)[k - 1]
    return float(low), float(high)


def _jack_center(jack: np.ndarray, estimate: float) -> tuple[float, float, int] | None:
    """(bias-corrected estimate, standard error, degrees of freedom), or None if undefined."""
    n = jack.size
    if n < 2 or not np.all(np.isfinite(jack)):
        return None
    mean = float(jack.mean())
    se = math.sqrt((n - 1) / n * float(np.sum((jack - mean) ** 2)))
    return estimate - (n - 1) * (mean - estimate), se, n - 1


def _interval(estimate: float, samples: np.ndarray, jack: np.ndarray, alpha: float, method: str,
              bounds: tuple[float, float], allowance: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
    """(low, high) of ``method``: for the default, widened to contain ``estimate``, then by
    ``allowance`` (down, up) for classes the test set does not measure, clipped to ``bounds``."""
    if method == "percentile":  # the interval before issue #24, unchanged: no guarantee
        finite = samples[np.isfinite(samples)]
        if finite.size == 0:
            return float("nan"), float("nan")
        low, high = np.percentile(finite, [100 * alpha / 2, 100 * (1 - alpha / 2)])
        return float(low), float(high)
    if not math.isfinite(estimate):
        return float("nan"), float("nan")
    q_low, q_high = _tails(samples, alpha)
    low, high = 2 * estimate - q_high, 2 * estimate - q_low
    jk = _jack_center(jack, estimate)
    if jk is None:
        low, high = -math.inf, math.inf
    else:
        center, se, df = jk
        half = float(_sp.stdtrit(df, 1 - alpha / 2)) * se
        low, high = min(low, center - half), max(high, center + half)
    low, high = min(low, estimate) - allowance[0], max(high, estimate) + allowance[1]
    return float(max(low, bounds[0])), float(min(high, bounds[1]))


def _p_value(delta: float, samples: np.ndarray, jack: np.ndarray, method: str,
             allowance: tuple[float, float] = (0.0, 0.0)) -> float:
    """Two-sided p-value of delta = 0, the inverse of :func:`_interval`: for every alpha, the
    (1 - alpha) interval excludes 0 exactly when p < alpha (with the same replicates). The
    union excludes 0 only when each part does, so p is the larger of the parts' p-values."""
    if not math.isfinite(delta):
        return float("nan")
    if method == "percentile":
        finite = samples[np.isfinite(samples)]
        if finite.size == 0:
            return float("nan")
        return float(min(1.0, 2 * min(np.mean(finite <= 0), np.mean(finite >= 0))))
    sign = 1.0 if delta > 0 else -1.0
    # the interval's bound on 0's side must clear the allowance on that side
    margin = allowance[0] if delta > 0 else allowance[1]
    if sign * delta <= margin:
        return 1.0  # the interval contains its estimate, which is within the allowance of 0
    # basic part: that bound is 2 delta minus the k-th replicate from the other end
    beyond = np.count_nonzero(np.isnan(samples) | (sign * samples >= 2 * sign * delta - margin))
    p_basic = 2.0 * beyond / samples.size
    jk = _jack_center(jack, delta)
    if jk is None:
        p_jack = 1.0
    else:
        center, se, df = jk
        z = sign * center - margin
        p_jack = (0.0 if z > 0 else 1.0) if se == 0 else 2.0 * float(_sp.stdtr(df, -z / se))
    return float(min(1.0, max(p_basic, p_jack)))


def _allowance(down: float, up: float, metric: str, method: str) -> tuple[float, float]:
    """(down, up) room for the classes without ground truth (:func:`_absent_range`); none for
    pAcc, which pools pixels (a class with no pixels in the test set barely moves it), and none
    for the percentile interval (kept as it was)."""
    if metric == "pAcc" or method == "percentile" or not (math.isfinite(down) and math.isfinite(up)):
        return 0.0, 0.0
    return max(0.0, float(down)), max(0.0, float(up))


def bootstrap_ci(
    stats: ImageStats,
    seen_ids,
    unseen_ids,
    convention: str = "mmseg",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    method: str = "basic+jackknife",
) -> dict:
    """Bootstrap intervals (fractions) for mIoU_seen/unseen, hIoU, mIoU, pAcc.

    Each metric maps to ``{"estimate", "low", "high", "std"}``: ``estimate`` is the value on
    all images and always lies in [low, high], an interval for the population value (module
    docstring: how, and why not the percentile interval); ``std`` is the spread of the defined
    replicates. Also ``method``, ``undefined`` (per metric, the fraction of replicates where
    it has no value) and ``absent_classes`` (ids without ground truth in these images, whose
    unmeasured IoU the interval makes room for). Deterministic for a given ``seed``.
    """
    out = bootstrap_ci_seeds([stats], seen_ids, unseen_ids, convention, n_boot, seed, alpha, method)
    out.pop("seeds")
    return out


def bootstrap_ci_seeds(
    runs: list[ImageStats],
    seen_ids,
    unseen_ids,
    convention: str = "mmseg",
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    method: str = "basic+jackknife",
) -> dict:
    """:func:`bootstrap_ci` of the mean over several seeds' runs on the same test images: every replicate
    draws one image resample, applied to every run, and takes the mean of the runs' values (the jackknife
    likewise leaves one image out of every run). With one run it is exactly :func:`bootstrap_ci`. Used to
    set a multi-seed mean against a published number (``zss-bench leaderboard``'s reproduced − reported)."""
    if not runs:
        raise ValueError("bootstrap_ci_seeds needs at least one run")
    for run in runs:
        _check_args(run, n_boot, alpha)
    _check_convention(convention)
    _check_method(method)
    _check_ids(seen_ids, unseen_ids, runs[0].num_classes)
    runs = [runs[0]] + [_align(runs[0], r) for r in runs[1:]]
    points = [_full(r, seen_ids, unseen_ids, convention) for r in runs]
    reps = _replicates(runs, seen_ids, unseen_ids, convention, int(n_boot), seed)
    jacks = [_jackknife(r, seen_ids, unseen_ids, convention) for r in runs]
    ranges = [_absent_range(r, seen_ids, unseen_ids, convention) for r in runs]
    absent = sorted({c for r in ranges for c in r[2]})
    out: dict = {}
    for m in METRICS:
        point = float(np.mean([p[m] for p in points]))
        samples = np.mean([r[m] for r in reps], axis=0)
        jack = np.mean([j[m] for j in jacks], axis=0)
        at_low = float(np.mean([r[0][m] for r in ranges]))
        at_high = float(np.mean([r[1][m] for r in ranges]))
        allow = _allowance(point - at_low, at_high - point, m, method)
        low, high = _interval(point, samples, jack, alpha, method, (0.0, 1.0), allow)
        out[m] = {"estimate": point, "low": low, "high": high, "std": _std(samples)}
    out.update(n_boot=int(n_boot), seed=seed, alpha=alpha, n_images=len(runs[0]), convention=convention,
               method=method, undefined={m: float(np.mean(np.isnan(np.mean([r[m] for r in reps], axis=0))))
                                         for m in METRICS},
               absent_classes=absent, seeds=len(runs))
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
    method: str = "basic+jackknife",
) -> dict:
    """Paired bootstrap of run ``b`` minus run ``a`` on the same images.

    Both runs are resampled with the same image draws (and the jackknife leaves the same image
    out of both). Per metric: ``a``, ``b``, ``delta`` (b - a on all images, always inside its
    interval), ``low``/``high`` (the interval of :func:`bootstrap_ci`, applied to the delta) and
    a two-sided ``p_value`` that inverts that interval: the (1 - alpha) interval excludes 0
    exactly when ``p_value < alpha``.
    """
    out = paired_bootstrap_seeds([(a, b)], seen_ids, unseen_ids, convention, n_boot, seed, alpha, method)
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
    method: str = "basic+jackknife",
) -> dict:
    """Paired bootstrap of B - A over several seeds: ``pairs`` holds (a, b) of each seed, all on the same
    test images. Every replicate draws one image resample, applied to every run of every seed (pairing on
    images), and its delta is the mean over seeds of that seed's b - a (undefined if any seed's is); the
    jackknife likewise leaves one image out of every run. The point ``delta`` is the mean of the seeds'
    deltas on all images. Per metric: ``a`` and ``b`` (means over seeds), ``delta``, ``low``/``high``
    and a two-sided ``p_value``, as :func:`paired_bootstrap`; plus ``seeds`` (the number of pairs),
    ``method``, ``undefined`` (per metric, the fraction of replicates without a delta) and
    ``absent_classes`` (as in :func:`bootstrap_ci`; the interval makes room for their unmeasured
    differences)."""
    if not pairs:
        raise ValueError("paired_bootstrap_seeds needs at least one (a, b) pair")
    first = pairs[0][0]
    runs = []
    for a, b in pairs:
        _check_args(a, n_boot, alpha)
        _check_args(b, n_boot, alpha)
        runs += [_align(first, a), _align(first, b)]
    _check_convention(convention)
    _check_method(method)
    _check_ids(seen_ids, unseen_ids, first.num_classes)
    points = [_full(r, seen_ids, unseen_ids, convention) for r in runs]
    reps = _replicates(runs, seen_ids, unseen_ids, convention, int(n_boot), seed)
    jacks = [_jackknife(r, seen_ids, unseen_ids, convention) for r in runs]
    n_pairs = len(pairs)
    ranges = [_absent_delta_range(runs[2 * i], runs[2 * i + 1], seen_ids, unseen_ids, convention)
              for i in range(n_pairs)]
    absent = sorted({c for r in runs for c in np.flatnonzero(r.gt.sum(0) == 0).tolist()})
    out: dict = {}
    undefined = {}
    for m in METRICS:
        pa = float(np.mean([points[2 * i][m] for i in range(n_pairs)]))
        pb = float(np.mean([points[2 * i + 1][m] for i in range(n_pairs)]))
        delta = pb - pa
        d = np.mean([reps[2 * i + 1][m] - reps[2 * i][m] for i in range(n_pairs)], axis=0)
        jd = np.mean([jacks[2 * i + 1][m] - jacks[2 * i][m] for i in range(n_pairs)], axis=0)
        bottom = np.mean([r[0][m] for r in ranges])  # the unmeasured classes, per seed
        top = np.mean([r[1][m] for r in ranges])
        allow = _allowance(delta - bottom, top - delta, m, method)
        low, high = _interval(delta, d, jd, alpha, method, (-1.0, 1.0), allow)
        out[m] = {"a": pa, "b": pb, "delta": delta, "low": low, "high": high,
                  "p_value": _p_value(delta, d, jd, method, allow)}
        undefined[m] = float(np.mean(np.isnan(d)))
    out.update(n_boot=int(n_boot), seed=seed, alpha=alpha, n_images=len(first), convention=convention,
               seeds=n_pairs, method=method, undefined=undefined,
               absent_classes=absent)
    return out
