"""Bridges from other segmentation frameworks to zss-bench's metrics and run records.

One module per framework; each imports its framework only inside itself, so ``import zss_bench`` never
needs any of them:

* :mod:`zss_bench.integrations.mmseg`: ``ZSSIoUMetric``, an mmengine ``BaseMetric`` for mmseg 1.x
  (``test_evaluator = dict(type='ZSSIoUMetric', protocol='voc-15-5')``); needs mmengine.
* :mod:`zss_bench.integrations.mmseg0`: ``summarize`` for mmseg 0.x codebases (ZegCLIP and its family):
  hIoU, both conventions and bootstrap intervals from what ``dataset.pre_eval`` returns; needs no
  framework at all (numpy only), and is re-exported by ``zss_bench.integrations.mmseg``.

* :mod:`zss_bench.integrations.detectron2`: ``ZSSEvaluator`` (a ``DatasetEvaluator``) and
  ``register_protocol``, re-exported from the engine that trains with them; needs detectron2.

Recipes: the README's "Use it from your own code" and docs/mmseg.md.
"""
