"""ZegFormer-style zero-shot segmentation as a detectron2 meta-architecture (see README.md)."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.modeling.body import SegmentationBody
from zss_bench.modeling.calibration import calibrate_seen
from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.regions import classify_regions
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import NoObjectTextClassifier

from .decoder import SegmentDecoder
from .ensemble import geometric_ensemble
from .matcher import match_queries, pairwise_dice_cost, pairwise_mask_cost


@META_ARCH_REGISTRY.register()
class ZegFormerSeg(ZSSSegmentor):
    train_inputs = ("masks", "classes")  # from the per-class-mask mapper

    def __init__(self, cfg):
        body = SegmentationBody(cfg)
        super().__init__(cfg, body.size_divisibility)
        z = self.cfg_z = cfg.MODEL.ZEGFORMER
        device = torch.device(cfg.MODEL.DEVICE)
        protocol = run_protocol(cfg)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.body = body
        self.decoder = SegmentDecoder(body.out_channels, num_queries=z.NUM_QUERIES, layers=z.DEC_LAYERS,
                                      hidden=z.HIDDEN_DIM, heads=z.NHEADS, ffn=z.DIM_FEEDFORWARD, mask_dim=z.MASK_DIM,
                                      embed_dim=self.clip.embed_dim)
        self.text = NoObjectTextClassifier(self.clip, protocol.templates(z.PROMPTS or None), seen_class_names(cfg))
        self.teacher = ClipTeacher(self.clip) if z.ENSEMBLE.ENABLED else None  # only the region scoring needs it
        self.freeze_clip_parts("teacher.")
        self.logit_scale = 1.0 / z.TEMPERATURE
        self.body_lr = z.BODY_LR_MULTIPLIER
        self.to(device)

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.text.set_classes(class_names)  # unseen names reach the text encoder only now

    def _predict(self, images):
        return [(self.logit_scale * self.text(seg), masks) for seg, masks in self.decoder(self.body(images))]

    # --- training ------------------------------------------------------------------------------
    def train_losses(self, images, targets, masks, classes):
        outputs = self._predict(images)
        h, w = outputs[-1][1].shape[-2:]
        # targets at the masks' resolution: the label map decides which pixels count (labelled seen pixels)
        small = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        valid = small != self.ignore_value
        tgt_masks = [self._resize_masks(m, targets.shape[-2:], (h, w)) for m in masks]
        tgt_classes = [c.to(self.device) for c in classes]
        layers = outputs if self.cfg_z.DEEP_SUPERVISION else outputs[-1:]
        losses = {}
        for i, (cls_logits, mask_logits) in enumerate(layers):
            suffix = "" if i == len(layers) - 1 else f"_{i}"
            for name, value in self._layer_losses(cls_logits, mask_logits, tgt_classes, tgt_masks, valid).items():
                losses[name + suffix] = value
        return losses

    def _resize_masks(self, m: torch.Tensor, padded, size) -> torch.Tensor:
        """(K, H_i, W_i) bool masks of one image -> (K, h, w) at the prediction grid of the padded batch."""
        m = m.to(self.device)
        full = m.new_zeros((m.shape[0], *padded))
        full[:, :m.shape[1], :m.shape[2]] = m
        return F.interpolate(full[:, None].float(), size=size, mode="nearest")[:, 0] if m.numel() else \
            full.new_zeros((0, *size), dtype=torch.float32)

    def _layer_losses(self, cls_logits, mask_logits, tgt_classes, tgt_masks, valid) -> dict:
        z = self.cfg_z
        num_seen = cls_logits.shape[-1] - 1
        weight = torch.ones(num_seen + 1, device=cls_logits.device)
        weight[-1] = z.NO_OBJECT_WEIGHT
        cls_target = torch.full(cls_logits.shape[:2], num_seen, dtype=torch.long, device=cls_logits.device)
        pred_m, tgt_m, val_m = [], [], []
        for b in range(cls_logits.shape[0]):
            q, k = match_queries(cls_logits[b], mask_logits[b], tgt_classes[b], tgt_masks[b], valid[b],
                                 class_weight=z.CLASS_WEIGHT, mask_weight=z.MASK_WEIGHT, dice_weight=z.DICE_WEIGHT,
                                 mask_loss=z.MASK_LOSS)
            cls_target[b, q] = tgt_classes[b][k]
            pred_m.append(mask_logits[b, q])
            tgt_m.append(tgt_masks[b][k])
            val_m.append(valid[b].expand(len(q), -1, -1))
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), cls_target, weight)
        pred, tgt, val = torch.cat(pred_m), torch.cat(tgt_m), torch.cat(val_m)
        if pred.shape[0] == 0 or not val.any():
            zero = mask_logits.sum() * 0.0
            return {"loss_ce": z.CLASS_WEIGHT * loss_ce, "loss_mask": zero, "loss_dice": zero}
        x, t, v = pred.flatten(1), tgt.flatten(1), val.flatten(1)
        loss_mask = torch.stack([pairwise_mask_cost(x[i:i + 1], t[i:i + 1], v[i], z.MASK_LOSS)[0, 0]
                                 for i in range(len(x))]).mean()
        loss_dice = torch.stack([pairwise_dice_cost(x[i:i + 1], t[i:i + 1], v[i])[0, 0] for i in range(len(x))]).mean()
        return {"loss_ce": z.CLASS_WEIGHT * loss_ce, "loss_mask": z.MASK_WEIGHT * loss_mask,
                "loss_dice": z.DICE_WEIGHT * loss_dice}

    # --- inference -----------------------------------------------------------------------------
    def eval_scores(self, images):
        z = self.cfg_z
        cls_logits, mask_logits = self._predict(images)[-1]
        p_seg = cls_logits.softmax(-1)[..., :-1]  # over the evaluation classes; no-object dropped
        masks = mask_logits.sigmoid()
        p = p_seg
        if z.ENSEMBLE.ENABLED:
            emb = self.text.embeddings  # the classes' text embeddings (no-object is the segment classifier's own)
            cos = classify_regions(self.teacher, lambda e: F.normalize(e, dim=-1) @ emb.t(), self.rgb255(images),
                                   masks, threshold=z.ENSEMBLE.MASK_THRESHOLD)
            p_clip = (cos / z.ENSEMBLE.CLIP_TEMPERATURE).softmax(-1)
            p = geometric_ensemble(p_seg, p_clip, self.eval_seen_ids, z.ENSEMBLE.LAMBDA, z.ENSEMBLE.SEEN_CLIP)
        semantic = torch.einsum("bqc,bqhw->bchw", p, masks)
        return calibrate_seen(semantic, self.eval_seen_ids, z.INFERENCE.SEEN_CALIBRATION)
