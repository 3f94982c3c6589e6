"""``clip-zss``: "CLIP Is Also a Good Teacher" (Chen et al., arXiv 2310.02296), Chimera-Seg's predecessor.

A closed-set body (the shared one) whose dense features are projected onto the class text embeddings and
trained with the seen-class CE plus two CLIP-teacher modules: the global learning module (CLIP's CLS
embedding attention-pools the dense features; InfoNCE against a memory bank of CLS embeddings) and the
pixel learning module (multi-scale K-means over CLIP's dense tokens -> unnamed pseudo regions on the
unlabelled pixels -> prototypes through a synthesizer whose keys/values are the CLS token -> BCE against
the seen text embeddings and the regions' own CLIP centroids). No CLIP at inference. Importing the package
loads neither torch nor detectron2.
"""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model

add_clip_zss_config = lazy_add_config(__name__, "add_clip_zss_config")


__getattr__ = lazy_model(__name__, "ClipZSSSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="clip-zss",
    add_config=add_clip_zss_config,
    config_dir=Path(__file__).parent / "configs",
    description="CLIP-ZSS: body + text projection trained with CLIP global (GLM) and pixel (PLM) learning modules",
    uses_clip=True,
    trains=True,
    text_classifier="fixed",
    train_mapper="semantic",
    meta_architecture="ClipZSSSeg",
)

__all__ = ["METHOD", "ClipZSSSeg", "add_clip_zss_config"]
