"""Test-set fingerprints: which ground truth a record was scored on, so tables never pair or average
runs scored on different images.

Why content and not paths or file names: two synthetic worlds, or two copies of a dataset, can share every
file stem (``2007_000033``) and folder name while holding different labels; and one test set is read from
different files by ``evaluate`` (the dataset's native annotation PNGs) and by ``run`` (the prepared
evaluation view in the cache). So the fingerprint hashes what the evaluator compares against: each scored
image's ground truth as the protocol's contiguous class ids (255 = ignore), whatever file or palette it came
from. Two records share a fingerprint exactly when they were scored on the same image ids with the same
ground truth (under one protocol mapping).

``record["dataset"]["test_set"]`` holds :func:`fingerprint_block`'s result. Records made before fingerprints
existed (legacy) are told apart by what they do say (:func:`ground_truth_key`).
"""
from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

METHOD = "gt-content-v1"  # sha256 over images sorted by id of (id, sha256 of HxW + contiguous ids as <u2)
_CACHE_PART = re.compile(r"^(?:\$ZSS_BENCH_CACHE|.*/\.cache/zss-bench)/(.+)$")


class FingerprintError(ValueError):
    """A test-set fingerprint cannot be computed (the message names the file or image)."""


def image_id_of(dataset_dict: Mapping) -> str:
    """The id an image is scored under: its ``image_id`` (the file stem for zss-bench registrations), else
    its file name. :class:`zss_bench.engine.evaluator.ZSSEvaluator` uses the same rule, so a fingerprint
    covers exactly the ids of the confusion matrix's per-image statistics."""
    return str(dataset_dict.get("image_id") or dataset_dict["file_name"])


def gt_digest(gt: np.ndarray) -> str:
    """sha256 of one ground-truth map in contiguous ids: its shape, then its values as little-endian uint16
    (independent of the array's dtype, so a uint8 eval-view PNG and a native PNG mapped through the
    protocol give the same digest)."""
    gt = np.asarray(gt)
    if gt.ndim != 2:
        raise FingerprintError(f"expected a 2-D ground-truth map, got shape {gt.shape}")
    if gt.size and (int(gt.min()) < 0 or int(gt.max()) > 0xFFFF):
        raise FingerprintError("ground-truth ids must lie in 0..65535")
    h = hashlib.sha256(f"{gt.shape[0]}x{gt.shape[1]}:".encode())
    h.update(np.ascontiguousarray(gt, dtype="<u2").tobytes())
    return h.hexdigest()


def fingerprint_block(digests: Mapping[str, str]) -> dict:
    """``{"fingerprint", "n_images", "method"}`` of the images ``digests`` (image id -> :func:`gt_digest`)."""
    if not digests:
        raise FingerprintError("cannot fingerprint an empty test set")
    h = hashlib.sha256(METHOD.encode())
    for image_id in sorted(digests):
        h.update(f"\n{image_id}\t{digests[image_id]}".encode())
    return {"fingerprint": h.hexdigest(), "n_images": len(digests), "method": METHOD}


def fingerprint_files(items: Iterable[tuple[str, str | os.PathLike]], lut: np.ndarray | None = None,
                        workers: int = 4) -> dict:
    """Fingerprint of the ground-truth files ``items`` ((image id, path) pairs). ``lut`` (a protocol's
    ``native_lut()``) maps native annotation ids first; without it the files already hold contiguous ids
    (the prepared evaluation view)."""
    from zss_bench.data.masks import read_label_png, to_contiguous
    from zss_bench.data.parallel import bounded_map

    items = list(items)
    ids = [i for i, _ in items]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:5]
        raise FingerprintError(f"image ids occur more than once in the test set: {dup}")

    def digest(item):
        image_id, path = item
        gt = read_label_png(path)
        if lut is not None:
            gt = to_contiguous(gt, lut, path, what="ground-truth")
        return image_id, gt_digest(gt)

    return fingerprint_block(dict(bounded_map(digest, items, workers=workers)))


def fingerprint_dataset(dataset, image_ids: Iterable[str] | None = None, workers: int = 4) -> dict:
    """Fingerprint of a detectron2 test set: ``dataset`` is a registered name (``zss_<protocol>_val``) or its
    list of dataset dicts (each with ``sem_seg_file_name``, the evaluation view in contiguous ids). With
    ``image_ids`` (e.g. ``cm.image_stats.ids``: the images actually scored) only those count, and an id the
    dataset does not have is an error."""
    if isinstance(dataset, str):
        from detectron2.data import DatasetCatalog

        dataset = DatasetCatalog.get(dataset)
    files = {}
    for d in dataset:
        files[image_id_of(d)] = d["sem_seg_file_name"]
    if image_ids is not None:
        wanted = list(dict.fromkeys(str(i) for i in image_ids))
        absent = [i for i in wanted if i not in files]
        if absent:
            raise FingerprintError(f"{len(absent)} scored image id(s) are not in the test set: {absent[:5]}")
        files = {i: files[i] for i in wanted}
    return fingerprint_files(files.items(), workers=workers)


# ----------------------------------------------------------------------------- grouping records


@dataclass(frozen=True)
class GroundTruthKey:
    """What a record says about its test set. ``basis``: ``fingerprint`` (a :func:`fingerprint_block`),
    ``dataset root`` or ``ground-truth folder`` (legacy records, told apart by where their data came from),
    ``unknown`` (a legacy record that names neither)."""

    basis: str
    value: str
    n_images: int | None = None
    legacy: str | None = None  # a fingerprinted record's dataset root / GT folder key, to place legacy records

    @property
    def label(self) -> str:
        """Short, for table titles and the ``test_set`` column."""
        if self.basis == "fingerprint":
            return f"test set {self.value[:12]}" + (f" ({self.n_images} images)" if self.n_images else "")
        if self.basis == "unknown":
            return "unknown test set (legacy records)"
        return f"{self.basis} {self.value} (legacy records)"


def legacy_root(root: str) -> str:
    """A dataset root as legacy records compare: a folder inside a zss-bench cache by its path in the cache
    (``$ZSS_BENCH_CACHE/synth-world/v1-seed0-64px-2000-300`` and ``/root/.cache/zss-bench/synth-world/v1-...``
    name the same deterministic generated world), anything else as written."""
    text = str(root).rstrip("/")
    m = _CACHE_PART.match(text)
    return f"$ZSS_BENCH_CACHE/{m.group(1)}" if m else text


def _legacy_key(record: dict) -> tuple[str, str] | None:
    dataset = record.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("root"), str) and dataset["root"]:
        return "dataset root", legacy_root(dataset["root"])
    for block in (record.get("inputs"), dataset):  # evaluate records: the ground-truth folder (+ image list)
        if isinstance(block, dict) and isinstance(block.get("gt_dir"), str) and block["gt_dir"]:
            listed = block.get("image_list")
            return "ground-truth folder", legacy_root(block["gt_dir"]) + (f" [{listed}]" if listed else "")
    return None


def check_fingerprint_block(record: dict) -> str | None:
    """Why ``record["dataset"]["test_set"]`` is malformed, or None (absent is fine: a legacy record)."""
    dataset = record.get("dataset")
    if dataset is None:
        return None
    if not isinstance(dataset, dict):
        return f"'dataset' is {type(dataset).__name__}, expected an object or null"
    block = dataset.get("test_set")
    if block is None:
        return None
    if not isinstance(block, dict):
        return f"'dataset.test_set' is {type(block).__name__}, expected an object"
    fp = block.get("fingerprint")
    if not isinstance(fp, str) or not re.fullmatch(r"[0-9a-f]{64}", fp):
        return f"'dataset.test_set.fingerprint' is {fp!r}, expected 64 hex digits"
    n = block.get("n_images")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        return f"'dataset.test_set.n_images' is {n!r}, expected a positive whole number"
    return None


def ground_truth_key(record: dict) -> GroundTruthKey:
    """The test set ``record`` was scored on, as far as it says (call :func:`check_fingerprint_block` first)."""
    legacy = _legacy_key(record)
    block = (record.get("dataset") or {}).get("test_set") if isinstance(record.get("dataset"), dict) else None
    if isinstance(block, dict) and isinstance(block.get("fingerprint"), str):
        return GroundTruthKey("fingerprint", block["fingerprint"], block.get("n_images"),
                              legacy="\t".join(legacy) if legacy else None)
    if legacy:
        return GroundTruthKey(*legacy)
    return GroundTruthKey("unknown", "")


def describe(key: GroundTruthKey) -> str:
    """For messages: ``test set 1a2b3c4d5e6f (300 images)`` / ``dataset root ... (no fingerprint)``."""
    if key.basis == "fingerprint":
        return f"test set {key.value[:12]}" + (f" ({key.n_images} images)" if key.n_images else "")
    if key.basis == "unknown":
        return "an unknown test set (a legacy record without a fingerprint or dataset root)"
    return f"{key.basis} {key.value} (a legacy record without a test-set fingerprint)"

