"""Issue #25, part 3: every config key a user can set either takes effect in this engine or setting it is
refused in one line saying why (``zss_bench/engine/unused_keys.py`` holds the audit's result as data).

Checked here: the refused keys exist; overriding one fails the same way in the fast pre-torch check and in
the real config build; a method config file that sets one is refused naming the file; no committed config
or grid uses one; a real run reads every accepted key (or the key is documented as conditional), and the
keys it reads but refuses change nothing; SOLVER.GRAD_CLIP is gone in favour of SOLVER.CLIP_GRADIENTS, which
clips; keys that other keys switch off (SOLVER.MOMENTUM under AdamW) are refused only then."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Read by detectron2 code the engine runs, yet without effect here: why they are refused anyway.
READ_BUT_INEFFECTIVE = {
    "INPUT.MASK_FORMAT": "the test DatasetMapper reads it; dataset dicts have no instance annotations",
    "MODEL.MASK_ON": "the test DatasetMapper reads it; dataset dicts have no instance annotations",
    "MODEL.KEYPOINT_ON": "the test DatasetMapper reads it; dataset dicts have no instance annotations",
    "MODEL.LOAD_PROPOSALS": "the test loader reads it; True would look for proposal files that do not exist",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": "DeepLabV3PlusHead.from_config reads it; the body builds it decoder-only",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": "DeepLabV3PlusHead.from_config reads it; the body builds it decoder-only",
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": "DeepLabV3PlusHead.from_config reads it; the body builds it decoder-only",
    "TEST.EXPECTED_RESULTS": "DefaultTrainer.train reads it to verify EvalHook results; there is no EvalHook",
}
# Accepted keys a plain seen-only synth run does not read, and the condition under which code reads them.
READ_BY_OTHER_PATHS = {
    "ZSS.CLIP": "the CLIP of methods that use one (seen-only does not)",
}


def _plugins():
    from zss_bench.plugins import get_method, list_methods

    return [get_method(name) for name in list_methods()]


def _all_keys() -> dict:
    """{KEY: default} of every method's config (detectron2 + zss-bench + DeepLab + the method's keys)."""
    import zss_bench.detectron2_compat  # noqa: F401
    from detectron2.config import get_cfg

    from zss_bench.engine.config import add_zss_config, flat_keys

    keys = {}
    for plugin in _plugins():
        cfg = get_cfg()
        add_zss_config(cfg)
        plugin.add_config(cfg)
        keys.update(flat_keys(cfg))
    return keys


def _shared_keys() -> dict:
    """The keys every method has (detectron2's, zss-bench's and the body's DeepLab keys)."""
    import zss_bench.detectron2_compat  # noqa: F401
    from detectron2.config import get_cfg

    from zss_bench.engine.config import add_zss_config, flat_keys
    from zss_bench.modeling.body import add_body_config

    cfg = get_cfg()
    add_zss_config(cfg)
    add_body_config(cfg)
    return flat_keys(cfg)


def _cfg(opts=(), method="seen-only", **kw):
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    return build_run_config(get_method(method), load_protocol("synth-15-5"), seed=0, output_dir="", opts=list(opts),
                            **kw)


def _fast(opts, method="seen-only"):
    """The pre-torch check of ``zss-bench run`` (against the method's synth config file, as run does)."""
    from zss_bench.engine.preflight import check_run_request

    check_run_request(method, "synth-15-5", opts=list(opts))


# --- the table itself ---------------------------------------------------------------------------

def test_every_refused_key_exists_in_the_config():
    import zss_bench.detectron2_compat  # noqa: F401
    from detectron2.config import get_cfg

    from zss_bench.engine.config import flat_keys
    from zss_bench.engine.unused_keys import ONLY_WITH, SET_BY_RUN, UNUSED, UNUSED_BUT_COMMITTED

    keys, d2 = _all_keys(), flat_keys(get_cfg())
    nodes = {".".join(k.split(".")[:n]) for k in keys for n in range(1, k.count(".") + 1)}
    for entry in UNUSED:
        assert entry in keys or entry in nodes, f"UNUSED names {entry}, which no config has"
    for entry in [*SET_BY_RUN, *ONLY_WITH, *UNUSED_BUT_COMMITTED]:
        assert entry in keys, entry
    for conditions, _ in ONLY_WITH.values():
        assert all(decider in keys for decider, _ in conditions)
    # the detectron2 keys of the issue, by their detectron2 names
    assert {"CUDNN_BENCHMARK", "SOLVER.AMP.ENABLED", "MODEL.ROI_HEADS.NUM_CLASSES", "VIS_PERIOD"} <= set(d2)
    # every refused key not of detectron2 itself is zss-bench's or the DeepLab project's
    ours = {k for k in keys if k not in d2 and any(k == e or k.startswith(e + ".") for e in UNUSED)}
    assert ours == {"SOLVER.GRAD_CLIP", "ZSS.PROGRESS", "SOLVER.POLY_LR_POWER", "SOLVER.POLY_LR_CONSTANT_ENDING",
                    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA", "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES",
                    "MODEL.SEM_SEG_HEAD.LOSS_TYPE"}


def test_refused_keys_stay_in_the_config_so_hashes_do_not_move():
    """Refusing is about *setting* a key: the node keeps it at its default (a removed key would change the
    config hash of every committed record and make its grid cells due again)."""
    cfg = _cfg()
    assert cfg.SOLVER.GRAD_CLIP == 0.0 and cfg.CUDNN_BENCHMARK is False and cfg.SOLVER.AMP.ENABLED is False
    assert cfg.ZSS.PROGRESS is True and cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80


# --- overrides ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key, value, why", [
    ("SOLVER.REFERENCE_WORLD_SIZE", "8",
     "SOLVER.REFERENCE_WORLD_SIZE is not used by zss-bench run; ZSSTrainer never rescales the batch or LR"),
    ("MODEL.ROI_HEADS.NUM_CLASSES", "3", "MODEL.ROI_HEADS.NUM_CLASSES is not used by zss-bench run; zss-bench models "
                                         "are semantic segmentors"),
    ("SOLVER.GRAD_CLIP", "1.0", "SOLVER.GRAD_CLIP is not used by zss-bench run; gradient clipping is detectron2's, "
                                "applied by the optimizer: SOLVER.CLIP_GRADIENTS.ENABLED True "
                                "SOLVER.CLIP_GRADIENTS.CLIP_TYPE norm SOLVER.CLIP_GRADIENTS.CLIP_VALUE X"),
    ("TEST.EVAL_PERIOD", "100", "TEST.EVAL_PERIOD is not used by zss-bench run; the run evaluates once"),
    ("MODEL.SEM_SEG_HEAD.NUM_CLASSES", "20", "classes come from the protocol"),
    ("ZSS.PROGRESS", "False", "ZSS.PROGRESS is not used by zss-bench run"),
    ("SEED", "3", "SEED is set by zss-bench run from --seed"),
    ("DATASETS.TRAIN", "('x',)", "DATASETS.TRAIN is set by zss-bench run from --protocol"),
    ("ZSS.DATA_ROOT", "/data", "ZSS.DATA_ROOT is set by zss-bench run from --data-root"),
])
def test_a_refused_override_is_one_line_in_both_checks(key, value, why):
    """The pre-torch check (``preflight``) and the real build (``apply_overrides``) refuse with one message."""
    from zss_bench.engine.config import ConfigOverrideError

    with pytest.raises(ConfigOverrideError) as fast:
        _fast(["SOLVER.MAX_ITER", "5", key, value])
    with pytest.raises(ConfigOverrideError) as real:
        _cfg(["SOLVER.MAX_ITER", "5", key, value])
    assert str(fast.value) == str(real.value) and why in str(real.value) and "\n" not in str(real.value)
    assert str(real.value).startswith(key)


def test_a_refused_key_is_never_the_did_you_mean_suggestion():
    from zss_bench.engine.config import ConfigOverrideError

    with pytest.raises(ConfigOverrideError, match="unknown config key VIS_PERIODS") as info:
        _cfg(["VIS_PERIODS", "5"])
    assert "did you mean VIS_PERIOD" not in str(info.value)


@pytest.mark.parametrize("opts, message", [
    (["SOLVER.MOMENTUM", "0.5"], "SOLVER.MOMENTUM is not used while SOLVER.OPTIMIZER is ADAMW (AdamW has no momentum "
                                 "term); set SOLVER.OPTIMIZER SGD as well"),
    (["SOLVER.STEPS", "(5,)"], "SOLVER.STEPS is not used while SOLVER.LR_SCHEDULER_NAME is WarmupCosineLR"),
    (["SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.1"], "not used while SOLVER.CLIP_GRADIENTS.ENABLED is False"),
    (["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.NORM_TYPE", "1.0"],
     "SOLVER.CLIP_GRADIENTS.NORM_TYPE is not used while SOLVER.CLIP_GRADIENTS.CLIP_TYPE is value"),
    (["INPUT.CROP.SIZE", "(32, 32)"], "INPUT.CROP.SIZE is not used while INPUT.CROP.ENABLED is False"),
    (["MODEL.RESNETS.RES5_MULTI_GRID", "[1, 2, 4]"], "while MODEL.BACKBONE.NAME is build_resnet_backbone"),
    (["MODEL.FPN.OUT_CHANNELS", "64"], "only an FPN backbone reads it"),
])
def test_a_key_that_other_keys_switch_off_is_refused_only_then(opts, message):
    from zss_bench.engine.config import ConfigOverrideError

    with pytest.raises(ConfigOverrideError, match=re.escape(message)) as fast:
        _fast(opts)
    with pytest.raises(ConfigOverrideError) as real:
        _cfg(opts)
    assert str(fast.value) == str(real.value)


def test_switched_on_keys_take_effect_in_the_optimizer_and_the_schedule():
    """SOLVER keys that the audit keeps are the ones the trainer's builders read: momentum under SGD, steps and
    gamma under the multi-step schedule, the base LR and the warm-up."""
    import torch

    from zss_bench.engine.trainer import ZSSTrainer

    opts = ["SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.5", "SOLVER.NESTEROV", "True", "SOLVER.BASE_LR", "0.2",
            "SOLVER.LR_SCHEDULER_NAME", "WarmupMultiStepLR", "SOLVER.STEPS", "(4,)", "SOLVER.GAMMA", "0.25",
            "SOLVER.WARMUP_ITERS", "0", "SOLVER.MAX_ITER", "10"]
    cfg = _cfg(opts)
    model = torch.nn.Linear(3, 2)
    opt = ZSSTrainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.SGD)
    assert {(g["momentum"], g["nesterov"]) for g in opt.param_groups} == {(0.5, True)}
    sched = ZSSTrainer.build_lr_scheduler(cfg, opt)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.2) and lrs[5] == pytest.approx(0.05)


# --- SOLVER.GRAD_CLIP -> SOLVER.CLIP_GRADIENTS ----------------------------------------------------

def _one_sgd_step(opts) -> list[float]:
    """Norm of each parameter's update after one step of plain SGD (lr 1) on a loss with large gradients."""
    import torch

    from zss_bench.engine.trainer import ZSSTrainer

    cfg = _cfg(["SOLVER.OPTIMIZER", "SGD", "SOLVER.MOMENTUM", "0.0", "SOLVER.BASE_LR", "1.0",
                "SOLVER.WEIGHT_DECAY", "0.0", *opts])
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in model.parameters()]
    opt = ZSSTrainer.build_optimizer(cfg, model)
    (model(torch.randn(8, 4)) * 100).pow(2).sum().backward()
    opt.step()
    return [float((p.detach() - b).norm()) for p, b in zip(model.parameters(), before)]


def test_clip_gradients_takes_effect_where_grad_clip_did_nothing():
    plain = _one_sgd_step([])
    clipped = _one_sgd_step(["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_TYPE", "norm",
                             "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.01"])
    assert min(plain) > 1.0  # without clipping the step is huge
    assert clipped == pytest.approx([0.01, 0.01], rel=1e-4)  # each parameter's gradient clipped to norm 0.01
    by_value = _one_sgd_step(["SOLVER.CLIP_GRADIENTS.ENABLED", "True", "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.001"])
    assert max(by_value) < 0.01  # value clipping (detectron2's default type): every entry within +-0.001


# --- method config files -----------------------------------------------------------------------

def test_a_method_config_file_setting_a_refused_key_is_refused_naming_the_file(tmp_path):
    from zss_bench.engine.config import ConfigOverrideError
    from zss_bench.engine.preflight import check_run_request

    mine = tmp_path / "mine.yaml"
    base = REPO / "methods" / "_base" / "body-synth.yaml"
    mine.write_text(f"_BASE_: {base}\nMODEL:\n  META_ARCHITECTURE: SeenOnlySeg\nTEST:\n  EVAL_PERIOD: 100\n")
    expected = (f"method config {mine.resolve()}: TEST.EVAL_PERIOD is not used by zss-bench run; the run evaluates "
                "once")
    with pytest.raises(ConfigOverrideError) as real:
        _cfg(config_file=str(mine))
    assert str(real.value).startswith(expected) and "\n" not in str(real.value)
    with pytest.raises(ConfigOverrideError) as fast:
        check_run_request("seen-only", "synth-15-5", opts=["SOLVER.MAX_ITER", "3"], config_file=str(mine))
    assert str(fast.value) == str(real.value)


def test_a_file_that_restates_defaults_or_is_a_runs_own_config_is_fine(tmp_path):
    """Files may hold refused keys at their defaults (VERSION: 2, TEST.EVAL_PERIOD: 0) and the keys a run sets
    itself: a run's own config.yaml, used as --config, builds the same configuration."""
    from zss_bench.engine.config import config_hash

    cfg = _cfg(["SOLVER.MAX_ITER", "7"])
    dumped = tmp_path / "config.yaml"
    dumped.write_text(cfg.dump())
    again = _cfg(config_file=str(dumped))
    assert config_hash(again) == config_hash(cfg) and again.SOLVER.MAX_ITER == 7


def test_committed_method_configs_and_grids_set_no_refused_key():
    import yaml

    from zss_bench.engine.config import flat_keys
    from zss_bench.engine.unused_keys import ONLY_WITH, UNUSED_BUT_COMMITTED, refusal

    committed = set()
    for plugin in _plugins():
        for path in sorted(Path(plugin.config_dir).glob("*.yaml")):
            cfg = _cfg(method=plugin.name, config_file=str(path))  # raises on a refused key
            committed.update(k for k, v in flat_keys(cfg).items() if k in UNUSED_BUT_COMMITTED)
    # a key nothing reads is accepted only while a committed file sets it: then it belongs in UNUSED
    assert committed == set(UNUSED_BUT_COMMITTED)
    for path in sorted((REPO / "grids").glob("*.yaml")):
        for cell in yaml.safe_load(path.read_text())["cells"]:
            keys = [str(k) for k in (cell.get("opts") or [])[::2]] + list(cell.get("sweep") or {})
            for key in keys:
                assert refusal(key) is None and key not in ONLY_WITH, (path, key)


# --- every accepted key is read ------------------------------------------------------------------

def test_a_plain_run_reads_every_accepted_key(tmp_path, monkeypatch):
    """A real tiny run (seen-only on a generated world: train, checkpoint, evaluate) with every config read
    recorded: each key shared by all methods that is accepted is read, unless it is switched off by another key
    (``ONLY_WITH``), set only in committed files (``UNUSED_BUT_COMMITTED``) or read by other methods; and each
    refused key the run reads is one the run sets itself or one documented here as read without effect."""
    import weakref

    from yacs.config import CfgNode

    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.engine.unused_keys import ONLY_WITH, SET_BY_RUN, UNUSED_BUT_COMMITTED, is_refused

    world = synth_world(tmp_path / "world", seed=1, n_train=8, n_val=4)
    prefix, read, tracing = {}, set(), []
    real_getattr, real_freeze = CfgNode.__getattr__, CfgNode.freeze

    def index(node, at=""):
        prefix[id(node)] = at
        weakref.finalize(node, prefix.pop, id(node), None)
        for key, value in dict.items(node):
            if isinstance(value, CfgNode):
                index(value, f"{at}{key}.")

    def getattr_(self, name):
        value = real_getattr(self, name)
        if tracing and id(self) in prefix:
            read.add(prefix[id(self)] + name)
        return value

    def freeze(self):
        real_freeze(self)
        if "ZSS" in self and "MODEL" in self:  # a run's config, frozen by build_run_config
            index(self)
            tracing.append(True)

    monkeypatch.setattr(CfgNode, "__getattr__", getattr_)
    monkeypatch.setattr(CfgNode, "freeze", freeze)
    run_method(RunRequest(method="seen-only", protocol="synth-15-5", data_root=str(world), device="cpu",
                          results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"), opts=tiny(2)))
    shared = _shared_keys()
    assert len(read) > 60  # the trace saw the run
    unread = {k for k in shared if not is_refused(k) and k not in read}
    assert unread <= set(ONLY_WITH) | set(UNUSED_BUT_COMMITTED) | set(READ_BY_OTHER_PATHS), sorted(unread)
    refused_read = {k for k in shared if is_refused(k) and k in read}
    assert refused_read <= set(SET_BY_RUN) | set(READ_BUT_INEFFECTIVE), sorted(refused_read)


def test_keys_of_the_unbuilt_classifier_change_nothing():
    """What READ_BUT_INEFFECTIVE says of the body's decoder: detectron2's DeepLabV3+ head is built decoder-only,
    so its class count, loss and head name make the same network (same weights from one seed, same outputs)."""
    import torch

    from zss_bench.modeling.body import SegmentationBody

    base = _cfg()
    x = torch.randn(1, 3, 64, 64)

    def outputs(**changes):
        cfg = base.clone()
        cfg.defrost()
        for key, value in changes.items():
            setattr(cfg.MODEL.SEM_SEG_HEAD, key, value)
        torch.manual_seed(0)
        body = SegmentationBody(cfg).eval()
        with torch.no_grad():
            return body(x)

    ref = outputs()
    for change in ({"NUM_CLASSES": 7}, {"LOSS_WEIGHT": 3.0}, {"LOSS_TYPE": "hard_pixel_mining"},
                   {"NAME": "SemSegFPNHead"}, {"PROJECT_FEATURES": ["res3"]}):
        assert torch.equal(outputs(**change), ref), change
    assert outputs(CONVS_DIM=64).shape[1] == 64 != ref.shape[1]  # an accepted key of the same head does


def test_every_accepted_method_key_is_read_by_its_method():
    """Method keys (MODEL.<METHOD>.*): each accepted one is read (not only assigned) somewhere in the method's
    package or the shared toolkit."""
    from zss_bench.engine.unused_keys import is_refused

    shared = set(_shared_keys())
    toolkit = "\n".join(p.read_text() for p in (REPO / "zss_bench").rglob("*.py"))
    missing = []
    for plugin in _plugins():
        import zss_bench.detectron2_compat  # noqa: F401
        from detectron2.config import get_cfg

        from zss_bench.engine.config import add_zss_config, flat_keys

        cfg = get_cfg()
        add_zss_config(cfg)
        plugin.add_config(cfg)
        package = Path(plugin.config_dir).parent
        text = toolkit + "\n".join(p.read_text() for p in package.rglob("*.py"))
        for key in flat_keys(cfg):
            if key in shared or is_refused(key):
                continue
            leaf = key.rsplit(".", 1)[1]
            if not re.search(r"\." + re.escape(leaf) + r"\b(?!\s*=[^=])", text):  # a read, not `c.LEAF = ...`
                missing.append(key)
    assert not missing, missing
