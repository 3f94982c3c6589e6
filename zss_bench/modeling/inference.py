"""Test-time layouts: score the whole image at once, or average overlapping windows (mmseg's
'slide' mode, what the real protocols use at 512 px). ``score_fn`` maps normalised images
(B, 3, h, w) to class scores at any resolution; both return scores at the input's size."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

ScoreFn = Callable[[torch.Tensor], torch.Tensor]


def whole_inference(score_fn: ScoreFn, images: torch.Tensor) -> torch.Tensor:
    scores = score_fn(images)
    return F.interpolate(scores, size=images.shape[-2:], mode="bilinear", align_corners=False)


def slide_windows(h: int, w: int, crop: int, stride: int) -> list[tuple[int, int]]:
    """Top-left corners of the windows covering an h x w image (the last row/column flush with the edge)."""
    if not 0 < stride <= crop:
        raise ValueError(f"ZSS.EVAL.SLIDE_STRIDE {stride} must be in 1..SLIDE_CROP ({crop}): larger strides leave "
                         "pixels no window covers")
    ys = list(range(0, max(h - crop, 0) + 1, stride))
    xs = list(range(0, max(w - crop, 0) + 1, stride))
    if ys[-1] + crop < h:
        ys.append(h - crop)
    if xs[-1] + crop < w:
        xs.append(w - crop)
    return [(max(y, 0), max(x, 0)) for y in ys for x in xs]


WINDOW_BATCH = 4  # slide windows scored per call on an accelerator
ONE_WINDOW_DEVICES = ("cpu",)  # devices that score one window per call by default


def slide_inference(score_fn: ScoreFn, images: torch.Tensor, crop: int, stride: int,
                    window_batch: int | None = None) -> torch.Tensor:
    """Average of the (upsampled) scores of overlapping ``crop`` windows, ``stride`` apart.

    The windows are scored ``window_batch`` at a time, as one batch of windows (all windows of an image have one
    size), and added up in window order. ``score_fn`` scores every image of a batch on its own (every shipped
    method does), so a window gets the scores it gets alone, up to the floating-point rounding of batched kernels
    (about 1e-7 relative). By default ``WINDOW_BATCH`` windows per call on an accelerator, where a call per window
    leaves it idle, and one on the CPU, where batching gains little: CPU scores stay bit for bit those of one
    window at a time."""
    if window_batch is None:
        window_batch = 1 if images.device.type in ONE_WINDOW_DEVICES else WINDOW_BATCH
    if window_batch < 1:
        raise ValueError(f"window_batch must be >= 1, got {window_batch}")
    b, _, h, w = images.shape
    corners = slide_windows(h, w, crop, stride)
    total, count = None, torch.zeros((1, 1, h, w), device=images.device)
    for first in range(0, len(corners), window_batch):
        chunk = corners[first:first + window_batch]
        views = [images[:, :, y0:y0 + crop, x0:x0 + crop] for y0, x0 in chunk]
        patches = views[0] if len(views) == 1 else torch.cat(views)  # window-major
        scores = whole_inference(score_fn, patches)
        ph, pw = patches.shape[-2:]
        if total is None:
            total = torch.zeros((b, scores.shape[1], h, w), device=images.device)
        for i, (y0, x0) in enumerate(chunk):
            total[:, :, y0:y0 + ph, x0:x0 + pw] += scores[i * b:(i + 1) * b]
            count[:, :, y0:y0 + ph, x0:x0 + pw] += 1
    return total / count


def infer(score_fn: ScoreFn, images: torch.Tensor, mode: str, crop: int = 512, stride: int = 426,
          window_batch: int | None = None) -> torch.Tensor:
    if mode == "whole":
        return whole_inference(score_fn, images)
    if mode == "slide":
        return slide_inference(score_fn, images, crop, stride, window_batch)
    raise ValueError(f"unknown ZSS.EVAL.MODE '{mode}' (whole | slide)")
