"""Transformer decoder parts shared by the query-based methods (ZegFormer-style segment queries,
ZegCLIP-style class queries): 2-D sine positions, a DETR decoder layer, an MLP. Attention goes through
``nn.MultiheadAttention`` with ``need_weights=False`` (PyTorch's memory-efficient path)."""
from __future__ import annotations

import math

import torch
from torch import nn


def sine_positions(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """(h*w, dim) 2-D sine/cosine positional encoding (DETR's, normalised coordinates)."""
    if dim % 4:
        raise ValueError(f"positional encoding width {dim} must be a multiple of 4")
    quarter = dim // 4
    freq = 1.0 / (10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter))
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h * 2 * math.pi
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w * 2 * math.pi
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    y, x = yy.reshape(-1, 1) * freq, xx.reshape(-1, 1) * freq
    return torch.cat([y.sin(), y.cos(), x.sin(), x.cos()], dim=1)


class DecoderLayer(nn.Module):
    """Self-attention among queries, cross-attention to the features, FFN (post-norm, DETR)."""

    def __init__(self, dim: int, heads: int, ffn: int):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.cross_attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.ReLU(inplace=True), nn.Linear(ffn, dim))
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)

    def forward(self, tgt, memory, query_pos, memory_pos):
        q = tgt + query_pos
        tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        tgt = self.norm2(tgt + self.cross_attn(tgt + query_pos, memory + memory_pos, memory, need_weights=False)[0])
        return self.norm3(tgt + self.ffn(tgt))


class MLP(nn.Sequential):
    def __init__(self, dims: list[int]):
        layers = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(dims) - 2:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
