"""``seen-only``: the same body with a plain classifier over the seen classes, no CLIP.

The reference point every ZSS method must beat on unseen classes: it cannot predict an
unseen class at all (U = 0 by construction), so any unseen IoU a method reaches comes from
its alignment with CLIP, not from the body or the training data. Importing the package loads
neither torch nor detectron2; ``add_seen_only_config`` imports and registers the model.
"""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model


add_seen_only_config = lazy_add_config(__name__, "add_seen_only_config")


__getattr__ = lazy_model(__name__, "SeenOnlySeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="seen-only",
    add_config=add_seen_only_config,
    config_dir=Path(__file__).parent / "configs",
    description="body + seen-class classifier, no CLIP (lower bound on unseen)",
    uses_clip=False,
    trains=True,
    text_classifier="none",
    train_mapper="semantic",
    meta_architecture="SeenOnlySeg",
)

__all__ = ["METHOD", "SeenOnlySeg", "add_seen_only_config"]
