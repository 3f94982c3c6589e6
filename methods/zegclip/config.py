"""``add_zegclip_config``: every ZegCLIP-style choice is a key (ZegCLIP's and Cascade-CLIP's values where
they exist; README.md says which are theirs and which are ours)."""
from detectron2.config import CfgNode as CN

from zss_bench.engine.config import declare_method_choices
from zss_bench.modeling.body import add_body_config

_CHOICES = {"PROMPTS": ("", "single", "ensemble"), "MASK_LOSS": ("focal", "bce")}


def add_zegclip_config(cfg) -> None:
    add_body_config(cfg)  # the shared base configs carry the body's keys; ZegCLIP's body is the prompted CLIP
    declare_method_choices("MODEL.ZEGCLIP", _CHOICES)
    z = cfg.MODEL.ZEGCLIP = CN()
    z.PROMPTS = ""  # "" = the protocol's default prompt kind; or "single" | "ensemble"
    # the image is resized by this before CLIP (ZegCLIP: 512 crops at 512, i.e. 1); synth dev world: 2 (16x16 tokens)
    # gave hIoU 5.3 against 11.6 at 1 (both at gamma 0.1), so 1
    z.INPUT_SCALE = 1.0
    z.VPT = CN()
    z.VPT.NUM_TOKENS = 10  # learnable prompt tokens per layer (ZegCLIP: 10 on VOC, 100 on COCO)
    z.VPT.DEEP = True  # new prompts at every block (ZegCLIP's deep VPT); False: at the input only
    z.DECODER = CN()
    z.DECODER.LAYERS = 3  # ZegCLIP's 3-layer decoder
    z.DECODER.HIDDEN_DIM = 256
    z.DECODER.HEADS = 8
    z.DECODER.DIM_FEEDFORWARD = 1024
    z.MASK_LOSS = "focal"  # sigmoid focal (ZegCLIP's) | bce
    z.MASK_WEIGHT = 100.0  # ZegCLIP's final config (its issue #7: an earlier one had 20)
    z.DICE_WEIGHT = 1.0
    z.DEEP_SUPERVISION = True  # the same losses on every decoder layer's masks
    z.CASCADE = CN()
    # Cascade-CLIP: blocks (0-based) whose outputs are decoded, each by its own decoder, shallow to deep, the
    # class queries handed from one decoder to the next; the last block is always the final level. () = ZegCLIP.
    z.CASCADE.OUT_INDICES = ()
    z.INFERENCE = CN()
    # gamma subtracted from seen-class mask probabilities. ZegCLIP publishes 0.1; on the dev world 0.05 was best among
    # 0 / 0.05 / 0.1 / 0.2 / 0.3 (hIoU 13.6 / 16.0 / 11.6 / 5.9 / 2.0; README); the same five values as every method
    z.INFERENCE.SEEN_CALIBRATION = 0.05
    z.PROMPT_LR_MULTIPLIER = 1.0  # learning-rate multiplier of the visual prompts (ZegCLIP: x10 over 2e-5)
