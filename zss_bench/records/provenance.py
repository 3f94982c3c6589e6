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


def device_info() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count()}
    torch = sys.modules.get("torch")
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            info["cuda"] = torch.version.cuda
            info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def collect_provenance(seed: int | None = None, **extra) -> dict:
    """Provenance block for a run record; ``extra`` (times, argv, batch size...) is merged in."""
    prov = {
        "git": git_state(),
        "versions": package_versions(),
        "device": device_info(),
        "seed": seed,
        "argv": list(sys.argv),
    }
    prov.update(extra)
    return prov
