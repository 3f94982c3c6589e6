"""MaskCLIP as a detectron2 meta-architecture: frozen CLIP value-path tokens vs class text embeddings."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import TextClassifier

from .smoothing import key_smoothing, prompt_denoising


@META_ARCH_REGISTRY.register()
class MaskCLIPSeg(ZSSSegmentor):
    """No trainable parameter: CLIP's image tower (frozen, never in a checkpoint) and its text embeddings."""

    def __init__(self, cfg):
        m = self.cfg_m = cfg.MODEL.MASKCLIP
        if m.INPUT_SCALE <= 0:
            raise ValueError(f"MODEL.MASKCLIP.INPUT_SCALE must be > 0, got {m.INPUT_SCALE}")
        if m.TEMPERATURE <= 0:
            raise ValueError(f"MODEL.MASKCLIP.TEMPERATURE must be > 0, got {m.TEMPERATURE}")
        protocol = run_protocol(cfg)
        device = torch.device(cfg.MODEL.DEVICE)
        super().__init__(cfg, 1)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.teacher = ClipTeacher(self.clip)
        self.freeze_clip_parts("teacher.")
        # built with the seen names only (what the run's training view exposes); every name once evaluation starts
        self.text = TextClassifier(self.clip, protocol.templates(m.PROMPTS or None), seen_class_names(cfg))
        self.to(device)

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.text.set_classes(class_names)

    def train_losses(self, images, targets):
        raise RuntimeError("MaskCLIP is training-free (its plugin declares trains=False); nothing to train")

    def dense_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised body input -> value-path features (B, D, h, w) and last-block keys (B, C, h, w)."""
        rgb = self.rgb255(images)
        if self.cfg_m.INPUT_SCALE != 1.0:
            rgb = F.interpolate(rgb, scale_factor=self.cfg_m.INPUT_SCALE, mode="bilinear", align_corners=False)
        need = ("value", "key") if self.cfg_m.KEY_SMOOTHING.ENABLED else ("value",)
        out = self.teacher.encode(rgb, need, resolution="input")
        return out["value"], out.get("key")

    @torch.no_grad()
    def eval_scores(self, images):
        m = self.cfg_m
        value, keys = self.dense_features(images)
        logits = self.text(value.float()) / m.TEMPERATURE
        if m.KEY_SMOOTHING.ENABLED:
            logits = key_smoothing(logits, keys, m.KEY_SMOOTHING.THRESHOLD)
        if m.PROMPT_DENOISING.ENABLED:
            logits = prompt_denoising(logits, m.PROMPT_DENOISING.THRESHOLD)
        return logits
