"""Hungarian matching of segment queries to ground-truth class masks (MaskFormer's recipe) and the
mask costs / losses, restricted to labelled pixels: unseen and void pixels are ignored, never
treated as background (that would teach the model that unseen things are nothing).

Host reads: the assignment itself is scipy's, on the host. ``hungarian_match_many`` solves any number of
cost matrices (every image of every supervised layer) after one device-to-host copy of all of them, and
``matching_cost`` computes a cost on the device without reading anything back when it is given the valid
pixels as indices (``valid_indices``)."""
from __future__ import annotations

import torch
from scipy.optimize import linear_sum_assignment

from zss_bench.modeling.mask_losses import pairwise_dice_cost, pairwise_mask_cost, valid_indices

__all__ = ["hungarian_match", "hungarian_match_many", "match_queries", "matching_cost", "pairwise_dice_cost",
           "pairwise_mask_cost", "valid_indices"]


@torch.no_grad()
def hungarian_match_many(costs: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(Q_i, K_i) costs] -> [(query indices, target indices)] of each min-cost assignment (min(Q_i, K_i) pairs,
    CPU tensors, queries ascending). All costs go to the host in one copy (float32, as scipy sees them)."""
    out: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * len(costs)
    full = [i for i, c in enumerate(costs) if c.numel()]
    for i, c in enumerate(costs):
        if not c.numel():
            empty = torch.zeros(0, dtype=torch.long)
            out[i] = (empty, empty)
    if full:
        flat = torch.cat([costs[i].detach().float().flatten() for i in full]).cpu().numpy()
        start = 0
        for i in full:
            q_n, k_n = costs[i].shape
            q, k = linear_sum_assignment(flat[start:start + q_n * k_n].reshape(q_n, k_n))
            start += q_n * k_n
            out[i] = (torch.as_tensor(q, dtype=torch.long), torch.as_tensor(k, dtype=torch.long))
    return out


def hungarian_match(cost: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(Q, K) cost -> (query indices, target indices) of the min-cost assignment (min(Q, K) pairs)."""
    return hungarian_match_many([cost])[0]


@torch.no_grad()
def matching_cost(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor,
                  valid: torch.Tensor, *, class_weight: float, mask_weight: float, dice_weight: float,
                  mask_loss: str) -> torch.Tensor:
    """One image: (Q, C+1) class logits, (Q, h, w) mask logits, (K,) target classes, (K, h, w) target masks, the
    valid pixels ((h, w) bool, or the flat indices of the valid pixels, ``valid_indices``) -> (Q, K) cost."""
    if classes.numel() == 0:
        return class_logits.new_zeros(class_logits.shape[0], 0)
    prob = class_logits.softmax(-1)
    x, t = mask_logits.flatten(1), masks.flatten(1)
    v = valid.flatten() if valid.dtype == torch.bool else valid
    return (-class_weight * prob[:, classes] + mask_weight * pairwise_mask_cost(x, t, v, mask_loss)
            + dice_weight * pairwise_dice_cost(x, t, v))


def match_queries(class_logits: torch.Tensor, mask_logits: torch.Tensor, classes: torch.Tensor, masks: torch.Tensor,
                  valid: torch.Tensor, *, class_weight: float, mask_weight: float, dice_weight: float,
                  mask_loss: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One image: (Q, C+1) class logits, (Q, h, w) mask logits, (K,) target classes, (K, h, w) target masks,
    (h, w) valid -> matched (query, target) index pairs."""
    return hungarian_match(matching_cost(class_logits, mask_logits, classes, masks, valid, class_weight=class_weight,
                                         mask_weight=mask_weight, dice_weight=dice_weight, mask_loss=mask_loss))
