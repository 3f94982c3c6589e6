"""``zss-bench toy-clip export``: publish a pretrained toy CLIP as a new shipped tag.

Why: a teacher retrained elsewhere has other weights (CPU training is deterministic only per CPU type), so a
protocol's teacher must ship as bytes with a pinned sha256, like a real CLIP's published weights. This copies a
``toy-clip pretrain`` checkpoint into ``clip/weights/`` and adds its ``tags.json`` entry (file, sha256, size,
recipe, machine, zero-shot accuracy, dense accuracy when measured). An existing tag is never rebound.
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path

from zss_bench.clip.shipped import TAG_TABLE, WEIGHTS_DIR, ShippedWeightsError, sha256_of, tag_table

_TAG = re.compile(r"^[a-z0-9][a-z0-9.-]*$")


def checkpoint_info(checkpoint: Path) -> dict:
    """The info.json `toy-clip pretrain` wrote beside ``checkpoint`` (its recipe, time and accuracy)."""
    info_path = checkpoint.with_name("info.json")
    try:
        return json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ShippedWeightsError(f"{info_path}: missing; export takes a checkpoint written by "
                                  "`zss-bench toy-clip pretrain` (its info.json holds the recipe)") from None
    except ValueError as exc:
        raise ShippedWeightsError(f"{info_path}: not valid JSON ({exc})") from None


def export_toy_clip(checkpoint: str | Path, tag: str, description: str, *, dense: dict | None = None,
                    zero_shot: dict | None = None, weights_dir: Path = WEIGHTS_DIR, table_path: Path = TAG_TABLE) -> dict:
    """Copy ``checkpoint`` to ``weights_dir/<model>-<tag>.pt`` and add ``<model>:<tag>`` to the tag table.

    Returns the new entry. Refuses a tag that exists (rebinding would change the teacher behind records), a
    malformed tag, or a checkpoint without its ``info.json``. Writes are atomic: the table names the file only
    once the file is complete.
    """
    from zss_bench.records.provenance import cpu_model
    from zss_bench.records.store import atomic_write_bytes, atomic_write_text

    checkpoint = Path(checkpoint).expanduser()
    if not checkpoint.is_file():
        raise ShippedWeightsError(f"{checkpoint}: no such checkpoint")
    if not _TAG.match(tag):
        raise ShippedWeightsError(f"tag {tag!r}: expected lowercase letters, digits, '.' and '-' (e.g. synth-v2)")
    info = checkpoint_info(checkpoint)
    model = info.get("config", {}).get("model")
    if not isinstance(model, str):
        raise ShippedWeightsError(f"{checkpoint.with_name('info.json')}: no config.model")
    table = json.loads(table_path.read_text(encoding="utf-8")) if table_path.is_file() else {"models": {}}
    if tag in table.get("models", {}).get(model, {}):
        raise ShippedWeightsError(f"{model}:{tag} is already shipped ({table_path}); a tag is never rebound to "
                                  "other weights: choose a new tag")
    data = checkpoint.read_bytes()
    target = Path(weights_dir) / f"{model}-{tag}.pt"
    if target.exists():
        raise ShippedWeightsError(f"{target}: exists but is not in {table_path.name}; remove it or pick another tag")
    atomic_write_bytes(target, data)
    import torch

    entry = {
        "file": target.name,
        "sha256": sha256_of(target),
        "bytes": len(data),
        "format": "torch.save {'state_dict', 'zss_bench_toy_clip'}",
        "description": description,
        "recipe": {k: info.get(k) for k in ("config", "config_hash", "code_version")},
        "made_on": {"date": time.strftime("%Y-%m-%d"), "cpu": cpu_model(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(), "torch": torch.__version__,
                    "train_time_s": info.get("train_time_s")},
        # measured now on the protocol's world (``zero_shot``), else what pretraining measured
        "zero_shot": zero_shot or {"single": info.get("eval"), "ensemble": info.get("eval_ensemble")},
    }
    for block in entry["zero_shot"].values():
        if isinstance(block, dict):
            block.pop("per_class", None)
            block.pop("templates", None)
    if dense is not None:
        entry["dense_zero_shot"] = dense
    table.setdefault("models", {}).setdefault(model, {})[tag] = entry
    atomic_write_text(table_path, json.dumps(table, indent=2, ensure_ascii=False) + "\n")
    tag_table.cache_clear()
    return entry
