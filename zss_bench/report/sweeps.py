"""The report's sweep section: for each ``--grid FILE``, the pivot tables of its finished cells and a
heat-map where the sweep has two keys (``zss_bench.tables.pivot``, imported only here, so the report
works, and says so, in a zss-bench without it)."""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

from zss_bench.report.html import esc, figure, note


def sweeps_html(grid_files: list[str], results_root: str, protocol: str | None = None,
                on_skip: Callable[[str], None] | None = None) -> str:
    if not grid_files:
        return ""
    try:
        from zss_bench.tables.pivot import sweep_pivots
    except ImportError as exc:
        return note(f"Sweep tables for {', '.join(grid_files)} are not available: this zss-bench has no "
                    f"sweep pivots (zss_bench.tables.pivot: {exc}).", warn=True)
    parts = []
    with tempfile.TemporaryDirectory(prefix="zss-report-") as tmp:
        for g, grid in enumerate(grid_files):
            parts.append(f"<h3>Sweep: {esc(Path(grid).name)}</h3>")
            pivots = sweep_pivots(grid, results_root, protocol=protocol, on_skip=on_skip)
            if not pivots:
                parts.append(note(f"No finished runs of {grid} under {results_root}."))
            for i, pivot in enumerate(pivots):
                parts.append(f"<h4>{esc(pivot.title)}</h4>")
                parts.append(pivot.to_html())
                png = pivot.heatmap_png(Path(tmp) / f"heatmap-{g}-{i}.png")
                if png is not None:
                    parts.append(figure(Path(png).read_bytes(), f"{pivot.title}: heat-map over {' × '.join(pivot.keys)}"))
    return "\n".join(parts)
