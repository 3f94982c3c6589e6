"""Pictures of run records: per-class IoU bars, training curves, prediction overlays.

One module per picture (``per_class``, ``curves``, ``overlays``), each a function from loaded run
records to a matplotlib ``Figure`` (drawn with the Agg backend, never a window), so the
``zss-bench plot`` command and the HTML report draw exactly the same pictures. Like tables,
pictures are built only from records: a record keeps what they need (``metrics.json``, saved
predictions) and a picture never reads the training folder or the dataset.
"""
from zss_bench.records.store import RecordError

KINDS = ("per-class", "curves", "overlays")


class PlotInputError(RecordError):
    """A record lacks what a picture needs, or records cannot share one picture (message names them)."""


__all__ = ["KINDS", "PlotInputError"]
