"""``zss-bench plot``: draw the chosen pictures of some run records into a folder.

Per-class bars put all given runs of a protocol into one grouped chart (that is the comparison one
wants); curves and overlays are one picture per run. A record that lacks what a picture needs gets
a one-line note and the others are still drawn.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterable

from zss_bench.plots import KINDS, PlotInputError
from zss_bench.plots.common import file_stem, save_png
from zss_bench.records.store import LoadedRun


def make_plots(runs: list[LoadedRun], out: str | Path, kinds: Iterable[str] = KINDS, n: int = 4,
               on_note: Callable[[str], None] = print) -> list[Path]:
    """Write the PNGs of ``kinds`` for ``runs`` into ``out``; return their paths (notes go to ``on_note``)."""
    from zss_bench.plots.curves import curves_figure
    from zss_bench.plots.overlays import overlays_figure
    from zss_bench.plots.per_class import per_class_figure

    kinds = list(kinds)
    unknown = [k for k in kinds if k not in KINDS]
    if unknown:
        raise PlotInputError(f"unknown picture kind(s) {unknown}; choose from {', '.join(KINDS)} or all")
    if n < 1:
        raise PlotInputError(f"--n must be at least 1, got {n}")
    out = Path(out)
    written: list[Path] = []
    if "per-class" in kinds:
        by_protocol: dict[str, list[LoadedRun]] = {}
        for run in runs:
            by_protocol.setdefault(run.record["protocol"]["name"], []).append(run)
        for group in by_protocol.values():
            # one run: named by the run; several: by the protocol (its folder name is already file-safe)
            name = file_stem(group[0]) if len(group) == 1 else group[0].path.parent.parent.name
            written.append(save_png(per_class_figure(group), out / f"per-class-{name}.png"))
    for kind, draw in (("curves", curves_figure), ("overlays", lambda r: overlays_figure(r, n))):
        if kind not in kinds:
            continue
        for run in runs:
            try:
                fig = draw(run)
            except PlotInputError as exc:
                on_note(f"{kind}: {exc}")
                continue
            written.append(save_png(fig, out / f"{kind}-{file_stem(run)}.png"))
    return written
