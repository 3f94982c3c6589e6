"""Paths in records, written relative to a named root instead of one machine's absolute path.

Why: a committed record is read on other machines. ``/root/.cache/zss-bench/synth-world/...``
names one user's home; ``$ZSS_BENCH_CACHE/synth-world/...`` names the same file on any machine.
Roots, most specific first: ``$ZSS_BENCH_CACHE`` (the zss-bench cache), ``$DETECTRON2_DATASETS``
(the dataset root, when set) and ``~`` (the home folder). Other paths are kept as they are.
"""
from __future__ import annotations

import os
from pathlib import Path

CACHE_VAR, DATASETS_VAR = "$ZSS_BENCH_CACHE", "$DETECTRON2_DATASETS"


def _roots() -> list[tuple[str, Path]]:
    from zss_bench.cache import cache_root

    roots = [(CACHE_VAR, cache_root())]
    if os.environ.get("DETECTRON2_DATASETS"):
        roots.append((DATASETS_VAR, Path(os.environ["DETECTRON2_DATASETS"]).expanduser()))
    roots.append(("~", Path.home()))
    return [(name, Path(os.path.abspath(p))) for name, p in roots]


def portable_path(path: str | os.PathLike) -> str:
    """``path`` relative to the first root that contains it (``$ZSS_BENCH_CACHE/x``), else unchanged."""
    text = str(path)
    if not text or not os.path.isabs(text):
        return text
    p = Path(os.path.abspath(text))
    for name, root in _roots():
        if p == root or root in p.parents:
            rel = p.relative_to(root).as_posix()
            return name if rel == "." else f"{name}/{rel}"
    return text


def expand_path(text: str) -> str:
    """The inverse of :func:`portable_path` on this machine (absolute paths pass through)."""
    text = str(text or "")
    for name, root in _roots():
        if text == name:
            return str(root)
        if text.startswith(name + "/"):
            return str(root / text[len(name) + 1:])
    return text


def portable_spec(spec: str) -> str:
    """A CLIP spec with its checkpoint path (``NAME:/abs/ckpt``, ``local-dir:/abs``) made portable."""
    spec = str(spec or "")
    if os.path.isabs(spec):
        return portable_path(spec)
    head, sep, rest = spec.partition(":")
    return f"{head}:{portable_path(rest)}" if sep and os.path.isabs(rest) else spec


def expand_spec(spec: str) -> str:
    """The inverse of :func:`portable_spec` on this machine."""
    spec = str(spec or "")
    head, sep, rest = spec.partition(":")
    if spec.startswith(("$", "~")) and not sep:
        return expand_path(spec)
    return f"{head}:{expand_path(rest)}" if sep and rest.startswith(("$", "~")) else spec
