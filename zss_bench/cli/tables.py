"""``leaderboard``, ``compare``, ``plot`` and ``report``: tables and pictures from run records."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from zss_bench.cli.common import _at_least


def cmd_leaderboard(args) -> int:
    from zss_bench.records import atomic_write_text
    from zss_bench.tables import add_paired_column, aggregate, collect_runs, render_leaderboard
    from zss_bench.tables.reported import registry_for_tables, reported_sections

    if args.protocol:
        from zss_bench.protocol import load_protocol

        load_protocol(args.protocol)  # unknown name -> did-you-mean error
    if not Path(args.results).is_dir():
        from zss_bench.records.store import RecordError

        raise RecordError(f"results folder {args.results} does not exist (pass --results DIR, the folder that holds "
                          "runs/; the project's committed table is --results results)")
    _check_outputs(args)
    if args.grid:
        if args.agreement:
            from zss_bench.tables.agreement import AgreementError

            raise AgreementError("--agreement ranks the leaderboard's rows; it does not apply to --grid pivots")
        return _sweep_tables(args)
    published = registry_for_tables(args.reported) if args.agreement or args.format != "csv" else None
    if args.agreement:
        from zss_bench.tables.agreement import check_reference

        check_reference(published, args.agreement)  # before any work: one line, exit 2
    runs = collect_runs(args.results, protocol=args.protocol, convention=args.convention, on_skip=_warn)
    name_only = args.protocol.partition("@")[0] if args.protocol else None  # --protocol NAME@VERSION: one version
    if args.config:
        from fnmatch import fnmatchcase

        runs = runs[[any(fnmatchcase(str(c), pat) for pat in args.config) for c in runs["config"]]]
    table = aggregate(runs)
    reference = None if args.vs.lower() == "none" else args.vs
    if reference:
        table = add_paired_column(table, runs, reference, n_boot=args.n_boot, on_note=_warn)
    reported = None if args.format == "csv" else published
    if reported is None:
        text = render_leaderboard(table, fmt=args.format, convention=args.convention, reference=reference,
                                  n_boot=args.n_boot)
    else:  # per protocol: the harness's tables, then what was published under it (never averaged together)
        protocols = [name_only] if args.protocol else sorted(set(table["protocol"]))  # asked for: even without runs
        parts = []
        for name in protocols:
            sub = table[table["protocol"] == name]
            if not sub.empty:
                parts.append(render_leaderboard(sub, fmt=args.format, convention=args.convention,
                                                reference=reference, n_boot=args.n_boot))
                parts.append(_agreement(args, sub, name, published))
            elif reported[0].for_protocol(name):
                parts.append(_no_runs(name, args.format))
            parts.append(reported_sections(name, reported, sub, runs, fmt=args.format, n_boot=args.n_boot,
                                           on_note=_warn))
        text = "\n".join(p for p in parts if p) or render_leaderboard(table, fmt=args.format)
    if args.format == "csv" and args.agreement:  # the CSV stays one table: the section goes to stderr
        for name in sorted(set(table["protocol"])):
            print(_agreement(args, table[table["protocol"] == name], name, published, "text"), file=sys.stderr)
    if args.format != "csv":
        from zss_bench.records.failed import iter_notes
        from zss_bench.tables.leaderboard import render_failed

        text += render_failed([note for _, note in iter_notes(args.results, name_only)], args.format)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} ({len(runs)} runs)")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _agreement(args, table, protocol: str, published, fmt: str | None = None) -> str:
    """The rank-agreement section(s) of ``protocol``'s rows with ``--agreement``'s published rows ('' without it)."""
    if not args.agreement:
        return ""
    from zss_bench.tables.agreement import agreement_sections, check_reference

    return agreement_sections(table, check_reference(published, args.agreement), protocol, args.agreement,
                              metric=args.agreement_metric, fmt=fmt or args.format)


def _no_runs(protocol: str, fmt: str) -> str:
    line = f"{protocol}: no harness runs (trained or imported) under this results folder"
    return {"md": f"### {line}\n", "latex": f"% {line}\n"}.get(fmt, line + "\n")


def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def _check_outputs(args) -> None:
    """Every file the command will write, checked before any work (a read-only --out is one line at second 0)."""
    from zss_bench.records.writable import check_writable_file

    if args.out:
        check_writable_file(args.out, "--out")
    if args.heatmap:
        check_writable_file(args.heatmap, "--heatmap")


def _sweep_tables(args) -> int:
    """``leaderboard --grid FILE``: the pivot table of each sweep in the file (+ heat-maps of two-key sweeps)."""
    from zss_bench.records import atomic_write_text
    from zss_bench.tables.pivot import sweep_pivots

    parts, heatmaps = [], []
    for grid in args.grid:
        for pivot in sweep_pivots(grid, args.results, protocol=args.protocol, on_skip=_warn):
            parts.append(pivot.render(args.format))
            if args.heatmap and len(pivot.keys) == 2:
                base = Path(args.heatmap)
                path = base if not heatmaps else base.with_name(f"{base.stem}-{len(heatmaps) + 1}{base.suffix}")
                heatmaps.append(pivot.heatmap_png(path))
    if not parts:
        print(f"no sweeps declared in {', '.join(args.grid)} (a cell with 'sweep: {{KEY: [v1, v2]}}')", file=sys.stderr)
        return 1
    text = "\n".join(parts)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    for path in heatmaps:
        print(f"wrote {path}")
    return 0


def cmd_compare(args) -> int:
    from zss_bench.records import resolve_run
    from zss_bench.tables import compare_runs, render_comparison

    a, b = resolve_run(args.run_a, args.results), resolve_run(args.run_b, args.results)
    if a.path.resolve() == b.path.resolve():
        from zss_bench.records.store import RecordError

        raise RecordError(f"RUN_A and RUN_B are the same run ({a.path}); a paired comparison needs two runs")
    result = compare_runs(a, b, convention=args.convention, n_boot=args.n_boot, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else render_comparison(result), end="\n")
    return 0


def cmd_plot(args) -> int:
    from zss_bench.plots import KINDS
    from zss_bench.plots.make import make_plots
    from zss_bench.records import resolve_run

    runs = [resolve_run(spec, args.results) for spec in args.runs]
    paths = make_plots(runs, args.out, KINDS if args.kind == "all" else (args.kind,), n=args.n,
                       on_note=lambda m: print(f"note: {m}", file=sys.stderr))
    for path in paths:
        print(path)
    return 0 if paths else 1


def cmd_report(args) -> int:
    from zss_bench.report import build_report

    reference = None if args.vs.lower() == "none" else args.vs
    path = build_report(args.results, args.out, protocol=args.protocol, grids=args.grid, reference=reference,
                        n_boot=args.n_boot, n=args.n, on_note=_warn, reported=args.reported,
                        agreement=args.agreement, agreement_metric=args.agreement_metric)
    print(f"wrote {path}")
    return 0




def add_tables(sub) -> None:
    """The ``leaderboard``, ``compare``, ``plot`` and ``report`` verbs."""
    p = sub.add_parser("leaderboard", help="mean ± std per method over the run records")
    p.add_argument("--results", default=None, help="results root (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--protocol", help="only this protocol")
    p.add_argument("--convention", choices=["mmseg", "detectron2"], help="absent-class convention (default: each protocol's headline)")
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--out", metavar="FILE", help="write the table to FILE (atomically) instead of stdout")
    p.add_argument("--vs", default="chimera", metavar="METHOD",
                   help="reference method of the paired ΔhIoU column (default: chimera; 'none' leaves it out)")
    p.add_argument("--n-boot", type=_at_least(1), default=1000, help="bootstrap resamples of the paired column (default 1000)")
    p.add_argument("--config", nargs="+", metavar="PATTERN",
                   help="only rows whose config label matches one of these shell-style patterns (without "
                        "--config: every row); e.g. --config default 'long-1800it*' keeps the default and "
                        "1,800-iteration rows")
    p.add_argument("--grid", nargs="+", metavar="FILE", help="pivot tables of the sweeps declared in these grid files "
                                                             "(rows/columns = swept keys) instead of the leaderboard")
    p.add_argument("--heatmap", metavar="PNG", help="with --grid: heat-map of each two-key sweep (PNG; -2, -3... for more)")
    p.add_argument("--reported", default=None, metavar="DIR",
                   help="registry of published results shown per protocol under the harness's tables, with "
                        "reproduced − reported where both exist (default: the project's results/reported; "
                        "'none' leaves them out; not in --format csv)")
    _agreement_options(p, "after each protocol's leaderboard table; with --format csv the CSV stays one table "
                          "and the section is printed, as plain text, to stderr; not with --grid")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("compare", help="paired bootstrap of two runs on the same images")
    p.add_argument("run_a", metavar="RUN_A", help="run directory or run id")
    p.add_argument("run_b", metavar="RUN_B", help="run directory or run id")
    p.add_argument("--results", default=None, help="where to look up run ids (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--convention", choices=["mmseg", "detectron2"])
    p.add_argument("--n-boot", type=_at_least(1), default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("plot", help="pictures of run records: per-class IoU bars, training curves, prediction overlays")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directory, its record.json, or a run id under --results")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for the PNGs (their paths are printed)")
    p.add_argument("--kind", choices=["per-class", "curves", "overlays", "all"], default="all",
                   help="per-class: grouped bars of all RUNs per protocol; curves: losses and lr of each run "
                        "(from the record's metrics.json); overlays: image | ground truth | prediction of the "
                        "predictions a run saved (--save-predictions); default: all")
    p.add_argument("--n", type=int, default=4, help="overlays: the first N saved predictions (default: 4)")
    p.add_argument("--results", default=None, help="where to look up run ids (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed records: --results results)")
    p.set_defaults(func=cmd_plot)

    p = sub.add_parser("report", help="one self-contained HTML page of leaderboards, pictures and provenance")
    p.add_argument("--out", required=True, metavar="DIR", help="writes DIR/index.html (pictures embedded, works offline)")
    p.add_argument("--results", default=None, help="results root (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed records: --results results)")
    p.add_argument("--protocol", help="only this protocol")
    p.add_argument("--grid", nargs="+", action="extend", default=[], metavar="FILE",
                   help="grid/sweep YAML(s) whose pivot tables and heat-maps to include")
    p.add_argument("--vs", default="chimera", metavar="METHOD",
                   help="reference method of the leaderboard's paired ΔhIoU column (default: chimera; 'none' leaves it out)")
    p.add_argument("--n-boot", type=_at_least(1), default=1000, help="bootstrap resamples of the paired column (default 1000)")
    p.add_argument("--n", type=int, default=4, help="saved predictions shown per run (default: 4)")
    p.add_argument("--reported", default=None, metavar="DIR",
                   help="registry of published results shown in each protocol's section (default: the project's "
                        "results/reported; 'none' leaves them out)")
    _agreement_options(p, "in each protocol's section, after its leaderboard")
    p.set_defaults(func=cmd_report)


def _agreement_options(p, where: str) -> None:
    p.add_argument("--agreement", metavar="PROTOCOL",
                   help="rank agreement of the harness's rows with the PUBLISHED rows of PROTOCOL (e.g. voc-15-5; "
                        "inductive entries of the --reported registry only): Kendall tau-b and Spearman rho over the "
                        "systems both have (method + config label = registry method + variant; default = no "
                        "variant), the systems in common and the pairs ranked differently; with fewer than 3 in "
                        f"common, says so and computes nothing. Shown {where}. Needs the registry (not with "
                        "--reported none)")
    p.add_argument("--agreement-metric", choices=["h", "S", "U"], default="h",
                   help="metric --agreement ranks by: h (hIoU, default; 2SU/(S+U) where a source prints only S "
                        "and U), S (seen mIoU) or U (unseen mIoU)")
