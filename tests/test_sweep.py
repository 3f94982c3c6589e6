"""Sweeps (`zss-bench ablate`, `sweep:` cells in grid files): expansion and identity, a real two-key sweep
with two seeds that survives a cell killed on purpose and resumes, failed-cell notes, pivot tables and the
heat-map, and the submitit executors (a Slurm submission built without a cluster; submitit's debug executor
running a tiny sweep)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from run_helpers import TINY, synth_world

KEYS = ("MODEL.SEEN_ONLY.LOSS_WEIGHT", "SOLVER.BASE_LR")


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return synth_world(tmp_path_factory.mktemp("world"), seed=3, n_train=8, n_val=4)


@pytest.fixture
def prepared(small_world, isolated_cache):
    from run_helpers import prepare_synth

    return prepare_synth(small_world)


# --- expansion, labels, identity ---------------------------------------------------------------

def test_grid_args_and_values_parse_with_clear_errors():
    from zss_bench.engine.sweep import SweepError, parse_grid_args, split_values

    assert split_values("1,2,(1, 2),'a,b'") == ["1", "2", "(1, 2)", "'a,b'"]
    assert parse_grid_args(["MODEL.X.Y=1,2", "SOLVER.MAX_ITER=10"]) == {"MODEL.X.Y": ["1", "2"], "SOLVER.MAX_ITER": ["10"]}
    for bad, why in ((["MODEL.X"], "KEY=v1,v2"), (["model.x=1"], "not a config key"), (["MODEL.X=1,,2"], "empty value"),
                     (["MODEL.X=1,1"], "listed twice"), (["MODEL.X=1", "MODEL.X=2"], "twice"), (["SEED=1,2"], "cannot be swept")):
        with pytest.raises(SweepError, match=why):
            parse_grid_args(bad)


def test_grid_file_sweep_expands_to_labelled_cells(tmp_path):
    from zss_bench.engine.grid import GridError, load_grid, load_sweeps

    grid = tmp_path / "g.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n"
                    "  - {method: chimera, sweep: {MODEL.CHIMERA.CSH.NUM_BLOCKS: [1, 2], MODEL.CHIMERA.SAM.WEIGHT: [0.5]},"
                    " seeds: [0, 1], opts: [SOLVER.MAX_ITER, '5']}\n"
                    "  - {method: chimera, label: plain, seeds: [0]}\n")
    protocol, cells = load_grid(grid)
    assert protocol == "synth-15-5" and len(cells) == 5
    assert [(c.label, c.seed) for c in cells[:4]] == [("CSH.NUM_BLOCKS=1,SAM.WEIGHT=0.5", 0), ("CSH.NUM_BLOCKS=1,SAM.WEIGHT=0.5", 1),
                                                       ("CSH.NUM_BLOCKS=2,SAM.WEIGHT=0.5", 0), ("CSH.NUM_BLOCKS=2,SAM.WEIGHT=0.5", 1)]
    assert cells[2].opts == ["SOLVER.MAX_ITER", "5", "MODEL.CHIMERA.CSH.NUM_BLOCKS", "2", "MODEL.CHIMERA.SAM.WEIGHT", "0.5"]
    assert cells[0].swept == {"MODEL.CHIMERA.CSH.NUM_BLOCKS": "1", "MODEL.CHIMERA.SAM.WEIGHT": "0.5"}
    assert cells[4].swept is None and cells[4].label == "plain"
    (sweep,) = load_sweeps(grid)[1]
    assert sweep.keys == ("MODEL.CHIMERA.CSH.NUM_BLOCKS", "MODEL.CHIMERA.SAM.WEIGHT") and sweep.seeds == (0, 1)
    for body, why in (("{method: chimera, sweep: {MODEL.X: []}}", "non-empty list"),
                      ("{method: chimera, sweep: [1, 2]}", "expected a mapping"),
                      ("{method: chimera, label: x, sweep: {MODEL.X: [1]}}", "'label' is not allowed"),
                      ("{method: chimera, sweep: {MODEL.X: [1]}, opts: [MODEL.X, '2']}", "both swept and fixed")):
        grid.write_text(f"protocol: synth-15-5\ncells:\n  - {body}\n")
        with pytest.raises(GridError, match=why):
            load_grid(grid)


def test_a_swept_point_equal_to_the_defaults_is_the_default_run():
    """Identity is the resolved config: LOSS_WEIGHT 1.0 (the default) hashes like no override at all."""
    from zss_bench.engine.config import build_run_config, config_hash
    from zss_bench.engine.grid import resolve_config_hashes, sweep_cells
    from zss_bench.engine.sweep import Sweep
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    proto = load_protocol("synth-15-5")
    cells = sweep_cells(Sweep("seen-only", (KEYS[0],), (("1.0", "2.0"),), (0,)))
    resolve_config_hashes(proto, cells)
    default = config_hash(build_run_config(get_method("seen-only"), proto, seed=0, output_dir=""))
    assert cells[0].config_hash == default != cells[1].config_hash


# --- a real sweep: killed cell, notes, resume, retry, pivot, heat-map --------------------------

def test_two_key_sweep_survives_a_killed_cell_resumes_and_pivots(prepared, tmp_path, capsys, monkeypatch):
    import zss_bench.engine.executors as executors
    from zss_bench.records.failed import iter_notes
    from zss_bench.records.store import iter_runs

    results, work = tmp_path / "results", tmp_path / "work"
    victim = "LOSS_WEIGHT=2.0,SOLVER.BASE_LR=0.02"
    real_popen = executors.subprocess.Popen

    def killing_popen(argv, **kw):  # the out-of-memory killer, on purpose: SIGKILL for one cell, once
        if any(victim in str(a) for a in argv) and "1" == argv[argv.index("--seed") + 1] and not (tmp_path / "killed").exists():
            (tmp_path / "killed").touch()
            argv = [sys.executable, "-c", "import os, signal; print('allocating...', flush=True); "
                                          "os.kill(os.getpid(), signal.SIGKILL)"]
        return real_popen(argv, **kw)

    monkeypatch.setattr(executors.subprocess, "Popen", killing_popen)
    grid_file = tmp_path / "sweep.yaml"
    argv = ["ablate", "--method", "seen-only", "--protocol", "synth-15-5", "--grid", f"{KEYS[0]}=1.0,2.0",
            f"{KEYS[1]}=0.01,0.02", "--seeds", "0,1", "--results", str(results), "--work-dir", str(work),
            "--data-root", str(prepared), "--max-parallel", "2", "--write", str(grid_file),
            "--opts", *TINY, "SOLVER.MAX_ITER", "2"]
    rc, out, _ = run_cli(capsys, *argv)
    assert rc == 1 and "FAILED (exit -9)" in out  # one cell of eight died; the other seven finished
    runs = {r.record["run_id"] for r in iter_runs(results, on_skip=lambda m: None)}
    assert len(runs) == 7
    ((path, note),) = list(iter_notes(results))
    assert note["exit"] == -9 and note["signal"] == 9 and note["seed"] == 1 and victim in note["label"]
    assert "allocating..." in "\n".join(note["last_lines"]) and Path(note["log"]).is_file()

    # the leaderboard lists it as failed, the pivot counts it, neither averages it
    rc, board, _ = run_cli(capsys, "leaderboard", "--results", str(results), "--vs", "none")
    assert rc == 0 and "Failed cells" in board and victim in board.split("Failed cells")[1]
    rc, pivot, _ = run_cli(capsys, "leaderboard", "--results", str(results), "--grid", str(grid_file),
                           "--heatmap", str(tmp_path / "heat.png"))
    assert rc == 0 and "(n=1), 1 failed" in pivot and pivot.count("(n=2)") == 3

    # re-running resumes: nothing finished is redone, the failed cell waits for --retry-failed
    rc, out, _ = run_cli(capsys, *argv)
    assert rc == 1 and out.count("record exists, skipped") == 7 and "FAILED last time (exit -9" in out
    assert {r.record["run_id"] for r in iter_runs(results, on_skip=lambda m: None)} == runs
    rc, out, _ = run_cli(capsys, *argv, "--retry-failed")
    assert rc == 0 and out.count("due (") == 1 and out.count("record exists, skipped") == 7
    assert len(list(iter_runs(results, on_skip=lambda m: None))) == 8 and not list(iter_notes(results))

    # the grid file `--write` saved is the same sweep: every cell done
    rc, out, _ = run_cli(capsys, "grid", str(grid_file), "--results", str(results), "--work-dir", str(work),
                         "--dry-run", "--opts", *TINY, "SOLVER.MAX_ITER", "2")
    assert rc == 0 and out.count("record exists, skipped") == 8
    rc, pivot, _ = run_cli(capsys, "leaderboard", "--results", str(results), "--grid", str(grid_file),
                           "--format", "csv")
    assert rc == 0 and len(pivot.strip().splitlines()) == 1 + 4
    from PIL import Image

    with Image.open(tmp_path / "heat.png") as im:
        assert im.size[0] > 200 and len(im.convert("RGB").getcolors(1 << 20)) > 20


# --- submitit: a Slurm array built without a cluster, and the debug executor ------------------

def _jobs(tmp_path, n=3):
    from zss_bench.engine.executors import CellJob

    return [CellJob(f"cell {i}", [sys.executable, "-m", "zss_bench.cli", "run", "--method", "chimera", "--seed", str(i),
                                  "ZSS.LABEL", "x"], str(tmp_path / f"log{i}"), str(tmp_path / f"note{i}.json"),
                    {"seed": i}) for i in range(n)]


def test_slurm_submission_is_one_array_with_the_asked_resources(tmp_path):
    from submitit.core.utils import DelayedSubmission

    from zss_bench.engine.executors import SlurmOptions, SubmititExecutor

    options = SlurmOptions(partition="gpu", gpus_per_node=2, cpus_per_task=8, time_min=90, mem_gb=64, account="zss",
                           max_parallel=2, sbatch=["--qos=high", "--exclusive"], setup=["module load cuda/12"])
    ex = SubmititExecutor(tmp_path / "submitit" / "%j", "slurm", options, dry_run=True)
    assert ex.run(_jobs(tmp_path)) == [None, None, None]
    script = ex.dry_script.read_text()
    for flag in ("#SBATCH --array=0-2%2", "#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --time=90", "#SBATCH --mem=64GB", "#SBATCH --account=zss",
                 "#SBATCH --qos=high", "#SBATCH --exclusive", "#SBATCH --ntasks-per-node=1", "module load cuda/12",
                 "submitit.core._submit"):
        assert flag in script, flag
    assert script.count("#SBATCH --array") == 1  # one array for the whole sweep, not one job per cell
    # each array task runs the same `zss-bench run` line a local cell runs, with the GPUs handed to detectron2's launcher
    for i in range(3):
        cell = DelayedSubmission.load(ex.dry_script.parent / f"cell-{i}.pkl").function
        assert cell.argv[3:8] == ["run", "--num-gpus", "2", "--method", "chimera"] and cell.argv[-3:] == [str(i), "ZSS.LABEL", "x"]


def test_submitit_debug_executor_runs_a_tiny_sweep(prepared, tmp_path, capsys):
    from zss_bench.engine.executors import SubmititExecutor
    from zss_bench.engine.grid import run_cells, sweep_cells
    from zss_bench.engine.sweep import Sweep
    from zss_bench.records.store import iter_runs

    ex = SubmititExecutor(tmp_path / "submitit", "debug")
    cells = sweep_cells(Sweep("seen-only", (KEYS[0],), (("1.5",),), (0, 1), tuple([*TINY, "SOLVER.MAX_ITER", "2"])))
    rc = run_cells("synth-15-5", cells, results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"),
                   data_root=str(prepared), executor=ex)
    assert rc == 0 and len(ex.jobs) == 2
    recs = [r.record for r in iter_runs(tmp_path / "results", on_skip=lambda m: None)]
    assert sorted(r["provenance"]["seed"] for r in recs) == [0, 1]
    assert {r["method"]["label"] for r in recs} == {"SEEN_ONLY.LOSS_WEIGHT=1.5"}


def test_ablate_rejects_bad_seeds_and_keys(capsys):
    rc, _, err = run_cli(capsys, "ablate", "--method", "seen-only", "--protocol", "synth-15-5", "--grid", "MODEL.X=1",
                         "--seeds", "0,a", "--dry-run")
    assert rc != 0 and "--seeds" in err
    rc, _, err = run_cli(capsys, "ablate", "--method", "seen-only", "--protocol", "synth-15-5", "--grid", "x=1")
    assert rc != 0 and "not a config key" in err
    with pytest.raises(SystemExit) as exc:  # argparse's usage error, before any cell is built
        run_cli(capsys, "ablate", "--method", "seen-only", "--protocol", "synth-15-5", "--grid", "MODEL.X=1",
                "--max-parallel", "0")
    assert exc.value.code == 2 and "--max-parallel: expected a whole number >= 1, got '0'" in capsys.readouterr().err
