"""``zss-bench grid``: run a declared set of (method, config, seed) cells, one process each.

Like timm's bulk runner: every cell is a separate ``zss-bench run`` subprocess, so a crash or a
leak in one cell cannot contaminate the next, and cells whose record already exists (same
protocol hash, method, config label and seed, and made with the CLIP weights this machine would
use now) are skipped, so an interrupted grid resumes. A record made with other CLIP weights (a
toy CLIP pretrained on another CPU, another checkpoint) does not count: the cell runs again, so a
table regenerated from one grid never silently mixes teachers. Knowing those weights means loading
the CLIP once per grid (for synth protocols the shipped tag ``zss-toy-vit:synth-v1``: seconds).

A due cell runs with ``--resume``: a cell killed mid-training continues from its last checkpoint
(bit-for-bit the uninterrupted run), and a cell whose training finished but whose evaluation was
cut off is only evaluated again; a grid never deletes a checkpoint.

A cell with ``eval_of: LABEL`` trains nothing: it re-evaluates the final checkpoint of the cell
``LABEL`` (same method and seed) with its own ``opts``, for test-time-only variants (a
calibration, a prior) that must not cost, or differ by, a second training run.

Overrides given to the whole grid (``zss-bench grid --opts KEY VALUE ...``) are part of every
cell's identity: the label gets a suffix derived from them as ``zss-bench run`` derives a label
(``default`` + ``SOLVER.MAX_ITER 20`` -> ``default+MAX_ITER=20``; keys outside the config hash,
such as ``ZSS.N_BOOT`` or ``MODEL.DEVICE``, add nothing), so a shortened grid is filed, skipped and
averaged apart from the full one and never counts as its record. ``ZSS.CLIP`` adds nothing to the
label either: the teacher is part of a cell's identity through its weights hash (above), which a
label spelling a path or tag could only get wrong (two specs of the same weights are one cell).

A cell may declare a ``sweep`` (``{method: chimera, sweep: {KEY: [v1, v2]}, seeds: [0, 1, 2]}``): the
Cartesian product becomes cells (``engine.sweep``) whose identity is the hash of their resolved config.
A cell that fails leaves a note under ``<results>/failed/`` (``records.failed``) that the leaderboard
lists; later runs skip it until ``--retry-failed``, which runs only failed cells. Cells run through an
executor (``engine.executors``): local processes (``--max-parallel N``) or a submitit job array (Slurm).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from zss_bench.engine.labels import overrides_label
from zss_bench.engine.sweep import Sweep, SweepError, sweep_from_mapping, sweep_points
from zss_bench.protocol import Protocol, load_protocol
from zss_bench.records.paths import expand_path
from zss_bench.records.store import iter_runs


class GridError(ValueError):
    """The grid file is malformed."""


@dataclass
class Cell:
    method: str
    seed: int
    label: str
    opts: list[str] = field(default_factory=list)
    eval_of: str | None = None  # label of the cell whose checkpoint this cell re-evaluates
    swept: dict | None = None  # a sweep cell: the swept keys' values (its identity is its config hash)
    sweep: str | None = None  # ... and the title of the sweep it belongs to
    config_hash: str | None = None  # set by resolve_config_hashes for sweep cells


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
        if "sweep" in c:
            cells += sweep_cells(_grid_sweep(path, i, c))
            continue
        opts = [str(x) for x in c.get("opts", [])]
        if len(opts) % 2:
            raise GridError(f"{path}: cells[{i}].opts must be KEY VALUE pairs")
        label = str(c.get("label", "default"))
        eval_of = c.get("eval_of")
        if eval_of is not None and str(eval_of) == label:
            raise GridError(f"{path}: cells[{i}] cannot be 'eval_of' its own label '{label}'")
        for seed in c.get("seeds", [0]):
            cells.append(Cell(c["method"], int(seed), label, opts, None if eval_of is None else str(eval_of)))
    return str(doc["protocol"]), cells


def _grid_sweep(path: Path, i: int, c: dict) -> Sweep:
    for key in ("eval_of", "label"):
        if key in c:
            raise GridError(f"{path}: cells[{i}] is a sweep: its labels come from the swept values, '{key}' is not allowed")
    try:
        return sweep_from_mapping(f"{path}: cells[{i}]", str(c["method"]), c["sweep"], c.get("seeds", [0]),
                                  c.get("opts", []), str(c.get("name", "")))
    except SweepError as exc:
        raise GridError(str(exc)) from None


def load_sweeps(path: str | Path) -> tuple[str, list[Sweep]]:
    """The sweeps a grid file declares (for pivot tables), in file order."""
    path = Path(path)
    protocol, _ = load_grid(path)
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return protocol, [_grid_sweep(path, i, c) for i, c in enumerate(doc["cells"]) if "sweep" in c]


def sweep_cells(sweep: Sweep) -> list[Cell]:
    """A sweep's cells: every point x every seed."""
    return [Cell(sweep.method, seed, point.label, point.overrides, swept=dict(point.values), sweep=sweep.title)
            for point in sweep_points(sweep) for seed in sweep.seeds]


def check_cells(protocol: str, cells: list[Cell], extra: list[str] | None = None, verb: str = "grid") -> None:
    """Every cell's method, seed, keys and values are valid (``engine.preflight``: no torch, well under a
    second with the method's cached config schema), before any cell runs or any config is built."""
    from zss_bench.engine.config import ConfigOverrideError
    from zss_bench.engine.preflight import UsageError, check_overrides, check_seed
    from zss_bench.plugins import get_method

    from zss_bench.engine.config import resolve_method_config

    proto = load_protocol(protocol)  # did-you-mean on a typo
    checked: set = set()
    for cell in cells:
        what = f"cell {cell.method} [{cell.label}] seed {cell.seed}"
        opts = [*cell.opts, *(extra or [])]
        try:
            check_seed(cell.seed, "seed")
            plugin = get_method(cell.method)
            if (cell.method, tuple(opts)) not in checked:
                check_overrides(plugin, opts, verb, resolve_method_config(plugin, proto))
                checked.add((cell.method, tuple(opts)))
        except (ConfigOverrideError, UsageError) as exc:
            raise GridError(f"{what}: {exc}") from None


def resolve_config_hashes(protocol: Protocol, cells: list[Cell], extra: list[str] | None = None) -> None:
    """Give each sweep cell the hash of the config it would run with (its identity; no model is built)."""
    from zss_bench.engine.config import build_run_config, config_hash
    from zss_bench.plugins import get_method

    for cell in cells:
        if cell.swept is not None and cell.config_hash is None:
            cfg = build_run_config(get_method(cell.method), protocol, seed=cell.seed, output_dir="",
                                   opts=[*cell.opts, *(extra or [])])
            cell.config_hash = config_hash(cfg)


class ClipWeights:
    """The weights hash of the CLIP a cell would run with on this machine, per CLIP spec, computed
    once (loading it as the run itself would)."""

    def __init__(self, protocol: Protocol):
        self.protocol, self._hashes = protocol, {}

    def __call__(self, spec: str) -> str:
        if spec not in self._hashes:
            from zss_bench.modeling.clip_support import load_run_clip

            self._hashes[spec] = load_run_clip(spec, self.protocol, "cpu").record()["weights_hash"]
        return self._hashes[spec]


def _clip_spec(opts: list[str]) -> str:
    """The ``ZSS.CLIP`` value among KEY VALUE overrides ('' = the protocol's default CLIP)."""
    spec = ""
    for key, value in zip(opts[::2], opts[1::2]):
        if key == "ZSS.CLIP":
            spec = value
    return spec


def with_extra_overrides(cells: list[Cell], extra: list[str]) -> list[Cell]:
    """``cells`` as run with the grid-wide overrides ``extra``: each label (and the label an
    ``eval_of`` cell re-scores, which ran with the same overrides) gets ``+<derived label>``."""
    extra = [str(x) for x in extra]
    if len(extra) % 2:
        raise GridError(f"--opts must be KEY VALUE pairs; got {len(extra)} items and '{extra[-1]}' has no value")
    if "ZSS.LABEL" in extra[::2]:
        raise GridError("--opts ZSS.LABEL: every cell has its own label (set 'label' in the grid file)")
    suffix = overrides_label(extra, skip=("ZSS.CLIP",))
    if not suffix:
        return list(cells)
    return [Cell(c.method, c.seed, f"{c.label}+{suffix}", c.opts,
                 None if c.eval_of is None else f"{c.eval_of}+{suffix}", c.swept, c.sweep) for c in cells]


def load_records(results: str) -> list[dict]:
    """Every readable run record under ``results``, read once per pass (a grid phase, a pivot table), so
    looking up each of its cells does not re-read the whole results folder."""
    return [run.record for run in iter_runs(results, on_skip=lambda m: None)]


def _find(records: list[dict], protocol: str, protocol_hash: str, method: str, label: str, seed: int,
          clip_hash=None, config_hash: str | None = None) -> dict | None:
    """The newest of ``records`` (see :func:`load_records`) of (protocol at this hash, method, label, seed), if any; with
    ``config_hash`` (sweep cells) the resolved config's hash stands in for the label, so a swept
    point equal to the defaults finds the ``default`` run. With ``clip_hash`` (a no-argument
    callable), a record that used CLIP weights with another hash does not count; records of
    methods without CLIP always count."""
    found = None
    for rec in records:
        same = (rec["method"].get("config_hash") == config_hash if config_hash
                else rec["method"].get("label") == label)
        if (rec["protocol"]["name"] == protocol.partition("@")[0] and rec["protocol"].get("hash") == protocol_hash
                and rec["method"]["name"] == method and same and rec.get("provenance", {}).get("seed") == seed
                and rec.get("kind") == "run"):
            if clip_hash is not None and rec.get("clip") and rec["clip"].get("weights_hash") != clip_hash():
                continue
            if found is None or str(rec.get("created", "")) > str(found.get("created", "")):
                found = rec
    return found


def _done(records: list[dict], protocol: str, protocol_hash: str, cell: Cell, clip_hash=None) -> bool:
    return _find(records, protocol, protocol_hash, cell.method, cell.label, cell.seed, clip_hash,
                 cell.config_hash) is not None


def _base_weights(records: list[dict], protocol: str, protocol_hash: str, cell: Cell, clip_hash=None) -> Path:
    """The final checkpoint of the cell that ``cell`` re-evaluates, or a GridError saying why not.
    Only a checkpoint trained with the same CLIP weights qualifies: its head was built on them."""
    base = _find(records, protocol, protocol_hash, cell.method, cell.eval_of, cell.seed, clip_hash)
    if base is None:
        raise GridError(f"no record of {cell.method} [{cell.eval_of}] seed {cell.seed} to re-evaluate; "
                        f"put that cell before [{cell.label}] in the grid")
    if base.get("training", {}).get("eval_only"):
        raise GridError(f"{cell.method} [{cell.eval_of}] seed {cell.seed} is itself an evaluation-only cell")
    out = Path(expand_path(base.get("training", {}).get("output_dir") or ""))
    weights = out / "model_final.pth"
    if not weights.is_file():
        raise GridError(f"the checkpoint of {cell.method} [{cell.eval_of}] seed {cell.seed} is gone ({weights}); "
                        "delete its record to retrain it, or restore its work dir")
    return weights


def _log_file(work_dir: str, protocol: str, cell: Cell) -> Path:
    """Where a cell's output goes (in the work dir; a Slurm sweep needs it on the shared filesystem)."""
    return Path(work_dir) / "logs" / protocol / cell.method / f"{cell.label.replace('/', '_')}-seed{cell.seed}.log"


def run_grid(path: str | Path, *, results: str | None = None, work_dir: str = "work_dirs", extra: list[str] | None = None,
             data_root: str | None = None, dry_run: bool = False, executor=None, retry_failed: bool = False) -> int:
    """Run the due cells of a grid file (see :func:`run_cells`)."""
    protocol, cells = load_grid(path)
    return run_cells(protocol, cells, results=results, work_dir=work_dir, extra=extra, data_root=data_root,
                     dry_run=dry_run, executor=executor, retry_failed=retry_failed)


def run_cells(protocol: str, cells: list[Cell], *, results: str | None = None, work_dir: str = "work_dirs",
              extra: list[str] | None = None, data_root: str | None = None, dry_run: bool = False, executor=None,
              retry_failed: bool = False) -> int:
    """Run every due cell through ``executor`` (default: one local process at a time); 0 when every cell has
    a record. Training cells run first, then ``eval_of`` cells (they need the trained checkpoints). A cell
    with a failed-cell note is not run again unless ``retry_failed``, which runs only such cells."""
    from zss_bench.engine.executors import CellJob, LocalExecutor
    from zss_bench.records.failed import note_path
    from zss_bench.records.store import default_results_root

    results = results or default_results_root()
    executor = executor or LocalExecutor(1)
    cells = with_extra_overrides(cells, extra or [])
    check_cells(protocol, cells, extra)
    proto = load_protocol(protocol)
    protocol_hash = proto.content_hash  # an edited protocol makes every cell due again
    resolve_config_hashes(proto, cells, extra)
    clip_weights = ClipWeights(proto)
    failures, total = 0, len(cells)
    index = {id(c): i for i, c in enumerate(cells, 1)}
    for phase in ([c for c in cells if c.eval_of is None], [c for c in cells if c.eval_of is not None]):
        jobs, records = [], load_records(results)  # phase 2 sees the records phase 1 wrote
        for cell in phase:
            tag = f"[{index[id(cell)]}/{total}] {cell.method} [{cell.label}] seed {cell.seed}"
            spec = _clip_spec([*cell.opts, *(extra or [])])
            clip_hash = lambda spec=spec: clip_weights(spec)  # noqa: E731  (lazy: only if a record has a CLIP)
            note = note_path(results, protocol, cell.method, cell.label, cell.seed)
            if _done(records, protocol, protocol_hash, cell, clip_hash):
                print(f"{tag}: record exists, skipped", flush=True)
                continue
            failed = _failed_note(note)
            if failed is not None and not retry_failed:
                failures += 1
                print(f"{tag}: FAILED last time (exit {failed.get('exit')}, log {failed.get('log')}); "
                      "--retry-failed runs it again", flush=True)
                continue
            if failed is None and retry_failed:
                print(f"{tag}: not failed, not run (--retry-failed runs only failed cells)", flush=True)
                continue
            stale = _done(records, protocol, protocol_hash, cell)  # a record, but made with other CLIP weights
            # an interrupted cell continues and a finished one is re-evaluated; a checkpoint trained with
            # another teacher is never continued or re-scored with this one: that cell starts over
            flags, weights = (["--overwrite"] if stale else ["--resume"]), []
            why = "its record used other CLIP weights: retrain" if stale else "no record yet"
            if failed is not None:
                why += f"; failed last time (exit {failed.get('exit')}, {failed.get('when')})"
            if cell.eval_of is not None:
                flags = ["--eval-only"]
                try:
                    weights = ["MODEL.WEIGHTS", str(_base_weights(records, protocol, protocol_hash, cell, clip_hash))]
                except GridError as exc:
                    if not dry_run:
                        failures += 1
                        print(f"{tag}: FAILED ({exc}); continuing with the next cell", flush=True)
                        continue
                    weights = ["MODEL.WEIGHTS", f"<final checkpoint of [{cell.eval_of}] seed {cell.seed}>"]
            cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--method", cell.method, "--protocol", protocol,
                   "--seed", str(cell.seed), "--results", results, "--work-dir", work_dir,
                   *(["--data-root", str(data_root)] if data_root else []), *flags, *cell.opts, *weights,
                   "ZSS.LABEL", cell.label, *(extra or [])]
            print(f"{tag}: due ({why}): {' '.join(cmd[3:])}", flush=True)
            identity = {"protocol": protocol, "protocol_hash": protocol_hash, "method": cell.method,
                        "label": cell.label, "seed": cell.seed, "opts": [*cell.opts, *(extra or [])],
                        "config_hash": cell.config_hash, "sweep": cell.sweep, "swept": cell.swept}
            jobs.append(CellJob(tag, cmd, str(_log_file(work_dir, protocol, cell)), str(note), identity))
        if dry_run or not jobs:
            continue
        try:
            codes = executor.run(jobs, on_done=_report)
        except KeyboardInterrupt:
            raise KeyboardInterrupt("interrupted; re-run the same command to continue (a cell resumes from its "
                                    "last checkpoint)") from None
        failures += sum(1 for rc in codes if rc)
        if any(rc is None for rc in codes):
            print(f"submitted {len(jobs)} cell(s); they write their records (or failed notes) when they end: "
                  "re-run this command afterwards to see what is left"
                  + (" and to run the eval_of cells" if phase and phase[0].eval_of is None
                     and any(c.eval_of for c in cells) else ""), flush=True)
            break
    return 1 if failures else 0


def _failed_note(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"exit": "?", "log": str(path)}


def _report(job, rc) -> None:
    if rc:
        print(f"{job.tag}: FAILED (exit {rc}); log {job.log}; note {job.note}; continuing with the next cell",
              flush=True)
    else:
        print(f"{job.tag}: done", flush=True)
