"""Training curves of one run from the ``metrics.json`` its record keeps.

A final score does not say whether training had converged, diverged and recovered, or was cut
short; the losses and the learning rate over iterations do. detectron2 writes ``metrics.json`` as
JSON lines (``iteration``, ``total_loss``, ``loss_*``, ``lr``, timings); ``zss-bench run`` copies it
into the record, so the curve stays with the numbers it explains.
"""
from __future__ import annotations

import json
from pathlib import Path

from zss_bench.plots import PlotInputError
from zss_bench.plots.common import new_figure, run_label, wrap
from zss_bench.records.store import CURVES_FILE, LoadedRun


def curves_path(run: LoadedRun) -> Path:
    """The record's stored ``metrics.json``; PlotInputError saying why a record has none."""
    name = (run.record.get("training") or {}).get("curves") or CURVES_FILE
    if not isinstance(name, str) or Path(name).is_absolute() or ".." in Path(name).parts:
        raise PlotInputError(f"{run.path / 'record.json'}: training.curves must name a file inside the run directory, "
                             f"found {name!r}")
    path = run.path / name
    if not path.is_file():
        training = run.record.get("training") or {}
        why = ("a training-free method has none" if training.get("training_free") else
               "its weights were not trained in this run's folder" if training.get("performed") is False else
               "the record was made before records kept them")
        raise PlotInputError(f"{run.path}: no training curves ({CURVES_FILE}) in this record: {why}")
    return path


def read_curves(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """metric name -> [(iteration, value)] sorted by iteration; a repeated iteration (a resumed run logs it
    again) keeps its last value. A line that is not a JSON object is a PlotInputError naming file:line."""
    series: dict[str, dict[int, float]] = {}
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PlotInputError(f"{path}:{number}: not a JSON line ({exc.msg})") from None
        if not isinstance(entry, dict):
            raise PlotInputError(f"{path}:{number}: expected a JSON object, found {type(entry).__name__}")
        iteration = entry.get("iteration")
        if not isinstance(iteration, int):
            continue  # detectron2 writes evaluation summaries without an iteration too
        for key, value in entry.items():
            if key != "iteration" and isinstance(value, (int, float)) and not isinstance(value, bool):
                series.setdefault(key, {})[iteration] = float(value)
    return {k: sorted(v.items()) for k, v in series.items()}


def curves_figure(run: LoadedRun):
    """Losses (``total_loss`` bold, each ``loss_*`` thin) and, when logged, the learning rate."""
    path = curves_path(run)
    series = read_curves(path)
    losses = ["total_loss", *sorted(k for k in series if k.startswith("loss_"))]
    losses = [k for k in losses if k in series]
    if not losses:
        raise PlotInputError(f"{path}: no total_loss or loss_* values to draw")
    has_lr = "lr" in series
    fig = new_figure(11 if has_lr else 7, 4)
    axes = fig.subplots(1, 2 if has_lr else 1, squeeze=False)[0]
    for key in losses:
        its, values = zip(*series[key])
        axes[0].plot(its, values, label=key, linewidth=2.0 if key == "total_loss" else 1.0,
                     marker="o" if len(its) < 3 else None)
    axes[0].set_xlabel("iteration")
    axes[0].set_ylabel("loss")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if has_lr:
        its, values = zip(*series["lr"])
        axes[1].plot(its, values, color="black", marker="o" if len(its) < 3 else None)
        axes[1].set_xlabel("iteration")
        axes[1].set_ylabel("learning rate")
        axes[1].grid(alpha=0.3)
        axes[1].ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(wrap(f"{run_label(run.record)} on {run.record['protocol']['name']}: training curves",
                      int(fig.get_figwidth() * 7.5)))
    return fig
