"""ZegFormer's generalised-ZSS scoring: the segment classifier and CLIP's classification of the
segment's masked region, ensembled geometrically with different exponents for seen and unseen
classes (the trained classifier is trusted on seen classes, CLIP on unseen ones)."""
from __future__ import annotations

import torch


def geometric_ensemble(p_seg: torch.Tensor, p_clip: torch.Tensor, seen_ids, lam: float, seen_clip: str = "mean",
                       eps: float = 1e-8) -> torch.Tensor:
    """(..., C) class probabilities of the segment classifier and of CLIP -> (..., C) ensembled scores:
    seen classes p_seg^lam * p_clip^(1-lam), unseen p_seg^(1-lam) * p_clip^lam. ``seen_clip="mean"``
    (ZegFormer) first replaces CLIP's seen-class probabilities by their mean, so CLIP only says how
    likely "some seen class" is; ``"keep"`` (zsseg) uses them as they are."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"MODEL.ZEGFORMER.ENSEMBLE.LAMBDA must be in [0, 1], got {lam}")
    ids = torch.as_tensor(sorted({int(i) for i in seen_ids}), dtype=torch.long).to(p_seg.device)
    seen = torch.zeros(p_seg.shape[-1], dtype=torch.bool, device=p_seg.device).index_fill_(0, ids, True)
    clip = p_clip
    if seen_clip == "mean":  # the seen columns by index, in order (not boolean indexing: no host read of their count)
        seen_cols = p_clip.index_select(-1, ids)
        clip = torch.where(seen, seen_cols.mean(-1, keepdim=True), p_clip)
    elif seen_clip != "keep":
        raise ValueError(f"unknown MODEL.ZEGFORMER.ENSEMBLE.SEEN_CLIP '{seen_clip}' (mean | keep)")
    w_seg = torch.full(seen.shape, 1 - lam, dtype=p_seg.dtype, device=p_seg.device).masked_fill_(seen, lam)
    return p_seg.clamp_min(eps) ** w_seg * clip.clamp_min(eps) ** (1 - w_seg)
