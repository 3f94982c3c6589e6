"""The report's per-run parts of one protocol: per-class bars of each method's best run, the saved
prediction overlays and every record's provenance on a click."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from zss_bench.plots import PlotInputError
from zss_bench.plots.common import png_bytes, run_label
from zss_bench.records.store import LoadedRun
from zss_bench.report.html import figure, json_details, note
from zss_bench.tables.leaderboard import IMPORTED

PROVENANCE_BLOCKS = ("provenance", "clip", "training", "protocol")


def best_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Per method its best run (highest hIoU) of the ``default`` label, else of any label, never an
    imported one when a harness-trained run exists; sorted by hIoU, best first."""
    picked = []
    for _, rows in runs.groupby("method", sort=True):
        own = rows[rows["origin"] != IMPORTED] if (rows["origin"] != IMPORTED).any() else rows
        default = own[own["config"] == "default"]
        pool = default if not default.empty else own
        picked.append(pool.sort_values("hIoU", ascending=False, na_position="last").iloc[0])
    return pd.DataFrame(picked).sort_values("hIoU", ascending=False, na_position="last")


def per_class_html(runs: pd.DataFrame, load: Callable[[str], LoadedRun]) -> str:
    from zss_bench.plots.per_class import per_class_figure

    best = best_runs(runs)
    chosen = [load(path) for path in best["path"]]
    try:
        fig = per_class_figure(chosen)
    except PlotInputError as exc:
        return note(f"per-class bars not drawn: {exc}", warn=True)
    caption = ("best run of each method (its default label where it has one; highest hIoU): "
               + "; ".join(run_label(r.record) for r in chosen))
    return figure(png_bytes(fig), caption)


def overlays_html(runs: list[LoadedRun], n: int, on_note: Callable[[str], None]) -> str:
    from zss_bench.plots.overlays import overlays_figure

    parts = []
    for run in runs:
        if not run.record.get("predictions"):
            continue
        try:
            fig = overlays_figure(run, n)
        except PlotInputError as exc:
            on_note(f"overlays of {run.path}: {exc}")
            parts.append(note(f"overlays of {run_label(run.record)} not drawn: {exc}", warn=True))
            continue
        parts.append(figure(png_bytes(fig), f"{run_label(run.record)} ({run.record.get('run_id')})"))
    return "\n".join(parts) or note("No record of this protocol saved predictions "
                                    "(zss-bench run ... --save-predictions N keeps some).")


def provenance_html(runs: list[LoadedRun]) -> str:
    """One line per record (id, method [label] seed, hIoU); a click opens its provenance, CLIP, training
    and protocol blocks as JSON."""
    parts = []
    for run in runs:
        rec = run.record
        hiou = rec["metrics"].get("hIoU")
        summary = (f"{rec.get('run_id', run.path.name)} · {run_label(rec)} · "
                   f"hIoU {'n/a' if hiou is None else f'{hiou:.1f}'}")
        parts.append(json_details(summary, {k: rec.get(k) for k in PROVENANCE_BLOCKS}))
    return "\n".join(parts)
