"""``zegclip``: the adaptation-based family (ZegCLIP, Zhou et al., CVPR 2023; Cascade-CLIP, Li et al.,
ICML 2024, as a config): the frozen CLIP image encoder at the input's own resolution with deep visual
prompt tuning, class queries from the relationship descriptor [t * cls, t], a light decoder giving one
mask per class, focal + dice on the seen classes and the seen subtraction gamma at test time. Importing
the package loads neither torch nor detectron2."""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model

add_zegclip_config = lazy_add_config(__name__, "add_zegclip_config")


__getattr__ = lazy_model(__name__, "ZegCLIPSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="zegclip",
    add_config=add_zegclip_config,
    config_dir=Path(__file__).parent / "configs",
    description="ZegCLIP-style: frozen CLIP + deep visual prompts + class-query decoder (Cascade-CLIP variant)",
    uses_clip=True,
    trains=True,
    text_classifier="fixed",
    train_mapper="semantic",
    meta_architecture="ZegCLIPSeg",
)

__all__ = ["METHOD", "ZegCLIPSeg", "add_zegclip_config"]
