"""Text classifiers: dense joint-space features -> per-class cosine scores against CLIP text embeddings.

Class names arrive in two phases. Phase 1 (training): only the seen names the training dataset's
metadata exposes. Phase 2 (``set_classes`` after training): every class of the protocol. Every
name goes through ``class_text_embeddings``, so the run's leakage guard sees what was encoded when.

Kinds (a plugin declares one as ``MethodPlugin.text_classifier``):

- ``fixed`` (:class:`TextClassifier`): frozen prompt-ensemble embeddings;
- ``learnable-no-object`` (:class:`NoObjectTextClassifier`): the same plus one learnable
  "no object" embedding scored as an extra last class (mask-classification methods).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.clip import LoadedClip, class_text_embeddings

KINDS = ("none", "fixed", "learnable-no-object")


class TextClassifier(nn.Module):
    """Cosine-similarity classifier against frozen CLIP text embeddings of a class list."""

    def __init__(self, clip: LoadedClip, templates: tuple[str, ...], class_names: list[str]):
        super().__init__()
        self._clip = clip  # not a submodule: the text tower is only used to (re)build embeddings
        self.templates = tuple(templates)
        self.register_buffer("embeddings", torch.zeros(0), persistent=False)
        self.set_classes(class_names)

    def set_classes(self, class_names: list[str]) -> None:
        emb = class_text_embeddings(self._clip, list(class_names), self.templates)
        self.embeddings = F.normalize(emb.float(), dim=-1).to(self.embeddings.device)
        self.class_names = list(class_names)

    def classes_embeddings(self) -> torch.Tensor:
        """(C, D) unit-norm class embeddings the scores are computed against."""
        return self.embeddings

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) or (B, Q, D) -> cosine similarities (B, C, h, w) or (B, Q, C)."""
        emb = self.classes_embeddings()
        if z.dim() == 3:
            return F.normalize(z, dim=-1) @ emb.t()
        return torch.einsum("bdhw,cd->bchw", F.normalize(z, dim=1), emb)


class NoObjectTextClassifier(TextClassifier):
    """:class:`TextClassifier` plus a learnable "no object" embedding, scored as the last class."""

    def __init__(self, clip: LoadedClip, templates: tuple[str, ...], class_names: list[str]):
        super().__init__(clip, templates, class_names)
        self.no_object = nn.Parameter(torch.randn(self.embeddings.shape[-1]) * 0.02)

    def classes_embeddings(self) -> torch.Tensor:
        return torch.cat([self.embeddings, F.normalize(self.no_object, dim=-1)[None]], dim=0)
