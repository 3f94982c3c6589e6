"""MaskCLIP's two test-time refinements, written so that no token x token matrix is ever whole."""
from __future__ import annotations

import torch
import torch.nn.functional as F

REMOVED = -1e4  # a large finite floor: bilinear upsampling of -inf gives NaN


def key_smoothing(scores: torch.Tensor, keys: torch.Tensor, threshold: float, chunk: int = 256) -> torch.Tensor:
    """scores (B, K, h, w), keys (B, C, h, w) of the same tokens -> each token's scores replaced by the mean
    of the scores of every token whose key has cosine >= ``threshold`` with its own (itself included).

    MaskCLIP multiplies the scores by the thresholded key-affinity matrix; we normalise by the row sum (so
    a token's scale does not depend on how many neighbours it has) and go ``chunk`` query tokens at a
    time: memory is chunk x N, never N x N."""
    b, k, h, w = scores.shape
    s = scores.flatten(2)  # (B, K, N)
    key = F.normalize(keys.flatten(2).float(), dim=1)  # (B, C, N)
    out = torch.empty_like(s)
    for start in range(0, h * w, chunk):
        q = key[:, :, start:start + chunk]  # (B, C, n)
        weight = torch.einsum("bcn,bcm->bnm", q, key)  # (B, n, N)
        weight = weight * (weight >= threshold)
        weight = weight / weight.sum(-1, keepdim=True).clamp_min(1e-6)
        out[:, :, start:start + chunk] = torch.einsum("bnm,bkm->bkn", weight.to(s.dtype), s)
    return out.view(b, k, h, w)


def prompt_denoising(logits: torch.Tensor, threshold: float) -> torch.Tensor:
    """logits (B, K, h, w) -> the same with every class whose highest softmax probability in the image is
    below ``threshold`` set to a floor in that image (MaskCLIP's prompt denoising)."""
    confidence = logits.softmax(1).flatten(2).amax(-1)  # (B, K)
    removed = (confidence < threshold)[:, :, None, None].expand_as(logits)
    return logits.masked_fill(removed, REMOVED)
