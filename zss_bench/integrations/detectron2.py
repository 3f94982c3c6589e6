"""The detectron2 bridge, under the same roof as the others: ``ZSSEvaluator`` (a ``DatasetEvaluator`` that
prints hIoU from ``inference_on_dataset`` and writes a zss-bench run record) and ``register_protocol`` (a
protocol's prepared dataset as detectron2 datasets). They live in the engine, which trains with them; this
module is the stable import path for a user's own detectron2 project. Needs the 'train' extra and detectron2."""
from __future__ import annotations

from zss_bench.extras import require

require("train", "torch", "detectron2", what="zss_bench.integrations.detectron2")

from zss_bench.data.d2_datasets import register_protocol  # noqa: E402
from zss_bench.engine.evaluator import ZSSEvaluator  # noqa: E402

__all__ = ["ZSSEvaluator", "register_protocol"]
