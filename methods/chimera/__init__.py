"""Chimera-Seg ("Partial CLIP is Enough", arXiv 2506.22032) for zss-bench: a detectron2
project-style package. ``add_chimera_config`` adds its keys and registers ``ChimeraSeg`` in
``META_ARCH_REGISTRY``; ``configs/`` holds ``synth.yaml`` (every synthetic protocol) and ``default.yaml``. Importing the package itself
loads neither torch nor detectron2, so listing methods (``zss-bench methods``) stays fast."""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model


add_chimera_config = lazy_add_config(__name__, "add_chimera_config")


__getattr__ = lazy_model(__name__, "ChimeraSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="chimera",
    add_config=add_chimera_config,
    config_dir=Path(__file__).parent / "configs",
    description="Chimera-Seg: body + CLIP Semantic Head (partial frozen CLIP), SGD and SAM",
    uses_clip=True,
    trains=True,
    text_classifier="fixed",
    train_mapper="semantic",
    meta_architecture="ChimeraSeg",
)

__all__ = ["METHOD", "ChimeraSeg", "add_chimera_config"]
