"""Hungarian matching of segment queries to ground-truth class masks (MaskFormer's recipe) and the
mask costs / losses, restricted to labelled pixels: unseen and void pixels are ignored, never
treated as background (that would teach the model that unseen things are nothing)."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from zss_bench.modeling.mask_losses import pairwise_dice_cost, pairwise_mask_cost

__all__ = ["hungarian_match", "match_queries", "pairwise_dice_cost", "pairwise_mask_cost"]


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
