"""Table stage: leaderboards and paired comparisons built from run records."""

from zss_bench.tables.compare import compare_runs, render_comparison
from zss_bench.tables.leaderboard import FORMATS, aggregate, collect_runs, render_leaderboard

__all__ = ["FORMATS", "aggregate", "collect_runs", "compare_runs", "render_comparison", "render_leaderboard"]
