"""Output locations checked before any work starts: a read-only ``--results`` or ``--out`` is a one-line
error at second 0, not a ``PermissionError`` traceback after the training it was meant to record."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from zss_bench.records.store import RecordError


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Raise RecordError unless ``path`` is (or can be created as) a folder this process can write into.

    ``what`` names the option in the message (``--results``, ``--out``...). Nothing is left behind: a probe
    file is created and removed in the folder, and folders that did not exist are not created."""
    path = Path(path)
    probe_at = path
    while not probe_at.exists():  # the nearest existing ancestor decides whether the folder can be made
        if probe_at.parent == probe_at:
            break
        probe_at = probe_at.parent
    if probe_at.exists() and not probe_at.is_dir():
        raise RecordError(f"{what} {path}: {probe_at} exists and is not a folder")
    try:
        fd, name = tempfile.mkstemp(prefix=".zss-bench-write-probe-", dir=probe_at)
    except OSError as exc:
        raise RecordError(f"{what} {path}: cannot write in {probe_at} ({exc.strerror or exc}); "
                          "choose a writable folder before any work starts") from None
    os.close(fd)
    os.unlink(name)
    return path


def check_writable_file(path: str | Path, what: str) -> Path:
    """As :func:`check_writable_dir`, for a file to be written atomically (its folder must be writable and
    the path must not be a folder)."""
    path = Path(path)
    if path.is_dir():
        raise RecordError(f"{what} {path} is a folder; expected a file path")
    check_writable_dir(path.parent if str(path.parent) else Path("."), what)
    return path
