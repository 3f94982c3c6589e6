"""Class-agnostic segments: learnable queries attend to the body's features (a DETR/MaskFormer-style
transformer decoder); each query gives a segment embedding and a mask embedding whose dot product
with per-pixel embeddings is its mask. Attention goes through ``nn.MultiheadAttention`` with
``need_weights=False`` (PyTorch's memory-efficient path)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
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


class SegmentDecoder(nn.Module):
    """body features (B, C, h, w) -> per decoder layer: segment embeddings (B, Q, D_clip), mask logits (B, Q, h, w)."""

    def __init__(self, in_channels: int, *, num_queries: int, layers: int, hidden: int, heads: int, ffn: int,
                 mask_dim: int, embed_dim: int):
        super().__init__()
        if num_queries < 1 or layers < 1:
            raise ValueError(f"MODEL.ZEGFORMER needs NUM_QUERIES >= 1 and DEC_LAYERS >= 1, got {num_queries}, {layers}")
        self.input_proj = nn.Conv2d(in_channels, hidden, 1)
        self.pixel_embed = nn.Conv2d(in_channels, mask_dim, 1)
        self.query_pos = nn.Embedding(num_queries, hidden)
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.segment_embed = nn.Linear(hidden, embed_dim)  # into CLIP's joint space
        self.mask_embed = MLP([hidden, hidden, hidden, mask_dim])
        self.hidden = hidden

    def forward(self, features: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        b, _, h, w = features.shape
        memory = self.input_proj(features).flatten(2).transpose(1, 2)
        memory_pos = sine_positions(h, w, self.hidden, features.device).to(memory.dtype)[None]
        pixels = self.pixel_embed(features)
        query_pos = self.query_pos.weight[None].expand(b, -1, -1)
        tgt = torch.zeros_like(query_pos)
        outputs = []
        for layer in self.layers:
            tgt = layer(tgt, memory, query_pos, memory_pos)
            q = self.norm(tgt)
            masks = torch.einsum("bqc,bchw->bqhw", self.mask_embed(q), pixels)
            outputs.append((self.segment_embed(q), masks))
        return outputs
