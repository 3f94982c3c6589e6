"""detectron2 ``DatasetEvaluator`` that feeds the harness ``ConfusionMatrix``.

detectron2's own ``SemSegEvaluator`` is replaced because it uses ``np.int`` (gone from
numpy), RLE-encodes every prediction and is ~100x slower (see ``make bench``); this one keeps
only the matrix and per-image statistics, reduced across processes with ``all_reduce``.

It is a drop-in evaluator for any detectron2 project (a ZegFormer or zsseg fork): on a dataset
registered by ``register_protocol`` it returns ``{"sem_seg": {"mIoU", "mIoU_seen", "mIoU_unseen",
"hIoU", "pAcc", "IoU-<class>"...}}`` (percent, the protocol's headline convention), so
``inference_on_dataset`` and ``DefaultTrainer.test`` print hIoU, and with ``results_dir`` it also
writes a zss-bench run record. With ``save_predictions=N`` it keeps the first N predictions it sees
(loader order; rank 0's shard starts with the dataset's first images) in ``kept`` for the record.
"""
from __future__ import annotations

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from PIL import Image

from zss_bench.metrics import ConfusionMatrix
from zss_bench.records.fingerprint import fingerprint_dataset, image_id_of
from zss_bench.records.predictions import KeptPrediction, prediction_files


class ZSSEvaluator(DatasetEvaluator):
    """Accumulates predictions against the evaluation view (full contiguous ids)."""

    def __init__(self, dataset_name: str, results_dir: str | None = None, method: str = "external",
                 label: str = "detectron2", save_predictions: int = 0):
        if save_predictions < 0:
            raise ValueError(f"save_predictions must be >= 0, got {save_predictions}")
        meta = MetadataCatalog.get(dataset_name)
        self.save_predictions = save_predictions
        self.meta, self.results_dir, self.method, self.label = meta, results_dir, method, label
        self.num_classes, self.ignore_label = len(meta.stuff_classes), meta.ignore_label
        import torch

        self._pred_dtype = torch.uint8 if self.num_classes < 256 else torch.int32
        self._gt = {d["file_name"]: (d["sem_seg_file_name"], image_id_of(d)) for d in DatasetCatalog.get(dataset_name)}
        self.cm: ConfusionMatrix | None = None
        self.kept: list[KeptPrediction] = []

    def reset(self):
        self.cm = ConfusionMatrix(self.num_classes, ignore_index=self.ignore_label, track_images=True)
        self.kept = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            # cast on the device: 1 byte per pixel crosses to the host, not argmax's 8
            pred = out["sem_seg"].argmax(dim=0).to(self._pred_dtype).cpu().numpy()
            gt_file, image_id = self._gt[inp["file_name"]]
            with Image.open(gt_file) as im:
                gt = np.array(im)
            self.cm.update(pred, gt, image_ids=[image_id])
            if len(self.kept) < self.save_predictions:
                self.kept.append(KeptPrediction(inp["file_name"], image_id, pred, gt))

    def evaluate(self):
        if comm.get_world_size() > 1:
            self.cm.all_reduce()
        if not comm.is_main_process():
            return {}
        protocol = self._protocol()
        if protocol is None:  # not a zss-bench registration: no seen/unseen split to score
            return {}
        from zss_bench.evaluation import score

        metrics = score(self.cm, protocol, n_boot=0)
        out = {k: metrics[k] for k in ("mIoU", "mIoU_seen", "mIoU_unseen", "hIoU", "pAcc")}
        out.update({f"IoU-{name}": value for name, value in metrics["per_class"].items()})
        if self.results_dir:
            out["record"] = str(self._write_record(protocol))
        return {"sem_seg": out}

    def _protocol(self):
        name = getattr(self.meta, "zss_protocol", None)
        if not name:
            return None
        from zss_bench.protocol import load_protocol

        protocol = load_protocol(getattr(self.meta, "zss_protocol_file", "") or name)  # a user's own file too
        if protocol.content_hash != self.meta.zss_protocol_hash:
            raise ValueError(f"dataset {self.meta.name} was registered with {name} at hash "
                             f"{self.meta.zss_protocol_hash[:12]}, but that protocol now hashes {protocol.short_hash}")
        return protocol

    def test_set(self) -> dict:
        """The fingerprint of the ground truth this evaluator scored (the ids of its per-image statistics), for
        ``record["dataset"]["test_set"]``. Call after ``evaluate`` (on the main process)."""
        return fingerprint_dataset(self.meta.name, image_ids=self.cm.image_stats.ids)

    def _write_record(self, protocol):
        from zss_bench.evaluation import score
        from zss_bench.records import collect_provenance, write_run

        record = {"kind": "evaluate", "protocol": {"name": protocol.name, "version": protocol.version,
                                                    "hash": protocol.content_hash},
                  "method": {"name": self.method, "label": self.label},
                  "inputs": {"dataset": self.meta.name, "n_images": self.cm.num_images},
                  "dataset": {"name": self.meta.name, "test_set": self.test_set()},
                  "metrics": score(self.cm, protocol), "provenance": collect_provenance(seed=None)}
        files, block = prediction_files(self.kept) if self.kept else ({}, None)
        if block:
            record["predictions"] = block
        return write_run(self.results_dir, record, self.cm, extra_files=files)
