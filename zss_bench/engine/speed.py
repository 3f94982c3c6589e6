"""``zss-bench speed``: what each method's real configuration costs on the machine at hand.

Per method and precision (fp32, and autocast to ``SOLVER.AMP.DTYPE``): the model ``zss-bench run`` builds
(the method's config for the protocol, ``--clip`` or the user's weights, the real crop), then
- training: warm-up + ``steps`` timed steps of the run's own step (``engine.precision.build_step_trainer``:
  detectron2's ``SimpleTrainer`` or the mixed-precision one, the run's optimizer) on a fixed batch of random
  images with random seen-class targets (the training view's ids; per-class masks for mask-classification
  methods), at ``batch`` images, or by default the config's ``SOLVER.IMS_PER_BATCH`` halved until it fits
  (CUDA out-of-memory; on the CPU the default is 2);
- evaluation: warm-up + ``eval_images`` timed images of VOC's shape (short side = the crop, 4:3) through the
  run's inference path (``inference_mode`` + ``ZSS.EVAL.AMP``'s autocast, slide windows as configured).
The figures: train images/s, eval images/s, peak memory of each phase, parameters, and the hours the
config's schedule (``SOLVER.MAX_ITER`` x the config's ``SOLVER.IMS_PER_BATCH`` images) would take at the
measured rate on this one device. Data loading is not in the figures (inputs are already in memory): they
are the model's cost, the ceiling a loader can at best reach.

The protocol's datasets are registered as a run registers them, from a two-image folder in the protocol's
layout written to a temporary directory (a real dataset is never needed).
"""
from __future__ import annotations

import gc
import itertools
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

PROTOCOL = "voc-15-5"
CLIP = "ViT-B-16:random"
CPU_BATCH = 2


def write_tiny_voc(root: Path, size: int) -> Path:
    """A VOC 2012 folder in the real layout: 2 train images (SegmentationClassAug, train_aug.txt) and 1 val
    image, each with seen classes (the val one with an unseen class too)."""
    import numpy as np
    from PIL import Image

    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClassAug", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    stems = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    for split, names in stems.items():
        for i, stem in enumerate(names):
            native = np.zeros((size, size), np.uint8)
            q = size // 4
            native[q:2 * q, q:2 * q] = 1 + 2 * i          # seen (VOC ids 1..15)
            native[2 * q:3 * q, 2 * q:3 * q] = 15          # person, seen
            native[q - 1, :] = 255
            if split == "val":
                native[:q - 1, :q] = 17                     # sheep, unseen
            img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(img, mode="RGB").save(base / "JPEGImages" / f"{stem}.jpg", quality=90)
            folder = "SegmentationClassAug" if split == "train" else "SegmentationClass"
            Image.fromarray(native, mode="P").save(base / folder / f"{stem}.png")
    lists = base / "ImageSets" / "Segmentation"
    (lists / "train_aug.txt").write_text("".join(f"{s}\n" for s in stems["train"]))
    (lists / "val.txt").write_text("".join(f"{s}\n" for s in stems["val"]))
    return root


def size_opts(size: int) -> list[str]:
    """Overrides that shrink a real configuration's crop, slide window and test resize to ``size`` (none at 512)."""
    if size == 512:
        return []
    return ["INPUT.CROP.SIZE", f"({size}, {size})", "ZSS.EVAL.SLIDE_CROP", str(size),
            "ZSS.EVAL.SLIDE_STRIDE", str(max(1, size * 426 // 512)), "INPUT.MIN_SIZE_TEST", str(size),
            "INPUT.MAX_SIZE_TEST", str(size * 4)]


def windows_per_image(cfg, h: int, w: int) -> int:
    from zss_bench.modeling.inference import slide_windows

    if cfg.ZSS.EVAL.MODE != "slide":
        return 1
    return len(slide_windows(h, w, cfg.ZSS.EVAL.SLIDE_CROP, cfg.ZSS.EVAL.SLIDE_STRIDE))


def random_target(size: int, num_seen: int, ignore: int, gen):
    """A (size, size) int64 training-view target: blocks of random seen ids, ~10 % ignored pixels."""
    import torch

    cells = max(1, size // 32)
    coarse = torch.randint(0, num_seen, (cells, cells), generator=gen)
    t = coarse.repeat_interleave(size // cells, 0).repeat_interleave(size // cells, 1)
    t = torch.nn.functional.pad(t, (0, size - t.shape[1], 0, size - t.shape[0]), value=ignore)
    t[torch.rand((size, size), generator=gen) < 0.1] = ignore
    return t.long()


def training_sample(size: int, num_seen: int, ignore: int, gen, mapper: str) -> dict:
    """One training input as the method's mapper gives it (``semantic``, or ``per-class-masks``)."""
    import torch

    target = random_target(size, num_seen, ignore, gen)
    sample = {"image": torch.randint(0, 256, (3, size, size), dtype=torch.uint8, generator=gen), "sem_seg": target}
    if mapper == "per-class-masks":  # what engine.data.PerClassMaskMapper adds
        classes = torch.unique(target[target != ignore])
        sample.update(classes=classes, masks=target[None] == classes[:, None, None])
    return sample


def environment(device: str) -> dict:
    """The device and the library versions the figures belong to."""
    import torch

    from zss_bench.records.provenance import device_info, machine_summary

    info = device_info(device)
    cuda = str(device).startswith("cuda")
    nccl = None
    if cuda:
        try:
            nccl = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception:  # noqa: BLE001  (a build without NCCL)
            nccl = None
    return {"device": str(device), "device_name": info.get("device_name"), "machine": machine_summary(info),
            "torch": torch.__version__, "cuda": torch.version.cuda if cuda else None,
            "cudnn": torch.backends.cudnn.version() if cuda else None, "nccl": nccl,
            "cpu_model": info.get("cpu_model"), "cpu_capability": info.get("cpu_capability"),
            "torch_threads": torch.get_num_threads(), "python": platform.python_version()}


def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.cuda.OutOfMemoryError) or "out of memory" in str(exc).lower()


def _sync(device: str) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _free(device: str) -> None:
    import torch

    gc.collect()
    if str(device).startswith("cuda"):
        torch.cuda.empty_cache()


def _build(plugin, protocol, data_root: Path, out: Path, device: str, clip: str, amp: bool, amp_dtype: str,
           size: int, opts: list[str], config_file: str | None, batch: int | None):
    from zss_bench.engine.config import build_run_config
    from zss_bench.engine.trainer import ZSSTrainer

    cpu = not str(device).startswith("cuda")
    base = ["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", "0", "SOLVER.AMP.ENABLED", str(amp),
            "ZSS.EVAL.AMP", str(amp), "SOLVER.AMP.DTYPE", amp_dtype]
    if cpu:  # SyncBN needs a process group on the CPU; one process computes plain BN anyway
        base += ["MODEL.RESNETS.NORM", "BN", "MODEL.SEM_SEG_HEAD.NORM", "BN"]
    if batch:
        base += ["SOLVER.IMS_PER_BATCH", str(batch)]
    cfg = build_run_config(plugin, protocol, seed=0, output_dir=str(out), data_root=str(data_root),
                           clip=clip if plugin.uses_clip else "", opts=[*base, *size_opts(size), *opts],
                           config_file=config_file)
    return cfg, ZSSTrainer.build_model(cfg)


def _train(cfg, model, plugin, protocol, size: int, steps: int, warmup: int, device: str) -> dict:
    import torch
    from detectron2.utils.events import EventStorage

    from zss_bench.engine.precision import build_step_trainer
    from zss_bench.engine.trainer import ZSSTrainer
    from zss_bench.records.efficiency import PeakMemory

    gen = torch.Generator().manual_seed(0)
    batch = [training_sample(size, len(protocol.seen_ids), protocol.ignore_label, gen, plugin.train_mapper)
             for _ in range(cfg.SOLVER.IMS_PER_BATCH)]
    model.train()
    optimizer = ZSSTrainer.build_optimizer(cfg, model)
    trainer = build_step_trainer(cfg, model, itertools.repeat(batch), optimizer)
    times = []
    with EventStorage(0) as storage, PeakMemory(device) as meter:
        for i in range(warmup + steps):
            storage.iter = trainer.iter = i
            _sync(device)
            t0 = time.perf_counter()
            trainer.run_step()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        loss = storage.history("total_loss").latest()
    if not torch.isfinite(torch.tensor(loss)):
        raise FloatingPointError(f"training loss is not finite ({loss})")
    step = statistics.median(times)
    return {"batch": cfg.SOLVER.IMS_PER_BATCH, "train_step_s": round(step, 4),
            "train_img_s": round(cfg.SOLVER.IMS_PER_BATCH / step, 2), "train_peak_mb": round(meter.peak_mb, 1),
            "final_loss": round(float(loss), 4)}


def _evaluate(cfg, model, protocol, size: int, images: int, warmup: int, device: str) -> dict:
    import torch

    from zss_bench.engine.precision import evaluation_precision
    from zss_bench.records.efficiency import PeakMemory

    h, w = size, size * 4 // 3
    gen = torch.Generator().manual_seed(1)
    inputs = [[{"image": torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=gen), "height": h,
                "width": w}] for _ in range(images)]
    model.eval()
    model.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    times = []
    with PeakMemory(device) as meter, torch.inference_mode(), evaluation_precision(cfg).autocast():
        for i in range(warmup + images):
            _sync(device)
            t0 = time.perf_counter()
            out = model(inputs[i % images])[0]["sem_seg"].argmax(0)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    if tuple(out.shape) != (h, w):
        raise RuntimeError(f"evaluation output has shape {tuple(out.shape)}, expected {(h, w)}")
    return {"eval_image": [h, w], "windows_per_image": windows_per_image(cfg, h, w),
            "eval_img_s": round(len(times) / sum(times), 2), "eval_peak_mb": round(meter.peak_mb, 1)}


def measure_method(method: str, *, amp: bool, protocol_name: str = PROTOCOL, clip: str = CLIP, device: str = "cpu",
                   size: int = 512, steps: int = 3, warmup: int = 1, eval_images: int = 2, batch: int | None = None,
                   amp_dtype: str = "bfloat16", opts: list[str] | None = None, config_file: str | None = None,
                   workdir: Path | None = None) -> dict:
    """One row of the table (see the module docstring); an error is the row's ``error``, never a crash."""
    import torch

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.engine.precision import Precision
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol
    from zss_bench.records.efficiency import parameter_counts

    plugin, protocol, opts = get_method(method), load_protocol(protocol_name), list(opts or [])
    work = Path(workdir or tempfile.mkdtemp(prefix="zss-speed-"))
    data_root = work / "data"
    if not (data_root / "VOCdevkit").is_dir():
        write_tiny_voc(data_root, size)
        prepare_dataset(protocol.dataset, data_root, protocol, progress=False, workers=1)
    register_protocol(protocol, data_root)
    row = {"method": method, "precision": Precision(amp, amp_dtype).name}
    model = None
    try:
        iters, config_batch = _schedule(plugin, protocol, opts, config_file)
        row["schedule"] = f"{iters} x {config_batch}"
        cuda = str(device).startswith("cuda")
        # the batch: asked for; else the config's, halved on CUDA out-of-memory; on the CPU a small one
        tries = [batch] if batch else [config_batch // 2 ** k for k in range(config_batch.bit_length())] if cuda \
            else [min(CPU_BATCH, config_batch)]
        for b in tries if plugin.trains else tries[:1]:
            model = None
            _free(device)
            torch.manual_seed(0)
            cfg, model = _build(plugin, protocol, data_root, work / "out", device, clip, amp, amp_dtype, size, opts,
                                config_file, batch=b)
            row.update(parameter_counts(model), config_file=Path(cfg.ZSS.CONFIG_FILE).name, crop=size)
            if not plugin.trains:
                break
            try:
                row.update(_train(cfg, model, plugin, protocol, size, steps, warmup, device))
                break
            except RuntimeError as exc:
                if not _is_oom(exc) or b == tries[-1]:
                    raise
                row["halved_from"] = tries[0]
        if plugin.trains:
            row["schedule_hours"] = round(iters * config_batch / row["train_img_s"] / 3600, 2)
        row.update(_evaluate(cfg, model, protocol, size, eval_images, warmup, device))
    except Exception as exc:  # noqa: BLE001  (one method's failure is its row, the table goes on)
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
    finally:
        model = None
        _free(device)
    return row


def _schedule(plugin, protocol, opts: list[str], config_file) -> tuple[int, int]:
    """(SOLVER.MAX_ITER, SOLVER.IMS_PER_BATCH) of the method's own config with the user's overrides: the
    schedule its results are trained with, whatever batch the measurement used."""
    from zss_bench.engine.config import build_run_config

    cfg = build_run_config(plugin, protocol, seed=0, output_dir="", opts=opts, config_file=config_file)
    return int(cfg.SOLVER.MAX_ITER), int(cfg.SOLVER.IMS_PER_BATCH)


def run_speed(methods: list[str], *, precisions: tuple[bool, ...] = (False, True), **kw) -> dict:
    """Every (method, precision) row, the environment, and what was asked."""
    device = kw.get("device", "cpu")
    cache = tempfile.mkdtemp(prefix="zss-speed-cache-")
    previous = os.environ.get("ZSS_BENCH_CACHE")
    os.environ["ZSS_BENCH_CACHE"] = cache  # the tiny dataset's prepared view and text embeddings: never the user's
    started = time.perf_counter()
    try:
        work = Path(cache) / "work"
        rows = [measure_method(m, amp=amp, workdir=work, **kw) for m in methods for amp in precisions]
    finally:
        if previous is None:
            os.environ.pop("ZSS_BENCH_CACHE", None)
        else:
            os.environ["ZSS_BENCH_CACHE"] = previous
        import shutil

        shutil.rmtree(cache, ignore_errors=True)
    return {"kind": "speed", "environment": environment(device), "settings": {k: v for k, v in kw.items()},
            "seconds": round(time.perf_counter() - started, 1), "rows": rows}


COLUMNS = [("method", "method"), ("precision", "precision"), ("batch", "batch"), ("train_img_s", "train img/s"),
           ("train_peak_mb", "train peak MB"), ("eval_img_s", "eval img/s"), ("windows_per_image", "windows/img"),
           ("eval_peak_mb", "eval peak MB"), ("params_total", "params (M)"), ("params_trainable", "trainable (M)"),
           ("schedule", "schedule"), ("schedule_hours", "schedule h")]


def format_table(result: dict, fmt: str = "github") -> str:
    from tabulate import tabulate

    env = result["environment"]
    rows = []
    for r in result["rows"]:
        cells = []
        for key, _ in COLUMNS:
            value = r.get(key)
            if key.startswith("params") and value is not None:
                value = round(value / 1e6, 1)
            cells.append("-" if value is None else value)
        if "error" in r:
            cells[3] = f"error: {r['error']}"
        rows.append(cells)
    head = (f"{env['device_name']} | torch {env['torch']} | CUDA {env['cuda'] or '-'} | cuDNN {env['cudnn'] or '-'} | "
            f"NCCL {env['nccl'] or '-'} | {env['torch_threads']} CPU threads")
    return head + "\n\n" + tabulate(rows, headers=[h for _, h in COLUMNS], tablefmt=fmt)
