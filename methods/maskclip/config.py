"""``add_maskclip_config``: MaskCLIP's test-time choices (README.md says which values are MaskCLIP's)."""
from detectron2.config import CfgNode as CN

from zss_bench.engine.config import declare_method_choices
from zss_bench.modeling.body import add_body_config

_CHOICES = {"PROMPTS": ("", "single", "ensemble")}


def add_maskclip_config(cfg) -> None:
    add_body_config(cfg)  # the shared base configs carry the body's keys; MaskCLIP builds no body
    declare_method_choices("MODEL.MASKCLIP", _CHOICES)
    m = cfg.MODEL.MASKCLIP = CN()
    m.PROMPTS = ""  # "" = the protocol's default prompt kind; or "single" | "ensemble"
    # the image is resized by this factor before CLIP (token grid = scaled size / patch); 1 = the input's own size
    m.INPUT_SCALE = 1.0
    m.TEMPERATURE = 0.01  # cosine / this = CLIP's own logit scale (100); only prompt denoising's softmax sees it
    m.KEY_SMOOTHING = CN()
    # on: on the dev world (seed 7) it raised hIoU 2.3 -> 2.7 (paired +0.42 [+0.10, +0.73]); see README
    m.KEY_SMOOTHING.ENABLED = True
    # a token's scores become the mean of the scores of the tokens whose last-block keys have cosine >= this
    m.KEY_SMOOTHING.THRESHOLD = 0.5
    m.PROMPT_DENOISING = CN()
    m.PROMPT_DENOISING.ENABLED = False  # off: no gain on the dev world (2.3 with it, 2.3 without; README)
    # a class whose highest probability anywhere in the image is below this is removed from that image
    m.PROMPT_DENOISING.THRESHOLD = 0.5
