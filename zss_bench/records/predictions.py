"""Example predictions kept with a run record (``zss-bench run --save-predictions N``).

A score says how well a method segments; a few predictions beside their ground truth show how it
fails (an unseen class swallowed by a seen neighbour, a blurred border). The first N test images in
loader order are stored inside the run directory under ``predictions/``: the prediction and the
ground truth (the evaluation view, exactly as the evaluator read it) as index PNGs of the protocol's
contiguous class ids (255 = ignore), and a copy of the input image whose longer side is at most
512 px. ``record["predictions"]`` lists them; the overlay picture and the HTML report read them
back through :func:`load_predictions`, never from the dataset folder (which may be gone).
"""
from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from zss_bench.records.store import LoadedRun, RecordError

PREDICTIONS_DIR = "predictions"
MAX_SIDE = 512
FORMAT = "index PNGs of contiguous class ids (255 = ignore); image copy with its longer side <= 512 px"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class KeptPrediction:
    """One prediction held by the evaluator until the record is written."""

    image_file: str  # the input image the model saw
    image_id: str
    pred: np.ndarray  # (H, W) contiguous ids
    gt: np.ndarray  # (H, W) evaluation view, as the evaluator read it


@dataclass(frozen=True)
class SavedPrediction:
    """One saved prediction read back from a run record."""

    image_id: str
    image: np.ndarray  # (h, w, 3) uint8, possibly downscaled
    gt: np.ndarray  # (H, W) contiguous ids, 255 = ignore
    pred: np.ndarray  # (H, W) contiguous ids


def index_png(labels: np.ndarray) -> bytes:
    """A single-channel PNG of class indices (ids above 255 cannot occur: the ignore label is 255)."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"an index map must be 2-D, got shape {labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() > 255):
        raise ValueError(f"class ids must lie in 0..255 to be stored as an index PNG (found {labels.min()}..{labels.max()})")
    buf = io.BytesIO()
    Image.fromarray(labels.astype(np.uint8), mode="L").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def image_copy(path: str | Path, max_side: int = MAX_SIDE) -> tuple[str, bytes]:
    """(extension, bytes) of a small RGB copy of the input image: JPEG stays JPEG, anything else PNG."""
    try:
        with Image.open(path) as im:
            jpeg = im.format == "JPEG"
            rgb = im.convert("RGB")
    except OSError as exc:
        raise RecordError(f"cannot read input image {path} to save with the prediction ({exc})") from None
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)  # only ever shrinks
    buf = io.BytesIO()
    if jpeg:
        rgb.save(buf, format="JPEG", quality=90)
        return "jpg", buf.getvalue()
    rgb.save(buf, format="PNG", optimize=True)
    return "png", buf.getvalue()


def prediction_files(kept: list[KeptPrediction]) -> tuple[dict[str, bytes], dict]:
    """-> (extra files for ``write_run``, the record's ``predictions`` block) for the kept predictions."""
    files: dict[str, bytes] = {}
    items = []
    for i, k in enumerate(kept):
        stem = f"{PREDICTIONS_DIR}/{i:03d}-{_SAFE.sub('_', Path(k.image_file).stem).strip('._') or 'image'}"
        ext, image = image_copy(k.image_file)
        item = {"id": str(k.image_id), "image": f"{stem}-image.{ext}", "gt": f"{stem}-gt.png", "pred": f"{stem}-pred.png"}
        files[item["image"]], files[item["gt"]], files[item["pred"]] = image, index_png(k.gt), index_png(k.pred)
        items.append(item)
    return files, {"n": len(items), "format": FORMAT, "items": items}


def load_predictions(run: LoadedRun, n: int | None = None) -> list[SavedPrediction]:
    """The first ``n`` (all if None) saved predictions of ``run``; [] when it saved none.
    A listed file that is missing or unreadable is a RecordError naming it."""
    block = run.record.get("predictions")
    if not block:
        return []
    items = block.get("items") if isinstance(block, dict) else None
    if not isinstance(items, list):
        raise RecordError(f"{run.path / 'record.json'}: 'predictions' has no list of 'items'")
    out = []
    for i, item in enumerate(items[:n] if n is not None else items):
        arrays = {}
        for key in ("image", "gt", "pred"):
            rel = item.get(key) if isinstance(item, dict) else None
            if not isinstance(rel, str):
                raise RecordError(f"{run.path / 'record.json'}: predictions.items[{i}] lacks '{key}'")
            try:
                with Image.open(run.path / rel) as im:
                    arrays[key] = np.array(im.convert("RGB") if key == "image" else im)
            except OSError as exc:
                raise RecordError(f"{run.path / rel} (predictions.items[{i}].{key}): cannot read it ({exc})") from None
        if arrays["gt"].shape != arrays["pred"].shape or arrays["gt"].ndim != 2:
            raise RecordError(f"{run.path / item['pred']}: prediction {arrays['pred'].shape} and ground truth "
                              f"{arrays['gt'].shape} must be 2-D maps of one size")
        out.append(SavedPrediction(str(item.get("id", i)), arrays["image"], arrays["gt"], arrays["pred"]))
    return out
