"""``zss-bench report``: one static, self-contained HTML page built only from run records.

Leaderboards with their intervals and paired column, per-class bars, saved prediction overlays,
sweep pivots and each record's provenance, on one page that opens from a file, offline, years
later: pictures are embedded as data URIs and the page loads nothing (no script, no stylesheet,
no font from elsewhere; its Content-Security-Policy forbids it).
"""


class ReportError(ValueError):
    """The report cannot be built from what was given (the message names the file or option)."""


def build_report(*args, **kwargs):
    """See :func:`zss_bench.report.page.build_report` (imported lazily: matplotlib, pandas)."""
    from zss_bench.report.page import build_report as build

    return build(*args, **kwargs)


__all__ = ["ReportError", "build_report"]
