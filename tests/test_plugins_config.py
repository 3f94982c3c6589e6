"""Method plugins and run configs: the method config file a run uses (by protocol name, dataset or
--config), what enters the config hash, the protocol's ignore label, plugin name clashes, the
meta-architecture check, `zss-bench methods` with a broken plugin, and grid-wide overrides."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import run_cli
from run_helpers import prepare_synth, synth_world

REPO = Path(__file__).resolve().parents[1]


def _cfg(method: str = "seen-only", protocol="synth-15-5", **kw):
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    proto = load_protocol(protocol) if isinstance(protocol, (str, Path)) else protocol
    return build_run_config(get_method(method), proto, seed=0, output_dir="", **kw)


def _my_synth(tmp_path) -> Path:
    """A user's own synthetic protocol: synth-15-5 under another name (the file stem must match)."""
    text = (REPO / "protocols" / "synth-15-5.yaml").read_text()
    assert "name: synth-15-5" in text
    path = tmp_path / "my-synth.yaml"
    path.write_text(text.replace("name: synth-15-5", "name: my-synth", 1))
    return path


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    return synth_world(tmp_path_factory.mktemp("world"), seed=2, n_train=8, n_val=4)


@pytest.fixture
def prepared(small_world, isolated_cache):
    return prepare_synth(small_world)


# --- which method config file ------------------------------------------------------------------

def test_custom_synth_protocol_picks_the_methods_synth_yaml_not_default(tmp_path):
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    proto = load_protocol(_my_synth(tmp_path))
    assert proto.name == "my-synth" and proto.dataset == "synth"
    for method in ("chimera", "seen-only"):
        plugin = get_method(method)
        assert (plugin.config_dir / "default.yaml").is_file()  # there is a default it must not fall back to
        assert plugin.config_file(proto) == plugin.config_dir / "synth.yaml"
        assert plugin.config_file(load_protocol("voc-15-5")) == plugin.config_dir / "default.yaml"
    cfg = _cfg("chimera", proto)
    assert cfg.ZSS.CONFIG_FILE.endswith("chimera/configs/synth.yaml")
    assert Path(cfg.ZSS.PROTOCOL_FILE) == proto.path and cfg.ZSS.PROTOCOL == "my-synth"
    assert cfg.INPUT.MIN_SIZE_TEST == _cfg("chimera").INPUT.MIN_SIZE_TEST  # the synthetic body, not the R-101 one


def test_protocol_name_file_wins_over_the_dataset_file(tmp_path):
    from zss_bench.plugins import MethodConfigError, MethodPlugin
    from zss_bench.protocol import load_protocol

    configs = tmp_path / "configs"
    configs.mkdir()
    for name in ("my-synth.yaml", "synth.yaml", "default.yaml"):
        (configs / name).write_text("VERSION: 2\n")
    plugin = MethodPlugin(name="x", add_config=lambda cfg: None, config_dir=configs)
    proto = load_protocol(_my_synth(tmp_path))
    assert plugin.config_file(proto) == configs / "my-synth.yaml"
    (configs / "my-synth.yaml").unlink()
    assert plugin.config_file(proto) == configs / "synth.yaml"
    (configs / "synth.yaml").unlink()
    assert plugin.config_file(proto) == configs / "default.yaml"
    (configs / "default.yaml").unlink()
    with pytest.raises(MethodConfigError, match=r"no config for protocol my-synth .*pass --config FILE"):
        plugin.config_file(proto)


def test_user_config_file_is_used(tmp_path):
    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_BASE_: {REPO / 'methods' / 'seen_only' / 'configs' / 'synth.yaml'}\nSOLVER:\n  MAX_ITER: 7\n")
    cfg = _cfg(config_file=str(mine))
    assert cfg.SOLVER.MAX_ITER == 7 and _cfg().SOLVER.MAX_ITER != 7
    assert cfg.ZSS.CONFIG_FILE == str(mine.resolve())
    assert cfg.MODEL.META_ARCHITECTURE == "SeenOnlySeg"


def test_missing_user_config_file_is_a_one_line_error_naming_it(tmp_path, capsys):
    from zss_bench.engine.config import ConfigOverrideError

    gone = tmp_path / "nope.yaml"
    with pytest.raises(ConfigOverrideError, match="nope.yaml: no such file"):
        _cfg(config_file=str(gone))
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--config", str(gone),
                           "--results", str(tmp_path / "results"))
    assert rc == 2 and "Traceback" not in err
    assert err.strip().splitlines() == [f"zss-bench run: error: --config {gone}: no such file (a method config "
                                        f"YAML, e.g. {REPO / 'methods' / 'seen_only' / 'configs'}/default.yaml)"]
    assert "method config:" not in out


@pytest.mark.parametrize("text, message", [
    ("SOLVER:\n  MAX_ITR: 3\n", "Non-existent config key: SOLVER.MAX_ITR"),
    ("SOLVER:\n  MAX_ITER: abc\n", "for config key: SOLVER.MAX_ITER"),
    ("SOLVER: [\n", "while parsing"),
    # issue #25: a key nothing reads, set by a method config, is the file's error (a default restated is not)
    ("TEST:\n  EVAL_PERIOD: 100\n", "TEST.EVAL_PERIOD is not used by zss-bench run; the run evaluates once"),
    ("SOLVER:\n  GRAD_CLIP: 1.0\n", "SOLVER.GRAD_CLIP is not used by zss-bench run; gradient clipping is detectron2's"),
])
def test_a_broken_user_config_file_is_a_one_line_error_naming_it(tmp_path, text, message):
    from zss_bench.engine.config import ConfigOverrideError

    mine = tmp_path / "mine.yaml"
    mine.write_text(text)
    with pytest.raises(ConfigOverrideError, match=f"^method config {mine.resolve()}: ") as info:
        _cfg(config_file=str(mine))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_run_says_which_method_config_it_uses_before_it_starts(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    # voc-15-5 without a dataset root fails right after resolving: the line is printed before that
    rc, out, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", "voc-15-5",
                           "--results", str(tmp_path / "results"))
    assert rc == 2 and "--data-root" in err.splitlines()[-1]
    assert out.splitlines() == ["method config: methods/chimera/configs/default.yaml (picked for protocol voc-15-5)"]
    mine = tmp_path / "mine.yaml"
    mine.write_text("VERSION: 2\n")
    rc, out, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", "voc-15-5", "--config", str(mine),
                           "--results", str(tmp_path / "results"))
    assert rc == 2 and out.splitlines() == [f"method config: {mine.resolve()} (--config)"]
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", str(_my_synth(tmp_path)),
                           "--data-root", str(tmp_path / "no-world"), "--results", str(tmp_path / "results"))
    assert out.splitlines()[0] == "method config: methods/seen_only/configs/synth.yaml (picked for protocol my-synth)"


def test_run_with_config_flag_records_the_users_file(prepared, tmp_path, capsys):
    from zss_bench.records import load_run
    from run_helpers import tiny

    mine = tmp_path / "mine.yaml"
    mine.write_text(f"_BASE_: {REPO / 'methods' / 'seen_only' / 'configs' / 'synth.yaml'}\nSOLVER:\n  BASE_LR: 0.0005\n")
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--config", str(mine),
                           "--data-root", str(prepared), "--results", str(tmp_path / "results"),
                           "--work-dir", str(tmp_path / "work"), *tiny(1))
    assert rc == 0, err
    assert out.splitlines()[0] == f"method config: {mine.resolve()} (--config)"
    rec = load_run(Path(out.strip().splitlines()[-1].split("record: ")[1])).record
    assert rec["method"]["config"]["SOLVER"]["BASE_LR"] == 0.0005
    assert rec["method"]["config"]["ZSS"]["CONFIG_FILE"] == str(mine.resolve())


# --- config hash and the protocol's ignore label -----------------------------------------------

def test_model_weights_do_not_enter_the_config_hash():
    from zss_bench.engine.config import config_hash

    a = _cfg(opts=["MODEL.WEIGHTS", "/somewhere/model_final.pth"])
    b = _cfg(opts=["MODEL.WEIGHTS", "/elsewhere/other.pth"])
    assert a.MODEL.WEIGHTS != b.MODEL.WEIGHTS and config_hash(a) == config_hash(b) == config_hash(_cfg())
    assert a.ZSS.LABEL == "default"  # nor the label
    assert config_hash(_cfg(opts=["SOLVER.MAX_ITER", "5"])) != config_hash(a)  # a real choice does


def test_ignore_label_comes_from_the_protocol():
    from zss_bench.engine.config import ConfigOverrideError
    from zss_bench.protocol import load_protocol

    assert _cfg().MODEL.SEM_SEG_HEAD.IGNORE_VALUE == load_protocol("synth-15-5").ignore_label == 255
    assert _cfg(opts=["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "255"]).MODEL.SEM_SEG_HEAD.IGNORE_VALUE == 255
    with pytest.raises(ConfigOverrideError, match=r"IGNORE_VALUE 0 contradicts the protocol's ignore_label 255"):
        _cfg(opts=["MODEL.SEM_SEG_HEAD.IGNORE_VALUE", "0"])


# --- the registry ---------------------------------------------------------------------------

def _fake_entry_points(monkeypatch, **eps):
    import zss_bench.plugins as plugins

    found = {name: metadata.EntryPoint(name=name, value=value, group=plugins.ENTRY_POINT_GROUP)
             for name, value in eps.items()}
    monkeypatch.setattr(plugins, "_entry_points", lambda: found)


def test_builtin_and_entry_point_of_one_name_is_an_error_naming_both(monkeypatch):
    from zss_bench.plugins import PluginError, get_method

    _fake_entry_points(monkeypatch, chimera="someones_chimera")
    with pytest.raises(PluginError, match=r"'chimera' is defined twice: built-in zss_bench\.methods\.chimera and "
                                          r"entry point zss_bench\.methods 'chimera = someones_chimera'"):
        get_method("chimera")
    assert get_method("seen-only").name == "seen-only"  # the clash breaks that name only


def test_register_method_refuses_a_taken_name_unless_replace(monkeypatch):
    from zss_bench.plugins import MethodPlugin, PluginError, get_method, register_method, unregister_method

    plugin = MethodPlugin(name="chimera", add_config=lambda cfg: None, config_dir=Path("."))
    with pytest.raises(PluginError, match=r"'chimera' already exists \(built-in zss_bench\.methods\.chimera\).*replace=True"):
        register_method(plugin)
    assert get_method("chimera") is not plugin
    other = MethodPlugin(name="scratch-method", add_config=lambda cfg: None, config_dir=Path("."))
    register_method(other)
    try:
        with pytest.raises(PluginError, match="registered at run time"):
            register_method(MethodPlugin(name="scratch-method", add_config=lambda cfg: None, config_dir=Path("/")))
        register_method(plugin, replace=True)
        assert get_method("chimera") is plugin and get_method("scratch-method") is other
    finally:
        unregister_method("chimera")
        unregister_method("scratch-method")
    assert get_method("chimera") is not plugin


def test_methods_lists_a_broken_plugin_with_its_error(monkeypatch, capsys):
    import zss_bench.plugins as plugins

    _fake_entry_points(monkeypatch, ghost="no_such_zss_plugin_module", chimera="clashing_module")
    rc, out, err = run_cli(capsys, "methods")
    assert rc == 0, err
    lines = {line.split()[0]: line for line in out.splitlines()}
    assert "BROKEN: ModuleNotFoundError: No module named 'no_such_zss_plugin_module'" in lines["ghost"]
    assert "BROKEN: PluginError: method 'chimera' is defined twice" in lines["chimera"]
    assert "trains" in lines["seen-only"] and "no CLIP" in lines["seen-only"] and "text classifier: none" in lines["seen-only"]
    rows = {r["name"]: r for r in json.loads(run_cli(capsys, "methods", "--json")[1])}
    assert rows["ghost"] == {"name": "ghost", "error": "ModuleNotFoundError: No module named 'no_such_zss_plugin_module'"}
    assert rows["seen-only"]["meta_architecture"] == "SeenOnlySeg" and rows["seen-only"]["uses_clip"] is False
    monkeypatch.setattr(plugins, "_builtin_modules", lambda: {})
    rc, out, _ = run_cli(capsys, "methods")
    assert rc == 1 and "BROKEN" in out  # nothing works: say so in the exit status


def test_shipped_plugins_declare_what_they_are():
    from zss_bench.plugins import get_method

    chimera, seen_only = get_method("chimera"), get_method("seen-only")
    assert (chimera.trains, chimera.uses_clip, chimera.text_classifier, chimera.train_mapper,
            chimera.meta_architecture) == (True, True, "fixed", "semantic", "ChimeraSeg")
    assert (seen_only.trains, seen_only.uses_clip, seen_only.text_classifier,
            seen_only.meta_architecture) == (True, False, "none", "SeenOnlySeg")
    for plugin in (chimera, seen_only):  # the declared name is what its configs build
        assert _cfg(plugin.name).MODEL.META_ARCHITECTURE == plugin.meta_architecture


def test_meta_architecture_must_subclass_zss_segmentor(tmp_path):
    from zss_bench.plugins import MetaArchitectureError

    with pytest.raises(TypeError, match=r"method seen-only: meta-architecture SemanticSegmentor does not subclass "
                                        r"zss_bench's ZSSSegmentor"):
        _cfg(opts=["MODEL.META_ARCHITECTURE", "SemanticSegmentor"])  # stock detectron2: registered, wrong base
    with pytest.raises(MetaArchitectureError, match=r"meta-architecture NoSuchSeg is not registered"):
        _cfg(opts=["MODEL.META_ARCHITECTURE", "NoSuchSeg"])


def test_wrong_meta_architecture_is_a_one_line_cli_error(prepared, tmp_path, capsys, monkeypatch):
    import zss_bench.engine.trainer as trainer

    monkeypatch.setattr(trainer.ZSSTrainer, "__init__", lambda *a, **k: pytest.fail("a model was built"))
    rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", "--data-root",
                           str(prepared), "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / "o"),
                           "MODEL.META_ARCHITECTURE", "SemanticSegmentor")
    assert rc == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith("zss-bench run: error: method seen-only: meta-architecture "
                                           "SemanticSegmentor does not subclass zss_bench's ZSSSegmentor")


def test_plugin_packages_import_their_own_modules_relatively():
    for init in sorted((REPO / "methods").glob("*/__init__.py")):
        for name in ("__init__.py", "config.py"):
            text = (init.parent / name).read_text()
            assert "zss_bench.methods" not in text.replace('"""', ""), f"{init.parent.name}/{name}: use `from .x import`"


def test_a_plugin_works_as_its_own_top_level_package(tmp_path):
    """seen_only copied out as `my_seen_only` (a third-party package): its add_config registers its
    own model from its own modules, in a fresh process (the registry takes each name once)."""
    import shutil

    shutil.copytree(REPO / "methods" / "seen_only", tmp_path / "my_seen_only",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import my_seen_only as m; "
            "from detectron2.config import get_cfg; from zss_bench.engine.config import add_zss_config; "
            "cfg = get_cfg(); add_zss_config(cfg); m.METHOD.add_config(cfg); "
            "from detectron2.modeling import META_ARCH_REGISTRY; "
            "assert META_ARCH_REGISTRY.get('SeenOnlySeg').__module__ == 'my_seen_only.meta_arch'; "
            "assert m.SeenOnlySeg.__module__ == 'my_seen_only.meta_arch'; "
            "assert 'zss_bench.methods.seen_only' not in sys.modules, 'imported the built-in copy'; "
            "print('ok', cfg.MODEL.SEEN_ONLY.LOSS_WEIGHT)")
    proc = subprocess.run([sys.executable, "-c", "import zss_bench.detectron2_compat; " + code, str(tmp_path)],
                          capture_output=True, text=True, timeout=300, env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "ok 1.0"


# --- grid-wide overrides are part of a cell's identity ------------------------------------------

def test_grid_extra_overrides_extend_the_label():
    from zss_bench.engine.grid import Cell, GridError, with_extra_overrides

    cells = [Cell("chimera", 0, "default"), Cell("chimera", 0, "+prior", ["A.B", "1"], eval_of="default")]
    short = with_extra_overrides(cells, ["SOLVER.MAX_ITER", "20", "ZSS.N_BOOT", "50"])
    assert [(c.label, c.eval_of) for c in short] == [("default+MAX_ITER=20", None),
                                                     ("+prior+MAX_ITER=20", "default+MAX_ITER=20")]
    assert short[1].opts == ["A.B", "1"]
    # bookkeeping keys and the CLIP spec (identity through its weights hash) leave the label alone
    same = with_extra_overrides(cells, ["ZSS.N_BOOT", "50", "MODEL.DEVICE", "cpu", "ZSS.CLIP", "zss-micro-vit:random"])
    assert [c.label for c in same] == ["default", "+prior"]
    with pytest.raises(GridError, match="ZSS.LABEL"):
        with_extra_overrides(cells, ["ZSS.LABEL", "x"])
    with pytest.raises(GridError, match="KEY VALUE"):
        with_extra_overrides(cells, ["SOLVER.MAX_ITER"])


def test_grid_with_opts_does_not_mark_the_plain_cell_done(prepared, tmp_path, isolated_cache, capsys):
    from run_helpers import TINY
    from zss_bench.engine.grid import Cell, _done, load_records, run_grid
    from zss_bench.protocol import load_protocol
    from zss_bench.records.store import iter_runs

    grid = tmp_path / "grid.yaml"
    grid.write_text("protocol: synth-15-5\ncells:\n  - {method: seen-only, label: default, seeds: [0]}\n")
    args = dict(results=str(tmp_path / "results"), work_dir=str(tmp_path / "work"), data_root=str(prepared))
    assert run_grid(grid, extra=[*TINY, "SOLVER.MAX_ITER", "2"], **args) == 0
    (run,) = list(iter_runs(tmp_path / "results", on_skip=lambda m: None))
    label = run.record["method"]["label"]
    assert label != "default" and label.startswith("default+") and label.endswith("MAX_ITER=2")
    assert run.record["method"]["config"]["SOLVER"]["MAX_ITER"] == 2
    phash = load_protocol("synth-15-5").content_hash
    assert not _done(load_records(args["results"]), "synth-15-5", phash, Cell("seen-only", 0, "default"))
    capsys.readouterr()
    assert run_grid(grid, dry_run=True, **args) == 0  # the full cell is still due
    assert "seen-only [default] seed 0: due (no record yet)" in capsys.readouterr().out
    assert run_grid(grid, extra=[*TINY, "SOLVER.MAX_ITER", "2"], dry_run=True, **args) == 0
    assert "record exists, skipped" in capsys.readouterr().out  # the shortened cell itself is done
