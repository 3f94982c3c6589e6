"""`--device` and the launcher on a CPU machine: one rule decides the device type and the process-group
backend (gloo for the CPU, NCCL for CUDA); impossible requests are one line; `ZSS.DETERMINISTIC` is
applied, recorded and leaves nothing behind. GPU machines are faked by monkeypatching
``torch.cuda.is_available``/``device_count`` where only the decision is tested (tests/test_cuda.py
runs the real thing on a GPU)."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from run_helpers import tiny, world_fixtures
from zss_bench.engine import launch as launch_mod
from zss_bench.engine.launch import (apply_determinism, backend_for, describe, determinism_scope,
                                     nondeterministic_ops, requested_device, resolve_device)
from zss_bench.engine.preflight import UsageError
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run

SYNTH = ["--method", "seen-only", "--protocol", "synth-15-5"]


def _fake_gpus(monkeypatch, n: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: n)


@pytest.fixture
def no_cuda(monkeypatch):
    _fake_gpus(monkeypatch, 0)


@pytest.fixture
def two_gpus(monkeypatch):
    _fake_gpus(monkeypatch, 2)


small_world, prepared = world_fixtures(n_train=24, n_val=8)


def _one_line_error(capsys, *argv: str) -> str:
    """``zss-bench run ARGV`` must fail with exit 2 and exactly one line on stderr; that line."""
    rc, out, err = run_cli(capsys, "run", *argv)
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("zss-bench run: error: "), err
    return lines[0]


# --------------------------------------------------------------------------- the rule


def test_backend_follows_the_device_not_the_machine():
    assert backend_for("cpu") == "gloo"
    assert backend_for("cuda") == backend_for("cuda:1") == "nccl"
    assert describe("cpu", 2) == "cpu, 2 processes (gloo)" and describe("cuda", 2) == "cuda, 2 processes (NCCL)"
    assert describe("cuda", 1) == "cuda (1 process)"


def test_auto_is_cuda_only_when_a_cuda_device_is_visible(monkeypatch):
    _fake_gpus(monkeypatch, 0)
    assert resolve_device("auto") == "cpu" and resolve_device("cpu", 4) == "cpu"
    _fake_gpus(monkeypatch, 2)
    assert resolve_device("auto") == "cuda" and resolve_device("auto", 2) == "cuda"
    assert resolve_device("cpu", 3) == "cpu"  # gloo processes are not limited by the GPUs


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: tests/test_cuda.py covers auto there")
def test_auto_resolves_to_cpu_on_this_machine():
    assert resolve_device("auto") == "cpu"


def test_cuda_without_cuda_is_one_line(no_cuda):
    with pytest.raises(UsageError, match=r"^--device cuda: no CUDA device is visible here") as exc:
        resolve_device("cuda")
    assert "\n" not in str(exc.value)


def test_more_processes_than_visible_gpus_names_both_numbers(two_gpus, monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    for device in ("auto", "cuda"):
        with pytest.raises(UsageError, match=r"^--num-gpus 3: only 2 CUDA devices visible here; ask for at most 2"):
            resolve_device(device, 3)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(UsageError, match=r"only 2 CUDA devices visible here \(CUDA_VISIBLE_DEVICES=0,1\)"):
        resolve_device("cuda", 3)


def test_device_and_a_model_device_override_are_one_request():
    assert requested_device("auto", ["SOLVER.MAX_ITER", "3"]) == "auto"
    assert requested_device("auto", ["MODEL.DEVICE", "cuda"]) == "cuda"  # an explicit override is the request
    assert requested_device("cpu", ["MODEL.DEVICE", "cpu"]) == "cpu"
    with pytest.raises(UsageError, match=r"^--device cpu contradicts the override MODEL.DEVICE cuda"):
        requested_device("cpu", ["MODEL.DEVICE", "cuda"])
    with pytest.raises(UsageError, match=r"^MODEL.DEVICE cuda:1: give the device type only"):
        requested_device("auto", ["MODEL.DEVICE", "cuda:1"])


# --------------------------------------------------------------------------- the launcher


def _report_backend(folder: str) -> None:
    """A launched process: write which backend its process group has (top level: spawn pickles it)."""
    import torch.distributed as dist

    Path(folder, f"rank{dist.get_rank()}").write_text(dist.get_backend())


def test_cpu_run_on_a_gpu_machine_starts_gloo_processes(two_gpus, monkeypatch, tmp_path):
    """detectron2's NCCL launcher used to be taken whenever CUDA was visible, whatever MODEL.DEVICE said."""
    monkeypatch.setattr(launch_mod, "_nccl_launch", lambda *a, **k: pytest.fail("NCCL launcher for a CPU run"))
    launch_mod.launch(_report_backend, 2, args=(str(tmp_path),), device="cpu")
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {"rank0": "gloo", "rank1": "gloo"}


def test_cuda_run_takes_the_nccl_launcher_and_checks_the_count_first(two_gpus, monkeypatch):
    calls = []
    monkeypatch.setattr(launch_mod, "_nccl_launch", lambda fn, procs, *a: calls.append(procs))
    launch_mod.launch(print, 2, device="auto")
    launch_mod.launch(print, 1, device="cuda")
    assert calls == [2, 1]
    with pytest.raises(UsageError, match="--num-gpus 3: only 2"):  # never detectron2's assert
        launch_mod.launch(print, 3, device="cuda")
    assert calls == [2, 1]


# --------------------------------------------------------------------------- zss-bench run


def test_cli_device_errors_are_one_line_before_any_work(monkeypatch, tmp_path, capsys):
    work = tmp_path / "work"
    common = [*SYNTH, "--work-dir", str(work), "--results", str(tmp_path / "results")]
    _fake_gpus(monkeypatch, 0)
    line = _one_line_error(capsys, *common, "--device", "cuda")
    assert "--device cuda: no CUDA device is visible here" in line
    _fake_gpus(monkeypatch, 2)
    line = _one_line_error(capsys, *common, "--num-gpus", "3")
    assert "--num-gpus 3: only 2 CUDA devices visible here" in line
    line = _one_line_error(capsys, *common, "--device", "cpu", "MODEL.DEVICE", "cuda")
    assert "--device cpu contradicts the override MODEL.DEVICE cuda" in line
    assert not work.exists()
    with pytest.raises(SystemExit) as exc:  # an unknown device is argparse's error
        run_cli(capsys, "run", *common, "--device", "tpu")
    assert exc.value.code == 2 and "invalid choice: 'tpu'" in capsys.readouterr().err


def _config_saying_cuda(tmp_path: Path) -> Path:
    """seen-only's synth config with ``MODEL.DEVICE: cuda`` (as the real configs say)."""
    from zss_bench.plugins import get_method

    base = Path(get_method("seen-only").config_dir) / "synth.yaml"
    path = tmp_path / "seen-only-cuda.yaml"
    path.write_text(f"_BASE_: {base}\nMODEL:\n  DEVICE: cuda\n")
    return path


def test_device_overrides_the_config_and_the_record_names_it(prepared, tmp_path, capsys, monkeypatch):
    """A config file saying ``cuda`` runs where ``--device`` says (before: ``.to('cuda')`` on a CPU
    machine); the resolved config, config.yaml and the record name the device; deterministic mode is
    recorded, is not part of the config's identity, changes no CPU number and leaves nothing behind."""
    from zss_bench.engine.config import build_run_config, config_hash
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg_file = _config_saying_cuda(tmp_path)
    records = {}
    for name, extra in (("det", ["ZSS.DETERMINISTIC", "True"]), ("plain", [])):
        rc, out, err = run_cli(capsys, "run", *SYNTH, "--device", "cpu", "--config", str(cfg_file),
                               "--data-root", str(prepared), "--results", str(tmp_path / "results"),
                               "--output-dir", str(tmp_path / name), *tiny(4), *extra)
        assert rc == 0, err
        assert "  device: cpu (1 process)" in out
        records[name] = load_run(Path(out.strip().splitlines()[-1].split("record: ")[1]))
        assert "DEVICE: cpu" in (tmp_path / name / "config.yaml").read_text()
    for loaded in records.values():
        rec = loaded.record
        assert rec["method"]["config"]["MODEL"]["DEVICE"] == "cpu"
        assert rec["provenance"]["device"]["device"] == "cpu" and rec["efficiency"]["device"] == "cpu"
        assert rec["efficiency"]["peak_memory_kind"] == "cpu_peak_rss"
    det, plain = records["det"].record, records["plain"].record
    assert det["provenance"]["deterministic"] == {"requested": True, "nondeterministic_ops": [], "repeatable": True}
    assert plain["provenance"]["deterministic"]["requested"] is False
    assert plain["provenance"]["deterministic"]["repeatable"] is True  # CPU: repeatable either way
    assert det["method"]["config"]["ZSS"]["DETERMINISTIC"] is True
    # how, not what: one cell (hash and label), and on the CPU the same numbers
    assert det["method"]["config_hash"] == plain["method"]["config_hash"]
    assert det["method"]["label"] == plain["method"]["label"]
    protocol = load_protocol("synth-15-5")
    cfg = build_run_config(get_method("seen-only"), protocol, seed=0, output_dir="", data_root=str(prepared),
                           opts=tiny(4), config_file=str(cfg_file))
    assert config_hash(cfg) == det["method"]["config_hash"]
    np.testing.assert_array_equal(ConfusionMatrix.load(records["det"].confusion_path).matrix,
                                  ConfusionMatrix.load(records["plain"].confusion_path).matrix)
    # the in-process run left torch's switches and the environment as they were
    assert not torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.deterministic
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a CUDA machine auto means cuda (tests/test_cuda.py)")
def test_auto_runs_a_cuda_config_on_the_cpu_here(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", *SYNTH, "--config", str(_config_saying_cuda(tmp_path)),
                           "--data-root", str(prepared), "--results", str(tmp_path / "results"),
                           "--output-dir", str(tmp_path / "auto"), *tiny(2))
    assert rc == 0, err
    rec = load_run(Path(out.strip().splitlines()[-1].split("record: ")[1])).record
    assert rec["method"]["config"]["MODEL"]["DEVICE"] == "cpu" and rec["provenance"]["device"]["device"] == "cpu"


# --------------------------------------------------------------------------- determinism


def test_deterministic_mode_sets_the_switches_and_names_ops_without_a_deterministic_kernel(monkeypatch, recwarn):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    with determinism_scope(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # set before any worker (or cuBLAS) starts
        apply_determinism(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.is_deterministic_algorithms_warn_only_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert not torch.backends.cuda.mem_efficient_sdp_enabled()  # its backward is not deterministic
        x = torch.zeros(4)
        for _ in range(3):  # put_ without accumulate has no deterministic implementation (CPU too)
            x.put_(torch.tensor([1, 1]), torch.tensor([1.0, 2.0]))
        # torch's other wording (memory-efficient attention's backward on CUDA)
        warnings.warn("Memory Efficient attention defaults to a non-deterministic algorithm. To explicitly ...")
        assert nondeterministic_ops() == ["Memory Efficient attention", "put_"]
        assert len([w for w in recwarn if "put_ does not have a deterministic" in str(w.message)]) == 1
        apply_determinism(False)  # a later run in the same process starts its own list, switches off
        assert nondeterministic_ops() == [] and not torch.are_deterministic_algorithms_enabled()
    assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.backends.cudnn.deterministic
    assert torch.backends.cuda.mem_efficient_sdp_enabled()
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")  # the other deterministic setting is kept
    with determinism_scope(True):
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


# --------------------------------------------------------------------------- tables


def test_leaderboard_never_takes_an_efficiency_median_across_device_types():
    from zss_bench.tables.leaderboard import EFFICIENCY, METRICS, aggregate, render_leaderboard

    def run(config, seed, device, speed):
        row = {"protocol": "synth-15-5", "protocol_version": 1, "protocol_hash": "abc", "test_set": "fp", "method": "m",
               "config": config, "clip": "-", "seed": seed, "convention": "c", "run_id": f"{config}{seed}", "path": "p",
               "origin": "trained here", "machine": "NVIDIA H200" if device == "cuda" else "cpu (x)",
               "device": device, "test_set_basis": "fingerprint"}
        row.update({m: 50.0 for m in METRICS})
        row.update({k: speed for k in EFFICIENCY})
        return row

    import pandas as pd

    runs = pd.DataFrame([run("mixed", 0, "cpu", 10.0), run("mixed", 1, "cuda", 900.0),
                         run("cpu", 0, "cpu", 10.0), run("cpu", 1, "cpu", 12.0)])
    table = aggregate(runs).set_index("config")
    assert table.loc["mixed", "devices"] == ("cpu", "cuda") and table.loc["cpu", "devices"] == ("cpu",)
    assert table.loc["mixed", EFFICIENCY].isna().all()  # not the median of a CPU and a GPU figure
    assert table.loc["cpu", "test_images_per_s"] == 11.0
    text = render_leaderboard(aggregate(runs))
    mixed_row = next(line for line in text.splitlines() if line.startswith("| m ") and "mixed" in line)
    assert "455.0" not in mixed_row and mixed_row.count("n/a") == 4
    assert "Efficiency n/a for m [mixed] (cpu and cuda): their runs were measured on more than one device type" in text
