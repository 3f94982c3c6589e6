"""`zss-bench run`: a tiny end-to-end run, resume after a kill, 2-process evaluation, guards."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from run_helpers import make_plugin, tiny, world_fixtures
from detectron2.modeling import META_ARCH_REGISTRY
from zss_bench.engine.run import RunRequest, run_method
from zss_bench.methods.seen_only.meta_arch import SeenOnlySeg
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run


small_world, prepared = world_fixtures(n_train=48, n_val=16)


def _request(world, tmp_path, **kw) -> RunRequest:
    base = dict(method="seen-only", protocol="synth-15-5", data_root=str(world), results_root=str(tmp_path / "results"),
                work_root=str(tmp_path / "work"), opts=tiny(6))
    base.update(kw)
    return RunRequest(**base)


def test_tiny_end_to_end_run_writes_a_complete_record(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5",
                           "--data-root", str(prepared), "--results", str(tmp_path / "results"),
                           "--work-dir", str(tmp_path / "work"), *tiny(6))
    assert rc == 0, err
    assert "seen-only [" in out and "U 0.00" in out
    assert "95% CI over images: S [" in out and "per-class IoU: red circle " in out and "red star* 0.00" in out
    assert "ResNet(" not in out + err  # the architecture goes to model.txt, not the terminal
    run_dir = Path(out.strip().splitlines()[-1].split("record: ")[1])
    rec = load_run(run_dir).record
    assert rec["kind"] == "run" and rec["protocol"]["name"] == "synth-15-5"
    assert rec["method"]["config"]["SOLVER"]["MAX_ITER"] == 6 and rec["method"]["label"].startswith("MIN_SIZE_TRAIN")
    assert rec["metrics"]["mIoU_unseen"] == 0.0  # the seen-only model cannot predict unseen classes
    assert rec["training"]["final_total_loss"] is not None and rec["training"]["world_size"] == 1
    leak = rec["leakage"]
    assert leak["unseen_names_before_eval"] == [] and leak["training_targets_checked"] == 6 * 4
    assert leak["train_view"]["unseen_pixels_masked"] > 0
    assert rec["provenance"]["seed"] == 0 and rec["provenance"]["versions"]["torch"]
    cm = ConfusionMatrix.load(run_dir / "confusion.npz")
    assert cm.num_images == 16
    assert Path(rec["training"]["output_dir"], "config.yaml").is_file()
    assert "ResNet(" in Path(rec["training"]["output_dir"], "model.txt").read_text()
    assert list(Path(rec["training"]["output_dir"]).glob("events.out.tfevents.*"))  # TensorBoard beside metrics.json


def test_unknown_method_suggests(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "seen-onyl", "--protocol", "synth-15-5",
                           "--data-root", str(prepared))
    assert rc == 2 and "did you mean 'seen-only'" in err


def test_leaky_method_fails_the_run(prepared, tmp_path):
    from zss_bench.data.inductive import LeakageError
    from zss_bench.plugins import register_method, unregister_method

    plugin, opts = make_plugin("leaky", "LeakySeg")
    register_method(plugin)
    try:
        with pytest.raises(LeakageError, match=r"encoded unseen class name\(s\) \['blue star', 'blue triangle'"):
            run_method(_request(prepared, tmp_path, method="leaky", opts=tiny(2, 1000, *opts)))
    finally:
        unregister_method("leaky")
    assert not (tmp_path / "results").exists()  # nothing recorded


def test_nan_loss_gives_clear_error_and_keeps_weights(prepared, tmp_path):
    from zss_bench.engine.trainer import TrainingDiverged
    from zss_bench.plugins import register_method, unregister_method

    plugin, opts = make_plugin("nan", "NaNSeg")
    register_method(plugin)
    out = tmp_path / "out"
    try:
        with pytest.raises(TrainingDiverged, match=r"iteration=3.*model_before_nan_iter_0000003\.pth.*model_0000001\.pth"):
            run_method(_request(prepared, tmp_path, method="nan", output_dir=str(out), opts=tiny(10, 2, *opts)))
    finally:
        unregister_method("nan")
    assert (out / "model_before_nan_iter_0000003.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"


def _record_core(run_dir: Path):
    rec = load_run(run_dir).record
    cm = ConfusionMatrix.load(run_dir / "confusion.npz")
    return rec["metrics"], cm


def test_resume_after_kill_equals_uninterrupted_run(prepared, tmp_path, isolated_cache):
    common = ["--method", "seen-only", "--protocol", "synth-15-5", "--data-root", str(prepared), "--seed", "3",
              "--results", str(tmp_path / "results")]
    opts = tiny(24, 4)
    exe = [sys.executable, "-m", "zss_bench.cli"]
    env = {**os.environ, "ZSS_BENCH_CACHE": str(isolated_cache), "PYTHONUNBUFFERED": "1"}
    full = subprocess.run([*exe, "run", *common, "--output-dir", str(tmp_path / "full"), *opts], env=env,
                          capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([*exe, "run", *common, "--output-dir", str(killed_dir), *opts], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while not (killed_dir / "model_0000007.pth").exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed_dir / "model_final.pth").exists()
    resumed = subprocess.run([*exe, "run", *common, "--output-dir", str(killed_dir), "--resume", *opts], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a_dir = Path(full.stdout.strip().splitlines()[-1].split("record: ")[1])
    b_dir = Path(resumed.stdout.strip().splitlines()[-1].split("record: ")[1])
    rec_b = load_run(b_dir).record
    assert rec_b["training"]["resumed_from_iter"] >= 4  # a checkpoint at iteration 3 or 7 was loaded
    (ma, cma), (mb, cmb) = _record_core(a_dir), _record_core(b_dir)
    np.testing.assert_array_equal(cma.matrix, cmb.matrix)
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)


def test_two_gloo_processes_aggregate_like_one(prepared, tmp_path):
    train_dir = tmp_path / "trained"
    run_method(_request(prepared, tmp_path, output_dir=str(train_dir), opts=tiny(4, 1000)))
    one = run_method(_request(prepared, tmp_path, output_dir=str(train_dir), eval_only=True, opts=tiny(4, 1000)))
    two = run_method(_request(prepared, tmp_path, output_dir=str(train_dir), eval_only=True, num_gpus=2,
                              device="cpu", opts=tiny(4, 1000)))  # gloo, also on a host with one GPU
    rec_two = load_run(two).record
    assert rec_two["provenance"]["world_size"] == 2
    (m1, cm1), (m2, cm2) = _record_core(one), _record_core(two)
    np.testing.assert_array_equal(cm1.matrix, cm2.matrix)
    s1, s2 = cm1.image_stats, cm2.image_stats
    assert sorted(s1.ids) == sorted(s2.ids) and len(s2.ids) == 16
    order = np.argsort(s2.ids)
    np.testing.assert_array_equal(s1.inter[np.argsort(s1.ids)], s2.inter[order])
    for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU", "per_class"):
        assert m1[key] == m2[key]


def test_grid_runs_each_cell_once_and_skips_done_cells(prepared, tmp_path, isolated_cache, capsys):
    from zss_bench.engine.grid import GridError, load_grid, run_grid
    from zss_bench.engine.labels import overrides_label
    from zss_bench.tables import aggregate, collect_runs

    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n  - {method: seen-only, label: tiny, seeds: [0, 1]}\n")
    assert [(c.method, c.seed, c.label) for c in load_grid(grid)[1]] == [("seen-only", 0, "tiny"), ("seen-only", 1, "tiny")]
    args = dict(results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), extra=tiny(3),
                data_root=str(prepared))
    assert run_grid(grid, **args) == 0  # each cell is its own `zss-bench run` process
    table = aggregate(collect_runs(tmp_path / "results", on_skip=lambda m: None))
    # the grid-wide overrides are part of the label (tiny(3) = MAX_ITER 3 etc.; N_BOOT adds nothing)
    label = "tiny+" + overrides_label(tiny(3))
    assert list(table.runs) == [2] and list(table.config) == [label] and "MAX_ITER=3" in label
    assert "N_BOOT" not in label
    capsys.readouterr()
    assert run_grid(grid, **args) == 0
    assert capsys.readouterr().out.count("record exists, skipped") == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("protocol: synth-15-5\ncells:\n  - {seeds: [0]}\n")
    with pytest.raises(GridError, match=r"cells\[0\] needs a 'method'"):
        load_grid(bad)


def test_grid_eval_of_cell_reuses_the_base_checkpoint(prepared, tmp_path, isolated_cache, capsys):
    from zss_bench.engine.grid import GridError, load_grid, run_grid
    from zss_bench.engine.labels import overrides_label
    from zss_bench.records.store import iter_runs

    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n"
                    "  - {method: seen-only, label: base, seeds: [0]}\n"
                    "  - {method: seen-only, label: re-scored, eval_of: base, opts: [MODEL.SEEN_ONLY.LOSS_WEIGHT, '2.0'], seeds: [0]}\n")
    args = dict(results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), extra=tiny(3),
                data_root=str(prepared))
    assert run_grid(grid, **args) == 0
    recs = {r.record["method"]["label"]: r.record for r in iter_runs(tmp_path / "results", on_skip=lambda m: None)}
    suffix = "+" + overrides_label(tiny(3))  # the grid-wide overrides extend both labels alike
    base, again = recs["base" + suffix], recs["re-scored" + suffix]
    assert again["training"]["eval_only"] and not base["training"]["eval_only"]
    weights = Path(base["training"]["output_dir"]) / "model_final.pth"
    assert again["method"]["config"]["MODEL"]["WEIGHTS"] == str(weights)
    assert again["method"]["config"]["MODEL"]["SEEN_ONLY"]["LOSS_WEIGHT"] == 2.0  # the cell's own opts apply
    for key in ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "per_class"):  # same weights, same inference
        assert again["metrics"][key] == base["metrics"][key]
    orphan = tmp_path / "orphan.yaml"
    orphan.write_text("protocol: synth-15-5\ncells:\n  - {method: seen-only, label: x, eval_of: nothing, seeds: [0]}\n")
    capsys.readouterr()
    assert run_grid(orphan, **args) == 1
    assert f"no record of seen-only [nothing{suffix}] seed 0 to re-evaluate" in capsys.readouterr().out
    selfref = tmp_path / "self.yaml"
    selfref.write_text("protocol: synth-15-5\ncells:\n  - {method: seen-only, label: x, eval_of: x}\n")
    with pytest.raises(GridError, match="cannot be 'eval_of' its own label"):
        load_grid(selfref)


def test_grid_counts_a_cell_done_only_with_the_same_clip_weights(prepared, tmp_path, isolated_cache, capsys):
    from zss_bench.engine.grid import _clip_spec, _done, load_grid, load_records, run_grid, with_extra_overrides
    from zss_bench.protocol import load_protocol
    from zss_bench.records.store import iter_runs

    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n"
                    "  - {method: chimera, label: c, opts: [ZSS.CLIP, 'zss-micro-vit:random'], seeds: [0]}\n")
    args = dict(results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), extra=tiny(2),
                data_root=str(prepared))
    assert run_grid(grid, **args) == 0
    capsys.readouterr()
    assert run_grid(grid, **args) == 0  # same CLIP weights: done, skipped
    assert "record exists, skipped" in capsys.readouterr().out
    rec = next(iter(iter_runs(tmp_path / "results", on_skip=lambda m: None))).record
    cell = with_extra_overrides(load_grid(grid)[1], tiny(2))[0]  # the cell as the grid ran it
    assert _clip_spec(cell.opts) == "zss-micro-vit:random" and cell.label == rec["method"]["label"]
    phash = load_protocol("synth-15-5").content_hash
    same, other = rec["clip"]["weights_hash"], "0" * 64
    records = load_records(str(tmp_path / "results"))
    assert _done(records, "synth-15-5", phash, cell, lambda: same)
    assert not _done(records, "synth-15-5", phash, cell, lambda: other)  # another teacher: due
    assert _done(records, "synth-15-5", phash, cell)  # no CLIP check asked for


def test_default_output_dir_is_per_dataset_root(prepared, tmp_path, isolated_cache):
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.data.synth import generate_world
    from zss_bench.engine.run import _resolve
    from zss_bench.protocol import load_protocol

    other = tmp_path / "other-world"
    generate_world(other, seed=5, size=32, n_train=8, n_val=4, progress=False)
    prepare_dataset("synth", other, load_protocol("synth-15-5"), progress=False)
    dirs = [_resolve(_request(root, tmp_path, opts=tiny(3)))[3].OUTPUT_DIR for root in (prepared, prepared, other)]
    assert dirs[0] == dirs[1] != dirs[2]  # same config, same seed: one folder per dataset root
    assert Path(dirs[0]).name.endswith("-seed0") and Path(dirs[0]).parent == Path(dirs[2]).parent


def test_run_refuses_to_delete_an_earlier_runs_checkpoints(prepared, tmp_path, capsys):
    from zss_bench.engine.run import RunFolderError

    out = tmp_path / "train"
    run_method(_request(prepared, tmp_path, output_dir=str(out), opts=tiny(3, 2)))
    kept = sorted(p.name for p in out.glob("model_*.pth"))
    assert "model_final.pth" in kept
    with pytest.raises(RunFolderError, match=r"earlier run's checkpoints .*--resume continues.*--overwrite"):
        run_method(_request(prepared, tmp_path, output_dir=str(out), opts=tiny(3, 2)))
    assert sorted(p.name for p in out.glob("model_*.pth")) == kept  # nothing was deleted
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                         str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(out), *tiny(3, 2))
    last = err.splitlines()[-1]  # (earlier lines can be other tests' loggers writing to closed capture streams)
    assert rc == 2 and last.startswith("zss-bench run: error: ") and "--overwrite" in last
    again = run_method(_request(prepared, tmp_path, output_dir=str(out), overwrite=True, opts=tiny(3, 2)))
    assert load_run(again).record["training"]["resumed_from_iter"] == 0


def test_interrupted_grid_cell_resumes_to_the_uninterrupted_record(prepared, tmp_path, isolated_cache):
    """Kill a grid cell mid-training, re-run the grid: it resumes from the last checkpoint (not from
    iteration 0, and without deleting it) and its record equals an uninterrupted grid's."""
    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n  - {method: seen-only, label: g, seeds: [2]}\n")
    exe = [sys.executable, "-m", "zss_bench.cli", "grid", str(grid), "--data-root", str(prepared), "--opts", *tiny(24, 4)]
    env = {**os.environ, "ZSS_BENCH_CACHE": str(isolated_cache), "PYTHONUNBUFFERED": "1"}

    def grid_cmd(name):
        return [*exe[:4], "--results", str(tmp_path / name / "results"), "--work-dir", str(tmp_path / name / "work"),
                *exe[4:]]

    full = subprocess.run(grid_cmd("full"), env=env, capture_output=True, text=True, timeout=600)
    assert full.returncode == 0, full.stderr[-2000:]
    proc = subprocess.Popen(grid_cmd("cut"), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 300
    while not list((tmp_path / "cut" / "work").rglob("model_0000007.pth")):
        assert proc.poll() is None, "the grid ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    again = subprocess.run(grid_cmd("cut"), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    (a,) = (tmp_path / "full" / "results").rglob("record.json")
    (b,) = (tmp_path / "cut" / "results").rglob("record.json")
    assert load_run(b.parent).record["training"]["resumed_from_iter"] >= 4
    (ma, cma), (mb, cmb) = _record_core(a.parent), _record_core(b.parent)
    np.testing.assert_array_equal(cma.matrix, cmb.matrix)
    assert json.dumps(ma, sort_keys=True) == json.dumps(mb, sort_keys=True)
    # training finished but the record is gone (evaluation cut off): the grid re-evaluates, never retrains
    import shutil

    shutil.rmtree(b.parent)
    third = subprocess.run(grid_cmd("cut"), env=env, capture_output=True, text=True, timeout=600)
    assert third.returncode == 0, third.stderr[-2000:]
    (c,) = (tmp_path / "cut" / "results").rglob("record.json")
    assert load_run(c.parent).record["training"]["resumed_from_iter"] == 24
    np.testing.assert_array_equal(_record_core(c.parent)[1].matrix, cma.matrix)


def test_ctrl_c_ends_with_one_line_and_keeps_the_checkpoint(prepared, tmp_path, isolated_cache):
    out = tmp_path / "train"
    cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--method", "seen-only", "--protocol", "synth-15-5",
           "--data-root", str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(out),
           *tiny(200, 2)]
    env = {**os.environ, "ZSS_BENCH_CACHE": str(isolated_cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not (out / "model_0000003.pth").exists():
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert "interrupted at iteration" in err.splitlines()[-1] and "--resume" in err.splitlines()[-1]
    assert (out / "model_0000003.pth").exists()


@pytest.mark.parametrize("opts, message", [
    (["MODEL.CHIMERA.SGD.WIEGHT", "1"], "unknown config key MODEL.CHIMERA.SGD.WIEGHT; did you mean MODEL.CHIMERA.SGD.WEIGHT?"),
    (["SOLVER.MAX_ITER", "twenty"], "SOLVER.MAX_ITER expects int (default 600), got 'twenty'"),
    (["SOLVER.MAX_ITER", "4", "SOLVER.BASE_LR"], "overrides must be KEY VALUE pairs; got 3 items and 'SOLVER.BASE_LR' has no value"),
    (["MODEL.CHIMERA.SGD.LOSS", "cosin"],
     "MODEL.CHIMERA.SGD.LOSS must be one of 'cosine' | 'l1' | 'infonce', got 'cosin'; did you mean 'cosine'?"),
])
def test_config_override_errors_are_one_line_before_any_model(prepared, tmp_path, capsys, monkeypatch, opts, message):
    import zss_bench.engine.trainer as trainer

    monkeypatch.setattr(trainer.ZSSTrainer, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    rc, _, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", "synth-15-5", "--data-root", str(prepared),
                         "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "out"), *opts)
    assert rc == 2
    assert err.splitlines()[-1] == f"zss-bench run: error: {message}" or message in err.splitlines()[-1]


def test_run_without_a_dataset_root_names_its_own_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "voc-15-5",
                         "--results", str(tmp_path / "results"))
    assert rc == 2 and "pass --data-root DIR or set DETECTRON2_DATASETS" in err.splitlines()[-1]


def test_run_label_flag_names_the_leaderboard_row(prepared, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--results", str(tmp_path / "results"), "--work-dir", str(tmp_path / "w"),
                           "--label", "my-trial", *tiny(2))
    assert rc == 0, err
    run_dir = Path(out.strip().splitlines()[-1].split("record: ")[1])
    assert load_run(run_dir).record["method"]["label"] == "my-trial"


def test_default_results_root_is_never_the_committed_folder(prepared, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ZSS_BENCH_RESULTS", raising=False)
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--work-dir", str(tmp_path / "w"), "--label", "scratch", *tiny(2))
    assert rc == 0, err
    assert "record: zss-results/runs/synth-15-5/seen-only/" in out
    rc, out, err = run_cli(capsys, "leaderboard")  # reads the same default
    assert rc == 0 and "| seen-only | scratch" in out
    monkeypatch.setenv("ZSS_BENCH_RESULTS", str(tmp_path / "mine"))
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--work-dir", str(tmp_path / "w2"), *tiny(2))
    assert rc == 0, err
    assert f"record: {tmp_path / 'mine'}" in out
    assert len(list((tmp_path / "mine").rglob("record.json"))) == 1


def test_grid_dry_run_says_why_each_cell_is_due(prepared, tmp_path, isolated_cache, capsys):
    from zss_bench.engine.grid import run_grid

    from zss_bench.engine.grid import GridError

    grid = tmp_path / "grid.yaml"
    args = dict(results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), extra=tiny(2),
                data_root=str(prepared))
    # a value of the wrong type is a usage error of the whole grid, before any cell runs (issue #24, 9)
    grid.write_text("protocol: synth-15-5\ncells:\n"
                    "  - {method: seen-only, label: broken, opts: [SOLVER.MAX_ITER, 'twenty'], seeds: [0]}\n")
    with pytest.raises(GridError, match=r"cell seen-only \[broken.*SOLVER.MAX_ITER expects int \(default 600\)"):
        run_grid(grid, dry_run=True, **args)
    # a cell that fails when it runs (its weights file is missing) leaves a failed-cell note
    grid.write_text("protocol: synth-15-5\ncells:\n"
                    f"  - {{method: seen-only, label: broken, opts: [MODEL.WEIGHTS, '{tmp_path / 'none.pth'}'], "
                    "seeds: [0]}\n")
    assert run_grid(grid, dry_run=True, **args) == 0
    assert "due (no record yet)" in capsys.readouterr().out
    assert run_grid(grid, **args) == 1  # the cell fails (bad value), the grid says so
    capsys.readouterr()
    assert run_grid(grid, dry_run=True, **args) == 1  # a failed cell waits for --retry-failed, and says why
    out = capsys.readouterr().out
    assert "FAILED last time (exit 2" in out and "--retry-failed runs it again" in out
    assert run_grid(grid, dry_run=True, retry_failed=True, **args) == 0
    assert "due (no record yet; failed last time (exit 2" in capsys.readouterr().out


# --------------------------------------------------------------------------- the run's folder (issue #24)


def _last_line(err: str) -> str:
    return err.strip().splitlines()[-1]


def _no_training(monkeypatch):
    import zss_bench.engine.trainer as trainer

    monkeypatch.setattr(trainer.ZSSTrainer, "__init__", lambda *a, **k: pytest.fail("a model was built"))


def test_resume_or_eval_only_of_a_folder_holding_another_run_is_refused(prepared, tmp_path, capsys, monkeypatch):
    """`--resume --seed 7` on a seed-0 folder, `--resume SOLVER.BASE_LR 0.5` on a folder trained at
    another rate: refused naming the difference, not a record of seed 0's weights filed as seed 7."""
    out = tmp_path / "out"
    common = ["run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root", str(prepared),
              "--results", str(tmp_path / "results"), "--output-dir", str(out)]
    rc, _, err = run_cli(capsys, *common, *tiny(3))
    assert rc == 0, err
    assert json.loads((out / "run_identity.json").read_text())["seed"] == 0
    _no_training(monkeypatch)
    cases = [(["--resume", "--seed", "7"], [], "--resume", "seed is 0 there, 7 here;"),
             (["--resume"], ["SOLVER.BASE_LR", "0.5"], "--resume",
              r"config SOLVER\.BASE_LR is [0-9.e-]+ there, 0\.5 here;"),
             (["--eval-only", "--seed", "7"], [], "--eval-only", "seed is 0 there, 7 here;")]
    for flags, opts, flag, difference in cases:
        rc, _, err = run_cli(capsys, *common, *flags, *tiny(3), *opts)
        last = _last_line(err)
        assert rc == 2 and last.startswith(f"zss-bench run: error: {flag}: {out} holds another run ("), last
        assert re.search(difference, last), last
    # a folder from before run_identity.json is compared on its config.yaml
    (out / "run_identity.json").unlink()
    rc, _, err = run_cli(capsys, *common, "--resume", "--seed", "7", *tiny(3))
    assert rc == 2 and "seed is 0 there, 7 here (its config.yaml)" in _last_line(err)
    assert len(list((tmp_path / "results").rglob("record.json"))) == 1  # nothing was filed


def test_a_second_run_into_a_busy_folder_is_refused_in_one_line(prepared, tmp_path, capsys, isolated_cache):
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zss_bench.cli", "run", "--method", "seen-only", "--protocol", "synth-15-5",
           "--data-root", str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(out),
           *tiny(5000, 1000)]
    env = {**os.environ, "ZSS_BENCH_CACHE": str(isolated_cache), "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 300
        while not (out / "config.yaml").exists():  # written under the lock, just before training
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.05)
        held = json.loads((out / "run.lock").read_text())
        busy = (f"zss-bench run: error: {out} is in use by another run: pid {proc.pid} on host {held['host']} since "
                f"{held['started']} (zss-bench run --method seen-only --protocol synth-15-5 --seed 0); wait for it "
                "to finish, or give this run another --output-dir")
        flags = cmd.index("--output-dir") + 2
        for extra in (["--eval-only"], [], ["--resume", "--seed", "1"]):  # score, train, continue: all refused
            rc, _, err = run_cli(capsys, *cmd[3:flags], *extra, *cmd[flags:])
            assert rc == 2 and _last_line(err) == busy, err
        assert proc.poll() is None  # the first run is untouched
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=600)  # seconds when idle; minutes when the machine is shared with other jobs
    assert not (out / "run.lock").exists()  # released on Ctrl-C


def test_eval_only_needs_weights_to_evaluate(prepared, tmp_path, capsys):
    """`--eval-only` on an empty folder would score random weights (filed as 'imported ... trained
    elsewhere'); a missing MODEL.WEIGHTS file was an fvcore AssertionError traceback."""
    common = ["run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root", str(prepared),
              "--results", str(tmp_path / "results")]
    empty = tmp_path / "empty"
    rc, _, err = run_cli(capsys, *common, "--eval-only", "--output-dir", str(empty), *tiny(3))
    assert rc == 2 and _last_line(err) == (
        f"zss-bench run: error: --eval-only: {empty} holds no checkpoint and no MODEL.WEIGHTS is given, so there "
        "are no trained weights of seen-only to evaluate; train first, or pass MODEL.WEIGHTS /path/to/model.pth")
    assert not empty.exists() and not (tmp_path / "results").exists()  # no stub folder, no record
    missing = tmp_path / "nowhere" / "model.pth"
    for flags in (["--eval-only"], []):  # evaluating or fine-tuning from it
        rc, _, err = run_cli(capsys, *common, *flags, "--output-dir", str(empty), *tiny(3), "MODEL.WEIGHTS", str(missing))
        assert rc == 2 and _last_line(err) == f"zss-bench run: error: MODEL.WEIGHTS {missing}: the file does not exist"
        assert not empty.exists()
    # named weights into a fresh folder (imported) and its own trained folder still evaluate
    trained = tmp_path / "trained"
    rc, _, err = run_cli(capsys, *common, "--output-dir", str(trained), *tiny(3))
    assert rc == 0, err
    rc, out, err = run_cli(capsys, *common, "--eval-only", "--output-dir", str(tmp_path / "imported"),
                           *tiny(3), "MODEL.WEIGHTS", str(trained / "model_final.pth"))
    assert rc == 0, err
    rc, out, err = run_cli(capsys, *common, "--eval-only", "--output-dir", str(trained), *tiny(3))
    assert rc == 0, err
    rec = load_run(Path(out.strip().splitlines()[-1].split("record: ")[1])).record
    assert rec["training"]["resumed_from_iter"] == 3 and rec["training"]["weights"]["origin"] == "trained here"


@META_ARCH_REGISTRY.register()
class NaNOnceSeg(SeenOnlySeg):
    """Its loss turns NaN at its ``nan_at``-th step while that is set (then the same method and config
    train normally: a resumed run is the same run)."""

    nan_at: int | None = None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.calls = 0

    def train_losses(self, images, targets):
        self.calls += 1
        losses = super().train_losses(images, targets)
        if self.calls == type(self).nan_at:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


@pytest.fixture
def nan_once():
    """The method 'nan-once' (NaNOnceSeg), diverging at its 3rd step until the test says otherwise."""
    from zss_bench.plugins import register_method, unregister_method

    plugin, opts = make_plugin("nan-once", "NaNOnceSeg")
    register_method(plugin)
    NaNOnceSeg.nan_at = 3
    yield opts
    NaNOnceSeg.nan_at = None
    unregister_method("nan-once")


def test_nan_before_the_first_periodic_checkpoint_does_not_become_the_resume_point(prepared, tmp_path, nan_once):
    from zss_bench.engine.trainer import TrainingDiverged

    out = tmp_path / "out"
    req = _request(prepared, tmp_path, method="nan-once", output_dir=str(out), opts=tiny(6, 1000, *nan_once))
    with pytest.raises(TrainingDiverged, match=r"model_before_nan_iter_0000002\.pth; last periodic checkpoint: none "
                                               r"\(--resume starts again from iteration 0\)"):
        run_method(req)
    assert (out / "model_before_nan_iter_0000002.pth").is_file()  # the weights before the bad step are kept
    assert not (out / "last_checkpoint").exists()  # ...but are not where --resume continues
    NaNOnceSeg.nan_at = None  # (whatever made the step diverge is fixed)
    rec = load_run(run_method(RunRequest(**{**asdict(req), "resume": True}))).record
    assert rec["training"]["resumed_from_iter"] == 0  # the bad step is trained, not skipped
    assert rec["training"]["max_iter"] == 6 and (out / "model_final.pth").is_file()
    curves = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()]
    assert curves == sorted(set(curves)) and curves[-1] == 5  # each iteration once: the diverged run's are gone


@pytest.mark.parametrize("blocked_by", ["a file", "read-only"])
def test_unwritable_results_fail_before_training(prepared, tmp_path, capsys, monkeypatch, blocked_by):
    blocker = tmp_path / "blocker"
    if blocked_by == "a file":  # (works as root too, where permission bits do not stop writes)
        blocker.write_text("not a folder")
    else:
        if os.geteuid() == 0:
            pytest.skip("root writes into read-only folders")
        blocker.mkdir()
        blocker.chmod(0o555)
    _no_training(monkeypatch)
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                         str(prepared), "--results", str(blocker / "results"), "--work-dir", str(tmp_path / "work"),
                         *tiny(3))
    assert rc == 2 and _last_line(err).startswith(f"zss-bench run: error: --results {blocker / 'results'}: ")
    assert not (tmp_path / "work").exists()
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                         str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(blocker / "out"),
                         *tiny(3))
    assert rc == 2 and _last_line(err).startswith(f"zss-bench run: error: --output-dir {blocker / 'out'}: ")


def test_a_record_that_cannot_be_written_at_the_end_says_where_the_weights_are(prepared, tmp_path, capsys,
                                                                                monkeypatch):
    import shlex

    import zss_bench.records as records

    def read_only(results, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(results))

    monkeypatch.setattr(records, "write_run", read_only)
    out = tmp_path / "out"
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                         str(prepared), "--results", str(tmp_path / "gone"), "--output-dir", str(out), *tiny(3))
    last = _last_line(err)
    assert rc == 2, err
    assert last.startswith(f"zss-bench run: error: could not write the run record under {tmp_path / 'gone'} "
                           f"(Permission denied); the weights are kept in {out / 'model_final.pth'}; "
                           "write the record with: zss-bench run ")
    cmd = shlex.split(last.split("write the record with: ")[1])
    assert "--eval-only" in cmd and cmd[cmd.index("--output-dir") + 1] == str(out)
    monkeypatch.undo()
    cmd[cmd.index("WRITABLE_DIR")] = str(tmp_path / "results")
    rc, stdout, err = run_cli(capsys, *cmd[1:])  # the printed command writes the record from those weights
    assert rc == 0, err
    rec = load_run(Path(stdout.strip().splitlines()[-1].split("record: ")[1])).record
    assert rec["training"]["resumed_from_iter"] == 3 and rec["provenance"]["seed"] == 0


@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_a_seed_out_of_range_is_refused_before_any_work(prepared, tmp_path, capsys, monkeypatch, seed):
    import zss_bench.engine.run as run

    monkeypatch.setattr(run, "_resolve", lambda *a: pytest.fail("resolved a run with an impossible seed"))
    work = tmp_path / "work"
    rc, _, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                         str(prepared), "--results", str(tmp_path / "results"), "--work-dir", str(work),
                         "--seed", seed, *tiny(3))
    assert rc == 2 and seed in _last_line(err) and "2^32" in _last_line(err)
    with pytest.raises(ValueError, match=rf"--seed {seed}: a seed must be a whole number from 0 to"):
        run_method(_request(prepared, tmp_path, seed=int(seed)))
    assert not work.exists()
