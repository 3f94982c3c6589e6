"""``speed``: train and evaluation throughput, peak memory and schedule cost of each method's real configuration
on this machine, fp32 and mixed precision (``zss_bench.engine.speed``)."""
from __future__ import annotations

import argparse
import json

from zss_bench.cli.common import _at_least


def cmd_speed(args) -> int:
    from zss_bench.engine.launch import requested_device, resolve_device
    from zss_bench.engine.preflight import check_override_pairs

    check_override_pairs(args.opts, verb="speed")
    device = resolve_device(requested_device(args.device, args.opts), 1)
    from zss_bench.engine.speed import format_table, run_speed
    from zss_bench.plugins import get_method, list_methods

    methods = args.method or list_methods()
    for m in methods:
        get_method(m)  # an unknown name: one line with did-you-mean, before anything is built
    precisions = {"both": (False, True), "on": (True,), "off": (False,)}[args.amp]
    result = run_speed(methods, precisions=precisions, protocol_name=args.protocol, clip=args.clip, device=device,
                       size=args.size, steps=args.steps, warmup=args.warmup, eval_images=args.eval_images,
                       batch=args.batch, amp_dtype=args.amp_dtype, opts=list(args.opts), config_file=args.config)
    if args.out:
        from zss_bench.records.store import atomic_write_text

        atomic_write_text(args.out, json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2) if args.json else format_table(result))
    return 0 if all("error" not in r for r in result["rows"]) else 1


def add_speed(sub) -> None:
    p = sub.add_parser("speed", help="train/eval images per second, peak memory and schedule hours of each method's "
                                     "real configuration on this machine, fp32 and mixed precision")
    p.add_argument("--method", nargs="+", help="methods (default: all)")
    p.add_argument("--protocol", default="voc-15-5", help="whose method configs to build (default: voc-15-5, the "
                   "real configurations); no dataset is read: a 2-image folder in its layout is generated")
    p.add_argument("--config", metavar="FILE", help="a method config YAML instead of the method's own (one method)")
    p.add_argument("--clip", default="ViT-B-16:random", help="CLIP weights (default: ViT-B-16:random, the real "
                   "architecture with random weights; speed does not depend on the values)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--size", type=_at_least(32), default=512, help="crop and slide window side (default 512)")
    p.add_argument("--steps", type=_at_least(1), default=3, help="timed training steps (default 3)")
    p.add_argument("--warmup", type=_at_least(0), default=1, help="untimed steps / images first (default 1)")
    p.add_argument("--eval-images", type=_at_least(1), default=2, help="timed evaluation images (default 2)")
    p.add_argument("--batch", type=_at_least(1), help="training batch (default: the config's, halved until it fits "
                   "on CUDA; 2 on the CPU)")
    p.add_argument("--amp", choices=["both", "on", "off"], default="both", help="fp32, mixed precision or both")
    p.add_argument("--amp-dtype", choices=["bfloat16", "float16"], default="bfloat16")
    p.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    p.add_argument("--out", metavar="FILE", help="also write the JSON result here (e.g. results/speed/<gpu>.json)")
    p.add_argument("opts", nargs=argparse.REMAINDER, metavar="KEY VALUE", help="config overrides for every method")
    p.set_defaults(func=cmd_speed)
