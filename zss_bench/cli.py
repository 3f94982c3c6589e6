"""The ``zss-bench`` command: a thin argparse front over the library (one verb, one function)."""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from zss_bench import __version__


def _config_hash(config: dict) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# --- protocols -----------------------------------------------------------------------------

def cmd_protocols(args) -> int:
    from tabulate import tabulate

    from zss_bench.protocol import list_protocols, load_protocol

    summaries = [load_protocol(name).summary() for name in list_protocols()]
    if args.json:
        print(json.dumps(summaries, indent=2))
        return 0
    rows = [[s["name"], s["version"], s["dataset"], s["num_classes"], s["num_seen"], s["num_unseen"],
             ", ".join(s["unseen"]), s["headline_convention"], s["hash"][:12]] for s in summaries]
    print(tabulate(rows, headers=["protocol", "v", "dataset", "K", "seen", "unseen", "unseen classes",
                                  "headline", "hash"], tablefmt="github"))
    return 0


# --- evaluate ------------------------------------------------------------------------------

def cmd_evaluate(args) -> int:
    from zss_bench.evaluation import evaluate_directories, score
    from zss_bench.protocol import load_protocol
    from zss_bench.records import collect_provenance, write_run

    started = time.time()
    protocol = load_protocol(args.protocol)
    result = evaluate_directories(protocol, args.pred_dir, args.gt_dir, allow_missing=args.allow_missing,
                                  image_list=args.image_list, progress=not args.json and not args.quiet)
    metrics = score(result.cm, protocol, n_boot=args.n_boot, seed=args.seed)
    for stem in result.extra[:5]:
        print(f"warning: prediction {stem}.png has no ground truth in {result.gt_dir}; not scored", file=sys.stderr)
    expected = protocol.image_sets.get(protocol.eval_split, {}).get("count")
    if expected and expected != len(result.image_ids):
        print(f"note: scored {len(result.image_ids)} images; protocol {protocol.name} expects "
              f"{expected} in its '{protocol.eval_split}' split (a subset is not comparable to published numbers)",
              file=sys.stderr)
    if args.out:
        config = {"source": "prediction-pngs", "label": args.label}
        record = {
            "kind": "evaluate",
            "protocol": {"name": protocol.name, "version": protocol.version, "hash": protocol.content_hash},
            "method": {"name": args.method, "label": args.label, "config": config,
                       "config_hash": _config_hash(config)},
            "inputs": {"pred_dir": str(result.pred_dir.resolve()), "gt_dir": str(result.gt_dir.resolve()),
                       "image_list": str(Path(args.image_list).resolve()) if args.image_list else None,
                       "n_images": len(result.image_ids), "missing_predictions": result.missing,
                       "extra_predictions": len(result.extra)},
            "metrics": metrics,
            "provenance": collect_provenance(
                seed=args.seed, bootstrap={"n_boot": args.n_boot, "seed": args.seed},
                started=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
                duration_s=round(time.time() - started, 3)),
        }
        run_dir = write_run(args.out, record, result.cm)
        metrics = {**metrics, "run_dir": str(run_dir)}
    if args.json:
        out = {k: v for k, v in metrics.items() if k != "conventions"}
        out["other_conventions"] = {c: {k: b[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")}
                                    for c, b in metrics["conventions"].items() if c != metrics["convention"]}
        out["n_images"] = len(result.image_ids)
        print(json.dumps(out, indent=2))
    else:
        print(_summary_text(protocol, metrics, len(result.image_ids)))
    return 0


def _summary_text(protocol, metrics: dict, n_images: int) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"{protocol.name} v{protocol.version} ({protocol.short_hash}), {n_images} images"]
    for conv, block in metrics["conventions"].items():
        mark = " (headline)" if conv == metrics["convention"] else ""
        ci = block.get("ci", {}).get("hIoU")
        ci_txt = f"  hIoU 95% CI [{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else ""
        lines.append(f"  {conv:<10}{mark:<11} S {fmt(block['mIoU_seen'])}  U {fmt(block['mIoU_unseen'])}  "
                     f"hIoU {fmt(block['hIoU'])}  mIoU {fmt(block['mIoU'])}  pAcc {fmt(block['pAcc'])}{ci_txt}")
    if "run_dir" in metrics:
        lines.append(f"record: {metrics['run_dir']}")
    return "\n".join(lines)


# --- leaderboard / compare -----------------------------------------------------------------

def _skip_printer(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def cmd_leaderboard(args) -> int:
    from zss_bench.records import atomic_write_text
    from zss_bench.tables import add_paired_column, aggregate, collect_runs, render_leaderboard

    if args.protocol:
        from zss_bench.protocol import load_protocol

        load_protocol(args.protocol)  # unknown name -> did-you-mean error
    if not Path(args.results).is_dir():
        from zss_bench.records.store import RecordError

        raise RecordError(f"results folder {args.results} does not exist (pass --results DIR, the folder that holds "
                          "runs/; the project's committed table is --results results)")
    if args.grid:
        return _sweep_tables(args)
    runs = collect_runs(args.results, protocol=args.protocol, convention=args.convention, on_skip=_skip_printer)
    if args.config:
        from fnmatch import fnmatchcase

        runs = runs[[any(fnmatchcase(str(c), pat) for pat in args.config) for c in runs["config"]]]
    table = aggregate(runs)
    reference = None if args.vs.lower() == "none" else args.vs
    if reference:
        table = add_paired_column(table, runs, reference, n_boot=args.n_boot)
    text = render_leaderboard(table, fmt=args.format, convention=args.convention, reference=reference,
                              n_boot=args.n_boot)
    if args.format != "csv":
        from zss_bench.records.failed import iter_notes
        from zss_bench.tables.leaderboard import render_failed

        text += render_failed([note for _, note in iter_notes(args.results, args.protocol)], args.format)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out} ({len(runs)} runs)")
    else:
        print(text, end="" if text.endswith("\n") else "\n")
    return 0


def _sweep_tables(args) -> int:
    """``leaderboard --grid FILE``: the pivot table of each sweep in the file (+ heat-maps of two-key sweeps)."""
    from zss_bench.records import atomic_write_text
    from zss_bench.tables.pivot import sweep_pivots

    parts, heatmaps = [], []
    for grid in args.grid:
        for pivot in sweep_pivots(grid, args.results, protocol=args.protocol):
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


# --- pictures / report --------------------------------------------------------------------

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
                        n_boot=args.n_boot, n=args.n, on_note=_skip_printer)
    print(f"wrote {path}")
    return 0


# --- datasets ------------------------------------------------------------------------------

def cmd_prepare(args) -> int:
    from zss_bench.data.layouts import DEFAULT_PROTOCOL
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    protocol = load_protocol(args.protocol or DEFAULT_PROTOCOL[args.dataset])
    report = prepare_dataset(args.dataset, args.root, protocol, report_only=args.report_only,
                             workers=args.workers, progress=not args.json)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(_prepare_text(report))
    return 0 if report["ok"] else 1


def _prepare_text(report: dict) -> str:
    from tabulate import tabulate

    lines = [f"{report['dataset']} at {report['root']} for {report['protocol']['name']} "
             f"v{report['protocol']['version']} (unseen pixels: {report['unseen_pixel_policy']})"]
    keys = ["images", "expected", "with_unseen", "empty_after_masking", "dropped_by_policy", "kept",
            "empty_after_policy", "unseen_pixels_masked"]
    rows = [[split] + [s.get(k, "") if s.get(k) is not None else "" for k in keys] for split, s in report["splits"].items()]
    lines.append(tabulate(rows, headers=["split"] + keys, tablefmt="github"))
    problems = report.get("problems", [])
    for p in problems:
        lines.append(f"{p['severity']}: {p['path']}: {p['message']}")
    if "cache" in report:
        lines.append(f"index and label views written to {report['cache']}")
    elif problems:
        lines.append(f"{sum(p['severity'] == 'error' for p in problems)} error(s); nothing written")
    return "\n".join(lines)


def cmd_synth_generate(args) -> int:
    from zss_bench.data.synth import generate_world

    summary = generate_world(Path(args.out), seed=args.seed, size=args.size, n_train=args.train, n_val=args.val,
                             workers=args.workers, progress=not args.json)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"synthetic world ({summary.get('protocol', {}).get('name', 'synth-15-5')}) written to {args.out}: "
              f"{args.train} train + {args.val} val images of {args.size}x{args.size}, seed {args.seed}")
    return 0


# --- run -----------------------------------------------------------------------------------

def _method_config_line(method: str, protocol_arg: str, config_file: str | None) -> str:
    """``method config: FILE (why)``: the method config YAML the run will be built from, resolved as
    ``build_run_config`` resolves it (a missing ``--config`` file is a ConfigOverrideError naming it)."""
    from zss_bench.engine.config import resolve_method_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    protocol = load_protocol(protocol_arg)
    path = resolve_method_config(get_method(method), protocol, config_file)
    try:
        shown = Path(path).resolve().relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        shown = str(path)
    why = "--config" if config_file else f"picked for protocol {protocol.name}"
    return f"method config: {shown} ({why})"


def cmd_run(args) -> int:
    from zss_bench.engine.run import RunRequest, run_method

    print(_method_config_line(args.method, args.protocol, args.config), flush=True)
    req = RunRequest(method=args.method, protocol=args.protocol, data_root=args.data_root, clip=args.clip or "",
                     seed=args.seed, output_dir=args.output_dir, resume=args.resume, eval_only=args.eval_only,
                     overwrite=args.overwrite,
                     num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                     dist_url=args.dist_url, opts=[*args.opts, *(["ZSS.LABEL", args.label] if args.label else [])],
                     results_root=args.results, work_root=args.work_dir, config_file=args.config,
                     save_predictions=args.save_predictions)
    run_dir = run_method(req)
    if args.machine_rank == 0:
        from zss_bench.records import load_run

        rec = load_run(run_dir).record
        m = rec["metrics"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"{rec['method']['name']} [{rec['method']['label']}] on {rec['protocol']['name']} seed {args.seed}: "
              f"S {fmt(m['mIoU_seen'])}  U {fmt(m['mIoU_unseen'])}  hIoU {fmt(m['hIoU'])}  mIoU {fmt(m['mIoU'])}  "
              f"pAcc {fmt(m['pAcc'])} ({m['convention']})")
        ci = m.get("ci") or {}
        if ci.get("hIoU"):
            print("  95% CI over images: " + "  ".join(
                f"{label} [{fmt(ci[k]['low'])}, {fmt(ci[k]['high'])}]"
                for k, label in (("mIoU_seen", "S"), ("mIoU_unseen", "U"), ("hIoU", "hIoU")) if ci.get(k)))
        per_class = m.get("per_class") or {}
        unseen = set(_unseen_names(rec))
        print("  per-class IoU: " + ", ".join(f"{name}{'*' if name in unseen else ''} {fmt(v)}"
                                             for name, v in per_class.items()) + ("  (* unseen)" if unseen else ""))
        print(f"record: {run_dir}")
    return 0


def _at_least(minimum: int):
    """argparse type: a whole number >= ``minimum`` (a clear usage error, not a traceback, otherwise)."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return whole


def _unseen_names(rec: dict) -> list[str]:
    try:
        from zss_bench.protocol import load_protocol

        return list(load_protocol(rec["protocol"]["name"]).unseen_names)
    except Exception:  # noqa: BLE001 - only decorates the printout
        return []


def cmd_grid(args) -> int:
    from zss_bench.engine.grid import run_grid

    return run_grid(args.grid, results=args.results, work_dir=args.work_dir, extra=args.opts, data_root=args.data_root,
                    dry_run=args.dry_run, executor=_executor(args), retry_failed=args.retry_failed)


def cmd_ablate(args) -> int:
    """A sweep from the command line: the same cells as a grid file declaring it (``--write`` saves that file)."""
    from zss_bench.engine.grid import run_cells, sweep_cells
    from zss_bench.engine.sweep import Sweep, SweepError, parse_grid_args, split_values
    from zss_bench.protocol import load_protocol

    swept = parse_grid_args(args.grid)
    try:
        seeds = tuple(int(s) for s in split_values(args.seeds))
    except ValueError:
        raise SweepError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    protocol = load_protocol(args.protocol).name
    sweep = Sweep(args.method, tuple(swept), tuple(tuple(v) for v in swept.values()), seeds, tuple(args.opts or ()))
    if args.write:
        _write_sweep_grid(args.write, protocol, sweep)
    return run_cells(protocol, sweep_cells(sweep), results=args.results, work_dir=args.work_dir, extra=[],
                     data_root=args.data_root, dry_run=args.dry_run, executor=_executor(args),
                     retry_failed=args.retry_failed)


def _write_sweep_grid(path: str, protocol: str, sweep) -> None:
    import yaml

    from zss_bench.records.store import atomic_write_text

    cell = {"method": sweep.method, "sweep": {k: list(v) for k, v in zip(sweep.keys, sweep.values)},
            "seeds": list(sweep.seeds)}
    if sweep.opts:
        cell["opts"] = list(sweep.opts)
    atomic_write_text(path, "# written by zss-bench ablate; `zss-bench grid` on this file runs the same cells\n"
                      + yaml.safe_dump({"protocol": protocol, "cells": [cell]}, sort_keys=False))
    print(f"wrote {path}")


def _executor(args):
    """The executor the grid/ablate flags ask for."""
    from zss_bench.engine.executors import LocalExecutor, SlurmOptions, SubmititExecutor

    if args.executor == "local":
        return LocalExecutor(args.max_parallel)
    options = SlurmOptions(partition=args.partition, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                           time_min=args.time, mem_gb=args.mem_gb, account=args.account,
                           max_parallel=args.max_parallel if args.max_parallel > 1 else 64,
                           sbatch=list(args.sbatch or []), setup=list(args.setup or []))
    cluster = {"slurm": "slurm", "submitit-local": "local"}[args.executor]
    folder = args.submitit_dir or str(Path(args.work_dir) / "submitit" / "%j")
    return SubmititExecutor(folder, cluster, options, dry_run=args.slurm_dry_run, wait=args.wait)


def _add_executor_args(p) -> None:
    g = p.add_argument_group("where cells run")
    g.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local",
                   help="local processes (default), a Slurm job array through submitit, or submitit's local executor")
    g.add_argument("--max-parallel", type=_at_least(1), default=1, help="cells at once (local: processes; slurm: the array's %%N)")
    g.add_argument("--retry-failed", action="store_true", help="run only the cells that failed last time")
    g.add_argument("--partition", help="slurm partition")
    g.add_argument("--gpus-per-node", type=int, default=1, help="slurm GPUs per cell (a cell uses them through "
                                                                "detectron2's launcher: add --num-gpus via the cell)")
    g.add_argument("--cpus-per-task", type=int)
    g.add_argument("--time", type=int, default=240, help="slurm time limit per cell, minutes (default 240)")
    g.add_argument("--mem-gb", type=float)
    g.add_argument("--account")
    g.add_argument("--sbatch", action="append", metavar="FLAG", help="extra sbatch flag, e.g. --sbatch=--qos=high (repeatable)")
    g.add_argument("--setup", action="append", metavar="LINE", help="shell line run before each cell (module load ...)")
    g.add_argument("--submitit-dir", help="submitit's folder for scripts and logs (default: <work-dir>/submitit/%%j)")
    g.add_argument("--wait", action="store_true", help="slurm: block until the cells end and report their exit codes")
    g.add_argument("--slurm-dry-run", action="store_true",
                   help="write the sbatch script and job files but do not call sbatch (inspect a submission)")


def cmd_reproduce(args) -> int:
    from zss_bench.engine.reproduce import reproduce

    result, text = reproduce(args.run, results=args.results, out=args.out, data_root=args.data_root,
                             clip_override=args.clip_override, n_boot=args.n_boot, dry_run=args.dry_run)
    if args.json and not args.dry_run:
        print(json.dumps(result, indent=2))
    else:
        print(text, end="")
    return 1 if result.get("verdict") == "not reproduced" else 0


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def cmd_methods(args) -> int:
    """Every plugin that imports, with its declarations; one that does not is listed as broken (with
    its error) instead of ending the listing. Exit 0 while at least one method works."""
    from zss_bench.plugins import get_method, list_methods

    rows = []
    for name in list_methods():
        try:
            plugin = get_method(name)
        except Exception as exc:  # noqa: BLE001  (a broken plugin only breaks itself)
            rows.append({"name": name, "error": _one_line(exc)})
            continue
        rows.append({"name": name, "description": plugin.description, "trains": plugin.trains,
                     "uses_clip": plugin.uses_clip, "text_classifier": plugin.text_classifier,
                     "train_mapper": plugin.train_mapper, "meta_architecture": plugin.meta_architecture})
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            if "error" in r:
                print(f"{r['name']:<16} BROKEN: {r['error']}")
                continue
            kind = "trains" if r["trains"] else "training-free"
            clip = "CLIP" if r["uses_clip"] else "no CLIP"
            text = f"text classifier: {r['text_classifier']}"
            print(f"{r['name']:<16} {kind:<13} {clip:<7} {text:<35} {r['description']}")
    return 0 if any("error" not in r for r in rows) else 1


# --- toy CLIP ------------------------------------------------------------------------------

def cmd_toy_pretrain(args) -> int:
    from zss_bench.clip.toy import pretrain_toy_clip

    overrides = {"steps": args.steps, "batch_size": args.batch_size}
    path, info = pretrain_toy_clip(seed=args.seed, cache=not args.force, progress=not args.json,
                                   **{k: v for k, v in overrides.items() if v is not None})
    from zss_bench.clip.shipped import reference_toy_spec
    from zss_bench.records.paths import portable_path

    if args.json:
        print(json.dumps({k: v for k, v in info.items() if k != "loss_curve"}, indent=2))
    else:
        from zss_bench.clip.loading import file_sha256

        ev = info.get("eval", {})
        print(f"toy CLIP checkpoint: {path} (weights {file_sha256(path)[:12]}...)\n  trained in "
              f"{info.get('train_time_s', '?')} s, final loss {info.get('final_loss', '?')}; zero-shot accuracy "
              f"overall {ev.get('overall', 'n/a')} / seen {ev.get('seen', 'n/a')} / unseen {ev.get('unseen', 'n/a')} %\n"
              f"  use it with --clip {info['config']['model']}:{path}\n  (this never replaces the shipped reference "
              f"teacher {reference_toy_spec()}; records name the weights hash either way; "
              f"cache path {portable_path(path)})")
    return 0


def cmd_toy_eval(args) -> int:
    from zss_bench.clip import load_clip
    from zss_bench.clip.text_embeddings import TextEncoderAudit
    from zss_bench.clip.toy import DEFAULT_MODEL, evaluate_toy_clip

    clip = load_clip(args.clip or DEFAULT_MODEL)  # bare name = the shipped reference tag
    result = evaluate_toy_clip(clip, protocol_name=args.protocol, n_per_class=args.n_per_class,
                               prompt_kind=args.prompts, audit=TextEncoderAudit())
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{clip.spec}: zero-shot accuracy on single-object {args.protocol} images ({result['n']} images): "
              f"overall {result['overall']:.1f}%, seen {result['seen']:.1f}%, unseen {result['unseen']:.1f}%\n"
              f"  weights sha256 {clip.weights_hash}")
    return 0


def cmd_demo(args) -> int:
    from zss_bench.demo import run_demo

    return run_demo(Path(args.out))


# --- parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zss-bench",
        description="Protocols, metrics and runners for inductive zero-shot semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"zss-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("protocols", help="list the shipped protocols")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_protocols)

    p = sub.add_parser("evaluate", help="score a folder of prediction PNGs against native annotations")
    p.add_argument("--protocol", required=True, help="protocol name (see `zss-bench protocols`) or a .yaml path")
    p.add_argument("--pred-dir", required=True, help="prediction PNGs: contiguous ids, 255 = no prediction")
    p.add_argument("--gt-dir", required=True, help="the dataset's native annotation PNGs (palette PNGs read as indices)")
    p.add_argument("--image-list", metavar="FILE", help="only score the stems listed in FILE (e.g. ImageSets/Segmentation/val.txt)")
    p.add_argument("--allow-missing", action="store_true", help="score images without a prediction as all-wrong")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (values in percent)")
    p.add_argument("--out", metavar="RESULTS_DIR", help="write a run record under RESULTS_DIR/runs/<protocol>/<method>/<run-id>/")
    p.add_argument("--method", default="external", help="method name for the record (default: external)")
    p.add_argument("--label", default="predictions", help="config label shown in the leaderboard (default: predictions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run that made the predictions; also seeds the bootstrap")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs (0 = none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("leaderboard", help="mean ± std per method over the run records")
    p.add_argument("--results", default=None, help="results root (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--protocol", help="only this protocol")
    p.add_argument("--convention", choices=["mmseg", "detectron2"], help="absent-class convention (default: each protocol's headline)")
    p.add_argument("--format", choices=["md", "latex", "csv"], default="md")
    p.add_argument("--out", metavar="FILE", help="write the table to FILE (atomically) instead of stdout")
    p.add_argument("--vs", default="chimera", metavar="METHOD",
                   help="reference method of the paired ΔhIoU column (default: chimera; 'none' leaves it out)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the paired column (default 1000)")
    p.add_argument("--config", nargs="+", metavar="PATTERN", help="only rows whose config label matches a pattern "
                                                                  "(shell-style: default 'long-1800it*')")
    p.add_argument("--grid", nargs="+", metavar="FILE", help="pivot tables of the sweeps declared in these grid files "
                                                             "(rows/columns = swept keys) instead of the leaderboard")
    p.add_argument("--heatmap", metavar="PNG", help="with --grid: heat-map of each two-key sweep (PNG; -2, -3... for more)")
    p.set_defaults(func=cmd_leaderboard)

    p = sub.add_parser("compare", help="paired bootstrap of two runs on the same images")
    p.add_argument("run_a", metavar="RUN_A", help="run directory or run id")
    p.add_argument("run_b", metavar="RUN_B", help="run directory or run id")
    p.add_argument("--results", default=None, help="where to look up run ids (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--convention", choices=["mmseg", "detectron2"])
    p.add_argument("--n-boot", type=int, default=2000)
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
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples of the paired column (default 1000)")
    p.add_argument("--n", type=int, default=4, help="saved predictions shown per run (default: 4)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("prepare", help="check a dataset against a protocol, index it and build its label views")
    p.add_argument("dataset", choices=["voc", "coco-stuff", "context", "synth"])
    p.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS)")
    p.add_argument("--protocol", help="protocol (default: voc-15-5, coco-stuff-156-15, context-59-zs3, synth-15-5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report-only", action="store_true", help="list every problem instead of stopping at the first; write nothing")
    p.add_argument("--workers", type=int, default=4, help="parallel readers (default: 4)")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("synth", help="the synthetic world behind synth-15-5")
    synth = p.add_subparsers(dest="synth_command", required=True, metavar="SUBCOMMAND")
    g = synth.add_parser("generate", help="write a VOC-style synthetic dataset")
    g.add_argument("--out", required=True, help="output folder")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--size", type=int, default=64, help="image side in pixels (default: 64)")
    g.add_argument("--train", type=int, default=2000, help="training images (default: 2000)")
    g.add_argument("--val", type=int, default=300, help="validation images (default: 300)")
    g.add_argument("--workers", type=int, default=1)
    g.add_argument("--json", action="store_true")
    g.set_defaults(func=cmd_synth_generate)

    p = sub.add_parser("run", help="train and evaluate a method on a protocol, write the run record")
    p.add_argument("--method", required=True, help="method name (see `zss-bench methods`)")
    p.add_argument("--protocol", required=True, help="protocol name or .yaml path")
    p.add_argument("--config", metavar="FILE", help="the method's config YAML (default: the method's "
                   "configs/<protocol>.yaml, else configs/<dataset>.yaml, else configs/default.yaml)")
    p.add_argument("--data-root", help="dataset root (default: $DETECTRON2_DATASETS; synth-15-5: a cached generated world)")
    p.add_argument("--clip", help="CLIP weights: NAME:TAG, NAME:/path/to/checkpoint or a local dir (default: per protocol)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output-dir", help="training outputs (default: <work-dir>/<protocol>/<method>/"
                   "<config-hash>-data<dataset-root-hash>-seed<S>)")
    p.add_argument("--work-dir", default="work_dirs", help="root of default output dirs (default: work_dirs)")
    p.add_argument("--results", default=None, help="results root for the run record (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output dir "
                   "(a finished run is only evaluated again)")
    p.add_argument("--label", help="config label shown in the leaderboard (= ZSS.LABEL; default: derived from the overrides)")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run's checkpoints in the output dir "
                   "and start over (without it such a folder is refused)")
    p.add_argument("--eval-only", action="store_true", help="evaluate the last checkpoint (or MODEL.WEIGHTS) only")
    p.add_argument("--save-predictions", type=_at_least(0), default=0, metavar="N",
                   help="keep the first N test predictions (with ground truth and a small image copy) in the "
                        "record, for `zss-bench plot --kind overlays` and the report (default: 0)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (GPUs; on CPU: gloo processes)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 for multi-machine runs")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides, e.g. SOLVER.MAX_ITER 100")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("toy-clip", help="the tiny CLIP learned offline on the synthetic world")
    toy = p.add_subparsers(dest="toy_command", required=True, metavar="SUBCOMMAND")
    t = toy.add_parser("pretrain", help="train (or reuse from the cache) the toy CLIP")
    t.add_argument("--world", choices=["synth"], default="synth", help="caption world (only synth exists)")
    t.add_argument("--steps", type=int, help="training steps (default: the toy CLIP config's)")
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--force", action="store_true", help="retrain even if a cached checkpoint matches")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_toy_pretrain)
    t = toy.add_parser("eval", help="zero-shot classification of single-object synthetic images")
    t.add_argument("--clip", help="CLIP spec (default: zss-toy-vit, i.e. the shipped reference tag zss-toy-vit:synth-v1)")
    t.add_argument("--protocol", default="synth-15-5")
    t.add_argument("--n-per-class", type=int, default=50)
    t.add_argument("--prompts", choices=["single", "ensemble"], help="prompt kind (default: the protocol's)")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=cmd_toy_eval)

    p = sub.add_parser("grid", help="run every missing cell of a grid file, one process per cell")
    p.add_argument("grid", help="grid YAML (see grids/)")
    p.add_argument("--results", default=None, help="results root for the records (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--work-dir", default="work_dirs")
    p.add_argument("--data-root", help="dataset root passed to every cell")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="overrides added to every cell; they extend each cell's label (default -> default+MAX_ITER=20), so such runs never count as the plain cells")
    _add_executor_args(p)
    p.set_defaults(func=cmd_grid)

    p = sub.add_parser("ablate", help="sweep config keys (Cartesian product x seeds), one process per cell")
    p.add_argument("--method", required=True)
    p.add_argument("--protocol", required=True)
    p.add_argument("--grid", nargs="+", required=True, metavar="KEY=v1,v2", help="swept keys and their values")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    p.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE",
                   help="overrides added to every cell (part of each cell's identity)")
    p.add_argument("--results", default=None, help="results root (default: $ZSS_BENCH_RESULTS or ./zss-results)")
    p.add_argument("--work-dir", default="work_dirs")
    p.add_argument("--data-root", help="dataset root passed to every cell")
    p.add_argument("--write", metavar="GRID_FILE", help="also write the sweep as a grid file (for `leaderboard --grid`)")
    p.add_argument("--dry-run", action="store_true", help="print the commands only")
    _add_executor_args(p)
    p.set_defaults(func=cmd_ablate)

    p = sub.add_parser("reproduce", help="re-run the exact cell of a record into a scratch folder and test the difference")
    p.add_argument("run", metavar="RUN", help="run directory, its record.json, or a run id under --results")
    p.add_argument("--results", default=None, help="where to look up run ids (default: $ZSS_BENCH_RESULTS or ./zss-results; the committed table: --results results)")
    p.add_argument("--out", help="scratch folder for the re-run (default: $ZSS_BENCH_CACHE/reproduce/<run-id>-<time>); "
                                 "never inside the results root")
    p.add_argument("--data-root", help="the record's dataset, if it is elsewhere on this machine")
    p.add_argument("--clip-override", metavar="SPEC", help="load the record's CLIP from here (it must have the recorded hash)")
    p.add_argument("--n-boot", type=int, default=1000, help="paired-bootstrap resamples (default: 1000)")
    p.add_argument("--dry-run", action="store_true", help="check that a faithful re-run is possible and print it; run nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reproduce)

    p = sub.add_parser("methods", help="list the method plugins")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_methods)

    p = sub.add_parser("demo", help="the end-to-end job on the embedded synthetic protocol")
    p.add_argument("--out", default="build/demo", help="scratch folder for the demo (default: build/demo)")
    p.set_defaults(func=cmd_demo)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    from zss_bench.data.inductive import LeakageError
    from zss_bench.data.layouts import DatasetLayoutError
    from zss_bench.data.masks import LabelFileError
    from zss_bench.data.prepare import PrepareError
    from zss_bench.data.synth import SynthWorldError
    from zss_bench.clip.loading import ClipLoadError
    from zss_bench.engine.grid import GridError
    from zss_bench.engine.sweep import SweepError
    from zss_bench.engine.reproduce import ReproduceError
    from zss_bench.engine.config import ConfigOverrideError
    from zss_bench.engine.run import RunFolderError
    from zss_bench.engine.trainer import TrainingDiverged
    from zss_bench.evaluation.pred_dir import EvaluationInputError
    from zss_bench.protocol import ProtocolError
    from zss_bench.records.store import RecordError
    from zss_bench.plugins import MetaArchitectureError, MethodConfigError, PluginError
    from zss_bench.registry import UnknownNameError
    from zss_bench.report import ReportError

    return (ReportError, LabelFileError, EvaluationInputError, ProtocolError, RecordError, UnknownNameError, DatasetLayoutError,
            PrepareError, LeakageError, SynthWorldError, TrainingDiverged, ClipLoadError, GridError, SweepError, ReproduceError, RunFolderError,
            ConfigOverrideError, PluginError, MethodConfigError, MetaArchitectureError)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "results", "") is None:
        from zss_bench.records.store import default_results_root

        args.results = default_results_root()
    try:
        return args.func(args)
    except _user_errors() as exc:
        print(f"zss-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"zss-bench {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
