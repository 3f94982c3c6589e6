"""Pretrained tags whose weights ship inside zss-bench (``zss-toy-vit:synth-v1``).

Why: the synth-15-5 teacher is pretrained on CPU, and CPU training is deterministic on one CPU
type but not across types, so a teacher retrained on a user's machine has other weights than
the one behind the committed records. Real CLIPs solve this with published weights; the toy
CLIP does the same: its weights live in the package (``weights/``, installed with it, a wheel
too), its sha256 is pinned in the tag table ``weights/tags.json`` and verified at every load,
and it loads through the same local-checkpoint path as any open_clip ``NAME:/path/to/ckpt``.

The table is data: one entry per (model, tag) with the weights file (relative to
``weights/``), its sha256 and size, how it was made and what it scores. New entries are
written by ``zss-bench toy-clip export``; an existing tag is never rebound to other weights.
"""
from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
TAG_TABLE = WEIGHTS_DIR / "tags.json"
REFERENCE_TOY = ("zss-toy-vit", "synth-v1")  # the synth protocols' default teacher


class ShippedWeightsError(ValueError):
    """A shipped tag's weights are missing or are not the pinned bytes."""


@lru_cache(maxsize=1)
def tag_table() -> dict[str, dict[str, dict]]:
    """``{model: {tag: entry}}`` from ``weights/tags.json`` (empty if the file is absent)."""
    try:
        doc = json.loads(TAG_TABLE.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as exc:
        raise ShippedWeightsError(f"{TAG_TABLE}: not valid JSON ({exc})") from None
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise ShippedWeightsError(f"{TAG_TABLE}: expected a mapping 'models' -> {{tag: entry}}")
    for model, tags in models.items():
        for tag, entry in (tags or {}).items():
            for key in ("file", "sha256"):
                if not isinstance(entry, dict) or not isinstance(entry.get(key), str):
                    raise ShippedWeightsError(f"{TAG_TABLE}: models.{model}.{tag} needs a string '{key}'")
    return models


def shipped_tags(model: str) -> list[str]:
    return sorted(tag_table().get(model, {}))


def reference_toy_spec() -> str:
    """The CLIP spec synth protocols use when a run names none: ``zss-toy-vit:synth-v1``."""
    return f"{REFERENCE_TOY[0]}:{REFERENCE_TOY[1]}"


def sha256_of(path: Path) -> str:
    """sha256 of a file's bytes, always recomputed (verification must not trust a memo)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def verified_weights(model: str, tag: str, weights_dir: Path | None = None) -> tuple[Path, dict]:
    """The weights file of ``model:tag`` after checking it against the pinned sha256.

    Raises :class:`ShippedWeightsError` naming the file and both hashes on a mismatch, or the
    file and the expected hash when it is missing (a broken install or checkout).
    """
    try:
        entry = tag_table()[model][tag]
    except KeyError:
        raise ShippedWeightsError(f"no shipped tag {model}:{tag} in {TAG_TABLE}") from None
    path = (weights_dir or WEIGHTS_DIR) / entry["file"]
    if not path.is_file():
        raise ShippedWeightsError(
            f"shipped weights for {model}:{tag} are missing: {path} does not exist (expected sha256 "
            f"{entry['sha256']}); reinstall zss-bench, or in a checkout restore the file with git")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise ShippedWeightsError(
            f"shipped weights for {model}:{tag} are corrupt: {path} has sha256 {actual}, but {TAG_TABLE.name} "
            f"pins {entry['sha256']}; reinstall zss-bench, or in a checkout restore the file with git")
    return path, entry
