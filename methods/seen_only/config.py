"""Config keys of the seen-only baseline."""
from detectron2.config import CfgNode as CN

from zss_bench.modeling.body import add_body_config


def add_seen_only_config(cfg) -> None:
    add_body_config(cfg)
    cfg.MODEL.SEEN_ONLY = CN()
    cfg.MODEL.SEEN_ONLY.LOSS_WEIGHT = 1.0
