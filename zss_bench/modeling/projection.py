"""Dense features -> class scores through a learned projection onto frozen class text embeddings.

SPNet's classifier (a 1x1 projection scored against fixed class embeddings), shared by every method
whose closed-set body is turned open-vocabulary this way (SPNet-style, CLIP-ZSS): the projection is the
only trainable part; the class rows are whatever the text classifier currently holds (seen names while
training, every name after ``set_classes``)."""
from __future__ import annotations

import torch
from torch import nn

from zss_bench.modeling.calibration import calibrate_seen
from zss_bench.modeling.text import TextClassifier

SCORES = ("cosine", "dot")


class ProjectionClassifier(nn.Module):
    """``cosine``: cos(Wx, t_c) / temperature; ``dot``: <Wx, t_c> with unit-norm t_c (SPNet's own)."""

    def __init__(self, in_channels: int, text: TextClassifier, score: str = "cosine", temperature: float = 0.07,
                 key: str = "SCORE"):
        super().__init__()
        if score not in SCORES:
            raise ValueError(f"unknown {key} '{score}' ({' | '.join(SCORES)})")
        if temperature <= 0:
            raise ValueError(f"the projection classifier's temperature must be > 0, got {temperature}")
        self.proj = nn.Conv2d(in_channels, text.embeddings.shape[-1], 1)
        self.text, self.score, self.scale = text, score, 1.0 / temperature

    def embed(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, D, h, w) in the text-embedding space."""
        return self.proj(features)

    def scores(self, z: torch.Tensor, gamma: float = 0.0, seen_ids=()) -> torch.Tensor:
        """Projected features (B, D, h, w) -> (B, K, h, w) over the text classifier's current classes,
        ``gamma`` subtracted from ``seen_ids`` on the similarity scale (before the temperature)."""
        if self.score == "cosine":
            return self.scale * calibrate_seen(self.text(z), seen_ids, gamma)
        return calibrate_seen(torch.einsum("bdhw,cd->bchw", z, self.text.embeddings), seen_ids, gamma)

    def forward(self, features: torch.Tensor, gamma: float = 0.0, seen_ids=()) -> torch.Tensor:
        return self.scores(self.embed(features), gamma, seen_ids)
