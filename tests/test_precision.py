"""Mixed precision (``SOLVER.AMP.*``, ``ZSS.EVAL.AMP``) and channels-last, end to end on CPU: bf16 training and
evaluation write a record that says so, a killed bf16 run resumes to the uninterrupted one bit for bit, fp16
checkpoints its grad scaler, and configurations that do not use the new keys keep their committed hashes."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_cli
from run_helpers import tiny, world_fixtures
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run

small_world, prepared = world_fixtures(n_train=32, n_val=8, seed=4)

BF16 = ["SOLVER.AMP.ENABLED", "True", "ZSS.EVAL.AMP", "True"]
MICRO = ["--clip", "zss-micro-vit:random"]


def _run(capsys, tmp_path, world, method: str, *opts: str, seed: int = 0) -> dict:
    rc, out, err = run_cli(capsys, "run", "--method", method, "--protocol", "synth-15-5", "--data-root", str(world),
                           "--seed", str(seed), "--results", str(tmp_path / "results"), "--work-dir",
                           str(tmp_path / "work"), *(MICRO if method != "seen-only" else ()), *opts)
    assert rc == 0, err
    return load_run(Path(out.strip().splitlines()[-1].split("record: ")[1])).record


@pytest.mark.parametrize("method", ["chimera", "seen-only"])
def test_bf16_run_trains_evaluates_and_records_its_precision(method, prepared, tmp_path, capsys):
    rec = _run(capsys, tmp_path, prepared, method, *tiny(3), *BF16, "MODEL.CHANNELS_LAST", "True")
    eff = rec["efficiency"]
    assert eff["precision"]["train"] == "bf16" and eff["precision"]["eval"] == "bf16"
    assert eff["precision"]["channels_last"] is True and eff["precision"]["tf32"] is None  # no CUDA here
    cfg = rec["method"]["config"]
    assert cfg["SOLVER"]["AMP"] == {"ENABLED": True, "DTYPE": "bfloat16"} and cfg["ZSS"]["EVAL"]["AMP"] is True
    assert np.isfinite(rec["training"]["final_total_loss"]) and 0.0 <= rec["metrics"]["hIoU"] <= 100.0


def test_fp32_is_detectron2s_own_step_and_says_fp32(prepared, tmp_path, capsys):
    from detectron2.engine import SimpleTrainer

    from zss_bench.engine.precision import MixedPrecisionTrainer, build_step_trainer

    rec = _run(capsys, tmp_path, prepared, "seen-only", *tiny(2))
    assert rec["efficiency"]["precision"]["train"] == "fp32" and rec["efficiency"]["precision"]["eval"] == "fp32"
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    cfg = build_run_config(get_method("seen-only"), load_protocol("synth-15-5"), seed=0, output_dir=str(tmp_path),
                           data_root=str(prepared), clip="", opts=[], config_file=None)
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert type(build_step_trainer(cfg, model, iter([]), opt)) is SimpleTrainer
    cfg.defrost()
    cfg.SOLVER.AMP.ENABLED = True
    assert isinstance(build_step_trainer(cfg, model, iter([]), opt), MixedPrecisionTrainer)


def test_new_keys_at_their_defaults_leave_the_config_hash_unchanged(prepared, tmp_path):
    """Records committed before the keys existed keep their hash: a config without the three keys hashes like a
    config with them at their defaults; any other value is a different configuration."""
    from zss_bench.engine.config import build_run_config, config_hash
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    def build(opts):
        return build_run_config(get_method("chimera"), load_protocol("synth-15-5"), seed=0, output_dir=str(tmp_path),
                                data_root=str(prepared), clip="", opts=opts, config_file=None)

    cfg = build([])
    before_keys = cfg.clone()
    before_keys.defrost()
    del before_keys.SOLVER.AMP["DTYPE"], before_keys.ZSS.EVAL["AMP"], before_keys.MODEL["CHANNELS_LAST"]
    assert config_hash(cfg) == config_hash(before_keys)
    assert len({config_hash(cfg), config_hash(build(["SOLVER.AMP.ENABLED", "True"])),
                config_hash(build(["ZSS.EVAL.AMP", "True"])), config_hash(build(["MODEL.CHANNELS_LAST", "True"])),
                config_hash(build(["SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "float16"]))}) == 5


def test_a_committed_record_keeps_its_config_hash():
    """The hash of a committed v2 record's resolved config, recomputed by today's code, is the one it carries."""
    from detectron2.config import CfgNode

    from zss_bench.engine.config import config_hash

    records = sorted(Path(__file__).resolve().parents[1].glob("results/runs/synth-15-5/chimera/*/record.json"))
    assert records
    rec = json.loads(records[-1].read_text())
    cfg = CfgNode(rec["method"]["config"])
    for key in ("SOLVER.AMP.DTYPE", "ZSS.EVAL.AMP", "MODEL.CHANNELS_LAST"):  # what today's builder adds
        *parents, leaf = key.split(".")
        node = cfg
        for p in parents:
            node = node[p]
        assert leaf not in node  # written before the keys existed
        node[leaf] = {"SOLVER.AMP.DTYPE": "bfloat16"}.get(key, False)
    assert config_hash(cfg) == rec["method"]["config_hash"]


def test_bad_dtype_is_one_line_with_the_choices(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--results", str(tmp_path / "r"), "--work-dir", str(tmp_path / "w"),
                           *tiny(2), "SOLVER.AMP.ENABLED", "True", "SOLVER.AMP.DTYPE", "bfloat61")
    assert rc == 2 and "SOLVER.AMP.DTYPE must be one of 'bfloat16' | 'float16'" in err and "bfloat16'?" in err


def test_fp16_checkpoints_its_grad_scaler_and_loads_it(prepared, tmp_path, capsys):
    rec = _run(capsys, tmp_path, prepared, "seen-only", *tiny(4, 2), "SOLVER.AMP.ENABLED", "True",
               "SOLVER.AMP.DTYPE", "float16")
    assert rec["efficiency"]["precision"]["train"] == "fp16" and rec["efficiency"]["precision"]["eval"] == "fp32"
    out = Path(rec["training"]["output_dir"])
    state = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)["trainer"]["_trainer"]
    assert state["grad_scaler"]["scale"] > 0 and "_growth_tracker" in state["grad_scaler"]

    from zss_bench.engine.precision import MixedPrecisionTrainer, Precision

    model = torch.nn.Linear(2, 2)

    def trainer():
        return MixedPrecisionTrainer(model, iter([]), torch.optim.SGD(model.parameters(), lr=0.1),
                                     Precision(True, "float16", "cpu"))

    first, second = trainer(), trainer()
    first.grad_scaler.scale(torch.tensor(1.0))  # the scaler starts lazily, at its first scale()
    first.grad_scaler.update(new_scale=1024.0)
    second.load_state_dict(first.state_dict())
    assert second.grad_scaler.get_scale() == 1024.0 != trainer().grad_scaler.get_scale()


def test_killed_bf16_run_resumes_to_the_uninterrupted_one(prepared, tmp_path, isolated_cache):
    common = ["--method", "chimera", "--protocol", "synth-15-5", "--data-root", str(prepared), "--seed", "2",
              "--results", str(tmp_path / "results"), *MICRO]
    opts = [*tiny(8, 2), *BF16]
    exe = [sys.executable, "-m", "zss_bench.cli", "run"]
    env = {**os.environ, "ZSS_BENCH_CACHE": str(isolated_cache), "PYTHONUNBUFFERED": "1"}
    full = subprocess.run([*exe, *common, "--output-dir", str(tmp_path / "full"), *opts], env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    killed = tmp_path / "killed"
    proc = subprocess.Popen([*exe, *common, "--output-dir", str(killed), *opts], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed / "model_0000005.pth").exists():  # then last_checkpoint names iteration 3 or 5
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    resumed = subprocess.run([*exe, *common, "--output-dir", str(killed), "--resume", *opts], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    runs = [Path(p.stdout.strip().splitlines()[-1].split("record: ")[1]) for p in (full, resumed)]
    a, b = (load_run(r).record for r in runs)
    assert b["training"]["resumed_from_iter"] >= 4 and b["efficiency"]["precision"]["train"] == "bf16"
    np.testing.assert_array_equal(ConfusionMatrix.load(runs[0] / "confusion.npz").matrix,
                                  ConfusionMatrix.load(runs[1] / "confusion.npz").matrix)
    assert a["training"]["final_total_loss"] == b["training"]["final_total_loss"]
    assert json.dumps(a["metrics"], sort_keys=True) == json.dumps(b["metrics"], sort_keys=True)
