"""Class-agnostic segments: learnable queries attend to the body's features (a DETR/MaskFormer-style
transformer decoder); each query gives a segment embedding and a mask embedding whose dot product
with per-pixel embeddings is its mask. The decoder layer, MLP and positions are the toolkit's
(``zss_bench.modeling.transformer``), shared with ZegCLIP's class-query decoder."""
from __future__ import annotations

import torch
from torch import nn

from zss_bench.modeling.transformer import MLP, DecoderLayer, sine_positions


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
