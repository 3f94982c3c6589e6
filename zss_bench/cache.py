"""Where zss-bench keeps derived files (dataset indexes, converted labels, embeddings).

Never inside a user's dataset folder: datasets are often read-only or shared. Override with
``ZSS_BENCH_CACHE``; otherwise ``$XDG_CACHE_HOME/zss-bench`` or ``~/.cache/zss-bench``.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    env = os.environ.get("ZSS_BENCH_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "zss-bench"


def cache_path(*parts: str) -> Path:
    """A path under the cache root (not created)."""
    return cache_root().joinpath(*parts)
