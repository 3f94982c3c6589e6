"""The leaderboard's "vs reference" column: each row's hIoU against a reference method (Chimera-Seg by
default), as a paired bootstrap on the test images, per seed, combined over the seeds both rows have.

Why paired: every row is evaluated on the same images, so the per-image differences are what varies;
unpaired mean ± std overstates the uncertainty (lm-eval #3831). Rows are paired with the reference's row
of the same config label (``long-1800it`` with ``long-1800it``: the same schedule) when it has one, else
with its ``default`` row; only seeds present in both count, and rows on other CLIP weights, protocol
definitions or test sets are never paired (a method without CLIP pairs with the reference on any teacher).
The reference's own other configs (ablations, re-scorings) are paired with its default row. Two runs are
paired only when their per-image statistics name the same images with the same ground-truth pixel counts;
a pair that fails that check is left n/a with a note, never a crash of the whole table.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd

from zss_bench.metrics import ConfusionMatrix, ImageStats, paired_bootstrap_seeds

VS_COLUMNS = ("vs_config", "vs_seeds", "vs_delta", "vs_low", "vs_high", "vs_p")


def _stats(path: str):
    cm = ConfusionMatrix.load(Path(path) / "confusion.npz")
    if cm.image_stats is None or len(cm.image_stats.ids) == 0:
        raise ValueError(f"{Path(path) / 'confusion.npz'}: no per-image statistics to pair on")
    return cm.image_stats


def same_images(a: ImageStats, b: ImageStats) -> str | None:
    """Why the per-image statistics ``a`` and ``b`` are not of one test set, or None. Same ids are not
    enough: two worlds can share every file stem. The ground-truth pixels of each class in each image do not
    depend on the predictions, so runs on one test set have identical ``gt`` counts."""
    if a.num_classes != b.num_classes:
        return f"{a.num_classes} vs {b.num_classes} classes"
    only_a, only_b = sorted(set(a.ids) - set(b.ids)), sorted(set(b.ids) - set(a.ids))
    if only_a or only_b:
        return (f"they cover different images ({len(only_a)} only in the first, e.g. {only_a[:3]}; "
                f"{len(only_b)} only in the second, e.g. {only_b[:3]})")
    if len(set(a.ids)) != len(a.ids) or len(set(b.ids)) != len(b.ids):
        return "an image id occurs twice in one run's statistics"
    pos = {i: n for n, i in enumerate(b.ids)}
    order = np.array([pos[i] for i in a.ids], dtype=np.int64)
    differ = np.flatnonzero((a.gt != b.gt[order]).any(axis=1))
    if differ.size:
        return (f"the same image ids hold different ground truth ({differ.size} images, e.g. "
                f"{[a.ids[i] for i in differ[:3]]}): different test sets with the same file names")
    return None


def _split(protocol: str, protocol_hash: str):
    from zss_bench.protocol import load_protocol

    try:
        proto = load_protocol(protocol)
    except Exception:  # a user's own protocol file that is not installed: nothing to pair on
        return None
    return (proto.seen_ids, proto.unseen_ids) if proto.content_hash.startswith(protocol_hash) else None


def add_paired_column(table: pd.DataFrame, runs: pd.DataFrame, reference: str = "chimera", n_boot: int = 1000,
                      seed: int = 0, metric: str = "hIoU",
                      on_note: Callable[[str], None] | None = None) -> pd.DataFrame:
    """``table`` (``aggregate``'s output) with ``vs_*`` columns: the reference config paired with, the seeds
    used, and B - A of ``metric`` in % with its 95 % interval and p-value (NaN where nothing pairs).
    ``on_note`` hears why a column or a cell is left empty (no runs of the reference, a pair that is not on
    the same images)."""
    note = on_note or (lambda m: None)
    table = table.copy()
    for col in VS_COLUMNS:
        table[col] = None
    if runs.empty:
        return table
    if reference not in set(runs["method"]):
        methods = ", ".join(sorted(set(runs["method"])))
        note(f"no runs of '{reference}' to pair with: the ΔhIoU vs {reference} column is left out "
             f"(methods here: {methods}; --vs METHOD picks another, --vs none leaves it out)")
        return table
    cache: dict[str, object] = {}

    def stats(path):
        if path not in cache:
            cache[path] = _stats(path)
        return cache[path]

    ref_runs = runs[(runs["method"] == reference) & (runs.get("origin", "trained here") != "imported")]
    from zss_bench.tables.leaderboard import NO_CLIP

    by_test_set = "test_set" in runs and "test_set" in table
    for i, row in table.iterrows():
        same = ref_runs[ref_runs["protocol_hash"] == row["protocol_hash"]]
        if by_test_set:  # never across test sets: other images, or other ground truth
            same = same[same["test_set"] == row["test_set"]]
        if row["clip"] != NO_CLIP:  # a method without CLIP (seen-only) pairs with any teacher; others only with theirs
            same = same[same["clip"] == row["clip"]]
        own = row["method"] == reference
        config = row["config"] if not own and (same["config"] == row["config"]).any() else "default"
        if own and config == row["config"]:
            table.at[i, "vs_config"] = "ref"
            continue
        ref = same[same["config"] == config]
        mine = runs[(runs["method"] == row["method"]) & (runs["config"] == row["config"])
                    & (runs["protocol_hash"] == row["protocol_hash"]) & (runs["clip"] == row["clip"])]
        if by_test_set:
            mine = mine[mine["test_set"] == row["test_set"]]
        if "origin" in runs:
            mine = mine[mine["origin"] == row.get("origin", "trained here")]
        seeds = sorted(set(ref["seed"].dropna()) & set(mine["seed"].dropna()))
        split = _split(row["protocol"], row["protocol_hash"])
        if not seeds or split is None:
            continue
        pairs = []
        for s in seeds:
            a = ref[ref["seed"] == s].iloc[-1]["path"]
            b = mine[mine["seed"] == s].iloc[-1]["path"]
            if not pairs:
                first = a  # the run every other seed's images are aligned to
            try:
                pair = (stats(a), stats(b))
            except (OSError, ValueError) as exc:
                note(f"ΔhIoU of {row['method']} [{row['config']}] left n/a: {exc}")
                pairs = []
                break
            why, where = same_images(*pair), f"{a} and {b}"
            if not why and pairs:  # every seed's runs are resampled together: they must share images too
                why, where = same_images(pairs[0][0], pair[0]), f"{first} and {a}"
            if why:
                note(f"ΔhIoU of {row['method']} [{row['config']}] left n/a: {where} cannot be paired: {why}")
                pairs = []
                break
            pairs.append(pair)
        if not pairs:
            continue
        res = paired_bootstrap_seeds(pairs, list(split[0]), list(split[1]), n_boot=n_boot, seed=seed)[metric]
        table.at[i, "vs_config"] = config
        table.at[i, "vs_seeds"] = tuple(int(s) for s in seeds)
        table.at[i, "vs_delta"] = 100 * res["delta"]
        table.at[i, "vs_low"] = 100 * res["low"]
        table.at[i, "vs_high"] = 100 * res["high"]
        table.at[i, "vs_p"] = res["p_value"]
    return table
