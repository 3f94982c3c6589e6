"""Numeric precision and backend switches of a run: mixed precision for training and evaluation, channels-last
convolutions, TF32 and cuDNN autotuning on CUDA.

Why its own module: detectron2 0.6's ``AMPTrainer`` is CUDA-only (it asserts ``torch.cuda.is_available()``
and uses ``torch.cuda.amp``), so a bf16 run on the CPU, which is how every test and the embedded protocol
run, needs the device-generic ``torch.autocast``. ``MixedPrecisionTrainer`` is detectron2's
``SimpleTrainer`` step under ``torch.autocast(device_type, dtype)``; fp16 adds ``torch.amp.GradScaler``,
whose state goes into the checkpoint so ``--resume`` continues exactly. Weights, optimizer state and
checkpoints stay fp32 (autocast casts per op); losses that autocast would leave in half precision reduce in
fp32 where the method says so (``zss_bench/modeling/mask_losses.py``); text embeddings are computed once
outside the step; the confusion matrix is integer counts.

Keys: ``SOLVER.AMP.ENABLED`` (detectron2's) and ``SOLVER.AMP.DTYPE`` (``bfloat16`` | ``float16``) for
training, ``ZSS.EVAL.AMP`` for evaluation (same dtype), ``MODEL.CHANNELS_LAST`` for the convolutional body,
``CUDNN_BENCHMARK`` (detectron2's) for cuDNN autotuning of fixed-size crops. TF32 matmuls and convolutions are
allowed on CUDA unless ``ZSS.DETERMINISTIC``. What a run used is recorded (``efficiency.precision``).
"""
from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
from detectron2.engine import SimpleTrainer

logger = logging.getLogger("zss_bench.precision")

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16}
SHORT = {"bfloat16": "bf16", "float16": "fp16"}


@dataclass(frozen=True)
class Precision:
    """One phase's arithmetic: fp32, or autocast to ``dtype_name`` on ``device_type``."""

    enabled: bool
    dtype_name: str = "bfloat16"
    device_type: str = "cpu"

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.dtype_name] if self.enabled else torch.float32

    @property
    def name(self) -> str:
        """``fp32`` | ``bf16`` | ``fp16``: what records and tables show."""
        return SHORT[self.dtype_name] if self.enabled else "fp32"

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16's 5-bit exponent underflows small gradients; bf16 has fp32's range and needs no scaling."""
        return self.enabled and self.dtype_name == "float16"

    def autocast(self):
        """``torch.autocast`` for this precision (a no-op context when it is fp32)."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device_type, dtype=DTYPES[self.dtype_name])


def _device_type(cfg) -> str:
    return "cuda" if str(cfg.MODEL.DEVICE).startswith("cuda") else "cpu"


def training_precision(cfg) -> Precision:
    return Precision(bool(cfg.SOLVER.AMP.ENABLED), str(cfg.SOLVER.AMP.DTYPE), _device_type(cfg))


def evaluation_precision(cfg) -> Precision:
    return Precision(bool(cfg.ZSS.EVAL.AMP), str(cfg.SOLVER.AMP.DTYPE), _device_type(cfg))


class MixedPrecisionTrainer(SimpleTrainer):
    """detectron2's ``SimpleTrainer`` step under ``torch.autocast`` (any device); fp16 with a grad scaler
    (gradients unscaled before the optimizer's gradient clipping; a step with inf/NaN gradients is skipped
    and the scale lowered, as in torch's recipe). The scaler's state is checkpointed with the trainer's."""

    def __init__(self, model, data_loader, optimizer, precision: Precision):
        super().__init__(model, data_loader, optimizer)
        self.precision = precision
        self.grad_scaler = torch.amp.GradScaler(precision.device_type) if precision.needs_grad_scaler else None

    def run_step(self):
        import time

        assert self.model.training, "[MixedPrecisionTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        with self.precision.autocast():
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses, loss_dict = loss_dict, {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        if self.grad_scaler is None:
            losses.backward()
            self._write_metrics(loss_dict, data_time)
            self.optimizer.step()
            return
        self.grad_scaler.scale(losses).backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.unscale_(self.optimizer)  # so SOLVER.CLIP_GRADIENTS clips true gradients
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])


def build_step_trainer(cfg, model, data_loader, optimizer) -> SimpleTrainer:
    """``SimpleTrainer`` for fp32 (exactly detectron2's step, as every committed record ran), else the
    mixed-precision one."""
    precision = training_precision(cfg)
    if not precision.enabled:
        return SimpleTrainer(model, data_loader, optimizer)
    return MixedPrecisionTrainer(model, data_loader, optimizer, precision)


def apply_memory_format(cfg, model: torch.nn.Module) -> torch.nn.Module:
    """``MODEL.CHANNELS_LAST``: 4-D parameters (convolution kernels) in NHWC, which cuDNN's and oneDNN's fast
    convolution kernels prefer under mixed precision; the model moves its input images likewise."""
    if cfg.MODEL.CHANNELS_LAST:
        model.to(memory_format=torch.channels_last)
    return model


def configure_backends(cfg) -> dict:
    """Set TF32 and cuDNN autotuning for this process (CUDA only) and say what is in effect."""
    cuda = _device_type(cfg) == "cuda"
    allow = not bool(cfg.ZSS.DETERMINISTIC)  # TF32 and autotuned kernels change results from run to run
    benchmark = bool(cfg.CUDNN_BENCHMARK) and allow  # no cuDNN on the CPU: the key has nothing to tune there
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = allow
        torch.backends.cudnn.allow_tf32 = allow
        torch.backends.cudnn.benchmark = benchmark
    return backend_state(cfg)


def backend_state(cfg) -> dict:
    """The TF32 and cuDNN autotuning switches in effect (None on the CPU, where they do not exist)."""
    cuda = _device_type(cfg) == "cuda"
    return {"tf32": bool(torch.backends.cuda.matmul.allow_tf32) if cuda else None,
            "cudnn_benchmark": bool(torch.backends.cudnn.benchmark) if cuda else None}


def precision_block(cfg, trained: bool) -> dict:
    """``efficiency.precision`` of a record: the arithmetic of each phase that ran and the backend switches."""
    return {"train": training_precision(cfg).name if trained else None,
            "eval": evaluation_precision(cfg).name,
            "channels_last": bool(cfg.MODEL.CHANNELS_LAST),
            **backend_state(cfg)}
