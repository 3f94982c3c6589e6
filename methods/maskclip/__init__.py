"""``maskclip``: training-free MaskCLIP (Zhou, Loy, Dai, ECCV 2022): what the frozen CLIP alone knows.

Dense predictions from the last block's value path + CLIP's projection, at the input's own resolution
(interpolated positional embedding), scored by cosine against every class's text embedding; key
smoothing and prompt denoising as keys. It trains nothing and reads no labels, so it is legal under the
inductive rule, but it is a *reference row*, not an inductive method: nothing in it learns from seen
classes. Importing the package loads neither torch nor detectron2.
"""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model

add_maskclip_config = lazy_add_config(__name__, "add_maskclip_config")


__getattr__ = lazy_model(__name__, "MaskCLIPSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="maskclip",
    add_config=add_maskclip_config,
    config_dir=Path(__file__).parent / "configs",
    description="MaskCLIP (training-free): CLIP's last-block value path as dense features vs class texts",
    uses_clip=True,
    trains=False,
    text_classifier="fixed",
    train_mapper="semantic",
    meta_architecture="MaskCLIPSeg",
)

__all__ = ["METHOD", "MaskCLIPSeg", "add_maskclip_config"]
