"""``protocols``, ``prepare`` and ``synth``: the protocol definitions and the datasets they read."""
from __future__ import annotations

import json
import os
from pathlib import Path

from zss_bench.cli.common import _at_least


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




def add_protocols(sub) -> None:
    """The ``protocols`` verb."""
    p = sub.add_parser("protocols", help="list the shipped protocols")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_protocols)


def add_datasets(sub) -> None:
    """The ``prepare`` and ``synth`` verbs."""
    p = sub.add_parser("prepare", help="check a dataset against a protocol, index it and build its label views")
    p.add_argument("dataset", choices=["voc", "coco-stuff", "context", "synth"])
    p.add_argument("--root", help="dataset root (default: $DETECTRON2_DATASETS)")
    p.add_argument("--protocol", help="protocol (default: voc-15-5, coco-stuff-156-15, context-59-zs3, synth-15-5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--report-only", action="store_true", help="list every problem instead of stopping at the first; write nothing")
    p.add_argument("--workers", type=_at_least(1), default=min(4, os.cpu_count() or 1),
                   help="parallel readers (default: the machine's cores, at most 4)")
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
