"""Register prepared protocol datasets in detectron2's DatasetCatalog / MetadataCatalog.

Names are ``zss_<protocol>_<split>`` (``zss_voc-15-5_train``, ``zss_voc-15-5_val``). The
train split is the *training view*: seen classes only (``stuff_classes`` lists seen names
only, targets are 0..S-1 + ignore), so a stock detectron2 semantic-segmentation config with
``NUM_CLASSES = S`` trains on it as is. Evaluation splits use the full 0..K-1 space.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from detectron2.config import configurable
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

from zss_bench.data.inductive import assert_seen_only
from zss_bench.data.prepare import TRAIN_SPLIT, load_index
from zss_bench.protocol import Protocol

EVALUATOR_TYPE = "zss_sem_seg"


def dataset_name(protocol: Protocol, split: str) -> str:
    return f"zss_{protocol.name}_{split}"


def _dicts(index: dict, split: str) -> list[dict]:
    labels = Path(index["dir"]) / "labels" / split
    out = []
    for img in index["splits"][split]:
        record = {"file_name": img["image"], "sem_seg_file_name": str(labels / f"{img['id']}.png"),
                  "height": img["height"], "width": img["width"], "image_id": img["id"]}
        if split != TRAIN_SPLIT:
            record["annotation_file_name"] = img["annotation"]  # native ids, for `zss-bench evaluate`
        out.append(record)
    return out


def register_protocol(protocol: Protocol, root=None) -> dict[str, str]:
    """Register every split of a prepared ``protocol`` dataset; returns {split: dataset name}.

    Re-registering replaces earlier entries (e.g. after a new ``prepare``).
    """
    index = load_index(protocol, root)
    audit = {k: index["report"]["splits"][TRAIN_SPLIT].get(k) for k in
             ("with_unseen", "dropped_by_policy", "kept", "unseen_pixels_masked")} if TRAIN_SPLIT in index["splits"] else {}
    names = {}
    for split in index["splits"]:
        name = dataset_name(protocol, split)
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(name, partial(_dicts, index, split))
        common = dict(ignore_label=protocol.ignore_label, evaluator_type=EVALUATOR_TYPE, zss_protocol=protocol.name,
                      zss_protocol_file=str(protocol.path or ""),
                      zss_protocol_version=protocol.version, zss_protocol_hash=protocol.content_hash,
                      zss_dataset_root=index["report"]["root"], zss_index_dir=index["dir"])
        if split == TRAIN_SPLIT:
            # Only seen names; targets are indices into this list. seen_ids says where each
            # seen class sits in the full label space (numbers, not names).
            MetadataCatalog.get(name).set(stuff_classes=list(protocol.seen_names), zss_view="train-seen-only",
                                          seen_ids=list(protocol.seen_ids), zss_leakage_audit=audit, **common)
        else:
            MetadataCatalog.get(name).set(stuff_classes=list(protocol.classes), zss_view="eval-all-classes",
                                          seen_ids=list(protocol.seen_ids), unseen_ids=list(protocol.unseen_ids),
                                          **common)
        names[split] = name
    return names


class SeenOnlyDatasetMapper(DatasetMapper):
    """detectron2's DatasetMapper plus the inductive guard on every training target it yields."""

    @configurable
    def __init__(self, is_train: bool = True, *, num_seen: int, ignore_label: int = 255, **kwargs):
        super().__init__(is_train, **kwargs)
        self.num_seen, self.ignore_label = num_seen, ignore_label

    @classmethod
    def from_config(cls, cfg, is_train: bool = True):
        ret = super().from_config(cfg, is_train)
        meta = MetadataCatalog.get(cfg.DATASETS.TRAIN[0])
        ret.update(num_seen=len(meta.stuff_classes), ignore_label=meta.ignore_label)
        return ret

    def __call__(self, dataset_dict):
        out = super().__call__(dataset_dict)
        if "sem_seg" in out:
            assert_seen_only(out["sem_seg"], self.num_seen, self.ignore_label,
                             where=f"training target of {dataset_dict.get('file_name', '?')}")
        return out
