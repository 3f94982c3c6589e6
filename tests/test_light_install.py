"""The light install (issue #28): the core of zss-bench in a fresh virtualenv without torch, beside whatever
stack a researcher already has, and the one-line hints of the extras it lacks.

The virtualenv test installs the checkout from the package registry's wheels exactly as a user would
(`pip install .`), so it needs the registry (or pip's cache, which `make setup` fills).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from zss_bench.cli import main
from zss_bench.extras import EXTRA_OF, MissingExtraError, install_hint, require, verb_needs

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchvision", "open_clip", "detectron2", "matplotlib", "submitit", "mmengine")


# --------------------------------------------------------------------------- the hints, in this environment


def test_a_missing_module_is_named_with_its_extra():
    exc = ModuleNotFoundError("No module named 'open_clip'", name="open_clip")
    assert install_hint("zss-bench run", exc) == ('zss-bench run needs the \'train\' extra (open_clip is not '
                                                  'installed): pip install "zss-bench[train]"')
    d2 = install_hint("x", ModuleNotFoundError("", name="detectron2.config"))
    assert "'train' extra" in d2 and "scripts/install_detectron2.sh" in d2
    assert install_hint("x", ModuleNotFoundError("", name="yaml")) is None  # a core module: a real bug, re-raised
    assert install_hint("x", ImportError("cannot import name 'x'")) is None
    assert set(EXTRA_OF.values()) == {"train", "report", "slurm", "mmseg"}


def test_require_raises_one_line_naming_the_extra():
    require("train", "json", what="w")  # importable: nothing happens
    with pytest.raises(MissingExtraError, match=r'^w needs the \'mmseg\' extra \(no_such_module_zz is not '
                                                r'installed\): pip install "zss-bench\[mmseg\]"$'):
        require("mmseg", "no_such_module_zz", what="w")


@pytest.mark.parametrize("argv, extras", [
    (["run", "--method", "chimera", "--protocol", "synth-15-5"], ["train"]),
    (["grid", "grids/synth-15-5.yaml", "--dry-run"], ["train"]),  # cells' keys are checked with detectron2
    (["grid", "grids/synth-15-5.yaml", "--executor", "slurm"], ["train", "slurm"]),
    (["plot", "RUN", "--out", "x"], ["report"]),
    (["evaluate", "--protocol", "voc-15-5", "--gt-dir", "a", "--pred-dir", "b"], []),
    (["leaderboard"], []),
    (["protocols"], []),
])
def test_each_verb_declares_the_extras_it_needs(argv, extras):
    from zss_bench.cli import build_parser

    assert [extra for extra, _ in verb_needs(build_parser().parse_args(argv))] == extras


def test_a_verb_whose_extra_is_missing_prints_one_line_and_exits_2(monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "open_clip" else real(name, *a))
    assert main(["run", "--method", "chimera", "--protocol", "synth-15-5"]) == 2
    err = capsys.readouterr().err
    assert err == ('zss-bench run needs the \'train\' extra (open_clip is not installed): '
                   'pip install "zss-bench[train]"\n')


# --------------------------------------------------------------------------- a fresh virtualenv, no torch


@pytest.fixture(scope="module")
def core_env(tmp_path_factory):
    """A new virtualenv with only the core of the checkout installed (`pip install .`, no extras)."""
    root = tmp_path_factory.mktemp("core-venv")
    venv.EnvBuilder(with_pip=True).create(root / "venv")
    bin_dir = root / "venv" / "bin"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    proc = subprocess.run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                           str(REPO)], capture_output=True, text=True, timeout=900, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return bin_dir, env, root


def _run(core_env, *argv, check=True):
    bin_dir, env, root = core_env
    proc = subprocess.run([str(bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=300,
                          env=env, cwd=root)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_the_core_installs_and_scores_without_torch(core_env, voc_folders, tmp_path, capsys):
    from record_fixtures import write_fixture_results

    present = _run(core_env, "python", "-c", "import importlib.util, json; "
                   f"print(json.dumps([m for m in {HEAVY!r} if importlib.util.find_spec(m)]))").stdout
    assert json.loads(present) == []  # nothing heavy came with the core
    assert "voc-15-5" in _run(core_env, "zss-bench", "protocols").stdout
    argv = ["evaluate", "--protocol", "voc-15-5", "--gt-dir", str(voc_folders["gt_dir"]),
            "--pred-dir", str(voc_folders["pred_dir"]), "--json", "--n-boot", "50"]
    there = json.loads(_run(core_env, "zss-bench", *argv).stdout)
    assert main(argv) == 0  # the same verb in this full environment
    here = json.loads(capsys.readouterr().out)
    assert there["hIoU"] == here["hIoU"] and there["per_class"] == here["per_class"]
    write_fixture_results(tmp_path / "results", tmp_path / "scratch")
    board = _run(core_env, "zss-bench", "leaderboard", "--results", str(tmp_path / "results")).stdout
    assert "chimera" in board and "seen-only" in board
    _run(core_env, "python", "-c", "from zss_bench.metrics import ConfusionMatrix; import numpy as np; "
         "cm = ConfusionMatrix(3); cm.update(np.array([[0, 1], [2, 1]]), np.array([[0, 1], [2, 2]])); "
         "assert cm.matrix.sum() == 4 and cm.matrix[2, 1] + cm.matrix[1, 2] == 1; "
         "import sys; assert 'torch' not in sys.modules")
    refused = _run(core_env, "zss-bench", "run", "--method", "chimera", "--protocol", "synth-15-5", check=False)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr == ('zss-bench run needs the \'train\' extra (torch is not installed): '
                              'pip install "zss-bench[train]"\n')
    imported = _run(core_env, "python", "-c", "import zss_bench.clip", check=False)
    assert imported.returncode == 1
    assert imported.stderr.strip().splitlines()[-1].endswith('pip install "zss-bench[train]"')
    assert json.loads(_run(core_env, "python", "-c", "import importlib.util, json; "
                           f"print(json.dumps([m for m in {HEAVY!r} if importlib.util.find_spec(m)]))").stdout) == []
