"""Ordered, bounded parallel map for per-image I/O (PNG decoding releases the GIL)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int = 4, window: int | None = None) -> Iterator[R]:
    """Like ``ThreadPoolExecutor.map`` but with at most ``window`` results in flight (bounded memory)."""
    workers = max(1, workers)
    window = window or 4 * workers
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque()
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= window:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for fut in pending:
                fut.cancel()
