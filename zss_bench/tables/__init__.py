"""Table stage: leaderboards and paired comparisons built from run records."""

from zss_bench.tables.compare import compare_runs, render_comparison
from zss_bench.tables.leaderboard import (FORMATS, aggregate, checked_runs, collect_runs, render_leaderboard,
                                         weights_origin)
from zss_bench.tables.paired import add_paired_column

__all__ = ["FORMATS", "add_paired_column", "aggregate", "checked_runs", "collect_runs", "compare_runs",
           "render_comparison", "render_leaderboard", "weights_origin"]
