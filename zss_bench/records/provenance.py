"""What went into a result: code version, package versions, device, seed, times.

Users of ZSS repos cannot reproduce each other's numbers partly because none of this is
written down (lm-eval issues #1645, #2077); every zss-bench record carries it.
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

_PACKAGES = ("zss-bench", "torch", "torchvision", "open_clip_torch", "pb1-detectron2", "detectron2",
             "numpy", "pandas", "scipy", "Pillow")


def _git(*args: str) -> str | None:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_state() -> dict:
    """The zss-bench checkout's commit and whether it had uncommitted changes (None outside git)."""
    sha = _git("rev-parse", "HEAD")
    dirty = None
    if sha is not None:
        status = _git("status", "--porcelain", "--untracked-files=no")
        dirty = bool(status) if status is not None else None
    return {"sha": sha, "dirty": dirty}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def cpu_model() -> str | None:
    """The CPU's model name (``/proc/cpuinfo`` on Linux; ``platform.processor()`` elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith(("model name", "hardware", "cpu model")):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def device_info(device: str | None = None) -> dict:
    """The machine a result came from. CPU training is deterministic on one CPU type but not
    across types, so the CPU model and torch's CPU kernel capability (``AVX2``, ``AVX512``...)
    are what explain a difference between two machines' numbers; on GPU, the device's name."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "cpu_model": cpu_model()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        try:
            info["cpu_capability"] = torch.backends.cpu.get_cpu_capability()
        except (AttributeError, RuntimeError):
            info["cpu_capability"] = None
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    if device is not None:
        info["device"] = str(device)
        if str(device).startswith("cuda") and torch is not None and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
        else:
            info["device_name"] = f"cpu ({info['cpu_model'] or platform.machine()}, {info.get('cpu_capability')})"
    return info


def _device_type(device) -> str:
    return "cuda" if str(device).startswith("cuda") else "cpu"


def determinism_block(requested: bool, device: str | None, nondeterministic_ops=()) -> dict:
    """``provenance.deterministic``: whether ``ZSS.DETERMINISTIC`` was on, the ops torch ran without a
    deterministic implementation (only known when it was on), and whether the run repeats bit for bit
    on its device type (``repeatable``): CPU runs do (torch's CPU kernels are deterministic run to run
    on one CPU type), CUDA runs only in deterministic mode with no such op."""
    ops = sorted(nondeterministic_ops or ())
    return {"requested": bool(requested), "nondeterministic_ops": ops,
            "repeatable": _device_type(device) == "cpu" or (bool(requested) and not ops)}


def record_device_type(record: dict) -> str | None:
    """``cpu`` or ``cuda``: the device type a run record was computed on (``provenance.device``, else
    ``efficiency``'s device or memory kind), None when the record does not say."""
    eff = record.get("efficiency") if isinstance(record.get("efficiency"), dict) else {}
    dev = (record.get("provenance") or {}).get("device") if isinstance(record.get("provenance"), dict) else None
    named = dev.get("device") if isinstance(dev, dict) else dev
    if isinstance(named, str) and named:
        return _device_type(named)
    if isinstance(eff.get("device"), str) and eff["device"]:
        return _device_type(eff["device"])
    kind = eff.get("peak_memory_kind")
    return {"cuda_max_allocated": "cuda", "cpu_peak_rss": "cpu"}.get(kind) if isinstance(kind, str) else None


def record_repeatable(record: dict) -> bool:
    """Whether a run record's numbers repeat bit for bit on its device type, read from its fields (see
    :func:`determinism_block`): every CPU run; a CUDA run made in deterministic mode with no op reported
    as non-deterministic (a CUDA record made before the block: no)."""
    kind = record_device_type(record)
    if kind == "cpu":
        return True
    block = (record.get("provenance") or {}).get("deterministic")
    return (kind == "cuda" and isinstance(block, dict) and block.get("requested") is True
            and block.get("nondeterministic_ops") == [])


def machine_summary(device: dict | None) -> str:
    """One line naming the machine of a record's ``provenance.device`` block."""
    d = device or {}
    name = d.get("device_name") or d.get("cpu_model") or d.get("machine") or "unknown machine"
    extra = [f"{d['cpu_count']} cores" if d.get("cpu_count") else "", f"torch threads {d['torch_threads']}"
             if d.get("torch_threads") else ""]
    return ", ".join([name, *[e for e in extra if e]])


def collect_provenance(seed: int | None = None, device: str | None = None, **extra) -> dict:
    """Provenance block for a run record; ``extra`` (times, argv, batch size...) is merged in.
    ``device`` (the run's torch device) is described under ``device``; paths in ``argv`` that
    point into the cache or the home folder are stored relative to those roots."""
    from zss_bench.records.paths import portable_path

    prov = {
        "git": git_state(),
        "versions": package_versions(),
        "device": device_info(device),
        "seed": seed,
        "argv": [portable_path(a) for a in sys.argv],
    }
    prov.update(extra)
    return prov
