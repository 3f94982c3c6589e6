"""``add_clip_zss_config``: every CLIP-ZSS choice is a key. Only the abstract and a third-party note are
public; README.md marks which values are the paper's and which are *ours*."""
from detectron2.config import CfgNode as CN

from zss_bench.engine.config import declare_method_choices
from zss_bench.modeling.body import add_body_config

_CHOICES = {"PROMPTS": ("", "single", "ensemble"), "PLM.FEATURES": ("value", "dense")}


def add_clip_zss_config(cfg) -> None:
    add_body_config(cfg)
    declare_method_choices("MODEL.CLIP_ZSS", _CHOICES)
    c = cfg.MODEL.CLIP_ZSS = CN()
    c.PROMPTS = ""  # "" = the protocol's default prompt kind; or "single" | "ensemble"
    c.TEMPERATURE = 0.07  # seen-class CE and inference: cosine / this (the harness's common scale)
    c.CE_WEIGHT = 1.0

    c.GLM = CN()  # global learning module
    c.GLM.ENABLED = True
    c.GLM.WEIGHT = 1.0
    # W = softmax(cos(S, R) / POOL_TEMPERATURE) over positions (the paper: S.R / sqrt(C); ours: cosine, since
    # CLIP's CLS norm is arbitrary), S_hat = sum W R
    c.GLM.POOL_TEMPERATURE = 0.07
    c.GLM.TEMPERATURE = 0.07  # InfoNCE temperature
    c.GLM.BANK_SIZE = 256  # CLS embeddings of earlier batches kept as negatives (FIFO)

    c.PLM = CN()  # pixel learning module
    c.PLM.ENABLED = True
    c.PLM.WEIGHT = 1.0
    c.PLM.FEATURES = "value"  # CLIP dense tokens clustered: value (MaskCLIP's value path) | dense (last block out)
    c.PLM.SCALES = (2, 4, 8)  # K of each K-means scale
    c.PLM.ITERS = 10  # Lloyd iterations per scale
    c.PLM.FUSE_THRESHOLD = 0.9  # lambda: a region whose CLIP centroid has cosine >= this with a kept one is merged away
    c.PLM.MIN_FRACTION = 0.02  # a pseudo region needs this fraction of the image's positions (after unlabelled-only)
    c.PLM.BCE_TEMPERATURE = 0.07  # BCE logits = cosine(prototype, class bank) / this
    c.PLM.SYNTH_HEADS = 4  # the synthesizer's attention heads (a transformer decoder layer)

    c.INFERENCE = CN()
    # gamma subtracted from seen-class cosine scores, chosen on the dev world among the same 0 / 0.05 / 0.1 / 0.2 / 0.3
    # as spnet's (hIoU 5.3 / 10.6 / 17.9 / 31.7 / 33.2; the best is the grid's edge; README)
    c.INFERENCE.SEEN_CALIBRATION = 0.3
    c.BODY_LR_MULTIPLIER = 1.0
