"""Partial access to an open_clip ViT image encoder: tokens, blocks, projection.

Why: zero-shot segmentation methods (MaskCLIP-style dense features, ZegCLIP/Cascade-CLIP
style deep prompts or side networks) need to run *parts* of a frozen CLIP ViT, at input
sizes other than the one it was trained at, and to keep it frozen while the surrounding
model trains. :class:`PartialViT` exposes exactly that small interface, with the invariants
tested: running blocks ``k..end`` on the encoder's own block ``k-1`` output reproduces the
full encoder, and :meth:`cls_embedding` equals ``model.encode_image`` at the native size.

Tokens are always batch-first ``(B, 1 + h*w, width)``, class token first; the installed
open_clip's ``transformer.batch_first`` convention is handled inside :meth:`run_blocks`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PartialViT", "PartialViTError", "attention_keys", "interpolate_pos_embed", "run_block", "value_path"]


def _is_standard_block(blk: nn.Module) -> bool:
    attn = getattr(blk, "attn", None)
    return (isinstance(attn, nn.MultiheadAttention) and attn._qkv_same_embed_dim and attn.in_proj_weight is not None
            and not hasattr(blk, "ln_1_kv") and hasattr(blk, "ln_1") and hasattr(blk, "mlp"))


def _qkv(attn: nn.MultiheadAttention, x: torch.Tensor):
    """(B, N, C) -> q, k, v as (B, heads, N, C / heads), the packed in-projection of ``attn``."""
    b, n, c = x.shape
    qkv = F.linear(x, attn.in_proj_weight, attn.in_proj_bias).view(b, n, 3, attn.num_heads, c // attn.num_heads)
    return qkv.permute(2, 0, 3, 1, 4).unbind(0)


def run_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``blk(x)`` for an open_clip residual attention block (same layout convention as the block's
    own attention), computed with ``scaled_dot_product_attention``: never an N x N matrix where a
    memory-efficient kernel exists (nn.MultiheadAttention's inference fast path materialises it: at
    a 512 px window on a stride-4 grid, 16,385 tokens and 12 heads, that is 13 GB). Other block
    types run as they are."""
    if not _is_standard_block(blk):
        return blk(x)
    if not blk.attn.batch_first:
        return _run_standard_block(blk, x.transpose(0, 1)).transpose(0, 1)
    return _run_standard_block(blk, x)


def _run_standard_block(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    attn = blk.attn
    b, n, c = x.shape
    q, k, v = _qkv(attn, blk.ln_1(x))
    dropout = attn.dropout if blk.training else 0.0
    a = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
    a = F.linear(a.transpose(1, 2).reshape(b, n, c), attn.out_proj.weight, attn.out_proj.bias)
    x = x + blk.ls_1(a)
    return x + blk.ls_2(blk.mlp(blk.ln_2(x)))


def value_path(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """MaskCLIP's dense tokens from the last block: the value embedding of every token through the
    attention's output projection, with neither query-key mixing nor the residual and MLP
    (B, N, C) -> (B, N, C); ``PartialViT.project`` maps them to the joint space."""
    if not _is_standard_block(blk):
        raise PartialViTError(f"value-path features need a standard open_clip attention block, got {type(blk).__name__}")
    b, n, c = x.shape
    _, _, v = _qkv(blk.attn, blk.ln_1(x))
    v = v.transpose(1, 2).reshape(b, n, c)
    return F.linear(v, blk.attn.out_proj.weight, blk.attn.out_proj.bias)


def attention_keys(blk: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The block's attention keys of every token, heads concatenated, (B, N, C) -> (B, N, C): what MaskCLIP's
    key smoothing compares tokens by (tokens that the last block would attend alike)."""
    if not _is_standard_block(blk):
        raise PartialViTError(f"attention keys need a standard open_clip attention block, got {type(blk).__name__}")
    b, n, c = x.shape
    _, k, _ = _qkv(blk.attn, blk.ln_1(x))
    return k.transpose(1, 2).reshape(b, n, c)


class PartialViTError(ValueError):
    """The wrapped module is not a ViT this interface supports."""


def interpolate_pos_embed(pos: torch.Tensor, src_grid: tuple[int, int], dst_grid: tuple[int, int]
                          ) -> torch.Tensor:
    """(1 + h*w, C) positional embedding resized to ``dst_grid``: bicubic on the grid part,
    the class position kept. Returned unchanged when the grids are equal."""
    if tuple(src_grid) == tuple(dst_grid):
        return pos
    cls_pos, grid = pos[:1], pos[1:]
    gh, gw = src_grid
    if grid.shape[0] != gh * gw:
        raise PartialViTError(f"positional embedding has {grid.shape[0]} grid positions, "
                              f"expected {gh}x{gw}")
    grid = grid.reshape(1, gh, gw, -1).permute(0, 3, 1, 2)
    grid = F.interpolate(grid.float(), size=tuple(dst_grid), mode="bicubic", align_corners=False)
    grid = grid.to(pos.dtype).permute(0, 2, 3, 1).reshape(dst_grid[0] * dst_grid[1], -1)
    return torch.cat([cls_pos, grid], dim=0)


class PartialViT(nn.Module):
    """Wraps an open_clip ``VisionTransformer`` (``clip.model.visual``), sharing its weights.

    Supported: the standard CLIP ViT (class-token pooling, no attentional pooler, a
    projection). Patch dropout is never applied here (dense features need every patch).
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        for attr in ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer",
                     "ln_post", "proj"):
            if not hasattr(visual, attr):
                raise PartialViTError(f"{type(visual).__name__} is not an open_clip VisionTransformer "
                                      f"(no '{attr}'); timm/ResNet towers are not supported")
        if getattr(visual, "attn_pool", None) is not None:
            raise PartialViTError("ViTs with an attentional pooler (CoCa style) are not supported: "
                                  "their pooled output is not the projected class token")
        pool = getattr(visual, "pool_type", "tok")
        if pool != "tok":
            raise PartialViTError(f"pool_type '{pool}' is not supported; PartialViT needs a class-token "
                                  "CLIP ViT (pool_type='tok')")
        if visual.proj is None:
            raise PartialViTError("the ViT has no output projection (proj is None)")
        self.visual = visual
        self._frozen = False

    # -- geometry
    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def embed_dim(self) -> int:
        return int(self.visual.proj.shape[1])

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.visual.conv1.kernel_size)

    @property
    def native_grid(self) -> tuple[int, int]:
        return tuple(self.visual.grid_size)

    def grid_size(self, images: torch.Tensor) -> tuple[int, int]:
        """Patch grid (h, w) for ``images`` (B, 3, H, W); partial edge patches are dropped."""
        ph, pw = self.patch_size
        return images.shape[-2] // ph, images.shape[-1] // pw

    # -- pieces
    def pos_embed(self, grid: tuple[int, int]) -> torch.Tensor:
        return interpolate_pos_embed(self.visual.positional_embedding, self.native_grid, grid)

    def tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 1 + h*w, width): patch embedding + class token + (interpolated) positions, ln_pre."""
        v = self.visual
        x = v.conv1(images.to(v.conv1.weight.dtype))
        b, c, h, w = x.shape
        x = x.reshape(b, c, h * w).permute(0, 2, 1)
        cls = v.class_embedding.to(x.dtype).view(1, 1, -1).expand(b, -1, -1)
        x = torch.cat([cls, x], dim=1) + self.pos_embed((h, w)).to(x.dtype)
        return v.ln_pre(x)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.visual.transformer.resblocks

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def run_blocks(self, x: torch.Tensor, start: int = 0, end: int | None = None) -> torch.Tensor:
        """Run ``blocks[start:end]`` on batch-first tokens (B, N, width); returns the same layout."""
        blocks = self.blocks[start:end]
        if len(blocks) == 0:
            return x
        seq_first = not getattr(self.visual.transformer, "batch_first", True)
        if seq_first:
            x = x.transpose(0, 1)
        for blk in blocks:
            x = run_block(blk, x)
        return x.transpose(0, 1) if seq_first else x

    @property
    def ln_post(self) -> nn.Module:
        return self.visual.ln_post

    @property
    def proj(self) -> torch.Tensor:
        return self.visual.proj

    def project(self, x: torch.Tensor) -> torch.Tensor:
        """ln_post then the fixed projection: (..., width) -> (..., embed_dim)."""
        return self.visual.ln_post(x) @ self.visual.proj

    # -- whole-encoder views
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Tokens after the last block, (B, 1 + h*w, width)."""
        return self.run_blocks(self.tokens(images))

    def cls_embedding(self, images: torch.Tensor) -> torch.Tensor:
        """Projected class token (B, embed_dim): ``encode_image`` at the native size."""
        return self.project(self(images)[:, 0])

    def dense_embeddings(self, images: torch.Tensor) -> torch.Tensor:
        """Projected patch tokens after the last block, (B, embed_dim, h, w)."""
        h, w = self.grid_size(images)
        x = self.project(self(images)[:, 1:])
        return x.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    # -- freezing
    @property
    def frozen(self) -> bool:
        return self._frozen

    def freeze(self) -> "PartialViT":
        """No gradients and eval mode, kept through later ``.train()`` calls on any parent."""
        for p in self.visual.parameters():
            p.requires_grad_(False)
        self._frozen = True
        return self.train(False)

    def train(self, mode: bool = True) -> "PartialViT":
        return super().train(False if self._frozen else mode)
