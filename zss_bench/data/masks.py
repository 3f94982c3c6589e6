"""Read label PNGs as class indices and map native annotation ids to contiguous ids.

Why a module of its own: VOC and Context ship *palette* PNGs. Converting them to RGB (a
common bug, see ZegCLIP issue #22) silently yields colours instead of class ids, so every
label read in zss-bench goes through ``read_label_png``, which returns palette indices.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

_SINGLE_CHANNEL_MODES = {"P", "L", "I", "I;16", "I;16B", "I;16L", "1"}


class LabelFileError(ValueError):
    """A label file is unreadable, multi-channel or holds ids the protocol does not allow."""


def read_label_png(path: str | Path) -> np.ndarray:
    """Return the label map in ``path`` as a 2-D integer array (palette indices for 'P' PNGs)."""
    path = Path(path)
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode not in _SINGLE_CHANNEL_MODES:
                raise LabelFileError(
                    f"{path}: expected a single-channel or palette label PNG, got mode {mode!r} "
                    f"(an RGB rendering of the labels cannot be read back as class ids)"
                )
            arr = np.array(img)
    except LabelFileError:
        raise
    except FileNotFoundError:
        raise LabelFileError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise LabelFileError(f"{path}: unreadable or corrupt image ({exc})") from None
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    if arr.ndim != 2:
        raise LabelFileError(f"{path}: expected a 2-D label map, got shape {arr.shape}")
    return arr


def to_contiguous(native: np.ndarray, lut: np.ndarray, path: str | Path, what: str = "native") -> np.ndarray:
    """Map native annotation ids through ``lut`` (from ``Protocol.native_lut``).

    ``lut[v] == -1`` marks ids the protocol does not define; any such id is an error naming
    the file, the offending values and the allowed ones. Returns uint8 when the mapped ids fit.
    """
    if native.size and (int(native.min()) < 0 or int(native.max()) >= len(lut)):
        bad = np.unique(native[(native < 0) | (native >= len(lut))])[:10]
        raise LabelFileError(
            f"{path}: {what} label ids {bad.tolist()} are outside the protocol's native ids "
            f"(allowed: {_allowed(lut)})"
        )
    mapped = lut[native]
    if (mapped < 0).any():
        bad = np.unique(native[mapped < 0])[:10]
        raise LabelFileError(
            f"{path}: {what} label ids {bad.tolist()} are not defined by the protocol "
            f"(allowed: {_allowed(lut)})"
        )
    return mapped.astype(np.uint8 if mapped.max(initial=0) < 256 else np.int32)


def _allowed(lut: np.ndarray) -> str:
    valid = np.flatnonzero(lut >= 0)
    if len(valid) == 0:
        return "none"
    # compress runs: 1-20, 255
    runs, start, prev = [], int(valid[0]), int(valid[0])
    for v in valid[1:].tolist() + [None]:
        if v is not None and v == prev + 1:
            prev = v
            continue
        runs.append(f"{start}" if start == prev else f"{start}-{prev}")
        if v is not None:
            start = prev = v
    return ", ".join(runs)
