"""``zss-bench grid``: run a declared set of (method, config, seed) cells, one process each.

Like timm's bulk runner: every cell is a separate ``zss-bench run`` subprocess, so a crash or a
leak in one cell cannot contaminate the next, and cells whose record already exists (same
protocol hash, method, config label and seed) are skipped, so an interrupted grid resumes.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zss_bench.protocol import load_protocol
from zss_bench.records.store import iter_runs


class GridError(ValueError):
    """The grid file is malformed."""


@dataclass
class Cell:
    method: str
    seed: int
    label: str
    opts: list[str] = field(default_factory=list)


def load_grid(path: str | Path) -> tuple[str, list[Cell]]:
    """Parse ``protocol`` and ``cells`` (each: method, seeds, optional label and opts)."""
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise GridError(f"{path}: cannot read the grid ({exc})") from None
    if not isinstance(doc, dict) or "protocol" not in doc or not isinstance(doc.get("cells"), list):
        raise GridError(f"{path}: expected a mapping with 'protocol' and a list 'cells'")
    cells = []
    for i, c in enumerate(doc["cells"]):
        if not isinstance(c, dict) or "method" not in c:
            raise GridError(f"{path}: cells[{i}] needs a 'method'")
        opts = [str(x) for x in c.get("opts", [])]
        if len(opts) % 2:
            raise GridError(f"{path}: cells[{i}].opts must be KEY VALUE pairs")
        label = str(c.get("label", "default"))
        for seed in c.get("seeds", [0]):
            cells.append(Cell(c["method"], int(seed), label, opts))
    return str(doc["protocol"]), cells


def _done(results: str, protocol: str, protocol_hash: str, cell: Cell) -> bool:
    for run in iter_runs(results, on_skip=lambda m: None):
        rec = run.record
        if (rec["protocol"]["name"] == protocol and rec["protocol"].get("hash") == protocol_hash
                and rec["method"]["name"] == cell.method
                and rec["method"].get("label") == cell.label and rec.get("provenance", {}).get("seed") == cell.seed
                and rec.get("kind") == "run"):
            return True
    return False


def run_grid(path: str | Path, *, results: str = "results", work_dir: str = "work_dirs", extra: list[str] | None = None,
             data_root: str | None = None, dry_run: bool = False) -> int:
    protocol, cells = load_grid(path)
    protocol_hash = load_protocol(protocol).content_hash  # an edited protocol makes every cell due again
    failures = 0
    for i, cell in enumerate(cells, 1):
        tag = f"[{i}/{len(cells)}] {cell.method} [{cell.label}] seed {cell.seed}"
        if _done(results, protocol, protocol_hash, cell):
            print(f"{tag}: record exists, skipped", flush=True)
            continue
        cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--method", cell.method, "--protocol", protocol,
               "--seed", str(cell.seed), "--results", results, "--work-dir", work_dir,
               *(["--data-root", str(data_root)] if data_root else []), *cell.opts, "ZSS.LABEL", cell.label, *(extra or [])]
        print(f"{tag}: {' '.join(cmd[3:])}", flush=True)
        if dry_run:
            continue
        rc = subprocess.run(cmd).returncode
        if rc:
            failures += 1
            print(f"{tag}: FAILED (exit {rc}); continuing with the next cell", flush=True)
    return 1 if failures else 0
