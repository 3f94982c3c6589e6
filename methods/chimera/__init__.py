"""Chimera-Seg ("Partial CLIP is Enough", arXiv 2506.22032) for zss-bench: a detectron2
project-style package. Importing it registers ``ChimeraSeg`` in ``META_ARCH_REGISTRY``;
``add_chimera_config`` adds its keys; ``configs/`` holds one file per protocol."""
from pathlib import Path

from zss_bench.methods.chimera.config import add_chimera_config
from zss_bench.methods.chimera.meta_arch import ChimeraSeg
from zss_bench.plugins import MethodPlugin

METHOD = MethodPlugin(
    name="chimera",
    add_config=add_chimera_config,
    config_dir=Path(__file__).parent / "configs",
    description="Chimera-Seg: body + CLIP Semantic Head (partial frozen CLIP), SGD and SAM",
    uses_clip=True,
)

__all__ = ["METHOD", "ChimeraSeg", "add_chimera_config"]
