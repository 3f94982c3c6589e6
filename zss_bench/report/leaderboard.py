"""The report's leaderboard of one protocol: exactly ``zss-bench leaderboard``'s table (mean ± std over
seeds, the paired ΔhIoU column with its 95 % interval, imported rows apart), rendered as HTML."""
from __future__ import annotations

from typing import Callable

import pandas as pd

from zss_bench.tables import add_paired_column, aggregate, render_leaderboard


def leaderboard_html(runs: pd.DataFrame, reference: str | None = "chimera", n_boot: int = 1000,
                     on_note: Callable[[str], None] | None = None) -> str:
    """``runs``: ``collect_runs`` rows of one protocol; ``on_note`` hears why a paired cell is left empty."""
    table = aggregate(runs)
    if reference:
        table = add_paired_column(table, runs, reference, n_boot=n_boot, on_note=on_note)
    return render_leaderboard(table, fmt="html", reference=reference, n_boot=n_boot)
