"""Binary mask losses on labelled pixels only (unseen and void pixels are ignored, never treated as
background: that would teach a model that unseen things are nothing). Pairwise forms (every prediction
against every target: Hungarian matching costs), matched forms (prediction i against target i, all matched
pairs of a batch in one call: MaskFormer-style losses) and per-class forms (prediction c against target c:
one-mask-per-class methods such as ZegCLIP).

Host synchronisations: none in the matched and per-class forms (valid pixels as masks), nor in the pairwise
forms given the valid pixels as indices (:func:`valid_indices`: one host read of the counts for a whole batch).
A bool ``valid`` passed to a pairwise form is boolean indexing, which reads the number of valid pixels on the
host on every call.

Mixed precision: every sum over pixels (the reducing matmuls of the pairwise forms, the row and total sums of
the others) accumulates in float32, outside autocast. Some 16k per-pixel losses at a 512 crop add up to more
than fp16's 65504 before the division by the pixel count, and fp16/bf16 represent integers above 2048/256
inexactly. In float32 runs these casts are no-ops: the values are those of the plain expressions."""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

MASK_LOSSES = ("bce", "focal")


def _no_autocast(x: torch.Tensor):
    """A context where matmuls run in their operands' dtype, not autocast's."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def _mm32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b accumulated and returned in float32 (also under autocast); a no-op cast for float32 operands."""
    with _no_autocast(a):
        return a.float() @ b.float()


def _sum32(x: torch.Tensor, dim=None) -> torch.Tensor:
    """Sum accumulated and returned in float32 (the plain sum for a float32 ``x``)."""
    return x.sum(dtype=torch.float32) if dim is None else x.sum(dim, dtype=torch.float32)


def _binary(targets: torch.Tensor) -> torch.Tensor:
    return targets if targets.dtype == torch.bool else targets != 0


def valid_indices(valid: torch.Tensor) -> list[torch.Tensor]:
    """(B, N) bool -> per row, the indices of its True entries in increasing order: exactly what ``x[:, valid[b]]``
    selects. One host read (the B counts) for the whole batch instead of one per boolean-indexing call."""
    counts = valid.sum(1).tolist()
    order = torch.argsort((~valid).to(torch.uint8), dim=1, stable=True)  # valid first, each in pixel order
    return [order[b, :n] for b, n in enumerate(counts)]


def _valid_columns(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """x (R, N) at the valid pixels: ``valid`` a bool (N,) mask (boolean indexing: a host read) or the valid
    pixels' indices in increasing order (``valid_indices``: none). Both give the same tensor."""
    if valid.dtype == torch.bool:
        return x[:, valid]
    return x.index_select(1, valid)


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
    """(Q, N) mask logits, (K, N) binary targets, (N,) valid mask or valid-pixel indices -> (Q, K) mean per-pixel
    loss over valid pixels (float32)."""
    x, t = _valid_columns(logits, valid), _valid_columns(targets, valid).to(logits.dtype)
    n = max(1, x.shape[1])
    pos, neg = _pos_neg(x, kind, alpha, gamma, key)
    return (_mm32(pos, t.t()) + _mm32(neg, (1 - t).t())) / n


def pairwise_dice_cost(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(Q, N), (K, N), (N,) valid mask or indices -> (Q, K) dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) over valid
    pixels (float32)."""
    p, t = _valid_columns(logits, valid).sigmoid(), _valid_columns(targets, valid).to(logits.dtype)
    return 1 - (_mm32(2 * p, t.t()) + 1) / (_sum32(p, -1)[:, None] + _sum32(t, -1)[None, :] + 1)


def matched_mask_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kind: str = "bce",
                      alpha: float = 0.25, gamma: float = 2.0, key: str = "MODEL.ZEGFORMER.MASK_LOSS") -> torch.Tensor:
    """(M, N) mask logits, (M, N) binary targets (pair i: prediction i against target i), (M, N) valid -> (M,)
    each pair's mean per-pixel loss over its valid pixels (0 for a pair without any): the diagonal of
    :func:`pairwise_mask_cost` for every pair at once (float32; equal up to summation order)."""
    pos, neg = _pos_neg(logits, kind, alpha, gamma, key)
    per = torch.where(valid, torch.where(_binary(targets), pos, neg), 0.0)
    return _sum32(per, -1) / valid.sum(-1).clamp_min(1)


def matched_dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(M, N), (M, N), (M, N) -> (M,) each pair's dice loss 1 - (2|p t| + 1) / (|p| + |t| + 1) on its valid pixels:
    the diagonal of :func:`pairwise_dice_cost` for every pair at once (float32; equal up to summation order)."""
    p = torch.where(valid, logits.sigmoid(), 0.0)
    t = _binary(targets) & valid
    return 1 - (2 * _sum32(torch.where(t, p, 0.0), -1) + 1) / (_sum32(p, -1) + t.sum(-1) + 1)


def classwise_mask_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor, kind: str = "focal",
                        alpha: float = 0.25, gamma: float = 2.0, key: str = "mask loss") -> torch.Tensor:
    """(B, C, N) logits, (B, C, N) binary targets (bool is enough: 1 byte per entry), (B, N) valid -> the mean
    per-pixel loss over valid pixels and classes (prediction c against target c)."""
    pos, neg = _pos_neg(logits, kind, alpha, gamma, key)
    t, v = targets.to(logits.dtype), valid[:, None].to(logits.dtype)
    per = (t * pos + (1 - t) * neg) * v
    return _sum32(per) / (_sum32(valid[:, None]) * logits.shape[1]).clamp_min(1.0)


def classwise_dice_loss(logits: torch.Tensor, targets: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """(B, C, N), (B, C, N), (B, N) -> mean over images and classes of 1 - (2|p t| + 1) / (|p| + |t| + 1)
    on valid pixels (a class absent from an image is pushed to predict nothing there)."""
    v = valid[:, None].to(logits.dtype)
    p, t = logits.sigmoid() * v, targets.to(logits.dtype) * v
    return (1 - (2 * _sum32(p * t, -1) + 1) / (_sum32(p, -1) + _sum32(t, -1) + 1)).mean()
