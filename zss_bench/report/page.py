"""Assemble the report page: one section per protocol (leaderboard, per-class bars, prediction overlays,
records with their provenance), then the sweeps, then what was skipped; written atomically."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from zss_bench import __version__
from zss_bench.records.store import LoadedRun, RecordError, atomic_write_text, load_run
from zss_bench.report import ReportError
from zss_bench.report.html import esc, note, page

INDEX = "index.html"


def _anchor(name: str) -> str:
    return "p-" + re.sub(r"[^A-Za-z0-9_-]+", "-", name)


def _per_test_set(runs, draw: Callable) -> list[str]:
    """``draw`` of each test set's runs: bars of runs scored on different images are never put side by side."""
    sets = sorted(set(runs["test_set"])) if "test_set" in runs else []
    if len(sets) <= 1:
        return [draw(runs)]
    return [part for ts in sets for part in (f"<h4>{esc(ts)}</h4>", draw(runs[runs["test_set"] == ts]))]


def _agreement_html(table, entries, protocol: str, reference: str, metric: str) -> str:
    from zss_bench.tables.agreement import agreement_sections

    return agreement_sections(table, entries, protocol, reference, metric=metric, fmt="html")


def build_report(results_root: str | Path, out: str | Path, protocol: str | None = None, grids=(),
                 reference: str | None = "chimera", n_boot: int = 1000, n: int = 4,
                 on_note: Callable[[str], None] | None = None, reported: str | None = None,
                 agreement: str | None = None, agreement_metric: str = "h") -> Path:
    """Write ``out/index.html`` from the records under ``results_root``; return its path. Skipped files and
    undrawable pictures are listed on the page and passed to ``on_note``. ``reported``: the registry of
    published results shown in each protocol's section (default: the project's; ``"none"``: left out).
    ``agreement``: a protocol whose published rows each leaderboard's ranking is compared with (τ-b, ρ)."""
    from zss_bench.records.failed import iter_notes
    from zss_bench.report.leaderboard import leaderboard_html
    from zss_bench.report.runs import overlays_html, per_class_html, provenance_html
    from zss_bench.report.sweeps import sweeps_html
    from zss_bench.tables import aggregate, collect_runs
    from zss_bench.tables.leaderboard import render_failed
    from zss_bench.tables.reported import registry_for_tables, reported_sections

    results_root = Path(results_root)
    if not results_root.is_dir():
        raise RecordError(f"results folder {results_root} does not exist (pass --results DIR, the folder that "
                          "holds runs/; the project's committed records are --results results)")
    if protocol:
        from zss_bench.protocol import load_protocol

        load_protocol(protocol)  # an unknown name -> did-you-mean error before any work
    grids = [str(g) for g in grids]
    for grid in grids:
        if not Path(grid).is_file():
            raise ReportError(f"--grid {grid}: no such file")
    if n < 1:
        raise ReportError(f"--n must be at least 1, got {n}")
    from zss_bench.records.writable import check_writable_dir

    check_writable_dir(out, "--out")  # before any work: a read-only --out is one line, not a late traceback
    published = registry_for_tables(reported)  # a broken registry file: one line before any work
    if agreement:
        from zss_bench.tables.agreement import check_reference

        reference_entries = check_reference(published, agreement)  # unknown or unfiled: one line before any work
    notes: list[str] = []

    def report(message: str) -> None:
        if message in notes:  # the sweep pivots re-check the records the leaderboard already reported
            return
        notes.append(message)
        if on_note:
            on_note(message)

    runs = collect_runs(results_root, protocol=protocol, on_skip=report)
    loaded: dict[str, LoadedRun] = {}

    def load(path: str) -> LoadedRun:
        if path not in loaded:
            loaded[path] = load_run(path)
        return loaded[path]

    protocols = sorted(set(runs["protocol"].unique()) if not runs.empty else set())
    if published is not None and protocol and published[0].for_protocol(protocol):
        protocols = [protocol]  # asked for by name: its published numbers even without runs here
    body = ["<h1>zss-bench report</h1>",
            note(f"Built {datetime.now(timezone.utc).isoformat(timespec='seconds')} by zss-bench {__version__} from "
                 f"{len(runs)} run record(s) under {results_root}"
                 + (f" (protocol {protocol})" if protocol else "")
                 + ". Every number and picture comes from the records; nothing was re-run.")]
    if protocols or grids:
        links = [f'<a href="#{_anchor(p)}">{esc(p)}</a>' for p in protocols]
        links += ['<a href="#sweeps">sweeps</a>'] if grids else []
        body.append(f"<nav>{' '.join(links)}</nav>")
    if not protocols:
        body.append(note(f"No run records under {results_root}" + (f" for protocol {protocol}." if protocol else ".")))
    for name in protocols:
        sub = runs[runs["protocol"] == name].reset_index(drop=True)
        if sub.empty:
            body += [f'<h2 id="{_anchor(name)}">{esc(name)}</h2>', "<h3>Leaderboard</h3>",
                     note(f"No harness runs (trained or imported) of {name} under {results_root}."),
                     reported_sections(name, published, sub, sub, "html", n_boot, on_note=report)]
            continue
        records = [load(p) for p in sub.sort_values(["method", "config", "seed", "run_id"])["path"]]
        table = aggregate(sub)
        body += [f'<h2 id="{_anchor(name)}">{esc(name)}</h2>',
                 "<h3>Leaderboard</h3>", leaderboard_html(sub, reference, n_boot, on_note=report),
                 _agreement_html(table, reference_entries, name, agreement, agreement_metric) if agreement else "",
                 reported_sections(name, published, table, sub, "html", n_boot, on_note=report),
                 render_failed([n for _, n in iter_notes(results_root, name)], "html"),
                 "<h3>Per-class IoU</h3>", *_per_test_set(sub, lambda part: per_class_html(part, load)),
                 "<h3>Predictions</h3>", overlays_html(records, n, report),
                 f"<h3>Records ({len(records)})</h3>",
                 note("Click a record for its provenance, CLIP, training and protocol blocks."),
                 provenance_html(records)]
    if grids:
        body += ['<h2 id="sweeps">Sweeps</h2>', sweeps_html(grids, str(results_root), protocol, on_skip=report)]
    if notes:
        items = "".join(f"<li>{esc(m)}</li>" for m in notes)
        body.append(f'<h2>Skipped</h2><ul class="note warn">{items}</ul>')
    path = Path(out) / INDEX
    atomic_write_text(path, page("zss-bench report", "\n".join(body)))
    return path
