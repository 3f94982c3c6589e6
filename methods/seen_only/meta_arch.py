"""Seen-only segmentation: body -> 1x1 classifier over the S seen classes -> cross-entropy."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from zss_bench.modeling.body import SegmentationBody
from zss_bench.modeling.context import seen_class_names
from zss_bench.modeling.segmentor import ZSSSegmentor


@META_ARCH_REGISTRY.register()
class SeenOnlySeg(ZSSSegmentor):
    def __init__(self, cfg):
        body = SegmentationBody(cfg)
        super().__init__(cfg, body.size_divisibility)
        self.body = body
        self.num_seen = len(seen_class_names(cfg))
        self.classifier = nn.Conv2d(body.out_channels, self.num_seen, 1)
        self.loss_weight = cfg.MODEL.SEEN_ONLY.LOSS_WEIGHT
        self.to(torch.device(cfg.MODEL.DEVICE))

    def train_losses(self, images, targets):
        logits = F.interpolate(self.classifier(self.body(images)), size=targets.shape[-2:], mode="bilinear",
                               align_corners=False)
        return {"loss_ce": self.loss_weight * F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}

    def eval_scores(self, images):
        seen_scores = self.classifier(self.body(images))
        k = len(self.eval_class_names)
        # a large finite floor, not -inf: bilinear upsampling of -inf yields NaN where weights are 0
        scores = seen_scores.new_full((seen_scores.shape[0], k, *seen_scores.shape[-2:]), -1e4)
        scores[:, self.eval_seen_ids] = seen_scores  # unseen classes can never win
        return scores
