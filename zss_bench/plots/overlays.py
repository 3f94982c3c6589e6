"""Prediction overlays: image | ground truth | prediction for the predictions a record saved.

Seeing what a method predicts on an unseen object (nothing, a seen neighbour's label, the right
class with ragged borders) explains a U score better than the number. Labels are drawn over the
dimmed image in the protocol's class colours; unseen classes are hatched and outlined in white,
and every class shown is named in the legend (unseen ones say so). Ignored pixels show the image.
"""
from __future__ import annotations

import numpy as np
from matplotlib.patches import Patch
from PIL import Image

from zss_bench.plots import PlotInputError
from zss_bench.plots.common import class_colours, new_figure, record_protocol, run_label, wrap
from zss_bench.records.predictions import load_predictions
from zss_bench.records.store import LoadedRun

ALPHA = 0.6


def blend(image: np.ndarray, labels: np.ndarray, colours: np.ndarray, ignore: int) -> np.ndarray:
    """``labels`` in ``colours`` over ``image`` (resized to the labels' size); ignored pixels: the image, dimmed."""
    h, w = labels.shape
    base = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR), np.float32)
    valid = labels != ignore
    painted = colours[np.where(valid, labels, 0)].astype(np.float32)
    out = np.where(valid[..., None], (1 - ALPHA) * base + ALPHA * painted, 0.6 * base)
    return out.clip(0, 255).astype(np.uint8)


def _mark_unseen(ax, labels: np.ndarray, unseen: list[int]) -> None:
    mask = np.isin(labels, unseen).astype(float)
    if mask.any():
        ax.contourf(mask, levels=[0.5, 1.5], colors="none", hatches=["///"])
        ax.contour(mask, levels=[0.5], colors="white", linewidths=1.2)


def overlays_figure(run: LoadedRun, n: int = 4):
    """One row per saved prediction (the first ``n``): the image, the ground truth and the prediction."""
    if n < 1:
        raise PlotInputError(f"--n must be at least 1, got {n}")
    preds = load_predictions(run, n)
    if not preds:
        raise PlotInputError(f"{run.path}: this record saved no predictions "
                             "(make the run with `zss-bench run ... --save-predictions N`)")
    protocol = record_protocol(run)
    colours, ignore = class_colours(protocol), protocol.ignore_label
    unseen = list(protocol.unseen_ids)
    present: set[int] = set()
    for i, p in enumerate(preds):
        for what, labels in (("gt", p.gt), ("pred", p.pred)):
            ids = set(np.unique(labels).tolist()) - {ignore}
            bad = sorted(c for c in ids if not 0 <= c < protocol.num_classes)
            if bad:
                raise PlotInputError(f"{run.path}: predictions.items[{i}].{what} holds ids {bad[:5]}, outside "
                                     f"{protocol.name}'s 0..{protocol.num_classes - 1} (and {ignore} = ignore)")
            present |= ids
    fig = new_figure(10.5, 3.1 * len(preds) + 0.35 * (1 + len(present) // 4))
    axes = fig.subplots(len(preds), 3, squeeze=False)
    for row, p in zip(axes, preds):
        row[0].imshow(p.image)
        row[0].set_title(f"image {p.image_id}", fontsize=9)
        for ax, labels, name in ((row[1], p.gt, "ground truth"), (row[2], p.pred, "prediction")):
            ax.imshow(blend(p.image, labels, colours, ignore), interpolation="nearest")
            _mark_unseen(ax, labels, unseen)
            ax.set_title(name, fontsize=9)
        for ax in row:
            ax.set_axis_off()
    handles = [Patch(facecolor=colours[c] / 255.0, edgecolor="black", hatch="///" if c in unseen else None,
                     label=f"{protocol.classes[c]} (unseen)" if c in unseen else protocol.classes[c])
               for c in sorted(present)]
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=min(4, len(handles)), fontsize=8)
    fig.suptitle(wrap(f"{run_label(run.record)} on {protocol.name}: first {len(preds)} saved predictions "
                      "(unseen classes hatched, outlined)", int(fig.get_figwidth() * 9)), fontsize=10)
    return fig
