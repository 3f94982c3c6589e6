"""Class text embeddings (CLIP prompt ensembling) with a disk cache and an audit trail.

Why a cache: every training run, evaluation and test encodes the same class names with the
same templates; encoding 171 classes x 80 templates through a large text tower costs far
more than reading a small array. Why an audit: inductive zero-shot segmentation forbids
unseen class names from reaching the model before evaluation; :data:`text_encoder_audit`
records every class name this process encoded (or served from the cache), so a runner can
prove that only seen names were used during training.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zss_bench.cache import cache_path
from zss_bench.records.store import atomic_write_text

__all__ = [
    "FORMAT_VERSION",
    "TextEncoderAudit",
    "cache_key",
    "class_text_embeddings",
    "encode_prompts",
    "text_encoder_audit",
]

FORMAT_VERSION = 1  # bump when the embedding recipe changes: old cache entries become misses


class TextEncoderAudit:
    """Which class names reached a text encoder in this process (thread-safe).

    Each event is ``{"names", "source" ("encoded" or "cache"), "model", "weights_hash",
    "n_templates"}``. ``names()`` is the union over events; ``leaked(forbidden)`` the
    forbidden names among them (case-insensitive), e.g. a protocol's unseen names.
    """

    def __init__(self) -> None:
        self._events: list[dict[str, Any]] = []
        self._lock = threading.Lock()

    def record(self, names: Iterable[str], *, source: str, model: str = "", weights_hash: str = "",
               n_templates: int = 0) -> None:
        event = {"names": tuple(names), "source": source, "model": model,
                 "weights_hash": weights_hash, "n_templates": n_templates}
        with self._lock:
            self._events.append(event)

    def names(self) -> set[str]:
        with self._lock:
            return {n for e in self._events for n in e["names"]}

    def events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(e) for e in self._events]

    def leaked(self, forbidden: Iterable[str]) -> list[str]:
        bad = {str(f).casefold() for f in forbidden}
        return sorted(n for n in self.names() if n.casefold() in bad)

    def reset(self) -> None:
        with self._lock:
            self._events.clear()


text_encoder_audit = TextEncoderAudit()


def _check_inputs(class_names: Sequence[str], templates: Sequence[str]) -> tuple[list[str], list[str]]:
    if isinstance(class_names, str) or isinstance(templates, str):
        raise TypeError("class_names and templates must be sequences of strings, not a single string")
    names, tpls = list(class_names), list(templates)
    if not names:
        raise ValueError("class_names is empty")
    if not tpls:
        raise ValueError("templates is empty")
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise ValueError(f"class name {n!r} is not a non-empty string")
    for t in tpls:
        if not isinstance(t, str) or t.count("{}") != 1:
            raise ValueError(f"template {t!r} must contain exactly one '{{}}'")
    return names, tpls


def cache_key(clip, class_names: Sequence[str], templates: Sequence[str]) -> str:
    """sha256 over everything that determines the embeddings (order included)."""
    doc = {"format": FORMAT_VERSION, "model": clip.name, "weights_hash": clip.weights_hash,
           "context_length": clip.context_length, "classes": list(class_names),
           "templates": list(templates)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, ensure_ascii=True).encode()).hexdigest()


def _model_device(model: torch.nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@torch.no_grad()
def encode_prompts(clip, prompts: Sequence[str], batch_size: int = 256) -> torch.Tensor:
    """L2-normalised text embeddings (N, D) float32 on CPU, encoded in batches.

    Not audited: it sees prompts, not class names; use :func:`class_text_embeddings`.
    """
    device = _model_device(clip.model)
    out = []
    for i in range(0, len(prompts), batch_size):
        tokens = clip.tokenizer(list(prompts[i:i + batch_size])).to(device)
        feats = clip.model.encode_text(tokens).float()
        out.append(torch.nn.functional.normalize(feats, dim=-1).cpu())
    return torch.cat(out)


def _paths(key: str) -> tuple[Path, Path]:
    base = cache_path("text-embeddings", key[:2])
    return base / f"{key}.npy", base / f"{key}.json"


def _read(npy: Path, meta: Path, key: str, n: int) -> torch.Tensor | None:
    try:
        doc = json.loads(meta.read_text(encoding="utf-8"))
        arr = np.load(npy, allow_pickle=False)
    except (OSError, ValueError):
        return None
    if doc.get("key") != key or arr.dtype != np.float32 or arr.ndim != 2 or arr.shape[0] != n:
        return None  # foreign or stale entry: recompute and overwrite
    return torch.from_numpy(arr)


def _write(npy: Path, meta: Path, arr: np.ndarray, doc: dict) -> None:
    npy.parent.mkdir(parents=True, exist_ok=True)
    tmp = npy.with_name(f".{npy.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            np.save(fh, arr, allow_pickle=False)
        os.replace(tmp, npy)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    atomic_write_text(meta, json.dumps(doc, indent=1, ensure_ascii=True) + "\n")  # sidecar last: marks complete


def class_text_embeddings(clip, class_names: Sequence[str], templates: Sequence[str], *,
                          cache: bool = True, batch_size: int = 256,
                          audit: TextEncoderAudit | None = None) -> torch.Tensor:
    """(C, D) float32 CPU tensor, row c = normalised mean of the normalised embeddings of
    ``template.format(class_names[c])`` over ``templates`` (one template: just that one).

    Cached under ``cache_path("text-embeddings")`` keyed by model name, weights hash, the
    ordered class names and templates; a hit never touches the text encoder. Only the names
    passed are encoded, and they are recorded in ``audit`` (default: the process-wide
    :data:`text_encoder_audit`) whether encoded or served from the cache.
    """
    names, tpls = _check_inputs(class_names, templates)
    audit = text_encoder_audit if audit is None else audit
    key = cache_key(clip, names, tpls)
    npy, meta = _paths(key)
    if cache:
        hit = _read(npy, meta, key, len(names))
        if hit is not None:
            audit.record(names, source="cache", model=clip.name, weights_hash=clip.weights_hash,
                         n_templates=len(tpls))
            return hit
    prompts = [t.replace("{}", n) for n in names for t in tpls]
    audit.record(names, source="encoded", model=clip.name, weights_hash=clip.weights_hash,
                 n_templates=len(tpls))
    per_prompt = encode_prompts(clip, prompts, batch_size=batch_size)
    emb = per_prompt.view(len(names), len(tpls), -1).mean(dim=1)
    emb = torch.nn.functional.normalize(emb, dim=-1).contiguous()
    if cache:
        doc = {"key": key, "format": FORMAT_VERSION, "model": clip.name, "spec": clip.spec,
               "weights_hash": clip.weights_hash, "context_length": clip.context_length,
               "classes": names, "templates": tpls, "shape": list(emb.shape)}
        _write(npy, meta, emb.numpy(), doc)
    return emb
