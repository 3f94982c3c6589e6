"""SPNet-style semantic projection: body -> 1x1 projection to the text space -> scores against
frozen class text embeddings; CE on the seen classes; seen calibration gamma at test time."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.modeling.body import SegmentationBody
from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.projection import ProjectionClassifier
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.text import TextClassifier


@META_ARCH_REGISTRY.register()
class SPNetSeg(ZSSSegmentor):
    def __init__(self, cfg):
        body = SegmentationBody(cfg)
        super().__init__(cfg, body.size_divisibility)
        s = self.cfg_s = cfg.MODEL.SPNET
        device = torch.device(cfg.MODEL.DEVICE)
        protocol = run_protocol(cfg)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.body = body
        text = TextClassifier(self.clip, protocol.templates(s.PROMPTS or None), seen_class_names(cfg))
        self.classifier = ProjectionClassifier(body.out_channels, text, s.SCORE, s.TEMPERATURE, key="MODEL.SPNET.SCORE")
        self.body_lr = s.BODY_LR_MULTIPLIER
        self.to(device)

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.classifier.text.set_classes(class_names)  # unseen names reach the text encoder only now

    def train_losses(self, images, targets):
        logits = F.interpolate(self.classifier(self.body(images)), size=targets.shape[-2:], mode="bilinear",
                               align_corners=False)
        return {"loss_ce": F.cross_entropy(logits, targets, ignore_index=self.ignore_value)}

    def eval_scores(self, images):
        return self.classifier(self.body(images), self.cfg_s.INFERENCE.SEEN_CALIBRATION, self.eval_seen_ids)
