"""ZegCLIP-style zero-shot segmentation (and the Cascade-CLIP variant) as a detectron2 meta-architecture."""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.nn.functional as F
from detectron2.modeling import META_ARCH_REGISTRY
from torch import nn

from zss_bench.modeling.calibration import calibrate_seen
from zss_bench.modeling.clip_support import load_run_clip
from zss_bench.modeling.context import run_protocol, seen_class_names
from zss_bench.modeling.mask_losses import classwise_dice_loss, classwise_mask_loss
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.modeling.text import TextClassifier

from .decoder import ClassQueryDecoder, relationship_descriptor
from .vpt import PromptedViT


@META_ARCH_REGISTRY.register()
class ZegCLIPSeg(ZSSSegmentor):
    def __init__(self, cfg):
        z = self.cfg_z = cfg.MODEL.ZEGCLIP
        if z.INPUT_SCALE <= 0:
            raise ValueError(f"MODEL.ZEGCLIP.INPUT_SCALE must be > 0, got {z.INPUT_SCALE}")
        super().__init__(cfg, 1)
        device = torch.device(cfg.MODEL.DEVICE)
        protocol = run_protocol(cfg)
        self.use_clip(load_run_clip(cfg.ZSS.CLIP, protocol, device))
        self.preprocess = ClipTeacher(self.clip)  # CLIP's normalisation at the input's size (its ViT is shared)
        self.encoder = PromptedViT(self.clip.model.visual, z.VPT.NUM_TOKENS, z.VPT.DEEP)
        n = self.encoder.vit.num_blocks
        levels = sorted({int(i) for i in z.CASCADE.OUT_INDICES})
        if any(not 0 <= i < n - 1 for i in levels):
            raise ValueError(f"MODEL.ZEGCLIP.CASCADE.OUT_INDICES {tuple(z.CASCADE.OUT_INDICES)} must be blocks "
                             f"0..{n - 2} (the last block, {n - 1}, is always decoded)")
        self.levels = levels + [n - 1]
        dim = self.clip.embed_dim
        d = z.DECODER
        self.query_proj = nn.Linear(2 * dim, d.HIDDEN_DIM)
        self.decoders = nn.ModuleList(ClassQueryDecoder(dim, layers=d.LAYERS, hidden=d.HIDDEN_DIM, heads=d.HEADS,
                                                        ffn=d.DIM_FEEDFORWARD) for _ in self.levels)
        self.text = TextClassifier(self.clip, protocol.templates(z.PROMPTS or None), seen_class_names(cfg))
        self.freeze_clip_parts("preprocess.", "encoder.vit.")
        self.to(device)

    def lr_multipliers(self) -> dict:
        m = self.cfg_z.PROMPT_LR_MULTIPLIER
        return {"encoder.prompts": m} if m != 1.0 else {}

    def set_eval_classes(self, class_names, seen_ids):
        super().set_eval_classes(class_names, seen_ids)
        self.text.set_classes(class_names)  # unseen names reach the text encoder only now

    def _predict(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Normalised body input -> mask logits (B, C, h, w) of every decoder layer of every level, in order
        (the last one is the prediction), over the text classifier's current classes."""
        rgb = self.rgb255(images)
        if self.cfg_z.INPUT_SCALE != 1.0:
            rgb = F.interpolate(rgb, scale_factor=self.cfg_z.INPUT_SCALE, mode="bilinear", align_corners=False)
        tokens, cls, grid = self.encoder(self.preprocess.clip_input(rgb, "input"), keep=self.levels)
        vit = self.encoder.vit
        queries = self.query_proj(relationship_descriptor(self.text.embeddings, vit.project(cls)))
        outputs = []
        for level, decoder in zip(self.levels, self.decoders):
            for queries, masks in decoder(queries, vit.project(tokens[level]), grid):
                outputs.append(masks)
        return outputs

    def train_losses(self, images, targets):
        z = self.cfg_z
        outputs = self._predict(images)
        num_seen = outputs[-1].shape[1]
        valid = (targets != self.ignore_value).flatten(1)
        # (B, C, H*W) one-hot as bool, 1 byte per entry instead of F.one_hot's int64 8, by comparison (no host read
        # of the targets' range); laid out pixel-major (a transposed view) like the permuted F.one_hot it replaces,
        # so the losses' elementwise terms and sums run in the same order: the same values bit for bit
        classes = torch.arange(num_seen, device=targets.device)
        onehot = (targets.clamp(0, num_seen - 1).flatten(1)[:, :, None] == classes).transpose(1, 2)
        layers = outputs if z.DEEP_SUPERVISION else outputs[-1:]
        losses = {}
        for i, masks in enumerate(layers):
            suffix = "" if i == len(layers) - 1 else f"_{i}"
            logits = F.interpolate(masks, size=targets.shape[-2:], mode="bilinear", align_corners=False).flatten(2)
            losses["loss_mask" + suffix] = z.MASK_WEIGHT * classwise_mask_loss(logits, onehot, valid, z.MASK_LOSS,
                                                                               key="MODEL.ZEGCLIP.MASK_LOSS")
            losses["loss_dice" + suffix] = z.DICE_WEIGHT * classwise_dice_loss(logits, onehot, valid)
        return losses

    def eval_scores(self, images):
        probs = self._predict(images)[-1].sigmoid()
        return calibrate_seen(probs, self.eval_seen_ids, self.cfg_z.INFERENCE.SEEN_CALIBRATION)
