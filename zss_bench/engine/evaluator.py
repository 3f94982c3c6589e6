"""detectron2 ``DatasetEvaluator`` that feeds the harness ``ConfusionMatrix``.

detectron2's own ``SemSegEvaluator`` is replaced because it uses ``np.int`` (gone from
numpy), RLE-encodes every prediction and is ~100x slower (see ``make bench``); this one keeps
only the matrix and per-image statistics, reduced across processes with ``all_reduce``.
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

from zss_bench.metrics import ConfusionMatrix


class ZSSEvaluator(DatasetEvaluator):
    """Accumulates predictions against the evaluation view (full contiguous ids)."""

    def __init__(self, dataset_name: str):
        meta = MetadataCatalog.get(dataset_name)
        self.num_classes, self.ignore_label = len(meta.stuff_classes), meta.ignore_label
        self._gt = {d["file_name"]: (d["sem_seg_file_name"], d.get("image_id")) for d in DatasetCatalog.get(dataset_name)}
        self.cm: ConfusionMatrix | None = None

    def reset(self):
        self.cm = ConfusionMatrix(self.num_classes, ignore_index=self.ignore_label, track_images=True)

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            pred = out["sem_seg"].argmax(dim=0)
            gt_file, image_id = self._gt[inp["file_name"]]
            with Image.open(gt_file) as im:
                gt = np.array(im)
            self.cm.update(pred.to("cpu").numpy().astype(np.uint8 if self.num_classes < 256 else np.int32), gt,
                           image_ids=[str(image_id or inp["file_name"])])

    def evaluate(self):
        if comm.get_world_size() > 1:
            self.cm.all_reduce()
        return {}
