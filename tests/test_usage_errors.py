"""Issue #24 items 1 and 9: the demo never clears a folder it did not write, and usage errors of `run`,
`grid` and `ablate` come back as one line before torch or detectron2 are imported (how fast:
``benchmarks/test_bench_usage_errors.py``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


# --- 1. the demo's --out ----------------------------------------------------------------------

def test_demo_refuses_a_folder_it_did_not_write(tmp_path, capsys):
    from zss_bench.demo import run_demo

    thesis = tmp_path / "mine" / "thesis" / "ch1.tex"
    thesis.parent.mkdir(parents=True)
    thesis.write_text("\\chapter{One}")
    rc, out, err = run_cli(capsys, "demo", "--out", str(tmp_path / "mine"))
    assert rc == 2 and "not written by `zss-bench demo`" in err
    assert thesis.read_text() == "\\chapter{One}"  # nothing deleted
    assert run_demo(tmp_path / "mine", quick=True) == 2 and thesis.is_file()


def test_demo_reuses_its_own_folder_and_an_empty_one(tmp_path):
    from zss_bench.demo import MARKER, prepare_out

    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_out(empty)
    assert (empty / MARKER).is_file()
    (empty / "results").mkdir()
    (empty / "results" / "old.json").write_text("{}")
    prepare_out(empty)  # written by the demo: cleared for the new demo
    assert sorted(p.name for p in empty.iterdir()) == [MARKER]
    prepare_out(tmp_path / "new" / "deeper")
    assert (tmp_path / "new" / "deeper" / MARKER).is_file()


# --- 9. run's usage errors --------------------------------------------------------------------

@pytest.mark.parametrize("seed", ["-1", str(2 ** 32)])
def test_out_of_range_seed_is_refused_before_any_work(seed, tmp_path, capsys):
    work = tmp_path / "work"
    rc, out, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", "synth-15-5", "--seed", seed,
                           "--work-dir", str(work), "--results", str(tmp_path / "results"))
    assert rc == 2 and f"--seed {seed}: a seed must be a whole number from 0 to 4294967295" in err
    assert len(err.strip().splitlines()) == 1 and not work.exists()


def test_an_option_after_the_overrides_says_options_go_first(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.MAX_ITER", "3",
                           "--output-dir", str(tmp_path / "out"))
    assert rc == 2 and "option --output-dir after the KEY VALUE overrides: options go before the overrides" in err
    assert "did you mean OUTPUT_DIR" not in err and not (tmp_path / "out").exists()


def test_a_whole_number_for_a_float_key_is_that_float():
    from zss_bench.engine.config import build_run_config
    from zss_bench.engine.preflight import check_overrides
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    plugin = get_method("chimera")
    check_overrides(plugin, ["SOLVER.BASE_LR", "30"])  # no error
    cfg = build_run_config(plugin, load_protocol("synth-15-5"), seed=0, output_dir="", opts=["SOLVER.BASE_LR", "30"])
    assert cfg.SOLVER.BASE_LR == 30.0 and isinstance(cfg.SOLVER.BASE_LR, float)
    from zss_bench.engine.config import ConfigOverrideError

    with pytest.raises(ConfigOverrideError, match=r"SOLVER.MAX_ITER expects int .* got '2.5'"):
        check_overrides(plugin, ["SOLVER.MAX_ITER", "2.5"])
    with pytest.raises(ConfigOverrideError, match="ZSS.N_BOOT -5: bootstrap resamples must be >= 0"):
        check_overrides(plugin, ["ZSS.N_BOOT", "-5"])


def test_the_cached_schema_is_the_real_configs_keys():
    """The schema the fast check reads is built by the real config path, and is rebuilt when it is absent."""
    from zss_bench.engine.preflight import _schema_path, config_schema
    from zss_bench.plugins import get_method

    from zss_bench.engine.config import resolve_method_config
    from zss_bench.protocol import load_protocol

    plugin = get_method("zegclip")
    schema = config_schema(plugin)
    assert _schema_path(plugin).is_file()
    # with the method's config file, the defaults are the file's (what an override replaces)
    method_file = resolve_method_config(plugin, load_protocol("synth-15-5"))
    assert config_schema(plugin, method_file)["SOLVER.MAX_ITER"]["default"] == 600
    assert _schema_path(plugin, method_file) != _schema_path(plugin)
    assert schema["SOLVER.BASE_LR"]["type"] == "float" and schema["SOLVER.MAX_ITER"]["type"] == "int"
    assert any(k.startswith("MODEL.ZEGCLIP.") for k in schema) and "ZSS.N_BOOT" in schema
    assert json.loads(_schema_path(plugin).read_text()) == schema


CASES = {
    "run-method": ["run", "--method", "chimerra", "--protocol", "synth-15-5"],
    "run-key": ["run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.MAX_ITERR", "3"],
    "run-value": ["run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.BASE_LR", "abc"],
    "ablate-key": ["ablate", "--method", "chimera", "--protocol", "synth-15-5", "--grid", "SOLVER.MAX_ITERR=1,2",
                   "--dry-run"],
    "ablate-method": ["ablate", "--method", "chimerra", "--protocol", "synth-15-5", "--grid", "SOLVER.MAX_ITER=1,2",
                      "--dry-run"],
    # issue #25: a key nothing reads is refused as fast as a typo (the same list as the real build)
    "run-refused": ["run", "--method", "chimera", "--protocol", "synth-15-5", "TEST.EVAL_PERIOD", "100"],
    "run-switched-off": ["run", "--method", "chimera", "--protocol", "synth-15-5", "SOLVER.MOMENTUM", "0.5"],
    "ablate-refused": ["ablate", "--method", "chimera", "--protocol", "synth-15-5", "--grid",
                       "SOLVER.REFERENCE_WORLD_SIZE=4,8", "--dry-run"],
}
EXPECTED = {"run-method": "did you mean 'chimera'", "run-key": "did you mean SOLVER.MAX_ITER?",
            "run-value": "SOLVER.BASE_LR expects float", "ablate-key": "did you mean SOLVER.MAX_ITER?",
            "ablate-method": "did you mean 'chimera'",
            "run-refused": "TEST.EVAL_PERIOD is not used by zss-bench run; the run evaluates once",
            "run-switched-off": "SOLVER.MOMENTUM is not used while SOLVER.OPTIMIZER is ADAMW",
            "ablate-refused": "SOLVER.REFERENCE_WORLD_SIZE is not used by zss-bench run; ZSSTrainer never rescales"}


def test_usage_errors_never_import_torch(tmp_path):
    """With the method's schema cached (any earlier run of that method caches it), a typo is refused by a
    process that never imports torch or detectron2: the cost of a usage error is Python's start-up."""
    from zss_bench.engine.preflight import config_schema
    from zss_bench.plugins import get_method

    from zss_bench.engine.config import resolve_method_config
    from zss_bench.protocol import load_protocol

    plugin = get_method("chimera")  # the schema lands in the autouse fixture's cache, inherited by the children
    config_schema(plugin, resolve_method_config(plugin, load_protocol("synth-15-5")))
    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n  - method: chimera\n    opts: [SOLVER.MAX_ITERR, 3]\n")
    cases = {**CASES, "grid-key": ["grid", str(grid), "--dry-run"]}
    expected = {**EXPECTED, "grid-key": "cell chimera [default] seed 0: unknown config key SOLVER.MAX_ITERR"}
    probe = ("import json, sys; from zss_bench.cli import main; rc = main(json.loads(sys.argv[1])); "
             "print(json.dumps({'rc': rc, 'heavy': sorted(m for m in ('torch', 'detectron2') if m in sys.modules)}))")
    for name, argv in cases.items():
        proc = subprocess.run([sys.executable, "-c", probe, json.dumps(argv)], capture_output=True, text=True,
                              timeout=120, env={**os.environ}, cwd=tmp_path)
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result == {"rc": 2, "heavy": []}, (name, result, proc.stderr)
        assert expected[name] in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, (name, proc.stderr)


# --- smaller ------------------------------------------------------------------------------------

def test_methods_lists_each_readme(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    rc, out, err = run_cli(capsys, "methods")
    assert rc == 0 and "README: methods/chimera/README.md" in out and "README: methods/zegclip/README.md" in out
    rc, out, err = run_cli(capsys, "methods", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert all(r["readme"] and (REPO / r["readme"]).is_file() for r in rows.values())


def test_prepare_workers_default_fits_the_machine():
    from zss_bench.cli import build_parser

    args = build_parser().parse_args(["prepare", "synth"])
    assert 1 <= args.workers <= min(4, os.cpu_count() or 1)


@pytest.mark.parametrize("argv", [
    ["evaluate", "--protocol", "synth-15-5", "--pred-dir", "p", "--gt-dir", "g", "--n-boot", "-5"],
    ["leaderboard", "--n-boot", "0"], ["compare", "a", "b", "--n-boot", "-1"], ["report", "--out", "x", "--n-boot", "0"],
    ["reproduce", "r", "--n-boot", "-3"]])
def test_negative_bootstrap_counts_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as info:
        run_cli(capsys, *argv)
    assert info.value.code == 2 and "--n-boot: expected a whole number" in capsys.readouterr().err
