"""The runner on the shared method toolkit: a user's own protocol file end to end, training-free and
--eval-only runs that build no optimizer, checkpoints without the frozen CLIP, efficiency figures."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import yaml

from conftest import run_cli
from run_helpers import make_plugin, tiny
from zss_bench.engine.run import RunRequest, run_method
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run

REPO = Path(__file__).resolve().parents[1]
MICRO = "zss-micro-vit:random"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from zss_bench.data.synth import generate_world

    root = tmp_path_factory.mktemp("world")
    generate_world(root, seed=2, size=32, n_train=32, n_val=8, progress=False)
    return root


@pytest.fixture
def custom_protocol(tmp_path):
    doc = yaml.safe_load((REPO / "protocols" / "synth-15-5.yaml").read_text())
    doc["name"] = "my-synth"
    path = tmp_path / "my-synth.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _run_dir(out: str) -> Path:
    return Path(out.strip().splitlines()[-1].split("record: ")[1])


def test_a_protocol_file_of_ones_own_runs_end_to_end_on_the_toolkit(world, custom_protocol, tmp_path, capsys):
    """`--protocol path/to/my-synth.yaml`: the model gets the protocol object (not a reload by name), the
    synth method config is picked by the dataset kind, and the record names both files."""
    rc, out, err = run_cli(capsys, "run", "--method", "chimera", "--protocol", str(custom_protocol),
                           "--data-root", str(world), "--clip", MICRO, "--results", str(tmp_path / "results"),
                           "--work-dir", str(tmp_path / "work"), *tiny(3, 1000))
    assert rc == 0, err
    assert "method config:" in out and "synth.yaml" in out
    rec = load_run(_run_dir(out)).record
    assert rec["protocol"]["name"] == "my-synth" and rec["protocol"]["file"].endswith("my-synth.yaml")
    assert rec["method"]["config_file"].endswith("configs/synth.yaml")
    assert rec["method"]["config"]["MODEL"]["SEM_SEG_HEAD"]["IGNORE_VALUE"] == 255  # the protocol's ignore_label
    assert rec["clip"]["name"] == "zss-micro-vit" and rec["clip"]["weights_hash"]
    eff = rec["efficiency"]
    assert eff["params_total"] > eff["params_trainable"] > 0
    assert eff["eval_images"] == 8 and eff["test_images_per_s"] > 0 and eff["peak_memory_mb"] > 0
    assert eff["train_step_s"] > 0 and eff["checkpoint_mb"] > 0 and "cpu" in eff["machine"]
    device = rec["provenance"]["device"]
    assert isinstance(device, dict) and device["device"] == "cpu" and "cpu_capability" in device

    # the final checkpoint holds what was trained: no frozen CLIP (teacher, CSH blocks), no optimizer moments
    ckpt = torch.load(Path(os.path.expandvars(rec["training"]["output_dir"])) / "model_final.pth", map_location="cpu",
                      weights_only=False)
    keys = list(ckpt["model"])
    assert keys and not [k for k in keys if k.startswith(("teacher.", "head.blocks.", "head.ln_post."))]
    assert "head.adapter.weight" in keys and "clip_weights_sha256" in keys and "head.entry_mean" in keys
    assert "_trainer" not in ckpt["trainer"]


def test_training_free_method_builds_no_optimizer_and_no_loader(world, tmp_path, monkeypatch):
    from zss_bench.engine import data, trainer
    from zss_bench.plugins import register_method, unregister_method

    def refuse(*args, **kwargs):
        raise AssertionError("a training-free run must not build this")

    monkeypatch.setattr(trainer.ZSSTrainer, "build_optimizer", classmethod(refuse))
    monkeypatch.setattr(trainer, "build_train_loader", refuse)
    monkeypatch.setattr(data, "build_train_loader", refuse)
    plugin, opts = make_plugin("colour-rule", "ColourRuleSeg", trains=False)
    register_method(plugin)
    try:
        run_dir = run_method(RunRequest(method="colour-rule", protocol="synth-15-5", data_root=str(world),
                                        results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                        opts=tiny(5, 1000, *opts)))
        again = run_method(RunRequest(method="colour-rule", protocol="synth-15-5", data_root=str(world),
                                      results_root=str(tmp_path / "results"), output_dir=str(tmp_path / "fresh"),
                                      eval_only=True, opts=tiny(5, 1000, *opts)))  # nothing to load: not refused
    finally:
        unregister_method("colour-rule")
    assert ConfusionMatrix.load(again / "confusion.npz").matrix.tolist() == \
        ConfusionMatrix.load(run_dir / "confusion.npz").matrix.tolist()
    rec = load_run(run_dir).record
    t = rec["training"]
    assert t["performed"] is False and t["training_free"] is True and t["optimizer_built"] is False
    assert t["max_iter"] == 0 and rec["efficiency"]["train_step_s"] is None and rec["efficiency"]["checkpoint_mb"] is None
    assert rec["leakage"]["training_targets_checked"] is None and rec["efficiency"]["params_trainable"] == 0
    assert ConfusionMatrix.load(run_dir / "confusion.npz").num_images == 8


def test_eval_only_loads_the_checkpoint_without_an_optimizer(world, tmp_path, monkeypatch):
    from zss_bench.engine import trainer

    common = dict(method="seen-only", protocol="synth-15-5", data_root=str(world), results_root=str(tmp_path / "r"),
                  output_dir=str(tmp_path / "out"), opts=tiny(4, 1000))
    trained = run_method(RunRequest(**common))

    def refuse(*args, **kwargs):
        raise AssertionError("--eval-only must not build an optimizer")

    monkeypatch.setattr(trainer.ZSSTrainer, "build_optimizer", classmethod(refuse))
    again = run_method(RunRequest(**common, eval_only=True))
    rec = load_run(again).record
    assert rec["training"]["eval_only"] is True and rec["training"]["optimizer_built"] is False
    assert rec["training"]["resumed_from_iter"] == 4  # the trained checkpoint was loaded, not a fresh model
    assert ConfusionMatrix.load(again / "confusion.npz").matrix.tolist() == \
        ConfusionMatrix.load(trained / "confusion.npz").matrix.tolist()


def test_a_clip_method_without_a_clip_record_is_an_error(world, tmp_path):
    from zss_bench.plugins import register_method, unregister_method

    plugin, opts = make_plugin("claims-clip", "SeenOnlySeg", uses_clip=True)
    register_method(plugin)
    try:
        with pytest.raises(ValueError, match="declares uses_clip=True but its model SeenOnlySeg has no CLIP record"):
            run_method(RunRequest(method="claims-clip", protocol="synth-15-5", data_root=str(world),
                                  results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                  opts=tiny(1, 1000, *opts)))
    finally:
        unregister_method("claims-clip")
    assert not (tmp_path / "results").exists()
    assert not (tmp_path / "work").exists()  # failed before training: no stub work folder is left behind


def test_body_takes_inputs_that_are_not_a_multiple_of_the_training_crop():
    """A whole-image test of a 683x512 VOC image, or a padded batch of images smaller than the crop:
    detectron2's ASPP with a pooling kernel of crop / stride rejects them; the body pools globally."""
    import zss_bench.detectron2_compat  # noqa: F401
    from detectron2.config import get_cfg

    from zss_bench.engine.config import add_zss_config
    from zss_bench.methods.seen_only.config import add_seen_only_config
    from zss_bench.modeling.body import SegmentationBody

    cfg = get_cfg()
    add_zss_config(cfg)
    add_seen_only_config(cfg)
    cfg.merge_from_file(str(REPO / "methods" / "_base" / "body-synth.yaml"))
    cfg.INPUT.CROP.ENABLED, cfg.INPUT.CROP.TYPE, cfg.INPUT.CROP.SIZE = True, "absolute", (64, 64)
    body = SegmentationBody(cfg).eval()
    with torch.no_grad():
        for h, w in ((64, 64), (96, 72), (40, 56)):
            assert body(torch.randn(1, 3, h, w)).shape[-2:] == (h // 4, w // 4)
        from detectron2.projects.deeplab.semantic_seg import DeepLabV3PlusHead  # detectron2's own kernel rejects it

        args = DeepLabV3PlusHead.from_config(cfg, body.backbone.output_shape())
        stock = DeepLabV3PlusHead(**{**args, "num_classes": None}).eval()
        with pytest.raises(ValueError, match="pool_kernel_size"):
            stock(body.backbone(torch.randn(1, 3, 96, 72)))


def test_chimera_resumed_from_a_slim_checkpoint_equals_the_uninterrupted_run(world, tmp_path):
    """Periodic checkpoints hold the trained weights and optimizer state but no frozen CLIP; resuming from
    one rebuilds the CLIP from the spec and finishes with the same confusion matrix as an uninterrupted run."""
    common = dict(method="chimera", protocol="synth-15-5", data_root=str(world), clip=MICRO,
                  results_root=str(tmp_path / "results"), output_dir=str(tmp_path / "out"), opts=tiny(4, 2))
    full = run_method(RunRequest(**common))
    out = tmp_path / "out"
    mid = torch.load(out / "model_0000001.pth", map_location="cpu", weights_only=False)
    assert "_trainer" in mid["trainer"] and not [k for k in mid["model"] if k.startswith("teacher.")]
    (out / "model_final.pth").unlink()
    (out / "model_0000003.pth").unlink(missing_ok=True)
    (out / "last_checkpoint").write_text("model_0000001.pth")
    resumed = run_method(RunRequest(**common, resume=True))
    assert load_run(resumed).record["training"]["resumed_from_iter"] == 2
    assert ConfusionMatrix.load(resumed / "confusion.npz").matrix.tolist() == \
        ConfusionMatrix.load(full / "confusion.npz").matrix.tolist()


def test_a_checkpoint_trained_on_other_clip_weights_is_refused(world, tmp_path):
    import zss_bench.detectron2_compat  # noqa: F401
    from detectron2.modeling import build_model

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    protocol = load_protocol("synth-15-5")
    prepare_dataset("synth", world, protocol, progress=False)
    register_protocol(protocol, world)
    cfg = build_run_config(get_method("chimera"), protocol, seed=0, output_dir=str(tmp_path), data_root=str(world),
                           clip=MICRO, opts=tiny(1))
    model = build_model(cfg)
    state = model.state_dict()
    assert not [k for k in state if k.startswith(("teacher.", "head.blocks."))]
    model.load_state_dict(state)  # its own slim checkpoint loads (frozen parts kept from the build)
    state["clip_weights_sha256"] = torch.zeros_like(state["clip_weights_sha256"])
    with pytest.raises(ValueError, match="checkpoint was trained on CLIP weights 000000000000, but this model was built on"):
        model.load_state_dict(state)
