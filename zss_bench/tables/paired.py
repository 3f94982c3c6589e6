"""The leaderboard's "vs reference" column: each row's hIoU against a reference method (Chimera-Seg by
default), as a paired bootstrap on the test images, per seed, combined over the seeds both rows have.

Why paired: every row is evaluated on the same images, so the per-image differences are what varies;
unpaired mean ± std overstates the uncertainty (lm-eval #3831). Rows are paired with the reference's row
of the same config label (``long-1800it`` with ``long-1800it``: the same schedule) when it has one, else
with its ``default`` row; only seeds present in both count, and rows on other CLIP weights or protocol
definitions are never paired (a method without CLIP pairs with the reference on any teacher). The
reference's own other configs (ablations, re-scorings) are paired with its default row.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from zss_bench.metrics import ConfusionMatrix, paired_bootstrap_seeds

VS_COLUMNS = ("vs_config", "vs_seeds", "vs_delta", "vs_low", "vs_high", "vs_p")


def _stats(path: str):
    cm = ConfusionMatrix.load(Path(path) / "confusion.npz")
    if cm.image_stats is None or len(cm.image_stats.ids) == 0:
        raise ValueError(f"{path}: no per-image statistics")
    return cm.image_stats


def _split(protocol: str, protocol_hash: str):
    from zss_bench.protocol import load_protocol

    try:
        proto = load_protocol(protocol)
    except Exception:  # a user's own protocol file that is not installed: nothing to pair on
        return None
    return (proto.seen_ids, proto.unseen_ids) if proto.content_hash.startswith(protocol_hash) else None


def add_paired_column(table: pd.DataFrame, runs: pd.DataFrame, reference: str = "chimera", n_boot: int = 1000,
                      seed: int = 0, metric: str = "hIoU") -> pd.DataFrame:
    """``table`` (``aggregate``'s output) with ``vs_*`` columns: the reference config paired with, the seeds
    used, and B - A of ``metric`` in % with its 95 % interval and p-value (NaN where nothing pairs)."""
    table = table.copy()
    for col in VS_COLUMNS:
        table[col] = None
    if runs.empty or reference not in set(runs["method"]):
        return table
    cache: dict[str, object] = {}

    def stats(path):
        if path not in cache:
            cache[path] = _stats(path)
        return cache[path]

    ref_runs = runs[(runs["method"] == reference) & (runs.get("origin", "trained here") != "imported")]
    from zss_bench.tables.leaderboard import NO_CLIP

    for i, row in table.iterrows():
        same = ref_runs[ref_runs["protocol_hash"] == row["protocol_hash"]]
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
            try:
                pairs.append((stats(a), stats(b)))
            except (OSError, ValueError):
                pairs = []
                break
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
