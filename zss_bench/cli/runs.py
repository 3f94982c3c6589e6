"""``run``, ``grid``, ``ablate`` and ``reproduce``: training and evaluation runs and their sweeps."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from zss_bench.cli.common import _at_least, _unseen_names


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
    from zss_bench.engine.launch import describe, requested_device, resolve_device
    from zss_bench.engine.preflight import check_run_request

    opts = [*args.opts, *(["ZSS.LABEL", args.label] if args.label else [])]
    # names, keys, values, seed and paths before torch/detectron2 are imported (a usage error in < 1 s)
    check_run_request(args.method, args.protocol, opts=opts, seed=args.seed, config_file=args.config)
    wanted = requested_device(args.device, opts)  # --device against a MODEL.DEVICE override: no torch yet
    print(_method_config_line(args.method, args.protocol, args.config), flush=True)
    device = resolve_device(wanted, args.num_gpus)  # CUDA visible? enough GPUs? (one line if not)
    from zss_bench.engine.run import RunRequest, run_method

    req = RunRequest(method=args.method, protocol=args.protocol, data_root=args.data_root, clip=args.clip or "",
                     seed=args.seed, output_dir=args.output_dir, resume=args.resume, eval_only=args.eval_only,
                     overwrite=args.overwrite,
                     num_gpus=args.num_gpus, num_machines=args.num_machines, machine_rank=args.machine_rank,
                     dist_url=args.dist_url, opts=opts,
                     results_root=args.results, work_root=args.work_dir, config_file=args.config,
                     save_predictions=args.save_predictions, device=device)
    run_dir = run_method(req)
    if args.machine_rank == 0:
        from zss_bench.records import load_run

        rec = load_run(run_dir).record
        m = rec["metrics"]
        fmt = lambda v: "n/a" if v is None else f"{v:.2f}"  # noqa: E731
        from zss_bench.protocol import protocol_ref

        print(f"{rec['method']['name']} [{rec['method']['label']}] on {protocol_ref(rec['protocol'])} seed {args.seed}: "
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
        print(f"  device: {describe(device, args.num_gpus, args.num_machines)}"
              + (", deterministic mode" if (rec["provenance"].get("deterministic") or {}).get("requested") else ""))
        print(f"record: {run_dir}")
    return 0



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

    gpus_per_cell = getattr(args, "gpus_per_cell", None)
    if args.executor == "local":
        return LocalExecutor(args.max_parallel, gpus_per_cell=gpus_per_cell)
    if gpus_per_cell is not None:
        from zss_bench.engine.preflight import UsageError

        raise UsageError(f"--gpus-per-cell is for --executor local; a {args.executor} cell gets its GPUs "
                         "from --gpus-per-node")
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
    g.add_argument("--gpus-per-cell", type=_at_least(0), default=None, metavar="K",
                   help="local, on a GPU host: GPUs each running cell gets through CUDA_VISIBLE_DEVICES, handed out "
                        "round-robin (default: 1 when GPUs are visible, else 0; 0 = cells on the CPU; K > 1 adds "
                        "--num-gpus K). --max-parallel x K may not exceed the visible GPUs")
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




def add_run(sub) -> None:
    """The ``run`` verb."""
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
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="where the run computes, overriding MODEL.DEVICE: auto (default) = cuda when a CUDA device is "
                        "visible, else cpu; the backend follows it (cuda: NCCL, one process per GPU; cpu: gloo)")
    p.add_argument("--num-gpus", type=int, default=1, help="processes per machine (cuda: one per GPU, at most the "
                                                          "visible count; cpu: gloo processes)")
    p.add_argument("--num-machines", type=int, default=1)
    p.add_argument("--machine-rank", type=int, default=0)
    p.add_argument("--dist-url", default="auto", help="tcp://HOST:PORT of machine 0 for multi-machine runs")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides, e.g. SOLVER.MAX_ITER 100")
    p.set_defaults(func=cmd_run)


def add_sweeps(sub) -> None:
    """The ``grid``, ``ablate`` and ``reproduce`` verbs."""
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
    p.add_argument("--n-boot", type=_at_least(1), default=1000, help="paired-bootstrap resamples (default: 1000)")
    p.add_argument("--dry-run", action="store_true", help="check that a faithful re-run is possible and print it; run nothing")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_reproduce)
