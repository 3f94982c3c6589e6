"""detectron2's training loop, made CPU-friendly, resumable bit-for-bit and NaN-safe.

``ZSSTrainer`` is detectron2's ``DefaultTrainer`` (SimpleTrainer, hooks, periodic
checkpointer, ETA printer, JSON metrics; under ``SOLVER.AMP.ENABLED`` the step runs in mixed precision,
``engine.precision``) with five changes: the seeded data stream of
``engine.data`` (rebuilt at the resumed iteration), DDP without ``device_ids`` on CPU (gloo),
a per-iteration, per-rank torch seed (so any randomness inside a model is reproducible across
resumes and differs between ranks), ranks kept identical in a multi-process run (see below), and
a clear error plus a kept checkpoint when the loss turns NaN. ``metrics.json`` holds each
iteration once across resumes.

Multi-process runs: DDP averages the gradients, so parameters agree; buffers that a forward pass
updates are each rank's own unless something syncs them. Every such buffer has a stated rule:
BatchNorm running statistics are averaged over the ranks after every step (``_AverageBatchNormStats``;
``nn.SyncBatchNorm`` does not run on CPU/gloo in torch 2.14, and SyncBN modules are already in sync),
and a method's own buffers are synced inside its forward (Chimera-Seg's teacher statistics,
CLIP-ZSS's memory bank). ``_RanksAgree`` checks after the first step, at every checkpoint and after
the last step that every parameter and buffer is bit-identical on all ranks, and stops the run
naming the first that is not. So the in-run evaluation (each rank scores its shard with its own
copy), the checkpoint (rank 0's copy) and a resumed run all see the same model.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
import weakref
from pathlib import Path

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.solver import build_lr_scheduler
from detectron2.solver.build import get_default_optimizer_params, maybe_add_gradient_clipping
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, JSONWriter
from detectron2.utils.logger import setup_logger
from torch.nn.parallel import DistributedDataParallel

from zss_bench.engine.data import build_train_loader, build_train_mapper
from zss_bench.engine.precision import apply_memory_format, build_step_trainer, configure_backends

logger = logging.getLogger("zss_bench.trainer")


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message says where the last good weights are."""


def step_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """The torch seed of one rank at one training step. Rank 0 keeps the one-process seed
    (``seed x 1000003 + iteration``: runs recorded with one process reproduce bit for bit); other
    ranks get a seed derived from (seed, iteration, rank), so dropout and any other randomness inside
    the model differ between ranks (identical masks on every shard would not be N samples) while a
    resumed run still draws exactly what the uninterrupted one drew."""
    if rank == 0:
        return int(seed) * 1_000_003 + int(iteration)
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(iteration), int(rank), 13]).generate_state(1, np.uint64)[0] >> 1)


class _SeedEachStep(hooks.HookBase):
    def __init__(self, seed: int, rank: int = 0):
        self.seed, self.rank = seed, rank

    def before_step(self):
        torch.manual_seed(step_seed(self.seed, self.trainer.iter, self.rank))


def _bn_modules_to_average(model: torch.nn.Module) -> list[torch.nn.Module]:
    """BatchNorm layers whose running statistics each rank updates from its own batch: every
    ``_BatchNorm`` that tracks them, except the synchronised kinds (torch's SyncBatchNorm and
    detectron2's NaiveSyncBatchNorm compute the same global statistics on every rank already)."""
    from torch.nn.modules.batchnorm import _BatchNorm

    synced: tuple[type, ...] = (torch.nn.SyncBatchNorm,)
    try:
        from detectron2.layers.batch_norm import NaiveSyncBatchNorm

        synced += (NaiveSyncBatchNorm,)
    except ImportError:  # pragma: no cover  (detectron2 always has it)
        pass
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and not isinstance(m, synced)
            and m.track_running_stats and m.running_mean is not None]


class _AverageBatchNormStats(hooks.HookBase):
    """Multi-process runs: after every step, each BatchNorm's ``running_mean`` and ``running_var``
    become their mean over the ranks (torch's SyncBatchNorm refuses CPU tensors, so it cannot be the
    rule on gloo). The EMA update is linear, so ``running_mean`` is the EMA of the mean of the ranks'
    batch means (the global batch mean: shards are equal), and ``running_var`` the EMA of the mean of
    the ranks' unbiased batch variances, which leaves out the spread between the ranks' means (one
    process over the global batch would include it). Training still normalises each rank's batch with
    its own statistics (plain BN under DDP); ``NORM: SyncBN`` (GPU) uses the global batch's and is
    left alone. ``num_batches_tracked`` is the same on every rank. Runs before the checkpointer, so
    checkpoints hold the averaged statistics."""

    def before_train(self):
        self._modules = _bn_modules_to_average(self.trainer.bare_model)

    def after_step(self):
        # layers in eval mode (frozen) did not update: averaging equal values could still move their last bit
        average_across_ranks([t for m in self._modules if m.training for t in (m.running_mean, m.running_var)])


def average_across_ranks(tensors: list[torch.Tensor]) -> None:
    """Replace each tensor, in place, by its mean over all ranks (sum / world size, the same bits on
    every rank); one all_reduce per dtype and device."""
    import torch.distributed as dist

    world = comm.get_world_size()
    if world == 1 or not tensors:
        return
    groups: dict[tuple, list[torch.Tensor]] = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for group in groups.values():
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.all_reduce(flat)
        flat.div_(world)
        offset = 0
        for t in group:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


class RanksDiverged(RuntimeError):
    """A multi-process run's ranks no longer hold the same parameters or buffers."""


def state_fingerprint(model: torch.nn.Module) -> tuple[list[str], torch.Tensor]:
    """(names, int64 (n, 2)) for every trainable parameter and every buffer: the sum of its raw bit
    patterns and a position-weighted sum (integer arithmetic, so the same bits give the same numbers
    in any reduction order, and any changed element changes them). Frozen parameters are left out:
    nothing writes them."""
    names, rows = [], []
    tensors = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(model.named_buffers())
    for name, t in tensors:
        t = t.detach().contiguous().reshape(-1)
        if t.is_floating_point():
            t = t.view({1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])
        bits = t.to(torch.int64)
        weights = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 1_000_003 + 1
        names.append(name)
        rows.append(torch.stack([bits.sum(), (bits * weights).sum()]))
    device = rows[0].device if rows else torch.device("cpu")
    return names, torch.stack([r.to(device) for r in rows]) if rows else torch.zeros((0, 2), dtype=torch.int64)


def check_ranks_agree(model: torch.nn.Module, when: str) -> None:
    """Raise ``RanksDiverged`` on every rank if any trainable parameter or buffer differs between ranks."""
    import torch.distributed as dist

    if comm.get_world_size() == 1:
        return
    names, mine = state_fingerprint(model)
    gathered = [torch.empty_like(mine) for _ in range(comm.get_world_size())]
    dist.all_gather(gathered, mine)
    every = torch.stack(gathered).cpu()  # (world, n, 2): one transfer, then compared on the host
    differ = [names[i] for i in torch.nonzero((every != every[0]).any(dim=2).any(dim=0)).flatten().tolist()]
    if differ:
        raise RanksDiverged(
            f"{when}, the {len(gathered)} processes hold different values of {len(differ)} tensor(s): "
            f"{', '.join(differ[:5])}{' ...' if len(differ) > 5 else ''}. Each rank would evaluate its shard with "
            f"a different model and the checkpoint would keep rank 0's; a buffer that a forward pass updates must "
            f"be kept in sync across ranks (see zss_bench/engine/trainer.py, 'Multi-process runs').")


class _RanksAgree(hooks.HookBase):
    """Multi-process runs: after the first step, at every checkpoint and after the last step, check
    that all ranks hold the same parameters and buffers (``check_ranks_agree``): a buffer that a new
    method updates in its forward without syncing stops the run at its first step, not as numbers that
    its own checkpoint does not reproduce. Runs before the checkpointer (no diverged checkpoint)."""

    def __init__(self, period: int):
        self.period = max(1, int(period))

    def after_step(self):
        it, first = self.trainer.iter, self.trainer.start_iter
        if it == first or (it + 1) % self.period == 0 or it == self.trainer.max_iter - 1:
            check_ranks_agree(self.trainer.bare_model, f"after iteration {it}")


class _StepClock(hooks.HookBase):
    """Wall seconds of every training step (``trainer.step_seconds``), for the record's efficiency block
    (detectron2's IterationTimer skips its first steps, so a short run would report none)."""

    def before_train(self):
        self.trainer.step_seconds = []

    def before_step(self):
        self._started = time.perf_counter()

    def after_step(self):
        self.trainer.step_seconds.append(time.perf_counter() - self._started)


class _StopAtSafePoint(hooks.HookBase):
    """Ctrl-C stops training between steps, after that step's checkpoint is written: a SIGINT in
    the middle of ``torch.save`` would leave a torn ``model_*.pth``. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested, self._previous = False, None

    def _handler(self, signum, frame):
        if self.requested:
            signal.signal(signal.SIGINT, self._previous or signal.default_int_handler)
            raise KeyboardInterrupt
        self.requested = True

    def before_train(self):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def after_step(self):
        if self.requested:
            raise KeyboardInterrupt

    def after_train(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class _CurvesWriter(JSONWriter):
    """detectron2's JSONWriter (``metrics.json``), opened at its first write rather than when the trainer
    is built: a resumed run first drops the lines of the iterations it is about to train again (those a
    killed or diverged run wrote after its checkpoint), so the curves hold each iteration once."""

    def __init__(self, json_file: str, start_iter, window_size: int = 20):
        self._path, self._start_iter = json_file, start_iter
        self._file_handle, self._window_size, self._last_write = None, window_size, -1

    def write(self):
        if self._file_handle is None:
            self._trim(self._start_iter())
            self._file_handle = open(self._path, "a", encoding="utf-8")
        super().write()

    def _trim(self, start: int) -> None:
        try:
            with open(self._path, encoding="utf-8") as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            return
        keep = [line for line in lines if _iteration(line) < start]
        if len(keep) != len(lines):
            from zss_bench.records.store import atomic_write_text

            atomic_write_text(self._path, "".join(keep))

    def close(self):
        if self._file_handle is not None:
            self._file_handle.close()


def _iteration(line: str) -> float:
    """The iteration of a metrics.json line (a torn last line counts as after every iteration: dropped)."""
    try:
        return float(json.loads(line)["iteration"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


def _no_forward_buffer_broadcast() -> dict:
    """DDP's keyword for 'do not broadcast rank 0's buffers before every forward' (torch 2.14 renamed it)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


class ZSSTrainer(DefaultTrainer):
    def __init__(self, cfg, mapper: str = "semantic"):  # noqa: D401  (mirrors DefaultTrainer.__init__)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        self.mapper = build_train_mapper(cfg, mapper)
        data_loader = build_train_loader(cfg, self.mapper, start_iter=0)
        if comm.get_world_size() > 1:
            device_ids = [comm.get_local_rank()] if cfg.MODEL.DEVICE.startswith("cuda") else None
            # no rank-0 buffer broadcast before each forward: the hooks and methods keep buffers in sync
            # with their stated rules (see the module docstring) instead of discarding the other ranks'
            model = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True,
                                            **_no_forward_buffer_broadcast())
        self._trainer = build_step_trainer(cfg, model, data_loader, optimizer)  # fp32: detectron2's SimpleTrainer
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_model(cls, cfg):
        """detectron2's builder, without printing the architecture (~150 lines) to the terminal:
        it goes to ``OUTPUT_DIR/model.txt``; the log gets one line."""
        from detectron2.modeling import build_model

        configure_backends(cfg)
        model = apply_memory_format(cfg, build_model(cfg))
        if comm.is_main_process() and cfg.OUTPUT_DIR:
            os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
            with open(os.path.join(cfg.OUTPUT_DIR, "model.txt"), "w", encoding="utf-8") as fh:
                fh.write(f"{model}\n")
        n = sum(p.numel() for p in model.parameters())
        k = sum(p.numel() for p in model.parameters() if p.requires_grad)
        logger.info(f"model {cfg.MODEL.META_ARCHITECTURE}: {n / 1e6:.2f} M parameters ({k / 1e6:.2f} M trainable); "
                    f"architecture in {os.path.join(cfg.OUTPUT_DIR, 'model.txt')}")
        return model

    @property
    def bare_model(self):
        model = self._trainer.model
        return model.module if isinstance(model, DistributedDataParallel) else model

    @classmethod
    def build_optimizer(cls, cfg, model):
        params = get_default_optimizer_params(
            model, base_lr=cfg.SOLVER.BASE_LR, weight_decay=cfg.SOLVER.WEIGHT_DECAY,
            weight_decay_norm=cfg.SOLVER.WEIGHT_DECAY_NORM, bias_lr_factor=cfg.SOLVER.BIAS_LR_FACTOR,
            weight_decay_bias=cfg.SOLVER.WEIGHT_DECAY_BIAS)
        lr_mult = getattr(model, "lr_multipliers", lambda: {})()
        if lr_mult:  # per-module LR multipliers a method asks for (e.g. a slower backbone)
            names = {id(p): n for n, p in model.named_parameters()}
            for group in params:
                name = names[id(group["params"][0])]
                for prefix, mult in lr_mult.items():
                    if name.startswith(prefix):
                        group["lr"] = group.get("lr", cfg.SOLVER.BASE_LR) * mult
        name = cfg.SOLVER.OPTIMIZER.upper()
        if name == "SGD":
            opt = torch.optim.SGD(params, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM, nesterov=cfg.SOLVER.NESTEROV)
        elif name == "ADAMW":
            opt = torch.optim.AdamW(params, lr=cfg.SOLVER.BASE_LR)
        else:
            raise ValueError(f"unknown SOLVER.OPTIMIZER '{cfg.SOLVER.OPTIMIZER}' (SGD | ADAMW)")
        return maybe_add_gradient_clipping(cfg, opt)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return build_lr_scheduler(cfg, optimizer)

    def state_dict(self):
        # detectron2 0.6's DefaultTrainer does not checkpoint the optimizer (AdamW moments),
        # so a resumed run would silently diverge from an uninterrupted one. The checkpoint of the
        # last iteration leaves them out: nothing is left to resume, and on R-101 they are two
        # thirds of the file (fine-tuning from it starts a new optimizer through MODEL.WEIGHTS).
        ret = super().state_dict()
        # what makes this checkpoint "trained here" when another run evaluates it (vs an imported one)
        ret["zss_bench"] = {"method": self.cfg.ZSS.METHOD, "protocol_hash": self.cfg.ZSS.PROTOCOL_HASH,
                            "seed": int(self.cfg.SEED)}
        if self.iter < self.max_iter - 1:
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    def resume_or_load(self, resume: bool = True):
        super().resume_or_load(resume=resume)
        if self.start_iter:  # continue the data stream exactly where the checkpoint left it
            loader = build_train_loader(self.cfg, self.mapper, start_iter=self.start_iter)
            self._trainer.data_loader = loader
            self._trainer._data_loader_iter = iter(loader)

    def build_hooks(self):
        ret = []
        if comm.get_world_size() > 1:  # first: the step's buffers are synced (and checked) before anything saves them
            ret += [_AverageBatchNormStats(), _RanksAgree(self.cfg.SOLVER.CHECKPOINT_PERIOD)]
        ret += [_StepClock(), hooks.IterationTimer(), _SeedEachStep(self.cfg.SEED, comm.get_rank()),
                hooks.LRScheduler()]
        if comm.is_main_process():
            ret.append(hooks.PeriodicCheckpointer(self.checkpointer, self.cfg.SOLVER.CHECKPOINT_PERIOD))
            trainer = weakref.proxy(self)
            writers = [CommonMetricPrinter(self.max_iter),
                       _CurvesWriter(f"{self.cfg.OUTPUT_DIR}/metrics.json", lambda: trainer.start_iter)]
            try:  # TensorBoard event files beside metrics.json (detectron2's writer), when tensorboard is installed
                import tensorboard  # noqa: F401
                from detectron2.utils.events import TensorboardXWriter

                writers.append(TensorboardXWriter(self.cfg.OUTPUT_DIR))
            except ImportError:
                pass
            ret.append(hooks.PeriodicWriter(writers, period=max(1, min(20, self.max_iter // 10 or 1))))
        ret.append(_StopAtSafePoint())  # last: runs after the step's checkpoint
        return ret

    def train(self):
        try:
            return super().train()
        except FloatingPointError as exc:
            kept = None
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() else None
            if comm.is_main_process():
                # detectron2 checks the loss after backward() but before optimizer.step(), so
                # the weights in memory are still the last finite ones. Keep `last_checkpoint`
                # pointing at the periodic checkpoint so --resume does not skip the bad step.
                # Before the first periodic checkpoint there is none to point at: `last_checkpoint`
                # (which save() just aimed at the kept file) goes, so --resume starts from iteration 0.
                kept = f"model_before_nan_iter_{self.iter:07d}"
                self.checkpointer.save(kept)
                if last:
                    self.checkpointer.tag_last_checkpoint(os.path.basename(last))
                else:
                    Path(self.checkpointer.save_dir, "last_checkpoint").unlink(missing_ok=True)
            resume = "--resume continues from it" if last else "--resume starts again from iteration 0"
            raise TrainingDiverged(
                f"training diverged: {str(exc).splitlines()[0]} Weights before that step were saved as "
                f"{self.cfg.OUTPUT_DIR}/{kept}.pth; last periodic checkpoint: {last or 'none'} ({resume}). "
                f"Lower SOLVER.BASE_LR or enable SOLVER.CLIP_GRADIENTS."
            ) from exc
