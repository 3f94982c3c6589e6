"""The pixel learning module: unnamed pseudo regions from CLIP's dense tokens, prototypes, BCE.

CLIP's dense tokens are clustered by K-means at several K (multi-scale); clusters whose CLIP centroid
repeats one already kept (cosine >= lambda) are fused away; what remains, restricted to the image's
unlabelled pixels, are the pseudo regions. They carry no name: their target is their own CLIP centroid.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def kmeans_cosine(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) -> (assignment (N,), unit-norm centroids (k', D)), spherical K-means, k' = min(k, N).

    Deterministic farthest-point initialisation (the first centroid is the token most similar to the mean),
    so the same features always give the same regions (a resumed run, another machine's order of batches)."""
    x = F.normalize(x.float(), dim=-1)
    k = max(1, min(int(k), x.shape[0]))
    first = int((x @ F.normalize(x.mean(0), dim=0)).argmax())
    picked = [first]
    closest = x @ x[first]
    for _ in range(1, k):
        nxt = int(closest.argmin())
        picked.append(nxt)
        closest = torch.maximum(closest, x @ x[nxt])
    centroids = x[picked]
    for _ in range(max(0, int(iters))):
        assign = (x @ centroids.t()).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=-1))
    assign = (x @ centroids.t()).argmax(1)
    return assign, centroids


def multiscale_regions(tokens: torch.Tensor, scales, iters: int, fuse_threshold: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (D, h, w) of one image -> (masks (R, h, w) bool, centroids (R, D) unit norm).

    Every cluster of every scale, coarse to fine; a cluster is dropped when its centroid has cosine
    >= ``fuse_threshold`` with a region already kept (the same semantics found at another scale)."""
    d, h, w = tokens.shape
    x = tokens.reshape(d, h * w).t()
    masks, cents = [], []
    for k in sorted(int(s) for s in scales):
        assign, centroids = kmeans_cosine(x, k, iters)
        for j in range(centroids.shape[0]):
            member = assign == j
            if not member.any():
                continue
            c = F.normalize(x[member].float().mean(0), dim=0)
            if cents and float((torch.stack(cents) @ c).max()) >= fuse_threshold:
                continue
            masks.append(member.view(h, w))
            cents.append(c)
    if not masks:
        return tokens.new_zeros((0, h, w), dtype=torch.bool), tokens.new_zeros((0, d))
    return torch.stack(masks), torch.stack(cents)


def region_means(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """features (D, h, w), masks (R, h, w) bool -> (R, D) mean feature inside each mask."""
    m = masks.flatten(1).to(features.dtype)
    return m @ features.flatten(1).t() / m.sum(1, keepdim=True).clamp_min(1.0)


class PrototypeSynthesizer(nn.Module):
    """A transformer decoder layer: queries = an image's region centroids (self-attention among them),
    keys/values = that image's CLIP CLS embedding -> one prototype per region."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MODEL.CLIP_ZSS.PLM.SYNTH_HEADS ({heads}) must divide the embedding size {dim}")
        self.layer = nn.TransformerDecoderLayer(dim, heads, dim_feedforward=2 * dim, dropout=0.0, batch_first=True,
                                                norm_first=True)

    def forward(self, centroids: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """centroids (R, D), cls (D,) -> prototypes (R, D)."""
        return self.layer(centroids[None], cls[None, None].to(centroids.dtype))[0]


def plm_bce(prototypes: torch.Tensor, targets: torch.Tensor, bank: torch.Tensor, temperature: float,
            exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Non-exclusive (sigmoid) classification of each prototype against a class bank.

    prototypes (P, D); bank (M, D) unit norm = [seen text embeddings ; pseudo regions' CLIP centroids];
    targets (P,) index of each prototype's own row; ``exclude`` (P, M) bool: entries left out of the loss
    (a pseudo region's near-duplicates elsewhere in the batch are not its negatives)."""
    logits = F.normalize(prototypes, dim=-1) @ bank.to(prototypes.dtype).t() / temperature
    onehot = F.one_hot(targets, bank.shape[0]).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if exclude is None:
        return loss.mean()
    keep = (~exclude).to(loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp_min(1.0)
