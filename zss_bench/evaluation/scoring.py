"""From one confusion matrix to the numbers a ZSS paper reports, under both conventions.

Every score zss-bench prints or records comes from here, so ``evaluate`` and ``run`` can
never disagree on how S, U and hIoU are computed.
"""
from __future__ import annotations

import math

from zss_bench.metrics import ConfusionMatrix, bootstrap_ci
from zss_bench.protocol import Protocol

CONVENTIONS = ("mmseg", "detectron2")
HEADLINE_KEYS = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")


def _pct(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else round(100.0 * x, 6)


def _ci_percent(ci: dict) -> dict:
    out = {}
    for key in HEADLINE_KEYS:
        if key in ci:
            out[key] = {k: _pct(v) for k, v in ci[key].items()}
    # the interval method (records before 2026-12-04 have none: percentile) and the classes a small test set
    # missed (why an interval is wide), so a record says how its intervals were made
    for key in ("n_boot", "seed", "alpha", "n_images", "method", "absent_classes"):
        if key in ci:
            out[key] = [int(c) for c in ci[key]] if key == "absent_classes" else ci[key]
    return out


def score(cm: ConfusionMatrix, protocol: Protocol, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Score ``cm`` under ``protocol``: headline convention at top level, both in ``conventions``.

    Values are percentages (None where undefined). Bootstrap CIs over images need the
    matrix's per-image stats; without them ``ci`` is empty.
    """
    seen, unseen = list(protocol.seen_ids), list(protocol.unseen_ids)
    conventions = {}
    for conv in CONVENTIONS:
        block = cm.summary(seen, unseen, convention=conv).to_dict(list(protocol.classes), percent=True)
        stats = cm.image_stats
        if n_boot > 0 and stats is not None and len(stats.ids) > 0:
            block["ci"] = _ci_percent(
                bootstrap_ci(stats, seen, unseen, convention=conv, n_boot=n_boot, seed=seed)
            )
        else:
            block["ci"] = {}
        conventions[conv] = block
    headline = protocol.headline_convention
    top = {k: conventions[headline][k] for k in HEADLINE_KEYS}
    top["per_class"] = conventions[headline]["per_class"]
    top["ci"] = conventions[headline]["ci"]
    top["convention"] = headline
    top["conventions"] = conventions
    return top
