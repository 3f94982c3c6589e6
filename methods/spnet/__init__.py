"""``spnet``: SPNet-style semantic projection (Xian et al., CVPR 2019), the historic inductive baseline.

The shared body's features are projected into the text-embedding space and classified against the
classes' frozen text embeddings (CLIP's here, standing in for SPNet's word2vec + fastText vectors),
trained with cross-entropy on the seen classes; at test time every class's embedding is a classifier
row and SPNet's seen-class calibration gamma is subtracted. The clean "text projection, nothing else"
reference. Importing the package loads neither torch nor detectron2.
"""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model

add_spnet_config = lazy_add_config(__name__, "add_spnet_config")


__getattr__ = lazy_model(__name__, "SPNetSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="spnet",
    add_config=add_spnet_config,
    config_dir=Path(__file__).parent / "configs",
    description="SPNet-style: body features projected onto frozen class text embeddings, seen calibration",
    uses_clip=True,
    trains=True,
    text_classifier="fixed",
    train_mapper="semantic",
    meta_architecture="SPNetSeg",
)

__all__ = ["METHOD", "SPNetSeg", "add_spnet_config"]
