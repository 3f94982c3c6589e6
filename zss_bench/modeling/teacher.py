"""The frozen CLIP image encoder as a teacher every method can ask for exactly what it needs.

Why one module: Chimera-Seg needs the tokens entering block k and the CLS embedding, MaskCLIP
the last block's value-path tokens at the input's own resolution, ZegFormer CLS embeddings of
region crops. Each asks :meth:`ClipTeacher.encode` for its outputs and only the blocks those
outputs need are run (entry tokens alone stop at block k; nothing here keeps activations for
gradients). Two resolutions: ``native`` resizes to CLIP's own input size; ``input`` keeps the
image's size (rounded down to whole patches) with an interpolated positional embedding.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from zss_bench.clip import LoadedClip, PartialViT
from zss_bench.clip.partial import attention_keys, value_path

OUTPUTS = ("cls", "entry", "dense", "value", "key")


class ClipTeacher(nn.Module):
    """The full frozen CLIP image encoder; ``entry_block`` is the block whose input tokens ``entry`` means."""

    def __init__(self, clip: LoadedClip, entry_block: int | None = None):
        super().__init__()
        self.vit = PartialViT(clip.model.visual).freeze()
        entry_block = self.vit.num_blocks - 1 if entry_block is None else entry_block
        if not 0 <= entry_block < self.vit.num_blocks:
            raise ValueError(f"entry block {entry_block} outside 0..{self.vit.num_blocks - 1}")
        self.entry_block = entry_block
        pcfg = clip.preprocess_cfg
        self.image_size = tuple(pcfg.get("image_size", [224, 224]))
        self.register_buffer("mean", torch.tensor(pcfg.get("mean", (0.48145466, 0.4578275, 0.40821073))).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(pcfg.get("std", (0.26862954, 0.26130258, 0.27577711))).view(1, 3, 1, 1), False)

    def clip_input(self, rgb255: torch.Tensor, resolution: str = "native") -> torch.Tensor:
        """(B, 3, H, W) RGB in 0..255 -> CLIP's normalisation, at CLIP's size (``native``) or at the
        input's own size cut to whole patches (``input``)."""
        if resolution == "native":
            size = self.image_size
        elif resolution == "input":
            ph, pw = self.vit.patch_size
            size = (max(ph, rgb255.shape[-2] // ph * ph), max(pw, rgb255.shape[-1] // pw * pw))
        else:
            raise ValueError(f"unknown teacher resolution '{resolution}' (native | input)")
        x = rgb255 / 255.0
        if tuple(x.shape[-2:]) != tuple(size):
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return (x - self.mean) / self.std

    @torch.no_grad()
    def encode(self, rgb255: torch.Tensor, need=("cls", "entry"), resolution: str = "native") -> dict:
        """The requested outputs: ``cls`` (B, D) projected class token; ``entry`` (B, 1 + h*w, width)
        tokens entering ``entry_block``; ``dense`` (B, D, h, w) projected patch tokens after the last
        block; ``value`` (B, D, h, w) MaskCLIP's value-path tokens of the last block; ``key`` (B, width, h, w)
        the last block's attention keys (MaskCLIP's key smoothing); plus ``grid``."""
        unknown = set(need) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"unknown teacher output(s) {sorted(unknown)} ({' | '.join(OUTPUTS)})")
        want, n = set(need), self.vit.num_blocks
        x = self.vit.tokens(self.clip_input(rgb255, resolution))
        h, w = self._grid_of(rgb255, resolution)
        out, done = {"grid": (h, w)}, 0
        if "entry" in want:
            x, done = self.vit.run_blocks(x, done, self.entry_block), self.entry_block
            out["entry"] = x
        if want & {"value", "key"}:
            x, done = self.vit.run_blocks(x, done, n - 1), n - 1
            if "value" in want:
                out["value"] = self._dense(self.vit.project(value_path(self.vit.blocks[n - 1], x)[:, 1:]), h, w)
            if "key" in want:
                out["key"] = self._dense(attention_keys(self.vit.blocks[n - 1], x)[:, 1:], h, w)
        if want & {"cls", "dense"}:
            x = self.vit.run_blocks(x, done, n)
            if "cls" in want:
                out["cls"] = self.vit.project(x[:, 0])
            if "dense" in want:
                out["dense"] = self._dense(self.vit.project(x[:, 1:]), h, w)
        return out

    def forward(self, rgb255: torch.Tensor) -> dict:
        """CLS and entry tokens at CLIP's native size (what Chimera-Seg's training needs)."""
        return self.encode(rgb255, ("cls", "entry"))

    def _grid_of(self, rgb255: torch.Tensor, resolution: str) -> tuple[int, int]:
        ph, pw = self.vit.patch_size
        size = self.image_size if resolution == "native" else rgb255.shape[-2:]
        return max(1, size[0] // ph), max(1, size[1] // pw)

    @staticmethod
    def _dense(z: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return z.transpose(1, 2).reshape(z.shape[0], -1, h, w)

    @property
    def native_grid(self) -> tuple[int, int]:
        ph, pw = self.vit.patch_size
        return self.image_size[0] // ph, self.image_size[1] // pw
