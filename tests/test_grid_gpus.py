"""Issue #25, part 4: `grid`/`ablate --executor local --max-parallel N` on a GPU host give each running cell
its own GPU(s) through CUDA_VISIBLE_DEVICES (round-robin over the visible devices, `--gpus-per-cell K`) and
refuse more parallel cells than GPUs. No GPU is needed: the device count is faked and the cells' processes
are fake ``Popen`` objects that record the environment each cell was started with."""
from __future__ import annotations

import io
import threading
import time

import pytest

from conftest import run_cli


class _FakeCells:
    """Stands in for ``subprocess.Popen`` of a cell: records each cell's argv and CUDA_VISIBLE_DEVICES, runs for
    a moment, and fails the test if two cells that run at the same time were given a common GPU."""

    def __init__(self, real_popen, seconds: float = 0.05):
        self.real_popen, self.seconds = real_popen, seconds
        self.started, self.lock, self.running, self.overlaps = [], threading.Lock(), {}, []

    def __call__(self, argv, **kw):
        if "zss_bench.cli" not in list(argv):  # not a cell (ctypes' ldconfig, ...): the real thing
            return self.real_popen(argv, **kw)
        devices = kw["env"].get("CUDA_VISIBLE_DEVICES")
        with self.lock:
            mine = set(devices.split(",")) if devices else set()
            for other, theirs in self.running.items():
                if mine & theirs:
                    self.overlaps.append((devices, theirs))
            self.started.append((list(argv), devices))
            self.running[len(self.started)] = mine
            key = len(self.started)
        return _FakeProc(self, key)


class _FakeProc:
    def __init__(self, cells: _FakeCells, key: int):
        self.cells, self.key, self.stdout = cells, key, io.BytesIO(b"training...\n")

    def wait(self):
        time.sleep(self.cells.seconds)
        with self.cells.lock:
            self.cells.running.pop(self.key)
        return 0


@pytest.fixture
def fake_gpus(monkeypatch):
    """``fake_gpus(n)``: this process sees n CUDA devices (and no CUDA_VISIBLE_DEVICES of its own)."""
    import zss_bench.engine.executors as executors

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)

    def set_count(n: int):
        monkeypatch.setattr(executors, "_cuda_device_count", lambda: n)

    return set_count


@pytest.fixture
def fake_cells(monkeypatch):
    import zss_bench.engine.executors as executors

    cells = _FakeCells(executors.subprocess.Popen)
    monkeypatch.setattr(executors.subprocess, "Popen", cells)
    return cells


def _jobs(tmp_path, n: int):
    from zss_bench.engine.executors import CellJob

    return [CellJob(f"cell{i}", ["python", "-m", "zss_bench.cli", "run", "--method", "m", "--seed", str(i)],
                    str(tmp_path / f"cell{i}.log"), str(tmp_path / f"cell{i}.json")) for i in range(n)]


def test_visible_devices_follow_the_parents_list_or_the_count(fake_gpus, monkeypatch):
    from zss_bench.engine.executors import visible_devices

    fake_gpus(3)
    assert visible_devices() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6,GPU-8f2e")
    assert visible_devices() == ["4", "6", "GPU-8f2e"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,-1,2")  # CUDA stops at the first invalid entry
    assert visible_devices() == ["1"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert visible_devices() == []


def test_parallel_cells_each_get_their_own_gpu_round_robin(fake_gpus, fake_cells, tmp_path):
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(4)
    fake_cells.seconds = 0.2  # long enough that the cells' starts come in the order their GPUs were handed out
    ex = LocalExecutor(2)  # default: 1 GPU per cell when GPUs are visible
    assert ex.gpus_per_cell == 1
    codes = ex.run(_jobs(tmp_path, 6))
    assert codes == [0] * 6 and not fake_cells.overlaps
    devices = [d for _, d in fake_cells.started]
    assert all(d in {"0", "1", "2", "3"} for d in devices)
    assert sorted(devices[:4]) == ["0", "1", "2", "3"]  # handed out round-robin: each once before any is reused
    assert all("--num-gpus" not in argv for argv, _ in fake_cells.started)  # one GPU: run's default
    log = (tmp_path / "cell0.log").read_text()
    assert log.startswith("$ CUDA_VISIBLE_DEVICES=0 python -m zss_bench.cli run") and "training..." in log


def test_one_cell_at_a_time_still_gets_one_gpu(fake_gpus, fake_cells, tmp_path):
    """Before, a lone cell saw every GPU and used the first; now it is given exactly one."""
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(2)
    LocalExecutor(1).run(_jobs(tmp_path, 3))
    assert [d for _, d in fake_cells.started] == ["0", "1", "0"]


def test_the_parents_cuda_visible_devices_is_respected(fake_gpus, fake_cells, tmp_path, monkeypatch):
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(8)  # the machine has 8; this shell may use two of them
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    LocalExecutor(2).run(_jobs(tmp_path, 4))
    assert {d for _, d in fake_cells.started} == {"5", "7"} and not fake_cells.overlaps


def test_gpus_per_cell_gives_each_cell_a_group_and_its_process_count(fake_gpus, fake_cells, tmp_path):
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(5)  # the fifth GPU cannot make a group of two: it stays unused
    LocalExecutor(2, gpus_per_cell=2).run(_jobs(tmp_path, 3))
    assert {d for _, d in fake_cells.started} <= {"0,1", "2,3"} and not fake_cells.overlaps
    for argv, devices in fake_cells.started:
        assert argv[argv.index("run") + 1:argv.index("run") + 3] == ["--num-gpus", "2"]


def test_gpus_per_cell_zero_keeps_the_cells_off_the_gpus(fake_gpus, fake_cells, tmp_path):
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(2)
    LocalExecutor(4, gpus_per_cell=0).run(_jobs(tmp_path, 4))
    assert [d for _, d in fake_cells.started] == [""] * 4


def test_a_cpu_host_leaves_the_environment_alone(fake_gpus, fake_cells, tmp_path):
    from zss_bench.engine.executors import LocalExecutor

    fake_gpus(0)
    ex = LocalExecutor(2)
    assert ex.gpus_per_cell == 0
    ex.run(_jobs(tmp_path, 2))
    assert [d for _, d in fake_cells.started] == [None, None]


@pytest.mark.parametrize("gpus, argv, message", [
    (2, ["--max-parallel", "3"], "--max-parallel 3 x --gpus-per-cell 1 needs 3 GPUs, but 2 are visible"),
    (4, ["--max-parallel", "3", "--gpus-per-cell", "2"],
     "--max-parallel 3 x --gpus-per-cell 2 needs 6 GPUs, but 4 are"),
    (0, ["--gpus-per-cell", "1"], "--max-parallel 1 x --gpus-per-cell 1 needs 1 GPU, but 0 are visible"),
    (2, ["--executor", "slurm", "--gpus-per-cell", "1"], "--gpus-per-cell is for --executor local"),
])
def test_more_parallel_cells_than_gpus_is_a_one_line_error(gpus, argv, message, fake_gpus, fake_cells, tmp_path,
                                                            capsys):
    fake_gpus(gpus)
    rc, out, err = run_cli(capsys, "ablate", "--method", "seen-only", "--protocol", "synth-15-5",
                           "--grid", "SOLVER.BASE_LR=0.01,0.02", "--results", str(tmp_path / "r"),
                           "--work-dir", str(tmp_path / "w"), *argv)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not fake_cells.started and not (tmp_path / "w").exists()


def test_ablate_on_a_gpu_host_spreads_its_cells(fake_gpus, fake_cells, tmp_path, capsys):
    """The whole path: `ablate --max-parallel 2` on a host with 3 GPUs starts each cell's `zss-bench run` with
    its own CUDA_VISIBLE_DEVICES (the fake processes write no records, so the cells end "done" without one)."""
    fake_gpus(3)
    rc, out, err = run_cli(capsys, "ablate", "--method", "seen-only", "--protocol", "synth-15-5",
                           "--grid", "SOLVER.BASE_LR=0.01,0.02,0.03,0.04", "--results", str(tmp_path / "r"),
                           "--work-dir", str(tmp_path / "w"), "--max-parallel", "2")
    assert rc == 0, err
    assert "each on 1 of 3 visible GPU(s)" in out and out.count(": done") == 4
    assert len(fake_cells.started) == 4 and not fake_cells.overlaps
    # the third cell takes the GPU no cell has used yet (the order of the process starts may differ)
    devices = [d for _, d in fake_cells.started]
    assert set(devices) == {"0", "1", "2"} and devices[0] != devices[1]
    assert all(argv[3] == "run" for argv, _ in fake_cells.started)
