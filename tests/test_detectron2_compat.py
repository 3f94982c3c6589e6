"""The detectron2 compat layer: detectron2 imports, builds and runs a model on CPU."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import zss_bench.detectron2_compat as compat
from conftest import stock_semantic_segmentor_cfg


def test_semantic_segmentor_builds_and_runs_on_cpu():
    from detectron2.modeling import build_model

    cfg = stock_semantic_segmentor_cfg(num_classes=5)
    torch.manual_seed(0)
    model = build_model(cfg)
    batch = [{"image": torch.randint(0, 255, (3, 64, 64), dtype=torch.uint8),
              "sem_seg": torch.randint(0, 5, (64, 64))}]
    model.train()
    losses = model(batch)
    assert set(losses) == {"loss_sem_seg"} and torch.isfinite(losses["loss_sem_seg"])
    losses["loss_sem_seg"].backward()
    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert out[0]["sem_seg"].shape == (5, 64, 64)


def test_missing_compiled_op_names_the_op():
    from detectron2 import _C

    if compat.has_compiled_ops():
        pytest.skip("a full detectron2 build is installed; nothing is shimmed")
    with pytest.raises(compat.MissingDetectron2Op, match=r"detectron2\._C\.deform_conv_forward is not available.*sdist"):
        _C.deform_conv_forward
    assert not hasattr(_C, "nms_rotated")  # probes behave like a missing attribute
    with pytest.raises(AttributeError):
        _C.__wrapped__
    assert _C.__name__ == "detectron2._C"


def test_rotated_box_op_fails_clearly_only_when_used():
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated  # importing is fine

    if compat.has_compiled_ops():
        pytest.skip("a full detectron2 build is installed")
    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(compat.MissingDetectron2Op, match="box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)


def test_pillow_aliases_and_numpy_left_alone():
    from PIL import Image

    assert Image.LINEAR == Image.Resampling.BILINEAR
    import detectron2.data.transforms  # noqa: F401  (uses Image.LINEAR as a default argument)

    for removed in ("int", "float"):  # (numpy 2 brought back np.bool as np.bool_)
        assert not hasattr(np, removed), f"np.{removed} must not be monkeypatched globally"
