"""The pixel learning module: unnamed pseudo regions from CLIP's dense tokens, prototypes, BCE.

CLIP's dense tokens are clustered by K-means at several K (multi-scale); clusters whose CLIP centroid
repeats one already kept (cosine >= lambda) are fused away; what remains, restricted to the image's
unlabelled pixels, are the pseudo regions. They carry no name: their target is their own CLIP centroid.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn


def kmeans_cosine(x: torch.Tensor, k: int, iters: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (N, D) -> (assignment (N,), unit-norm centroids (k', D)), spherical K-means, k' = min(k, N).

    Deterministic farthest-point initialisation (the first centroid is the token most similar to the mean),
    so the same features always give the same regions (a resumed run, another machine's order of batches).
    No host read: the picked tokens stay on the device (the same picks, and bit for bit the same products,
    as indexing with their Python positions: ``_token``)."""
    x = F.normalize(x.float(), dim=-1)
    k = max(1, min(int(k), x.shape[0]))
    first = (x @ F.normalize(x.mean(0), dim=0)).argmax()
    picked = [first]
    closest = x @ _token(x, first)
    for _ in range(1, k):
        nxt = closest.argmin()
        picked.append(nxt)
        closest = torch.maximum(closest, x @ _token(x, nxt))
    centroids = x[torch.stack(picked)]
    for _ in range(max(0, int(iters))):
        assign = (x @ centroids.t()).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=-1))
    assign = (x @ centroids.t()).argmax(1)
    return assign, centroids


def _token(x: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
    """Row ``i`` (a 0-dim device index) of x (N, D), laid out in memory as the view ``x[int(i)]`` is (same stride):
    a matrix-vector product's summation depends on the vector's stride, so ``x @ _token(x, i)`` is bit for bit
    ``x @ x[int(i)]`` without reading ``i`` on the host."""
    row = torch.empty_like(x)[0]
    row.copy_(x.index_select(0, i.view(1))[0])
    return row


def cluster_candidates(x: torch.Tensor, scales, iters: int) -> list[tuple[torch.Tensor, int, torch.Tensor]]:
    """tokens x (N, D) of one image -> per K-means scale, coarse to fine: (assignment (N,), k', sizes (k',)), all on
    the device (the sizes are what a host must read before ``cluster_centroids``)."""
    out = []
    for k in sorted(int(s) for s in scales):
        assign, centroids = kmeans_cosine(x, k, iters)
        k_n = centroids.shape[0]
        sizes = torch.zeros(k_n, dtype=torch.long, device=assign.device).index_add_(0, assign, torch.ones_like(assign))
        out.append((assign, k_n, sizes))
    return out


def cluster_centroids(x: torch.Tensor, assign: torch.Tensor, sizes: list[int]) -> list[tuple[int, torch.Tensor]]:
    """x (N, D), one scale's assignment and its cluster sizes read on the host -> [(cluster, unit-norm mean of its
    raw tokens)] of the non-empty clusters in order: exactly ``normalize(x[assign == j].mean(0))`` (the members,
    in pixel order, are a slice of x sorted stably by cluster), without boolean indexing."""
    grouped = x[torch.argsort(assign, stable=True)]
    out, start = [], 0
    for j, n in enumerate(sizes):
        if n:
            out.append((j, F.normalize(grouped[start:start + n].float().mean(0), dim=0)))
        start += n
    return out


def fuse_regions(centroids: torch.Tensor, fuse_threshold: float) -> list[int]:
    """(R, D) candidate centroids on the host, coarse to fine -> the indices kept: a candidate is dropped when its
    cosine with a region already kept is >= ``fuse_threshold`` (the same semantics found at another scale). A
    sequential decision, made on the host (CPU tensors, so the products are those of a CPU run)."""
    kept, idx = [], []
    for i in range(len(centroids)):
        c = centroids[i].clone()  # a vector of its own, as each centroid always was
        if kept and float((torch.stack(kept) @ c).max()) >= fuse_threshold:
            continue
        kept.append(c)
        idx.append(i)
    return idx


def multiscale_regions(tokens: torch.Tensor, scales, iters: int, fuse_threshold: float
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """tokens (D, h, w) of one image -> (masks (R, h, w) bool, centroids (R, D) unit norm).

    Every cluster of every scale, coarse to fine; a cluster is dropped when its centroid has cosine
    >= ``fuse_threshold`` with a region already kept (the same semantics found at another scale).
    Two host reads: the cluster sizes and the candidate centroids (the fusion is sequential, on the host).
    ``ClipZSSSeg`` runs the same steps for a whole batch with two host reads in all."""
    d, h, w = tokens.shape
    x = tokens.reshape(d, h * w).t()
    scales_out = cluster_candidates(x, scales, iters)
    sizes = torch.cat([s for _, _, s in scales_out]).cpu().tolist()
    cands, start = [], 0
    for assign, k_n, _ in scales_out:
        cands += [(assign, j, c) for j, c in cluster_centroids(x, assign, sizes[start:start + k_n])]
        start += k_n
    if not cands:
        return tokens.new_zeros((0, h, w), dtype=torch.bool), tokens.new_zeros((0, d))
    keep = fuse_regions(torch.stack([c for _, _, c in cands]).cpu(), fuse_threshold)
    masks = torch.stack([(cands[i][0] == cands[i][1]).view(h, w) for i in keep])
    return masks, torch.stack([cands[i][2] for i in keep])


def region_means(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """features (D, h, w), masks (R, h, w) bool -> (R, D) mean feature inside each mask (summed in float32, also
    under autocast: a sum over thousands of pixels)."""
    with _no_autocast(features):
        m = masks.flatten(1).float()
        return m @ features.flatten(1).t().float() / m.sum(1, keepdim=True).clamp_min(1.0)


def _no_autocast(x: torch.Tensor):
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


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
    # the one-hot by comparison (F.one_hot reads the targets' range on the host on CPU)
    onehot = (targets[:, None] == torch.arange(bank.shape[0], device=targets.device)).to(logits.dtype)
    loss = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    if exclude is None:
        return loss.mean()
    keep = (~exclude).to(loss.dtype)
    return (loss * keep).sum() / keep.sum().clamp_min(1.0)
