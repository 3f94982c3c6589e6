"""Per-class IoU bars: where a method's hIoU comes from, class by class, seen and unseen apart.

A headline hIoU hides which unseen classes a method actually segments; the bars show each class's
IoU from ``record["metrics"]["per_class"]`` (the protocol's headline convention), unseen classes
marked. Several runs of one protocol become grouped bars, one colour per run.
"""
from __future__ import annotations

import math

import numpy as np
from matplotlib.patches import Patch

from zss_bench.plots import PlotInputError
from zss_bench.plots.common import SEEN_COLOUR, UNSEEN_COLOUR, new_figure, record_protocol, run_label, wrap
from zss_bench.records.store import LoadedRun


def per_class_values(run: LoadedRun, classes: tuple[str, ...]) -> np.ndarray:
    """(K,) IoU in % in the protocol's class order; NaN where the record has no value (an absent class)."""
    per_class = run.record["metrics"].get("per_class")
    where = run.path / "record.json"
    if not isinstance(per_class, dict) or not per_class:
        raise PlotInputError(f"{where}: metrics.per_class is missing or empty")
    unknown = sorted(set(per_class) - set(classes))
    if unknown:
        raise PlotInputError(f"{where}: metrics.per_class names {unknown[:3]}, not classes of protocol "
                             f"{run.record['protocol']['name']} as installed here")
    values = []
    for name in classes:
        value = per_class.get(name)
        if value is not None and not isinstance(value, (int, float)):
            raise PlotInputError(f"{where}: metrics.per_class['{name}'] is {value!r}, not a number")
        values.append(math.nan if value is None else float(value))
    return np.array(values)


def per_class_figure(runs: list[LoadedRun], title: str | None = None):
    """Grouped per-class IoU bars of ``runs`` (all of one protocol). One run: seen and unseen bars in two
    colours; several: one colour per run, unseen bars hatched. Unseen class names are marked ``*``
    and drawn in the unseen colour, over a shaded band."""
    if not runs:
        raise PlotInputError("per-class bars need at least one run")
    names = {r.record["protocol"]["name"] for r in runs}
    if len(names) > 1:
        raise PlotInputError(f"per-class bars compare runs of one protocol; these are of {sorted(names)}")
    protocol = record_protocol(runs[0])
    classes = protocol.classes
    unseen = set(protocol.unseen_ids)
    table = np.stack([per_class_values(r, classes) for r in runs])  # (runs, K)
    n_runs, k = table.shape
    width = 0.8 / n_runs
    fig = new_figure(min(60.0, max(8.0, k * (0.22 + 0.12 * n_runs))), 4.8)
    ax = fig.add_subplot()
    x = np.arange(k)
    for c in sorted(unseen):
        ax.axvspan(c - 0.5, c + 0.5, color=UNSEEN_COLOUR, alpha=0.08, linewidth=0)
    colours = _run_colours(n_runs)
    for i, (run, row) in enumerate(zip(runs, table)):
        offsets = x - 0.4 + width * (i + 0.5)
        if n_runs == 1:
            face = [UNSEEN_COLOUR if c in unseen else SEEN_COLOUR for c in range(k)]
            ax.bar(offsets, np.nan_to_num(row), width, color=face)
        else:
            hatch = ["//" if c in unseen else "" for c in range(k)]
            bars = ax.bar(offsets, np.nan_to_num(row), width, color=colours[i], label=wrap(run_label(run.record), 70),
                          edgecolor="white", linewidth=0.3)
            for bar, h in zip(bars, hatch):
                bar.set_hatch(h)
        for c in np.flatnonzero(np.isnan(row)):
            ax.text(offsets[c], 1, "n/a", rotation=90, ha="center", va="bottom", fontsize=6, color="grey")
    ax.set_xticks(x, [f"{n}*" if c in unseen else n for c, n in enumerate(classes)], rotation=60, ha="right",
                  fontsize=8)
    for c, tick in enumerate(ax.get_xticklabels()):
        tick.set_color(UNSEEN_COLOUR if c in unseen else "black")
    ax.set_xlim(-0.6, k - 0.4)
    ax.set_ylim(0, 100)
    ax.set_ylabel("IoU (%)")
    conv = runs[0].record["metrics"].get("convention", "headline")
    default = f"{protocol.name}: per-class IoU ({conv} convention; * unseen)"
    if n_runs == 1:
        default += f"\n{run_label(runs[0].record)}"
    ax.set_title(wrap(title or default, int(fig.get_figwidth() * 9)), fontsize=10)  # ~9 characters per inch
    ax.grid(axis="y", alpha=0.3)
    if n_runs == 1:
        handles = [Patch(color=SEEN_COLOUR, label="seen"), Patch(color=UNSEEN_COLOUR, label="unseen")]
    else:
        handles, _ = ax.get_legend_handles_labels()
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="unseen class"))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 2 if n_runs > 1 else 3), fontsize=8)
    return fig


def _run_colours(n: int) -> list:
    """Distinct, fixed colours per run (tab10, then tab20 for more runs)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]
