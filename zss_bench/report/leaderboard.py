"""The report's leaderboard of one protocol: exactly ``zss-bench leaderboard``'s table (mean ± std over
seeds, the paired ΔhIoU column with its 95 % interval, imported rows apart), rendered as HTML."""
from __future__ import annotations

import pandas as pd

from zss_bench.tables import add_paired_column, aggregate, render_leaderboard


def leaderboard_html(runs: pd.DataFrame, reference: str | None = "chimera", n_boot: int = 1000) -> str:
    """``runs``: ``collect_runs`` rows of one protocol."""
    table = aggregate(runs)
    if reference:
        table = add_paired_column(table, runs, reference, n_boot=n_boot)
    return render_leaderboard(table, fmt="html", reference=reference, n_boot=n_boot)
