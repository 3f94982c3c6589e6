"""Segmentation metrics: confusion matrix, IoU summaries and bootstrap intervals.

``ConfusionMatrix`` accumulates counts (and per-image stats); ``summarize`` turns per-class
totals into mIoU / seen / unseen / hIoU / pAcc under the "mmseg" or "detectron2" convention;
``bootstrap_ci`` and ``paired_bootstrap`` resample images to give uncertainty and paired
comparisons. torch is only imported when tensors are passed in or ``all_reduce`` is called.
"""
from .bootstrap import bootstrap_ci, bootstrap_ci_seeds, paired_bootstrap, paired_bootstrap_seeds
from .confusion import ConfusionMatrix, ImageStats
from .summary import CONVENTIONS, MetricSummary, summarize, summarize_batch

__all__ = [
    "CONVENTIONS",
    "ConfusionMatrix",
    "ImageStats",
    "MetricSummary",
    "bootstrap_ci",
    "bootstrap_ci_seeds",
    "paired_bootstrap",
    "paired_bootstrap_seeds",
    "summarize",
    "summarize_batch",
]
