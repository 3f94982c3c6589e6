"""ZegCLIP's light decoder: class queries from the relationship descriptor cross-attend to CLIP's patch
tokens; each layer's refined queries give one mask per class (query . token). Cascade-CLIP: one such
decoder per chosen block, shallow to deep, the queries handed from each decoder to the next."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.modeling.transformer import MLP, DecoderLayer, sine_positions


def relationship_descriptor(text: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """text (C, D) class embeddings, cls (B, D) image embedding -> (B, C, 2D) = [t * cls, t] (ZegCLIP)."""
    t = F.normalize(text, dim=-1)[None].expand(cls.shape[0], -1, -1)
    v = F.normalize(cls, dim=-1)[:, None]
    return torch.cat([t * v, t], dim=-1)


class ClassQueryDecoder(nn.Module):
    """queries (B, C, hidden), tokens (B, N, D) on an (h, w) grid -> per layer (queries, masks (B, C, h, w))."""

    def __init__(self, token_dim: int, *, layers: int, hidden: int, heads: int, ffn: int):
        super().__init__()
        if layers < 1:
            raise ValueError(f"MODEL.ZEGCLIP.DECODER.LAYERS must be >= 1, got {layers}")
        self.memory_proj = nn.Linear(token_dim, hidden)
        self.layers = nn.ModuleList(DecoderLayer(hidden, heads, ffn) for _ in range(layers))
        self.norm = nn.LayerNorm(hidden)
        self.mask_embed = MLP([hidden, hidden, hidden])
        self.hidden = hidden

    def forward(self, queries: torch.Tensor, tokens: torch.Tensor, grid: tuple[int, int]):
        h, w = grid
        memory = self.memory_proj(tokens)
        memory_pos = sine_positions(h, w, self.hidden, tokens.device).to(memory.dtype)[None]
        zero = torch.zeros_like(queries)
        outputs = []
        for layer in self.layers:
            queries = layer(queries, memory, zero, memory_pos)
            masks = torch.einsum("bcd,bnd->bcn", self.mask_embed(self.norm(queries)), memory)
            outputs.append((queries, masks.view(*masks.shape[:2], h, w) / self.hidden ** 0.5))
        return outputs
