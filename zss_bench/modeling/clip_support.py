"""CLIP pieces a method needs at train and test time: which CLIP, the frozen teacher,
and the text-embedding classifier that is told class names in two phases.

Phase 1 (training): only the seen names the training dataset's metadata exposes. Phase 2
(``set_classes`` after training): every class of the protocol. Every name goes through
``class_text_embeddings``, so the run's leakage guard sees exactly what was encoded when.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.clip import LoadedClip, PartialViT, class_text_embeddings, load_clip
from zss_bench.protocol import Protocol

REAL_DEFAULT = "ViT-B-16:openai"


def resolve_clip_spec(spec: str, protocol: Protocol) -> str:
    """'' -> the protocol's default CLIP: the shipped toy CLIP tag for synth (``zss-toy-vit:synth-v1``,
    the same weights on every machine), ViT-B/16 (OpenAI weights) otherwise."""
    if spec:
        return spec
    from zss_bench.clip.shipped import reference_toy_spec

    return reference_toy_spec() if protocol.dataset == "synth" else REAL_DEFAULT


def load_run_clip(spec: str, protocol: Protocol, device) -> LoadedClip:
    return load_clip(resolve_clip_spec(spec, protocol), device=str(device))


class ClipTeacher(nn.Module):
    """The full frozen CLIP image encoder: CLS embedding and the tokens entering block ``k``."""

    def __init__(self, clip: LoadedClip, entry_block: int):
        super().__init__()
        self.vit = PartialViT(clip.model.visual).freeze()
        if not 0 <= entry_block < self.vit.num_blocks:
            raise ValueError(f"entry block {entry_block} outside 0..{self.vit.num_blocks - 1}")
        self.entry_block = entry_block
        pcfg = clip.preprocess_cfg
        self.image_size = tuple(pcfg.get("image_size", [224, 224]))
        self.register_buffer("mean", torch.tensor(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1), False)

    def clip_input(self, rgb255: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> CLIP's size and normalisation."""
        x = F.interpolate(rgb255 / 255.0, size=self.image_size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def forward(self, rgb255: torch.Tensor) -> dict:
        x = self.vit.tokens(self.clip_input(rgb255))
        entry = self.vit.run_blocks(x, 0, self.entry_block)
        out = self.vit.run_blocks(entry, self.entry_block)
        return {"cls": self.vit.project(out[:, 0]), "entry": entry, "grid": self._grid()}

    def _grid(self) -> tuple[int, int]:
        ph, pw = self.vit.patch_size
        return self.image_size[0] // ph, self.image_size[1] // pw


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

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, D, h, w) -> cosine similarities (B, C, h, w)."""
        return torch.einsum("bdhw,cd->bchw", F.normalize(z, dim=1), self.embeddings)
