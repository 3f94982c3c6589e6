"""Every method on its real voc-15-5 configuration: one eval window and one training step.

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_real_config.py --benchmark-only -p no:randomly``
(part of ``make bench``). Each entry runs ``benchmarks/real_config.py`` in its own process (so
the peak resident memory is that measurement's alone) on the method's ``configs/default.yaml``
(R-101 DeepLab body, CLIP ViT-B/16 with random weights, 512 crops, slide inference for CLIP
methods) on CPU; the script's figures (seconds per window / step, peak RSS, parameter counts,
threads, CPU) land in the benchmark's ``extra_info`` (``--benchmark-json FILE`` keeps them).
The benchmark time itself is the whole subprocess (imports + model build + warm-up + N).

``ZSS_BENCH_REAL_SIZE`` (default 512) sets the image side, e.g. 128 for a quick smoke run;
``ZSS_BENCH_REAL_N`` the timed repetitions (default 2); ``ZSS_BENCH_REAL_TIMEOUT`` the
per-process limit in seconds (default 3600). At 512 this takes minutes per entry and, until the
model's evaluation memory is fixed, up to ~15 GB of RAM: the entries run one after another.

Only correctness is asserted (a complete report, positive finite figures, sane parameter
counts), never a time or memory threshold.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "real_config.py"
SIZE = int(os.environ.get("ZSS_BENCH_REAL_SIZE", "512"))
N = int(os.environ.get("ZSS_BENCH_REAL_N", "2"))
TIMEOUT = float(os.environ.get("ZSS_BENCH_REAL_TIMEOUT", "3600"))
PROTOCOL = "voc-15-5"

COMMON_KEYS = ("method", "mode", "size", "n", "seconds", "build_seconds", "peak_rss_mb", "peak_rss_reset",
               "process_peak_rss_mb", "params_total", "params_trainable", "torch_threads",
               "cpu_model", "config")


def _cases() -> list:
    """(method, mode) for every method that has a config for voc-15-5 (train only if it trains)."""
    from zss_bench.plugins import get_method, list_methods
    from zss_bench.protocol import load_protocol

    protocol = load_protocol(PROTOCOL)
    cases = []
    for name in list_methods():
        try:
            plugin = get_method(name)
            plugin.config_file(protocol)
        except Exception as exc:  # a plugin that cannot build on voc-15-5 is not benchmarked here
            cases.append(pytest.param(name, "eval", marks=pytest.mark.skip(
                reason=f"{name} cannot build on {PROTOCOL}: {type(exc).__name__}: {exc}"), id=f"{name}-eval"))
            continue
        cases.append(pytest.param(name, "eval", id=f"{name}-eval"))
        if plugin.trains:
            cases.append(pytest.param(name, "train", id=f"{name}-train"))
    return cases


def _run_script(method: str, mode: str, *extra: str) -> dict:
    """One measurement of ``benchmarks/real_config.py`` in its own process (its JSON report)."""
    cmd = [sys.executable, str(SCRIPT), "--method", method, "--mode", mode, "--n", str(N), "--json",
           *(extra or ("--size", str(SIZE)))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"no JSON line on stdout:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    return json.loads(lines[-1])


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@pytest.mark.parametrize("method,mode", _cases())
def test_real_config(benchmark, method, mode):
    from zss_bench.plugins import get_method

    benchmark.group = f"real-config {PROTOCOL} {SIZE}px"
    res = benchmark.pedantic(_run_script, args=(method, mode), rounds=1, iterations=1)
    unit = "window" if mode == "eval" else "step"
    benchmark.extra_info.update({k: v for k, v in res.items() if k != "config"})
    benchmark.extra_info["opts"] = res["config"]["opts"]

    missing = [k for k in (*COMMON_KEYS, f"seconds_per_{unit}") if k not in res]
    assert not missing, f"report lacks {missing}: {res}"
    assert res["method"] == method and res["mode"] == mode and res["size"] == SIZE
    assert len(res["seconds"]) == N and all(_positive(t) for t in res["seconds"])
    for key in (f"seconds_per_{unit}", "peak_rss_mb", "process_peak_rss_mb", "params_total",
                "torch_threads"):
        assert _positive(res[key]), f"{key} = {res[key]!r}"
    assert res["process_peak_rss_mb"] >= res["peak_rss_mb"] * 0.99
    assert 0 <= res["params_trainable"] <= res["params_total"]
    # the real configuration, not a shrunk one
    cfg = res["config"]
    assert cfg["config_file"] == "default.yaml" and cfg["resnet_depth"] == 101
    if get_method(method).uses_clip:
        assert res["clip"] == "ViT-B-16:random"
        assert res["params_total"] > res["params_trainable"]  # the frozen CLIP is there
    if mode == "train":
        assert res["batch"] == 2 and math.isfinite(res["final_total_loss"])
    else:
        assert res["windows_per_image"] >= 1
