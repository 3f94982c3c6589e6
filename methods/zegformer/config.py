"""``add_zegformer_config``: every ZegFormer-style choice is a key (values from ZegFormer's and zsseg's
configs where they exist; see README.md for which are theirs and which are ours)."""
from detectron2.config import CfgNode as CN

from zss_bench.engine.config import declare_method_choices
from zss_bench.modeling.body import add_body_config

_CHOICES = {"PROMPTS": ("", "single", "ensemble"), "MASK_LOSS": ("bce", "focal"),
            "ENSEMBLE.SEEN_CLIP": ("mean", "keep")}


def add_zegformer_config(cfg) -> None:
    add_body_config(cfg)
    declare_method_choices("MODEL.ZEGFORMER", _CHOICES)
    z = cfg.MODEL.ZEGFORMER = CN()
    z.PROMPTS = ""  # "" = the protocol's default prompt kind; or "single" | "ensemble"
    z.NUM_QUERIES = 100  # class-agnostic segment queries (ZegFormer: 100)
    z.DEC_LAYERS = 6  # transformer decoder layers (ZegFormer: 6)
    z.HIDDEN_DIM = 256  # decoder width (ZegFormer: 256)
    z.NHEADS = 8
    z.DIM_FEEDFORWARD = 2048
    z.MASK_DIM = 256  # per-pixel / mask embedding width
    z.TEMPERATURE = 0.07  # segment classifier: cosine / TEMPERATURE (CLIP-like logit scale)
    # losses and matcher (ZegFormer / MaskFormer: no-object 0.1, mask 20, dice 1, class 1)
    z.CLASS_WEIGHT = 1.0
    z.MASK_WEIGHT = 20.0
    z.DICE_WEIGHT = 1.0
    z.NO_OBJECT_WEIGHT = 0.1
    z.MASK_LOSS = "focal"  # focal (MaskFormer's) | bce
    z.DEEP_SUPERVISION = True  # the same losses on every decoder layer's predictions
    # generalised ZSS scoring at test time (ZegFormer's gzss eval)
    z.ENSEMBLE = CN()
    z.ENSEMBLE.ENABLED = True  # False: the segment classifier alone (ablation)
    z.ENSEMBLE.LAMBDA = 0.6667  # ZegFormer's 2/3: seen p_seg^l p_clip^(1-l), unseen p_seg^(1-l) p_clip^l
    z.ENSEMBLE.SEEN_CLIP = "mean"  # mean: CLIP's seen-class scores replaced by their mean (ZegFormer) | keep (zsseg)
    z.ENSEMBLE.CLIP_TEMPERATURE = 0.01  # CLIP region logits = cosine / this (CLIP's own logit scale, 100)
    z.ENSEMBLE.MASK_THRESHOLD = 0.5  # a query's region for CLIP: mask probability above this
    z.INFERENCE = CN()
    # gamma subtracted from seen-class score maps. ZegFormer publishes 0.1 (GZERO_CALIBRATE); on the dev world it
    # lowered hIoU (16.5 vs 18.6 at 0), so 0, as Chimera-Seg's default; the 0.1 re-scoring is its own row
    z.INFERENCE.SEEN_CALIBRATION = 0.0
    z.BODY_LR_MULTIPLIER = 1.0
