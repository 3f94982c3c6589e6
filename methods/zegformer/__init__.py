"""ZegFormer-style decoupled zero-shot segmentation for zss-bench (and the zsseg variant as a config).

Class-agnostic segments from learnable queries over the shared body, each classified against CLIP
text embeddings (+ a learnable no-object class); at test time each segment's masked region is also
classified by the frozen CLIP image encoder and the two are ensembled geometrically. Importing the
package loads neither torch nor detectron2."""
from pathlib import Path

from zss_bench.plugins import MethodPlugin, lazy_add_config, lazy_model

add_zegformer_config = lazy_add_config(__name__, "add_zegformer_config")


__getattr__ = lazy_model(__name__, "ZegFormerSeg")  # the model class, imported on first use

METHOD = MethodPlugin(
    name="zegformer",
    add_config=add_zegformer_config,
    config_dir=Path(__file__).parent / "configs",
    description="ZegFormer-style: query segments + CLIP text classifier, CLIP region scoring ensemble (zsseg variant)",
    uses_clip=True,
    trains=True,
    text_classifier="learnable-no-object",
    train_mapper="per-class-masks",
    meta_architecture="ZegFormerSeg",
)

__all__ = ["METHOD", "ZegFormerSeg", "add_zegformer_config"]
