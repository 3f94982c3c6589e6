"""``zss-bench prepare``: check a dataset against a protocol, index it, build the views.

One pass reads every annotation once (in parallel), validates it against the protocol
(readable, single-channel, same size as its image, only the protocol's native ids) and
writes, under the zss-bench cache (never into the dataset folder):

* ``index.json``: per image its size and the contiguous classes it contains, the split
  report and the training-view leakage audit;
* ``labels/train/``: the *training view*: seen classes re-indexed 0..S-1, unseen pixels set
  to the ignore label, images dropped per the protocol's unseen-pixel policy;
* ``labels/<eval split>/``: the evaluation view in the full contiguous 0..K-1 space.

Both views are plain single-channel PNGs, so a stock detectron2 ``DatasetMapper`` reads them.
The index is written last and atomically: its presence means the views are complete.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import secrets
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from zss_bench.cache import cache_path
from zss_bench.data.inductive import assert_seen_only, keeps_image, training_lut
from zss_bench.data.layouts import CONTIGUOUS, LAYOUTS, ImageEntry, Problem
from zss_bench.data.masks import LabelFileError, read_label_png, to_contiguous
from zss_bench.data.parallel import bounded_map
from zss_bench.protocol import Protocol
from zss_bench.records.store import atomic_write_text

INDEX_SCHEMA = "zss-bench/dataset-index"
INDEX_VERSION = 1
TRAIN_SPLIT = "train"


class PrepareError(ValueError):
    """The dataset does not match the protocol; the message names the file."""


@dataclass
class _Scan:
    entry: ImageEntry
    height: int = 0
    width: int = 0
    pixels: np.ndarray | None = None  # per contiguous class
    kept: bool = True
    problems: list[Problem] = field(default_factory=list)


def index_dir(protocol: Protocol, root: Path) -> Path:
    """Cache folder for (protocol definition, dataset root)."""
    root_key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:12]
    return cache_path("datasets", f"{protocol.name}-{protocol.short_hash}", root_key)


def _identity_lut(protocol: Protocol) -> np.ndarray:
    lut = np.full(max(256, protocol.ignore_label + 1), -1, np.int64)
    lut[: protocol.num_classes] = np.arange(protocol.num_classes)
    lut[protocol.ignore_label] = protocol.ignore_label
    return lut


def _image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size  # header only: decoding 100k JPEGs would dominate prepare


def _save_label(path: Path, arr: np.ndarray) -> None:
    Image.fromarray(arr.astype(np.uint8), mode="L").save(path)


def _scan(entry: ImageEntry, protocol: Protocol, luts: dict, split: str, out_dir: Path | None) -> _Scan:
    res = _Scan(entry)
    try:
        width, height = _image_size(entry.image)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        res.problems.append(Problem(str(entry.image), f"unreadable or corrupt image ({exc})"))
        return res
    try:
        native = read_label_png(entry.label)
        lut = luts["contiguous" if entry.label_format == CONTIGUOUS else "native"]
        full = to_contiguous(native, lut, entry.label, what="annotation")
    except LabelFileError as exc:
        message = str(exc)
        prefix = f"{entry.label}: "
        res.problems.append(Problem(str(entry.label), message[len(prefix):] if message.startswith(prefix) else message))
        return res
    if native.shape != (height, width):
        res.problems.append(Problem(str(entry.label), f"mask size {native.shape[1]}x{native.shape[0]} (WxH) differs "
                                                      f"from its image {entry.image} ({width}x{height})"))
        return res
    res.height, res.width = height, width
    k = protocol.num_classes
    valid = full[full != protocol.ignore_label].astype(np.int64)
    res.pixels = np.bincount(valid, minlength=k)[:k]
    if split == TRAIN_SPLIT:
        has_unseen = bool(res.pixels[list(protocol.unseen_ids)].any())
        has_seen = bool(res.pixels[list(protocol.seen_ids)].any())
        res.kept = keeps_image(protocol.unseen_pixel_policy, has_unseen, has_seen)
        if res.kept and out_dir is not None:
            target = luts["train_contiguous" if entry.label_format == CONTIGUOUS else "train_native"][native]
            assert_seen_only(target, len(protocol.seen_ids), protocol.ignore_label, where=f"training view of {entry.label}")
            _save_label(out_dir / f"{entry.id}.png", target)
    elif out_dir is not None:
        _save_label(out_dir / f"{entry.id}.png", full)
    return res


def _check_world_surface(root: Path, protocol: Protocol) -> None:
    """A generated world drawn for one protocol version never passes for another (flat v1 objects under a
    textured v2 protocol would be a silently different benchmark)."""
    marker = Path(root) / "world.json"
    if not marker.is_file():
        return  # a user's own VOC-style folder: nothing recorded to compare
    try:
        drawn = json.loads(marker.read_text(encoding="utf-8")).get("surface", "flat")
    except ValueError:
        raise PrepareError(f"{marker}: not valid JSON; regenerate the world with `zss-bench synth generate`") from None
    wanted = protocol.world["surface"]
    if drawn != wanted:
        raise PrepareError(f"{marker}: this world was drawn with {drawn} object surfaces, but protocol "
                           f"{protocol.ref} (v{protocol.version}) needs {wanted} ones; generate its world with "
                           f"`zss-bench synth generate --protocol {protocol.ref} --out DIR`")


def prepare_dataset(dataset: str, root, protocol: Protocol, *, report_only: bool = False, workers: int = 4,
                    progress: bool = True) -> dict:
    """Check, index and convert ``dataset`` at ``root`` for ``protocol``; return the report.

    Without ``report_only`` the first error raises PrepareError (nothing is written to the
    cache unless every image passes); with it, every problem is listed in the report.
    """
    layout_cls = LAYOUTS.get(dataset)
    if protocol.dataset != dataset:
        raise PrepareError(f"protocol {protocol.name} is for dataset '{protocol.dataset}', not '{dataset}'")
    layout = layout_cls(root)
    if dataset == "synth":
        _check_world_surface(layout.root, protocol)
    luts = {"native": protocol.native_lut(), "contiguous": _identity_lut(protocol)}
    luts["train_native"] = training_lut(protocol, luts["native"])
    luts["train_contiguous"] = training_lut(protocol, luts["contiguous"])

    target = index_dir(protocol, layout.root)
    staging = None if report_only else target.parent / f".{target.name}.tmp-{secrets.token_hex(4)}"
    problems: list[Problem] = []
    report = {"dataset": dataset, "root": str(layout.root),
              "protocol": {"name": protocol.name, "version": protocol.version, "hash": protocol.content_hash},
              "unseen_pixel_policy": protocol.unseen_pixel_policy, "splits": {}, "class_pixels": {}}
    index_splits = {}
    try:
        for split, spec in protocol.image_sets.items():
            entries, layout_problems = layout.entries(spec["list"], split)
            problems += layout_problems
            _stop_on_error(problems, report_only)
            expected = spec.get("count")
            if expected is not None and len(entries) != expected:
                problems.append(Problem(str(layout.root), f"split '{split}' ({spec['list']}) has {len(entries)} images; "
                                        f"protocol {protocol.name} expects {expected}", severity="warning"))
            out_dir = None
            if staging is not None:
                out_dir = staging / "labels" / split
                out_dir.mkdir(parents=True)
            scans = []
            run = bounded_map(lambda e: _scan(e, protocol, luts, split, out_dir), entries, workers=workers)
            for res in tqdm(run, total=len(entries), desc=f"prepare {split}", unit="img", disable=not progress):
                problems += res.problems
                _stop_on_error(problems, report_only)
                if res.pixels is not None:
                    scans.append(res)
            report["splits"][split], report["class_pixels"][split], index_splits[split] = _summarise(
                split, spec, expected, scans, protocol)
        report["problems"] = [{"path": p.path, "message": p.message, "severity": p.severity} for p in problems]
        report["ok"] = not any(p.severity == "error" for p in problems)
        if staging is not None:
            index = {"schema": INDEX_SCHEMA, "schema_version": INDEX_VERSION, "report": report, "splits": index_splits}
            atomic_write_text(staging / "index.json", json.dumps(index, separators=(",", ":")))
            if target.exists():
                shutil.rmtree(target)
            staging.rename(target)
            report["cache"] = str(target)
    finally:
        if staging is not None and staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return report


def _stop_on_error(problems: list[Problem], report_only: bool) -> None:
    if report_only:
        return
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        raise PrepareError(str(errors[0]) + ("" if len(errors) == 1 else f" (and {len(errors) - 1} more problems; "
                                                                            "--report-only lists them all)"))


def _summarise(split: str, spec: dict, expected, scans: list[_Scan], protocol: Protocol):
    k = protocol.num_classes
    pixels = np.zeros(k, np.int64)
    for s in scans:
        pixels += s.pixels
    unseen, seen = list(protocol.unseen_ids), list(protocol.seen_ids)
    stats = {"list": spec["list"], "images": len(scans), "expected": expected}
    images = []
    for s in scans:
        if split == TRAIN_SPLIT and not s.kept:
            continue
        images.append({"id": s.entry.id, "image": str(s.entry.image), "annotation": str(s.entry.label),
                       "height": s.height, "width": s.width, "classes": np.flatnonzero(s.pixels).tolist()})
    if split == TRAIN_SPLIT:
        with_unseen = [s for s in scans if s.pixels[unseen].any()]
        no_seen = [s for s in scans if not s.pixels[seen].any()]
        kept = [s for s in scans if s.kept]
        stats.update({
            "with_unseen": len(with_unseen),
            "empty_after_masking": len(no_seen),
            "dropped_by_policy": len(scans) - len(kept),
            "kept": len(kept),
            "empty_after_policy": sum(1 for s in kept if not s.pixels[seen].any()),
            "unseen_pixels_masked": int(sum(int(s.pixels[unseen].sum()) for s in kept)),
        })
    class_pixels = {name: int(n) for name, n in zip(protocol.classes, pixels)}
    return stats, class_pixels, images


def load_index(protocol: Protocol, root) -> dict:
    """The prepared index for (protocol, root); a clear error if ``prepare`` has not run."""
    from zss_bench.data.layouts import dataset_root

    root = dataset_root(root) if root is not None else None
    path = index_dir(protocol, root) / "index.json" if root is not None else None
    if path is None or not path.is_file():
        raise PrepareError(
            f"dataset for protocol {protocol.name} at {root} is not prepared: run "
            f"`zss-bench prepare {protocol.dataset} --root {root} --protocol {protocol.name}`"
        )
    index = json.loads(path.read_text(encoding="utf-8"))
    if index.get("schema") != INDEX_SCHEMA or index.get("schema_version") != INDEX_VERSION:
        raise PrepareError(f"{path}: written by another zss-bench version; run prepare again")
    index["dir"] = str(path.parent)
    return index
