"""Failed-cell notes: ``<results>/failed/<protocol>/<method>/<label>-seed<N>.json``.

A grid or sweep cell that crashes, is killed or runs out of memory leaves no run record, so
without a note it would silently vanish from the tables. The note says what failed (exit
code, log path, the log's last lines) and lives beside the records, so ``zss-bench
leaderboard`` lists the cell as failed (never averaged) and ``--retry-failed`` finds it. A cell
that later succeeds removes its note. Notes are written atomically like everything else
under results/.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Iterator

from zss_bench.records.store import _safe, atomic_write_text

FAILED_DIR = "failed"
TAIL_LINES = 20


def note_path(results_root: str | Path, protocol: str, method: str, label: str, seed: int) -> Path:
    return Path(results_root) / FAILED_DIR / _safe(protocol) / _safe(method) / f"{_safe(label)}-seed{int(seed)}.json"


def log_tail(log: str | Path, lines: int = TAIL_LINES) -> list[str]:
    """The last ``lines`` lines of a log (progress-bar carriage returns collapsed); [] if unreadable."""
    try:
        with open(log, "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 64 * 1024))
            text = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    return [line.rsplit("\r", 1)[-1] for line in text.splitlines()[-lines:]]


def write_note(path: str | Path, identity: dict, exit_code: int | None, log: str | Path, command: list[str]) -> Path:
    """Record that a cell failed (replacing an earlier note of the same cell)."""
    note = {**identity, "exit": exit_code, "signal": -exit_code if exit_code is not None and exit_code < 0 else None,
            "log": str(log), "last_lines": log_tail(log), "command": [str(c) for c in command],
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    atomic_write_text(path, json.dumps(note, indent=2) + "\n")
    return Path(path)


def clear_note(path: str | Path) -> None:
    Path(path).unlink(missing_ok=True)


def iter_notes(results_root: str | Path, protocol: str | None = None) -> Iterator[tuple[Path, dict]]:
    """Every readable failed-cell note (a torn one is reported as failed with what is known)."""
    root = Path(results_root) / FAILED_DIR
    if not root.is_dir():
        return
    for path in sorted(root.glob("*/*/*.json")):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            note = {"protocol": path.parts[-3], "method": path.parts[-2], "label": path.stem, "exit": None,
                    "error": f"unreadable note ({exc})"}
        if protocol is None or note.get("protocol") == protocol:
            yield path, note
