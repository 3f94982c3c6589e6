"""Hungarian matching of segment queries to ground-truth class masks (MaskFormer's recipe) and the
mask costs / losses, restricted to labelled pixels: unseen and void pixels are ignored, never
treated as background (that would teach the model that unseen things are nothing)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment


def pairwise_mask_cost(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kind: str = "bce",
                       alpha: float = 0.25, gamma: float = 2.0) -> torch.Tensor:
    """(Q, N) mask logits, (K, N) binary targets, (N,) valid -> (Q, K) mean per-pixel loss over valid pixels."""
    x, t = logits[:, valid], targets[:, valid].to(logits.dtype)
    n = max(1, x.shape[1])
    pos, neg = F.softplus(-x), F.softplus(x)  # -log sigmoid(x), -log(1 - sigmoid(x))
    if kind == "focal":
        p = x.sigmoid()
        pos, neg = alpha * (1 - p) ** gamma * pos, (1 - alpha) * p ** gamma * neg
    elif kind != "bce":
        raise ValueError(f"unknown MODEL.ZEGFORMER.MASK_LOSS '{kind}' (bce | focal)")
    return (pos @ t.t() + neg @ (1 - t).t()) / n


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(Q, N), (K, N), (N,) -> (Q, K) dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) over valid pixels."""
    p, t = logits[:, valid].sigmoid(), targets[:, valid].to(logits.dtype)
    return 1 - (2 * p @ t.t() + 1) / (p.sum(-1)[:, None] + t.sum(-1)[None, :] + 1)


@torch.no_grad()
def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K) cost -> (query indices, target indices) of the min-cost assignment (min(Q, K) pairs)."""
    if cost.numel() == 0:
        empty = torch.zeros(0, dtype=torch.long)
        return empty, empty
    q, k = linear_sum_assignment(cost.detach().cpu().float().numpy())
    return torch.as_tensor(q, dtype=torch.long), torch.as_tensor(k, dtype=torch.long)


def match_queries(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor,
                  valid: torch.Tensor, *, class_weight: float, mask_weight: float, dice_weight: float,
                  mask_loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: (Q, C+1) class logits, (Q, h, w) mask logits, (K,) target classes, (K, h, w) target masks,
    (h, w) valid -> matched (query, target) index pairs."""
    if classes.numel() == 0:
        return hungarian_match(class_logits.new_zeros(class_logits.shape[0], 0))
    prob = class_logits.softmax(-1)
    x, t, v = mask_logits.flatten(1), masks.flatten(1), valid.flatten()
    cost = (-class_weight * prob[:, classes] + mask_weight * pairwise_mask_cost(x, t, v, mask_loss)
            + dice_weight * pairwise_dice_cost(x, t, v))
    return hungarian_match(cost)
