"""Binary mask losses on labelled pixels only (unseen and void pixels are ignored, never treated as
background: that would teach a model that unseen things are nothing). Pairwise forms (every prediction
against every target: Hungarian matching costs) and per-class forms (prediction c against target c:
one-mask-per-class methods such as ZegCLIP)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

MASK_LOSSES = ("bce", "focal")


def _pos_neg(x: torch.Tensor, kind: str, alpha: float, gamma: float, key: str):
    """Per-pixel loss if the target is 1 (pos) and if it is 0 (neg)."""
    pos, neg = F.softplus(-x), F.softplus(x)  # -log sigmoid(x), -log(1 - sigmoid(x))
    if kind == "focal":
        p = x.sigmoid()
        pos, neg = alpha * (1 - p) ** gamma * pos, (1 - alpha) * p ** gamma * neg
    elif kind != "bce":
        raise ValueError(f"unknown {key} '{kind}' ({' | '.join(MASK_LOSSES)})")
    return pos, neg


def pairwise_mask_cost(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kind: str = "bce",
                       alpha: float = 0.25, gamma: float = 2.0, key: str = "MODEL.ZEGFORMER.MASK_LOSS") -> torch.Tensor:
    """(Q, N) mask logits, (K, N) binary targets, (N,) valid -> (Q, K) mean per-pixel loss over valid pixels."""
    x, t = logits[:, valid], targets[:, valid].to(logits.dtype)
    n = max(1, x.shape[1])
    pos, neg = _pos_neg(x, kind, alpha, gamma, key)
    return (pos @ t.t() + neg @ (1 - t).t()) / n


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(Q, N), (K, N), (N,) -> (Q, K) dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) over valid pixels."""
    p, t = logits[:, valid].sigmoid(), targets[:, valid].to(logits.dtype)
    return 1 - (2 * p @ t.t() + 1) / (p.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)


def classwise_mask_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kind: str = "focal",
                        alpha: float = 0.25, gamma: float = 2.0, key: str = "mask loss") -> torch.Tensor:
    """(B, C, N) logits, (B, C, N) binary targets, (B, N) valid -> the mean per-pixel loss over valid pixels
    and classes (prediction c against target c)."""
    pos, neg = _pos_neg(logits, kind, alpha, gamma, key)
    t, v = targets.to(logits.dtype), valid[:, None].to(logits.dtype)
    per = (t * pos + (1 - t) * neg) * v
    return per.sum() / (v.sum() * logits.shape[1]).clamp_min(1.0)


def classwise_dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, N), (B, C, N), (B, N) -> mean over images and classes of 1 - (2|p t| + 1) / (|p| + |t| + 1)
    on valid pixels (a class absent from an image is pushed to predict nothing there)."""
    v = valid[:, None].to(logits.dtype)
    p, t = logits.sigmoid() * v, targets.to(logits.dtype) * v
    return (1 - (2 * (p * t).sum(-1) + 1) / (p.sum(-1) + t.sum(-1) + 1)).mean()
