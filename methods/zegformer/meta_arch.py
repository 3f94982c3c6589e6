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
from zss_bench.modeling.mask_losses import matched_dice_loss, matched_mask_loss, pairwise_dice_cost, pairwise_mask_cost
from zss_bench.modeling.regions import classify_regions
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import NoObjectTextClassifier

from .decoder import SegmentDecoder
from .ensemble import geometric_ensemble
from .matcher import hungarian_match_many, matching_cost, valid_indices


# devices whose mask / dice losses are computed pair by pair (``ZegFormerSeg._layer_losses``)
PAIR_BY_PAIR_DEVICES = ("cpu",)


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
        """Two host reads per step, however many layers, images and matched queries: the valid-pixel counts
        (``valid_indices``) and every layer's and image's Hungarian cost in one copy (``hungarian_match_many``);
        the assignment itself is scipy's, on the host. On an accelerator the mask and dice losses of all matched
        pairs are one call each; on the CPU they are computed pair by pair, bit for bit as before."""
        outputs = self._predict(images)
        h, w = outputs[-1][1].shape[-2:]
        # targets at the masks' resolution: the label map decides which pixels count (labelled seen pixels)
        small = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
        valid = small != self.ignore_value
        tgt_masks = [self._resize_masks(m, targets.shape[-2:], (h, w)) for m in masks]
        tgt_classes = [c.to(self.device) for c in classes]
        layers = outputs if self.cfg_z.DEEP_SUPERVISION else outputs[-1:]
        matches, idx = self._match(layers, tgt_classes, tgt_masks, valid)
        # every matched pair's target, across images: rows of the concatenated classes / masks
        all_classes, all_masks = torch.cat(tgt_classes), torch.cat(tgt_masks)
        starts = [0]
        for c in tgt_classes[:-1]:
            starts.append(starts[-1] + len(c))
        losses = {}
        for i, ((cls_logits, mask_logits), match) in enumerate(zip(layers, matches)):
            suffix = "" if i == len(layers) - 1 else f"_{i}"
            layer = self._layer_losses(cls_logits, mask_logits, match, starts, all_classes, all_masks, valid, idx)
            for name, value in layer.items():
                losses[name + suffix] = value
        return losses

    def _resize_masks(self, m: torch.Tensor, padded, size) -> torch.Tensor:
        """(K, H_i, W_i) bool masks of one image -> (K, h, w) at the prediction grid of the padded batch."""
        m = m.to(self.device)
        full = m.new_zeros((m.shape[0], *padded))
        full[:, :m.shape[1], :m.shape[2]] = m
        return F.interpolate(full[:, None].float(), size=size, mode="nearest")[:, 0] if m.numel() else \
            full.new_zeros((0, *size), dtype=torch.float32)

    @torch.no_grad()
    def _match(self, layers, tgt_classes, tgt_masks, valid) -> tuple[list[list[tuple]], list[torch.Tensor]]:
        """-> ([layer][image] (query indices, target indices) on the host, each image's valid pixels' indices).
        The costs are those boolean indexing of the valid pixels gave (the same pixels, gathered by index), all
        computed on the device before one copy to the host."""
        z = self.cfg_z
        idx = valid_indices(valid.flatten(1))  # host read 1: the valid-pixel counts
        costs = [matching_cost(cls_logits[b], mask_logits[b], tgt_classes[b], tgt_masks[b], idx[b],
                               class_weight=z.CLASS_WEIGHT, mask_weight=z.MASK_WEIGHT, dice_weight=z.DICE_WEIGHT,
                               mask_loss=z.MASK_LOSS)
                 for cls_logits, mask_logits in layers for b in range(valid.shape[0])]
        flat = hungarian_match_many(costs)  # host read 2: every cost matrix
        n = valid.shape[0]
        return [flat[j * n:(j + 1) * n] for j in range(len(layers))], idx

    def _layer_losses(self, cls_logits, mask_logits, match, starts, all_classes, all_masks, valid, idx) -> dict:
        z = self.cfg_z
        b_n, q_n = cls_logits.shape[:2]
        num_seen = cls_logits.shape[-1] - 1
        weight = torch.ones(num_seen + 1, device=cls_logits.device)
        weight[-1] = z.NO_OBJECT_WEIGHT
        # matched pairs of every image, image by image in the matcher's (ascending query) order: flat query rows,
        # flat target rows, and each pair's image; built on the host, one copy to the device
        rows = torch.cat([b * q_n + q for b, (q, _) in enumerate(match)])
        cols = torch.cat([starts[b] + k for b, (_, k) in enumerate(match)])
        pair_image = [b for b, (q, _) in enumerate(match) for _ in range(len(q))]
        counted = any(len(idx[b]) for b in pair_image)
        rows, cols, image = torch.stack([rows, cols, torch.as_tensor(pair_image, dtype=torch.long).view(-1)]
                                        ).to(cls_logits.device).unbind(0)
        cls_target = torch.full((b_n * q_n,), num_seen, dtype=torch.long, device=cls_logits.device)
        cls_target[rows] = all_classes[cols]
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), cls_target.view(b_n, q_n), weight)
        if not counted:  # no matched pair, or none with a labelled pixel
            zero = mask_logits.sum() * 0.0
            return {"loss_ce": z.CLASS_WEIGHT * loss_ce, "loss_mask": zero, "loss_dice": zero}
        x = mask_logits.flatten(0, 1).flatten(1)[rows]  # (M, h*w) the matched predictions
        t = all_masks.flatten(1)[cols]  # (M, h*w) their targets
        if x.device.type in PAIR_BY_PAIR_DEVICES:
            # pair by pair on the CPU: the arithmetic every committed (CPU) record was trained with, bit for bit, so
            # a re-run still reproduces it exactly (one call per pair is cheap on the CPU; no host read either way)
            loss_mask = torch.stack([pairwise_mask_cost(x[i:i + 1], t[i:i + 1], idx[b], z.MASK_LOSS)[0, 0]
                                     for i, b in enumerate(pair_image)]).mean()
            loss_dice = torch.stack([pairwise_dice_cost(x[i:i + 1], t[i:i + 1], idx[b])[0, 0]
                                     for i, b in enumerate(pair_image)]).mean()
        else:  # every pair in one call (the same losses up to summation order)
            v = valid.flatten(1)[image]  # (M, h*w) the labelled pixels of each pair's image
            loss_mask = matched_mask_loss(x, t, v, z.MASK_LOSS).mean()
            loss_dice = matched_dice_loss(x, t, v).mean()
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
