"""The trainable segmentation body: a detectron2 backbone + a DeepLabV3+ decoder.

Both parts come from detectron2 itself (``build_backbone`` and the DeepLab project's
``DeepLabV3PlusHead`` in decoder-only mode), so a body is configured with the usual
``MODEL.BACKBONE`` / ``MODEL.RESNETS`` / ``MODEL.SEM_SEG_HEAD`` keys: ResNet-101 for the real
protocols, a small ResNet for ``synth-15-5``.
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from detectron2.modeling import build_backbone
from detectron2.projects.deeplab import add_deeplab_config
from detectron2.projects.deeplab.semantic_seg import DeepLabV3PlusHead
from torch import nn

__all__ = ["SegmentationBody", "add_body_config"]


def add_body_config(cfg) -> None:
    """DeepLab's config keys (ASPP, projection channels, poly LR) if not already present."""
    if not hasattr(cfg.MODEL.SEM_SEG_HEAD, "ASPP_CHANNELS"):
        add_deeplab_config(cfg)


class SegmentationBody(nn.Module):
    """images (B, 3, H, W), normalised -> dense features (B, C, H/s, W/s), s = ``stride``."""

    def __init__(self, cfg):
        super().__init__()
        self.backbone = build_backbone(cfg)
        args = DeepLabV3PlusHead.from_config(cfg, self.backbone.output_shape())
        args["num_classes"] = None  # decoder only: the method decides how features become scores
        # ASPP image pooling over the whole feature map (mmseg's), not detectron2's fixed kernel of
        # crop / stride: that kernel rejects every input whose features are not a multiple of it (a
        # whole-image VOC test at 683x512, a padded batch of images smaller than the crop). Identical
        # on fixed 512 crops and windows; synth-15-5 (no crop) already pooled globally.
        args["train_size"] = None
        self.decoder = DeepLabV3PlusHead(**args)
        self.out_channels = cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM
        self.stride = min(self.backbone.output_shape()[f].stride for f in cfg.MODEL.SEM_SEG_HEAD.IN_FEATURES)
        self.size_divisibility = self.backbone.size_divisibility

    def forward(self, images):
        return self.decoder(self.backbone(images))
