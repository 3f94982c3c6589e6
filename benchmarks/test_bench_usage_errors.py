"""How long `zss-bench run` takes to refuse a typo (issue #24: 13–15 s before, target under 1 s).

Run: ``.venv/bin/python -m pytest benchmarks/test_bench_usage_errors.py --benchmark-only``

Each round is a whole process, as a user meets it: ``zss-bench run`` with a misspelt method, a misspelt
config key or a value of the wrong type, exit code 2. The key and value checks read the method's cached
config schema (``zss_bench/engine/preflight.py``); ``cold`` measures the first refusal after the code
changed (the schema is rebuilt: torch and detectron2 are imported once).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXE = [str(Path(sys.executable).with_name("zss-bench"))]
CASES = {
    "method": ["run", "--method", "chimerra", "--protocol", "synth-15-5"],
    "key": ["run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.MAX_ITERR", "3"],
    "value": ["run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.BASE_LR", "abc"],
    "grid-key": ["ablate", "--method", "chimera", "--protocol", "synth-15-5", "--grid", "SOLVER.MAX_ITERR=1,2",
                 "--dry-run"],
}


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("zss-cache")
    env = {**os.environ, "ZSS_BENCH_CACHE": str(root)}
    subprocess.run([*EXE, *CASES["key"]], env=env, capture_output=True, timeout=300)  # caches the schema
    return env


def _refuse(argv, env):
    proc = subprocess.run([*EXE, *argv], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_usage_error(benchmark, cache, case):
    benchmark.pedantic(_refuse, args=(CASES[case], cache), rounds=5, iterations=1, warmup_rounds=1)


def test_usage_error_cold_schema(benchmark, cache):
    schema = Path(cache["ZSS_BENCH_CACHE"]) / "config-schema"

    def setup():
        shutil.rmtree(schema, ignore_errors=True)

    benchmark.pedantic(_refuse, args=(CASES["key"], cache), setup=setup, rounds=3, iterations=1)
