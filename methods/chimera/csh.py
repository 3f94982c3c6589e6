"""The CLIP Semantic Head: body features -> CLIP's own last blocks -> CLIP's joint space.

[average pooling to the head's token grid, CSH.STRIDE] -> adapter (trainable 1x1 conv, body
width -> CLIP width) -> token normalisation -> + CLIP's positional embedding (interpolated to
the token grid) -> [teacher's class token] -> the last N residual blocks of the CLIP image
encoder (a frozen copy, run with memory-efficient attention) -> CLIP's fixed ln_post + proj
[-> bilinear upsampling to the body's grid + a zero-initialised 1x1 projection of the body's
features, so the stride-4 features keep their spatial detail]. ``PlainProjection`` is the
ablation without partial CLIP.
"""
from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.clip import PartialViT
from zss_bench.clip.partial import interpolate_pos_embed, run_block


class CLIPSemanticHead(nn.Module):
    def __init__(self, in_channels: int, vit: PartialViT, num_blocks: int, *, token_norm: str = "teacher_stats",
                 cls_token: str = "teacher", train_ln: bool = False, stats_momentum: float = 0.01, pool: int = 1,
                 detail: bool = True):
        super().__init__()
        if not 1 <= num_blocks <= vit.num_blocks:
            raise ValueError(f"MODEL.CHIMERA.CSH.NUM_BLOCKS={num_blocks} but the CLIP has {vit.num_blocks} blocks")
        if token_norm not in ("teacher_stats", "layernorm", "none"):
            raise ValueError(f"unknown MODEL.CHIMERA.CSH.TOKEN_NORM '{token_norm}' (teacher_stats | layernorm | none)")
        if cls_token not in ("teacher", "none"):
            raise ValueError(f"unknown MODEL.CHIMERA.CSH.CLS_TOKEN '{cls_token}' (teacher | none)")
        if pool < 1:
            raise ValueError(f"the CLIP Semantic Head's pooling factor must be >= 1, got {pool}")
        width = vit.width
        self.entry_block = vit.num_blocks - num_blocks
        self.pool = pool
        self.adapter = nn.Conv2d(in_channels, width, 1)
        self.detail = None
        if pool > 1 and detail:  # starts at zero: the head's own (upsampled) output until training says otherwise
            self.detail = nn.Conv2d(in_channels, vit.embed_dim, 1)
            nn.init.zeros_(self.detail.weight)
            nn.init.zeros_(self.detail.bias)
        self.token_norm, self.cls_token, self.momentum = token_norm, cls_token, stats_momentum
        self.norm = nn.LayerNorm(width) if token_norm != "none" else nn.Identity()
        # a private frozen copy: the teacher keeps the originals untouched even if LN affines train
        self.blocks = copy.deepcopy(vit.blocks[self.entry_block:])
        self.ln_post = copy.deepcopy(vit.ln_post)
        # derived from the run's CLIP at build time: never stored in checkpoints
        self.register_buffer("proj", vit.proj.detach().clone(), persistent=False)
        self.register_buffer("pos", vit.visual.positional_embedding.detach().clone(), persistent=False)
        self.native_grid = vit.native_grid
        self.seq_first = not getattr(vit.visual.transformer, "batch_first", True)
        for p in [*self.blocks.parameters(), *self.ln_post.parameters()]:
            p.requires_grad_(False)
        if train_ln:
            for m in [*self.blocks.modules(), self.ln_post]:
                if isinstance(m, nn.LayerNorm):
                    for p in m.parameters():
                        p.requires_grad_(True)
        if token_norm == "teacher_stats":  # EMA of the teacher's entry-token mean/std per channel
            self.register_buffer("entry_mean", torch.zeros(width))
            self.register_buffer("entry_std", torch.ones(width))
            self.register_buffer("stats_ready", torch.zeros((), dtype=torch.bool))

    def train(self, mode: bool = True):
        super().train(mode)
        self.blocks.eval()  # frozen blocks never switch to train mode (no dropout, fixed behaviour)
        return self

    @torch.no_grad()
    def update_stats(self, teacher_entry: torch.Tensor) -> None:
        """One EMA step of the teacher's entry-token statistics (per channel mean and unbiased std).

        In a multi-process run the step's statistics are those of all ranks' tokens together (count-
        weighted all_reduce, ``_global_mean_std``), so every rank makes the same update, the buffers
        stay identical on all ranks (what each rank evaluates with and what the checkpoint holds), and
        they are those of one process given the global batch (up to floating-point rounding). One
        process computes exactly what it always did."""
        if self.token_norm != "teacher_stats":
            return
        tokens = teacher_entry[:, 1:].reshape(-1, teacher_entry.shape[-1]).float()
        if _world_size() > 1:
            mean, std = _global_mean_std(tokens)
            std = std.clamp_min(1e-4)
        else:
            mean, std = tokens.mean(0), tokens.std(0).clamp_min(1e-4)
        # the first step takes the statistics as they are, later ones an EMA step: chosen on the device by
        # ``stats_ready`` (no host read of the flag), both values those of copy_ / lerp_ bit for bit
        ready = self.stats_ready
        self.entry_mean.copy_(torch.where(ready, torch.lerp(self.entry_mean, mean, self.momentum), mean))
        self.entry_std.copy_(torch.where(ready, torch.lerp(self.entry_std, std, self.momentum), std))
        self.stats_ready.fill_(True)

    def entry_tokens(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) body features -> (B, h*w, width) tokens shaped like CLIP's entry tokens."""
        x = self.adapter(features).flatten(2).transpose(1, 2)
        x = self.norm(x)
        if self.token_norm == "teacher_stats":
            x = x * self.entry_std + self.entry_mean
        return x

    def _pos(self, grid) -> torch.Tensor:
        return interpolate_pos_embed(self.pos, self.native_grid, grid)

    def forward(self, features: torch.Tensor, teacher_entry: torch.Tensor | None = None):
        """-> (joint-space dense features (B, D, H, W) on the body's grid, entry tokens (B, h*w, width),
        the token grid (h, w)); ``teacher_entry`` needs only its class token (B, 1+, width)."""
        fine = features
        if self.pool > 1:
            features = F.avg_pool2d(features, self.pool, ceil_mode=True)
        b, _, h, w = features.shape
        tokens = self.entry_tokens(features)
        pos = self._pos((h, w)).to(tokens.dtype)
        x = tokens + pos[1:]
        if self.cls_token == "teacher" and teacher_entry is not None:
            x = torch.cat([teacher_entry[:, :1].to(x.dtype), x], dim=1)
            n_cls = 1
        else:
            n_cls = 0
        if self.seq_first:
            x = x.transpose(0, 1)
        for blk in self.blocks:
            x = run_block(blk, x)
        if self.seq_first:
            x = x.transpose(0, 1)
        z = (self.ln_post(x[:, n_cls:]) @ self.proj).transpose(1, 2).reshape(b, -1, h, w)
        if self.pool > 1:
            z = F.interpolate(z, size=fine.shape[-2:], mode="bilinear", align_corners=False)
            if self.detail is not None:
                z = z + self.detail(fine)
        return z, tokens, (h, w)

    def project_entry(self, tokens: torch.Tensor, grid) -> torch.Tensor:
        """Entry tokens straight to the joint space (the optional auxiliary SAM term)."""
        b = tokens.shape[0]
        z = self.ln_post(tokens) @ self.proj
        return z.transpose(1, 2).reshape(b, -1, *grid)


def _world_size() -> int:
    """Processes in the default group (1 outside a distributed run): the same answer on every rank."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _global_mean_std(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and unbiased std of the (N_r, C) tokens of every rank together, identical on all
    ranks: counts and sums all_reduced (float64), then the squared deviations from that global mean
    (two passes: no cancellation). Ranks may hold different numbers of tokens."""
    import torch.distributed as dist

    x = tokens.double()
    head = torch.cat([x.new_tensor([x.shape[0]]), x.sum(0)])
    dist.all_reduce(head)
    n, mean = head[0], head[1:] / head[0]
    sq = (x - mean).pow(2).sum(0)
    dist.all_reduce(sq)
    return mean.to(tokens.dtype), (sq / (n - 1)).sqrt().to(tokens.dtype)


class PlainProjection(nn.Module):
    """Ablation 'CSH off': a trainable 1x1 projection from body features to the joint space."""

    def __init__(self, in_channels: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv2d(in_channels, in_channels, 3, padding=1), nn.GELU(),
                                  nn.Conv2d(in_channels, embed_dim, 1))

    def forward(self, features, teacher_entry=None):
        return self.proj(features), None, tuple(features.shape[-2:])


def entry_alignment_loss(tokens: torch.Tensor, grid, teacher_entry: torch.Tensor) -> torch.Tensor:
    """Cosine distance between adapter tokens (pooled to the teacher's grid) and the teacher's
    own patch tokens entering the same block: tells the adapter what the frozen blocks expect."""
    b, n, c = tokens.shape
    x = tokens.transpose(1, 2).reshape(b, c, *grid)
    t = teacher_entry[:, 1:]
    th = tw = int(round(t.shape[1] ** 0.5))
    if th * tw != t.shape[1]:
        raise ValueError("entry alignment needs a square teacher grid")
    x = F.adaptive_avg_pool2d(x, (th, tw)).flatten(2).transpose(1, 2)
    return (1 - F.cosine_similarity(x, t.to(x.dtype), dim=-1)).mean()
