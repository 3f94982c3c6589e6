"""Deep visual prompt tuning of a frozen CLIP ViT: learnable tokens inserted after the class token at
every block (replacing the previous block's prompt outputs), at the input's own resolution. Only the
prompts train; the blocks run through ``run_block`` (never an N x N attention matrix)."""
from __future__ import annotations

import math

import torch
from torch import nn

from zss_bench.clip import PartialViT


class PromptedViT(nn.Module):
    """clip-normalised images (B, 3, H, W) -> {block index: patch tokens (B, h*w, width)} for the asked
    blocks, the final class token (B, width) and the grid (h, w)."""

    def __init__(self, visual: nn.Module, num_tokens: int, deep: bool = True):
        super().__init__()
        self.vit = PartialViT(visual).freeze()
        if num_tokens < 0:
            raise ValueError(f"MODEL.ZEGCLIP.VPT.NUM_TOKENS must be >= 0, got {num_tokens}")
        layers = self.vit.num_blocks if deep else 1
        self.num_tokens = int(num_tokens)
        ph, pw = self.vit.patch_size
        bound = math.sqrt(6.0 / (3 * ph * pw + self.vit.width))  # VPT's initialisation
        self.prompts = nn.Parameter(torch.empty(layers, self.num_tokens, self.vit.width).uniform_(-bound, bound))

    def forward(self, images: torch.Tensor, keep=()) -> tuple[dict, torch.Tensor, tuple[int, int]]:
        x = self.vit.tokens(images)
        b, grid = x.shape[0], self.vit.grid_size(images)
        t = self.num_tokens
        last = self.vit.num_blocks - 1
        out = {}
        for i in range(self.vit.num_blocks):
            if t and i < self.prompts.shape[0]:
                p = self.prompts[i].to(x.dtype).expand(b, -1, -1)
                x = torch.cat([x[:, :1], p, x[:, 1 + (t if i else 0):]], dim=1)
            x = self.vit.run_blocks(x, i, i + 1)
            if i in keep or i == last:
                out[i] = x[:, 1 + t:]
        return out, x[:, 0], grid
