"""Write, find and read run records under ``<results>/runs/<protocol>/<method>/<run-id>/``.

A run directory holds ``record.json`` (schema-versioned metadata + metrics) and
``confusion.npz`` (the confusion matrix and per-image statistics, so any metric or
bootstrap can be recomputed without re-running the model). Directories are written under
a hidden temporary name and renamed into place, so a crash never leaves a half-written run
where readers look, and an existing run is never overwritten.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterator

SCHEMA = "zss-bench/run-record"
SCHEMA_VERSION = 1
RECORD_FILE = "record.json"
CONFUSION_FILE = "confusion.npz"
CURVES_FILE = "metrics.json"  # detectron2's JSON-lines training log, kept beside a trained run's record
_TMP_MARK = ".tmp-"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


class RecordError(ValueError):
    """A run record cannot be written, found or read."""


class RecordWarning(UserWarning):
    """A file under results/ was skipped (torn, foreign or from a newer schema)."""


@dataclass(frozen=True)
class LoadedRun:
    path: Path  # the run directory
    record: dict

    @property
    def confusion_path(self) -> Path:
        return self.path / CONFUSION_FILE


def new_run_id(now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return now.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def _safe(part: str) -> str:
    cleaned = _SAFE.sub("_", part).strip("._")
    if not cleaned:
        raise RecordError(f"cannot use {part!r} as a results path component")
    return cleaned


def run_dir_for(results_root: str | Path, record: dict) -> Path:
    return (Path(results_root) / "runs" / _safe(record["protocol"]["name"])
            / _safe(record["method"]["name"]) / _safe(record["run_id"]))


def write_run(results_root: str | Path, record: dict, cm=None,
              extra_files: dict[str, Path | bytes] | None = None) -> Path:
    """Atomically create the run directory for ``record`` (and ``cm``'s .npz); return its path.

    ``record`` gets ``schema``, ``schema_version``, ``run_id`` and ``created`` filled in if
    absent. ``extra_files`` (relative name -> a file to copy or the bytes to write: training
    curves, saved predictions) are written inside the temporary directory, so they appear
    together with the record or not at all, and are listed in ``record["files"]["extra"]``.
    Raises RecordError if the run directory already exists or an extra file is unusable.
    """
    record = dict(record)
    record.setdefault("schema", SCHEMA)
    record.setdefault("schema_version", SCHEMA_VERSION)
    record.setdefault("run_id", new_run_id())
    record.setdefault("created", datetime.now(timezone.utc).isoformat(timespec="seconds"))
    for key in ("protocol", "method"):
        if not isinstance(record.get(key), dict) or "name" not in record[key]:
            raise RecordError(f"run record needs a '{key}' block with a 'name'")
    extra = _check_extra_files(extra_files or {})
    final = run_dir_for(results_root, record)
    if final.exists():
        raise RecordError(f"run directory {final} already exists; refusing to overwrite it")
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".{final.name}{_TMP_MARK}{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        if cm is not None:
            cm.save(tmp / CONFUSION_FILE)
            record.setdefault("files", {})["confusion"] = CONFUSION_FILE
        for name, source in extra.items():
            _write_extra(tmp / name, source)
        if extra:
            record["files"] = {**record.get("files", {}), "extra": sorted(extra)}
        data = json.dumps(record, indent=2, sort_keys=False, allow_nan=False)
        with open(tmp / RECORD_FILE, "w", encoding="utf-8") as fh:
            fh.write(data + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


_RESERVED = {RECORD_FILE, CONFUSION_FILE}


def _check_extra_files(extra_files: dict) -> dict[str, Path | bytes]:
    """Validate ``write_run``'s extra files before anything is written: relative names that stay
    inside the run directory and do not replace its own files; sources that exist."""
    checked = {}
    for name, source in extra_files.items():
        rel = Path(str(name))
        if not str(name) or rel.is_absolute() or ".." in rel.parts or rel.as_posix() in _RESERVED:
            raise RecordError(f"extra file name {name!r}: must be a relative path inside the run directory, "
                              f"not {' or '.join(sorted(_RESERVED))}")
        if isinstance(source, (bytes, bytearray)):
            checked[rel.as_posix()] = bytes(source)
        elif isinstance(source, (str, os.PathLike)) and Path(source).is_file():
            checked[rel.as_posix()] = Path(source)
        else:
            raise RecordError(f"extra file {name!r}: source {source!r} is neither bytes nor an existing file")
    return checked


def _write_extra(dest: Path, source: Path | bytes) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(source, bytes):
        dest.write_bytes(source)
    else:
        shutil.copyfile(source, dest)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temp file + rename: readers never see a partial file."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` via a temp file + rename: a reader sees the old file or the whole new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_TMP_MARK}{secrets.token_hex(4)}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def _validate(record, path: Path) -> str | None:
    """Return why ``record`` is not a usable run record, or None."""
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        return "not a zss-bench run record (no 'schema': 'zss-bench/run-record')"
    version = record.get("schema_version")
    if not isinstance(version, int):
        return "its 'schema_version' is missing"
    if version > SCHEMA_VERSION:
        return f"written with record schema {version}; this zss-bench reads up to {SCHEMA_VERSION}"
    for key, fields in (("protocol", ("name", "version", "hash")), ("method", ("name",))):
        block = record.get(key)
        if not isinstance(block, dict) or any(f not in block for f in fields):
            return f"its '{key}' block lacks {', '.join(fields)}"
    if not isinstance(record.get("metrics"), dict):
        return "it has no 'metrics' block"
    return None


def load_run(path: str | Path) -> LoadedRun:
    """Read one run directory (or its record.json); RecordError says what is wrong with it."""
    path = Path(path)
    rec_path = path if path.name == RECORD_FILE else path / RECORD_FILE
    try:
        record = json.loads(rec_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecordError(f"{rec_path}: no run record there") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RecordError(f"{rec_path}: torn or corrupt record ({exc})") from None
    problem = _validate(record, rec_path)
    if problem:
        raise RecordError(f"{rec_path}: {problem}")
    return LoadedRun(rec_path.parent, record)


def _warn(message: str) -> None:
    warnings.warn(message, RecordWarning, stacklevel=3)


def iter_runs(results_root: str | Path, on_skip: Callable[[str], None] | None = None) -> Iterator[LoadedRun]:
    """Yield every valid run under ``results_root/runs``; report each skipped file via ``on_skip``.

    Skipped, with a message naming the path: torn or corrupt records, files that are not
    run records, unfinished (temporary) run directories, records from a newer schema.
    Never raises for bad files: one broken file must not hide every other result.
    """
    report = on_skip or _warn
    runs_root = Path(results_root) / "runs"
    if not runs_root.is_dir():
        return
    for dirpath, dirnames, filenames in os.walk(runs_root):
        here = Path(dirpath)
        depth = len(here.relative_to(runs_root).parts)
        for d in sorted(dirnames):
            if _TMP_MARK in d:
                report(f"skipping {here / d}: unfinished run directory (interrupted write)")
        dirnames[:] = sorted(d for d in dirnames if _TMP_MARK not in d)
        if depth == 3:
            dirnames[:] = []  # a run directory: do not descend into training outputs
            if RECORD_FILE not in filenames:
                report(f"skipping {here}: run directory without {RECORD_FILE}")
                continue
            try:
                yield load_run(here)
            except RecordError as exc:
                report(f"skipping {exc}")
        else:
            for name in sorted(filenames):
                if name.startswith(".") and _TMP_MARK in name:
                    report(f"skipping {here / name}: unfinished write")
                elif not name.startswith("."):
                    report(f"skipping {here / name}: foreign file (run records live in runs/<protocol>/<method>/<run-id>/)")


RESULTS_ENV = "ZSS_BENCH_RESULTS"
DEFAULT_RESULTS = "zss-results"


def default_results_root() -> str:
    """Where runs, grids and evaluations write records unless told (``--results DIR``):
    ``$ZSS_BENCH_RESULTS``, else ``./zss-results``. Never the project's committed ``results/``:
    a scratch run must not land in the published table; that folder is written only when a
    command names it (``--results results``)."""
    return os.environ.get(RESULTS_ENV) or DEFAULT_RESULTS


def resolve_run(spec: str | Path, results_root: str | Path | None = None) -> LoadedRun:
    """Find a run by directory, record.json path, or run id (searched under ``results_root``)."""
    path = Path(spec)
    if path.exists():
        return load_run(path)
    results_root = results_root or default_results_root()
    matches = sorted(Path(results_root).glob(f"runs/*/*/{spec}"))
    if not matches:
        raise RecordError(f"no run '{spec}': not a path, and no run with that id under {Path(results_root) / 'runs'}")
    if len(matches) > 1:
        raise RecordError(f"run id '{spec}' is ambiguous: {', '.join(str(m) for m in matches)}")
    return load_run(matches[0])
