"""Test-time score adjustments shared by methods (each a config key of the method that uses it)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def calibrate_seen(scores: torch.Tensor, seen_ids, gamma: float, dim: int = 1) -> torch.Tensor:
    """Subtract ``gamma`` from the seen classes' scores (SPNet's calibration; ZegFormer and ZegCLIP use
    0.1 on cosine scores): trained models over-trust the classes they saw. 0 = unchanged."""
    if not gamma:
        return scores
    scores = scores.clone()
    index = [slice(None)] * scores.dim()
    index[dim] = list(seen_ids)
    scores[tuple(index)] -= gamma
    return scores


def image_prior(logits: torch.Tensor, image_cos: torch.Tensor, logit_scale: float, weight: float) -> torch.Tensor:
    """log p(class | pixel) + ``weight`` x log p_CLIP(class | whole image) on every pixel.

    ``logits`` (B, C, h, w); ``image_cos`` (B, C) cosine of CLIP's image embedding to each class text."""
    if not weight:
        return logits
    prior = F.log_softmax(logit_scale * image_cos, dim=1)
    return F.log_softmax(logits, dim=1) + weight * prior[:, :, None, None]
