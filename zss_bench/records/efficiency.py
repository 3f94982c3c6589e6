"""Efficiency figures every run record carries, measured by the harness itself in the run's own
process: parameters (total / trainable), evaluation throughput and peak memory, training step
time and the size of the final checkpoint. One machine per table: the record names it
(``provenance.device``), ``efficiency.machine`` repeats it in one line and ``efficiency.device`` says
its type (``cpu``/``cuda``): the leaderboard never takes a median across device types.

Peak memory on CPU is the process's resident-set high-water mark (``VmHWM``), reset just before
evaluation through ``/proc/self/clear_refs`` so that it is the evaluation's own peak; where the
reset is not allowed the figure is the whole process's peak and says so. On CUDA it is
``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``.
"""
from __future__ import annotations

import resource
import statistics
from pathlib import Path

MB = 1024 * 1024


def _vm_hwm_mb() -> float | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def _reset_vm_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


class PeakMemory:
    """``with PeakMemory(device) as peak: ...`` then ``peak.figures()``: the block's peak memory."""

    def __init__(self, device: str = "cpu"):
        self.cuda = str(device).startswith("cuda")
        self.scope = "process"

    def __enter__(self) -> "PeakMemory":
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.scope = "block"
        elif _reset_vm_hwm():
            self.scope = "block"
        return self

    def __exit__(self, *exc) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            self.peak_mb = torch.cuda.max_memory_allocated() / MB
        else:
            hwm = _vm_hwm_mb()
            self.peak_mb = hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def figures(self) -> dict:
        kind = "cuda_max_allocated" if self.cuda else "cpu_peak_rss"
        return {"peak_memory_mb": round(self.peak_mb, 1), "peak_memory_kind": kind, "peak_memory_scope": self.scope}


def parameter_counts(model) -> dict:
    """Parameters of the built model (frozen CLIP included) and those the optimizer trains."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"params_total": total, "params_trainable": trainable}


def train_step_seconds(step_seconds: list[float] | None) -> float | None:
    """Median wall seconds per training step of this run, the first (one-off set-up) left out when
    there are others; None if no step ran (training-free, --eval-only, a resumed finished run)."""
    if not step_seconds:
        return None
    values = step_seconds[1:] if len(step_seconds) > 1 else step_seconds
    return round(statistics.median(values), 4)


def efficiency_block(model, evaluation: dict, step_seconds, output_dir: str, device: str) -> dict:
    from zss_bench.records.provenance import device_info, machine_summary

    images, seconds = evaluation["images"], evaluation["seconds"]
    final = Path(output_dir) / "model_final.pth"
    return {
        **parameter_counts(model),
        "eval_images": images,
        "eval_seconds": round(seconds, 3),
        "test_images_per_s": round(images / seconds, 3) if seconds > 0 else None,
        **{k: v for k, v in evaluation.items() if k.startswith("peak_memory")},
        "train_step_s": train_step_seconds(step_seconds),
        "checkpoint_mb": round(final.stat().st_size / MB, 2) if final.is_file() else None,
        "machine": machine_summary(device_info(device)),
        "device": "cuda" if str(device).startswith("cuda") else "cpu",  # tables never pool figures across types
    }
