"""Chimera-Seg ("Partial CLIP is Enough", arXiv 2506.22032) for zss-bench: a detectron2
project-style package. ``add_chimera_config`` adds its keys and registers ``ChimeraSeg`` in
``META_ARCH_REGISTRY``; ``configs/`` holds one file per protocol. Importing the package itself
loads neither torch nor detectron2, so listing methods (``zss-bench methods``) stays fast."""
from pathlib import Path

from zss_bench.plugins import MethodPlugin


def add_chimera_config(cfg) -> None:
    """Chimera-Seg's config keys (see ``config.py``); importing the model here registers it."""
    from zss_bench.methods.chimera import meta_arch  # noqa: F401  (registers ChimeraSeg)
    from zss_bench.methods.chimera.config import add_chimera_config as add

    add(cfg)


def __getattr__(name: str):
    if name == "ChimeraSeg":
        from zss_bench.methods.chimera.meta_arch import ChimeraSeg

        return ChimeraSeg
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


METHOD = MethodPlugin(
    name="chimera",
    add_config=add_chimera_config,
    config_dir=Path(__file__).parent / "configs",
    description="Chimera-Seg: body + CLIP Semantic Head (partial frozen CLIP), SGD and SAM",
    uses_clip=True,
)

__all__ = ["METHOD", "ChimeraSeg", "add_chimera_config"]
