"""Selective Global Distillation: distil CLIP's CLS embedding into the dense features most
similar to it, with fewer of them as training goes on (the abstract's description)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def keep_fraction(schedule: str, progress: float, start: float, end: float, milestones=(0.5, 0.75),
                  gamma: float = 0.5) -> float:
    """Fraction of dense positions used at ``progress`` in [0, 1] of training."""
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "fixed":
        return start
    if schedule == "linear":
        return start + (end - start) * progress
    if schedule == "cosine":
        return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
    if schedule == "step":
        frac = start * gamma ** sum(progress >= m for m in milestones)
        return max(frac, end)
    raise ValueError(f"unknown MODEL.CHIMERA.SGD.SCHEDULE '{schedule}' (linear | cosine | step | fixed)")


def selective_global_distillation(z: torch.Tensor, cls: torch.Tensor, fraction: float, *, loss: str = "cosine",
                                  pool: str = "mean", temperature: float = 0.07,
                                  valid: torch.Tensor | None = None, valid_count: int | None = None
                                  ) -> tuple[torch.Tensor, dict]:
    """z (B, D, h, w) dense joint-space features, cls (B, D) teacher CLS -> (loss, stats).

    Per image: cosine similarity of every position to its CLS; keep the top ``fraction``;
    pool them (mean, or softmax-weighted by similarity) into one vector; pull it to the CLS.
    ``valid`` (B, h, w) restricts each image to its positions; the top-k count comes from the fewest valid
    positions of an image, ``valid_count`` when the caller knows it on the host (no device read).
    stats: ``sgd_k`` (a Python float) and ``sgd_top_sim`` (a detached 0-dim tensor: reading it is the
    caller's choice, since it waits for the device).
    """
    b, d, h, w = z.shape
    zf = F.normalize(z.flatten(2).transpose(1, 2), dim=-1)  # (B, hw, D)
    target = F.normalize(cls.detach(), dim=-1)
    sim = torch.einsum("bnd,bd->bn", zf, target)
    if valid is not None:
        sim = sim.masked_fill(~valid.flatten(1), float("-inf"))
    if valid is None:
        n = h * w
    else:
        n = int(valid.flatten(1).sum(1).min()) if valid_count is None else int(valid_count)
    k = max(1, int(round(fraction * n)))
    top_sim, top_idx = sim.topk(k, dim=1)
    picked = torch.gather(zf, 1, top_idx.unsqueeze(-1).expand(-1, -1, d))
    if pool == "mean":
        pooled = picked.mean(1)
    elif pool == "weighted":
        pooled = (torch.softmax(top_sim / temperature, dim=1).unsqueeze(-1) * picked).sum(1)
    else:
        raise ValueError(f"unknown MODEL.CHIMERA.SGD.POOL '{pool}' (mean | weighted)")
    if loss == "cosine":
        value = (1 - F.cosine_similarity(pooled, target, dim=-1)).mean()
    elif loss == "l1":
        value = F.l1_loss(F.normalize(pooled, dim=-1), target)
    elif loss == "infonce":
        logits = F.normalize(pooled, dim=-1) @ target.t() / temperature
        value = F.cross_entropy(logits, torch.arange(b, device=z.device))
    else:
        raise ValueError(f"unknown MODEL.CHIMERA.SGD.LOSS '{loss}' (cosine | l1 | infonce)")
    return value, {"sgd_k": float(k), "sgd_top_sim": top_sim.mean().detach()}
