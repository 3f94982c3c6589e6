"""``zss-bench evaluate``: score a folder of prediction PNGs, optionally write a record."""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from zss_bench.cli.common import _at_least


def cmd_evaluate(args) -> int:
    from zss_bench.evaluation import evaluate_directories, score
    from zss_bench.protocol import load_protocol
    from zss_bench.records import write_run
    from zss_bench.records.imported import imported_record
    from zss_bench.records.paths import portable_path

    started = time.time()
    protocol = load_protocol(args.protocol)
    if args.out:
        from zss_bench.records.writable import check_writable_dir

        check_writable_dir(args.out, "--out")  # before scoring: a read-only --out is one line at second 0
    result = evaluate_directories(protocol, args.pred_dir, args.gt_dir, allow_missing=args.allow_missing,
                                  image_list=args.image_list, progress=not args.json and not args.quiet,
                                  pred_ids=args.pred_ids)
    metrics = score(result.cm, protocol, n_boot=args.n_boot, seed=args.seed)
    _input_notes(result)
    expected = protocol.image_sets.get(protocol.eval_split, {}).get("count")
    if expected and expected != len(result.image_ids):
        print(f"note: scored {len(result.image_ids)} images; protocol {protocol.name} expects "
              f"{expected} in its '{protocol.eval_split}' split (a subset is not comparable to published numbers)",
              file=sys.stderr)
    if args.out:
        record = imported_record(
            protocol, method=args.method, label=args.label, source="prediction-pngs", seed=args.seed,
            n_boot=args.n_boot, started=started, metrics=metrics,
            inputs={"pred_dir": str(result.pred_dir.resolve()), "gt_dir": str(result.gt_dir.resolve()),
                    "image_list": str(Path(args.image_list).resolve()) if args.image_list else None,
                    "pred_ids": args.pred_ids,
                    "n_images": len(result.image_ids), "missing_predictions": result.missing,
                    "extra_predictions": len(result.extra)},
            dataset={"gt_dir": portable_path(result.gt_dir.resolve()),
                     "image_list": portable_path(Path(args.image_list).resolve()) if args.image_list else None,
                     "test_set": result.test_set})
        run_dir = write_run(args.out, record, result.cm)
        metrics = {**metrics, "run_dir": str(run_dir)}
    if args.json:
        out = {k: v for k, v in metrics.items() if k != "conventions"}
        out["other_conventions"] = {c: {k: b[k] for k in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")}
                                    for c, b in metrics["conventions"].items() if c != metrics["convention"]}
        out["n_images"] = len(result.image_ids)
        out["test_set"] = result.test_set
        print(json.dumps(out, indent=2))
    else:
        print(_summary_text(protocol, metrics, len(result.image_ids), result.test_set))
    return 0


def _input_notes(result) -> None:
    """What was not scored, or scored without a prediction, in one line each (counts, then a few stems)."""
    def stems(names: list[str]) -> str:
        return ", ".join(names[:5]) + (f", ... ({len(names)} in all)" if len(names) > 5 else "")

    n = len(result.image_ids)
    if result.missing:
        print(f"warning: {len(result.missing)} of {n} ground-truth images had no prediction in {result.pred_dir} "
              f"and were scored as all-wrong (--allow-missing): {stems(result.missing)}", file=sys.stderr)
    if result.extra:
        print(f"warning: {len(result.extra)} prediction(s) have no ground truth in {result.gt_dir}; not scored: "
              f"{stems(result.extra)}", file=sys.stderr)
    if result.unlisted:
        print(f"note: {len(result.unlisted)} prediction(s) are of images not in --image-list; not scored: "
              f"{stems(result.unlisted)}", file=sys.stderr)


def _summary_text(protocol, metrics: dict, n_images: int, test_set: dict | None = None) -> str:
    def fmt(v):
        return "n/a" if v is None else f"{v:.2f}"

    lines = [f"{protocol.name} v{protocol.version} ({protocol.short_hash}), {n_images} images"
             + (f", test set {test_set['fingerprint'][:12]}" if test_set else "")]
    for conv, block in metrics["conventions"].items():
        mark = " (headline)" if conv == metrics["convention"] else ""
        ci = block.get("ci", {}).get("hIoU")
        ci_txt = f"  hIoU 95% CI [{fmt(ci['low'])}, {fmt(ci['high'])}]" if ci else ""
        lines.append(f"  {conv:<10}{mark:<11} S {fmt(block['mIoU_seen'])}  U {fmt(block['mIoU_unseen'])}  "
                     f"hIoU {fmt(block['hIoU'])}  mIoU {fmt(block['mIoU'])}  pAcc {fmt(block['pAcc'])}{ci_txt}")
    if "run_dir" in metrics:
        lines.append(f"record: {metrics['run_dir']}")
    return "\n".join(lines)




def add_evaluate(sub) -> None:
    """The ``evaluate`` verb."""
    p = sub.add_parser("evaluate", help="score a folder of prediction PNGs against native annotations")
    p.add_argument("--protocol", required=True, help="protocol name (see `zss-bench protocols`) or a .yaml path")
    p.add_argument("--pred-dir", required=True, help="prediction PNGs: contiguous ids, 255 = no prediction")
    p.add_argument("--pred-ids", choices=["contiguous", "native"], default="contiguous",
                   help="ids in the prediction PNGs: contiguous (the protocol's class ids; default) or native (the "
                        "dataset's own ids, mapped like the ground truth: what mmseg's format_only writes, e.g. VOC "
                        "with reduce_zero_label = ids + 1, COCO-Stuff's 182-id space)")
    p.add_argument("--gt-dir", required=True, help="the dataset's native annotation PNGs (palette PNGs read as indices)")
    p.add_argument("--image-list", metavar="FILE", help="only score the stems listed in FILE (e.g. ImageSets/Segmentation/val.txt)")
    p.add_argument("--allow-missing", action="store_true", help="score images without a prediction as all-wrong")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON (values in percent)")
    p.add_argument("--out", metavar="RESULTS_DIR", help="write a run record under RESULTS_DIR/runs/<protocol>/<method>/<run-id>/")
    p.add_argument("--method", default="external", help="method name for the record (default: external)")
    p.add_argument("--label", default="predictions", help="config label shown in the leaderboard (default: predictions)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run that made the predictions; also seeds the bootstrap")
    p.add_argument("--n-boot", type=_at_least(0), default=1000, help="bootstrap resamples for the CIs (0 = none)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_evaluate)
