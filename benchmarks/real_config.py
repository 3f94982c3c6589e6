"""Cost of ONE thing on a method's real voc-15-5 configuration, measured in its own process.

Run (one measurement per process, so the peak resident memory is that measurement's)::

    .venv/bin/python benchmarks/real_config.py --method chimera --mode eval [--json]
    .venv/bin/python benchmarks/real_config.py --method seen-only --mode train --json
    .venv/bin/python benchmarks/real_config.py --method chimera --mode eval --size 128   # quick smoke test

The configuration is what ``zss-bench run --method M --protocol voc-15-5`` builds (the method's
``configs/default.yaml``: R-101 DeepLab body, CLIP ViT-B/16, 512 crops, slide inference) on CPU
with ``--clip ViT-B-16:random`` (open_clip's real ViT-B/16, seeded random weights, no download),
plus ``MODEL.DEVICE cpu``, BN instead of SyncBN, batch 2, no loader workers and ``--opts``.
The protocol's datasets are registered the way a run registers them: a 2-image VOC-layout
folder is written to a temporary directory, prepared with ``prepare_dataset`` (into a temporary
``ZSS_BENCH_CACHE``) and registered with ``register_protocol``; the model is detectron2's
``build_model(cfg)``.

* ``--mode eval``: ``set_eval_classes`` (all 20 classes), ``model.eval()``, ``torch.no_grad()``,
  1 warm-up + N timed forwards of one SIZE x SIZE image in detectron2's input format
  (one slide window at the default size: SIZE == ZSS.EVAL.SLIDE_CROP).
* ``--mode train``: ``model.train()``, the run's optimizer (``ZSSTrainer.build_optimizer``:
  AdamW over the trainable parameters, the config's LR / weight decay / multipliers),
  1 warm-up + N timed steps (forward, backward, optimizer step) of a batch of
  ``SOLVER.IMS_PER_BATCH`` SIZE x SIZE images with random seen-class targets (training view:
  ids 0..S-1, ~10% ignore).

Memory: ``peak_rss_mb`` is VmHWM of /proc/self/status after resetting it (``echo 5 >
/proc/self/clear_refs``) just before the warm-up, i.e. the peak of the warm-up + timed part
(``peak_rss_reset`` says whether the reset was allowed; if not, it is the whole-process peak);
``process_peak_rss_mb`` is getrusage's ru_maxrss (the whole process, model build included). Times are wall
seconds (median over N). Nothing here asserts anything about speed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from zss_bench.engine.speed import CLIP, PROTOCOL, random_target, size_opts, windows_per_image, write_tiny_voc

SYNTH = "synth-15-5"  # --protocol synth-15-5: the synth configuration (configs/synth.yaml, the shipped toy CLIP, 64 px)


def _size_opts(size: int) -> list[str]:
    return size_opts(size)


def _windows(cfg, size: int) -> int:
    return windows_per_image(cfg, size, size)


def _synth_world(root: Path, size: int) -> Path:
    from zss_bench.data.synth import generate_world

    generate_world(root, seed=0, size=size, n_train=4, n_val=2, progress=False)
    return root


def measure(method: str, mode: str, *, size: int = 512, n: int = 2, warmup: int = 1, opts: list[str] | None = None,
            threads: int | None = None, protocol_name: str = PROTOCOL) -> dict:
    work = Path(tempfile.mkdtemp(prefix="zss-real-config-"))
    os.environ["ZSS_BENCH_CACHE"] = str(work / "cache")  # prepared views + text embeddings: never ~/.cache
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    import torch
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.engine.config import build_run_config
    from zss_bench.engine.trainer import ZSSTrainer
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol
    from zss_bench.records.efficiency import PeakMemory, parameter_counts
    from zss_bench.records.provenance import cpu_model

    if threads:
        torch.set_num_threads(threads)
    try:
        started = time.perf_counter()
        protocol = load_protocol(protocol_name)
        synth = protocol.dataset == "synth"
        plugin = get_method(method)
        base = ["MODEL.DEVICE", "cpu", "MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN",
                "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"]
        all_opts = [*base, *([] if synth else _size_opts(size)), *(opts or [])]
        data_root = _synth_world(work / "data", size) if synth else write_tiny_voc(work / "data", size)
        prepare_dataset(protocol.dataset, data_root, protocol, progress=False, workers=1)
        cfg = build_run_config(plugin, protocol, seed=0, output_dir=str(work / "out"), data_root=str(data_root),
                               clip=CLIP if plugin.uses_clip and not synth else "", opts=all_opts)
        register_protocol(protocol, data_root)
        torch.manual_seed(0)
        model = build_model(cfg)
        build_s = time.perf_counter() - started
        gen = torch.Generator().manual_seed(0)

        def image():
            return torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen)

        extra: dict = {}
        if mode == "eval":
            model.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
            model.eval()
            batch = [{"image": image(), "height": size, "width": size}]

            def step(_i):
                with torch.no_grad():
                    out = model(batch)
                sem = out[0]["sem_seg"]
                if tuple(sem.shape) != (protocol.num_classes, size, size) or not torch.isfinite(sem).all():
                    raise RuntimeError(f"eval output has shape {tuple(sem.shape)} / non-finite values; expected "
                                       f"({protocol.num_classes}, {size}, {size})")
                return None
            extra["windows_per_image"] = _windows(cfg, size)
        elif mode == "train":
            model.train()
            optimizer = ZSSTrainer.build_optimizer(cfg, model)
            extra["optimizer"] = type(optimizer).__name__
            num_seen, ignore = len(protocol.seen_ids), protocol.ignore_label

            def target():
                return random_target(size, num_seen, ignore, gen)

            batch = [{"image": image(), "sem_seg": target()} for _ in range(cfg.SOLVER.IMS_PER_BATCH)]
            storage = EventStorage(0).__enter__()  # what a trainer provides (iteration, scalars)

            def step(i):
                storage.iter = i
                losses = model(batch)
                total = sum(losses.values())
                if not torch.isfinite(total):
                    raise RuntimeError(f"training loss is not finite: { {k: float(v) for k, v in losses.items()} }")
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                return float(total.detach())
        else:
            raise ValueError(f"--mode must be eval or train, got {mode!r}")

        load_before = os.getloadavg()[0]
        last, times = None, []
        with PeakMemory("cpu") as peak:  # the run's own evaluation-memory meter (records.efficiency)
            for i in range(warmup):
                last = step(i)
            for i in range(warmup, warmup + n):
                t0 = time.perf_counter()
                last = step(i)
                times.append(time.perf_counter() - t0)
        if mode == "train":
            extra["final_total_loss"] = last
            storage.__exit__(None, None, None)
        unit = "window" if mode == "eval" else "step"
        median = statistics.median(times)
        if mode == "eval" and extra["windows_per_image"] > 1:
            median /= extra["windows_per_image"]
        return {
            "method": method, "mode": mode, "protocol": protocol.name,
            "clip": (cfg.ZSS.CLIP or "protocol default") if plugin.uses_clip else None,
            "size": size, "n": n, "warmup": warmup,
            f"seconds_per_{unit}": round(median, 3), "seconds": [round(t, 3) for t in times],
            "build_seconds": round(build_s, 1),
            "peak_rss_mb": round(peak.peak_mb, 1), "peak_rss_reset": peak.scope == "block",
            "process_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            **parameter_counts(model),
            "batch": cfg.SOLVER.IMS_PER_BATCH if mode == "train" else 1,
            "config": {"meta_architecture": cfg.MODEL.META_ARCHITECTURE, "resnet_depth": cfg.MODEL.RESNETS.DEPTH,
                       "crop": list(cfg.INPUT.CROP.SIZE), "eval_mode": cfg.ZSS.EVAL.MODE,
                       "slide_crop": cfg.ZSS.EVAL.SLIDE_CROP, "slide_stride": cfg.ZSS.EVAL.SLIDE_STRIDE,
                       "config_file": Path(cfg.ZSS.CONFIG_FILE).name, "opts": all_opts},
            **extra,
            "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "cpu_model": cpu_model(),
            # other work on the machine inflates the times: the 1-minute load around the measured part
            "loadavg_1m": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            "torch": torch.__version__, "python": platform.python_version(),
        }
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--method", required=True, help="method plugin (zss-bench methods)")
    ap.add_argument("--mode", required=True, choices=("eval", "train"))
    ap.add_argument("--size", type=int, default=None, help="image side (default 512: the real crop / slide window; "
                    "64 for synth-15-5)")
    ap.add_argument("--protocol", default=PROTOCOL, choices=(PROTOCOL, SYNTH),
                    help="voc-15-5: the real configuration (default); synth-15-5: the synth one")
    ap.add_argument("-n", "--n", type=int, default=2, help="timed forwards / steps (default 2)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed forwards / steps first (default 1)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    ap.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="extra config overrides")
    ap.add_argument("--json", action="store_true", help="print one JSON object only")
    args = ap.parse_args(argv)
    args.size = args.size or (64 if args.protocol == SYNTH else 512)
    if args.n < 1 or args.size < 32:
        ap.error("--n must be >= 1 and --size >= 32")
    res = measure(args.method, args.mode, size=args.size, n=args.n, warmup=args.warmup, opts=args.opts,
                  threads=args.threads, protocol_name=args.protocol)
    if args.json:
        print(json.dumps(res))
    else:
        unit = "window" if args.mode == "eval" else "step"
        print(f"{res['method']} {res['mode']} @ {res['size']}px: {res[f'seconds_per_{unit}']:.2f} s/{unit} "
              f"(median of {res['n']}: {res['seconds']}), peak RSS {res['peak_rss_mb']} MB "
              f"(process {res['process_peak_rss_mb']} MB), "
              f"{res['params_total'] / 1e6:.1f} M params ({res['params_trainable'] / 1e6:.1f} M trainable), "
              f"build {res['build_seconds']} s, {res['torch_threads']} threads, {res['cpu_model']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
