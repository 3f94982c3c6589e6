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


def slide_inference(score_fn: ScoreFn, images: torch.Tensor, crop: int, stride: int) -> torch.Tensor:
    """Average of the (upsampled) scores of overlapping ``crop`` windows, ``stride`` apart."""
    b, _, h, w = images.shape
    total, count = None, torch.zeros((1, 1, h, w), device=images.device)
    for y0, x0 in slide_windows(h, w, crop, stride):
        patch = images[:, :, y0:y0 + crop, x0:x0 + crop]
        s = whole_inference(score_fn, patch)
        if total is None:
            total = torch.zeros((b, s.shape[1], h, w), device=images.device)
        total[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += s
        count[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += 1
    return total / count


def infer(score_fn: ScoreFn, images: torch.Tensor, mode: str, crop: int = 512, stride: int = 426) -> torch.Tensor:
    if mode == "whole":
        return whole_inference(score_fn, images)
    if mode == "slide":
        return slide_inference(score_fn, images, crop, stride)
    raise ValueError(f"unknown ZSS.EVAL.MODE '{mode}' (whole | slide)")
