"""``add_spnet_config``: the SPNet-style baseline's keys (README.md says which values are SPNet's)."""
from detectron2.config import CfgNode as CN

from zss_bench.engine.config import declare_method_choices
from zss_bench.modeling.body import add_body_config

_CHOICES = {"PROMPTS": ("", "single", "ensemble"), "SCORE": ("cosine", "dot")}


def add_spnet_config(cfg) -> None:
    add_body_config(cfg)
    declare_method_choices("MODEL.SPNET", _CHOICES)
    s = cfg.MODEL.SPNET = CN()
    s.PROMPTS = ""  # "" = the protocol's default prompt kind; or "single" | "ensemble"
    # how a projected pixel is scored against a class embedding: cosine / TEMPERATURE (the same scale as every
    # other method of the harness), or SPNet's plain inner product with the (unit-norm) class embedding
    s.SCORE = "cosine"
    s.TEMPERATURE = 0.07
    # gamma subtracted from the seen classes' scores at test time (SPNet's calibration; on the cosine scale
    # with SCORE cosine). Chosen on the dev world among 0 / 0.05 / 0.1 / 0.2 / 0.3 (hIoU 19.6 / 28.4 / 35.8 /
    # 38.6 / 36.6; README)
    s.INFERENCE = CN()
    s.INFERENCE.SEEN_CALIBRATION = 0.2
    s.BODY_LR_MULTIPLIER = 1.0
