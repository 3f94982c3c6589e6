"""Small worlds, tiny run overrides and deliberately broken methods for the runner tests."""
from __future__ import annotations

from pathlib import Path

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
from detectron2.data import MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY

from zss_bench.methods.seen_only.config import add_seen_only_config
from zss_bench.methods.seen_only.meta_arch import SeenOnlySeg
from zss_bench.modeling.segmentor import ZSSSegmentor
from zss_bench.plugins import MethodPlugin

# 32 px images, batch 4: a real run through every stage in a few seconds on 2 cores
TINY = ["INPUT.MIN_SIZE_TRAIN", "(32,)", "INPUT.MAX_SIZE_TRAIN", "32", "INPUT.MIN_SIZE_TEST", "32",
        "INPUT.MAX_SIZE_TEST", "32", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.WARMUP_ITERS", "2", "ZSS.N_BOOT", "50"]


def synth_world(root: Path, *, seed: int, n_train: int, n_val: int) -> Path:
    """A generated 32 px synth world at ``root``, prepared for synth-15-5."""
    from zss_bench.data.synth import generate_world

    generate_world(root, seed=seed, size=32, n_train=n_train, n_val=n_val, progress=False)
    return prepare_synth(root)


def prepare_synth(root: Path) -> Path:
    """(Re-)prepare ``root`` for synth-15-5 into the current cache (each test has its own cache)."""
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    prepare_dataset("synth", root, load_protocol("synth-15-5"), progress=False)
    return root


def world_fixtures(*, n_train: int, n_val: int, seed: int = 1):
    """The ``small_world`` (one generated 32 px world per test module) and ``prepared`` (prepared into the
    test's own cache) fixtures of a runner test module: ``small_world, prepared = world_fixtures(...)``."""
    import os

    import pytest

    @pytest.fixture(scope="module")
    def small_world(tmp_path_factory):
        os.environ.setdefault("ZSS_BENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return synth_world(tmp_path_factory.mktemp("world"), seed=seed, n_train=n_train, n_val=n_val)

    @pytest.fixture
    def prepared(small_world, isolated_cache):
        return prepare_synth(small_world)

    return small_world, prepared


def tiny(max_iter: int, checkpoint_period: int = 1000, *extra: str) -> list[str]:
    return [*TINY, "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", str(checkpoint_period), *extra]


@META_ARCH_REGISTRY.register()
class LeakySeg(SeenOnlySeg):
    """Breaks the inductive rule: looks up the *test* class names and 'encodes' them at init."""

    def __init__(self, cfg):
        super().__init__(cfg)
        from zss_bench.clip.text_embeddings import text_encoder_audit

        all_names = MetadataCatalog.get(cfg.DATASETS.TEST[0]).stuff_classes
        text_encoder_audit.record(all_names, source="encoded", model="leaky")


@META_ARCH_REGISTRY.register()
class NaNSeg(SeenOnlySeg):
    """Its loss turns NaN at the 4th step."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def train_losses(self, images, targets):
        self.steps += 1
        losses = super().train_losses(images, targets)
        if int(self.steps) >= 4:
            losses = {k: v * float("nan") for k, v in losses.items()}
        return losses


@META_ARCH_REGISTRY.register()
class ColourRuleSeg(ZSSSegmentor):
    """Training-free: a fixed random 1x1 projection of the pixels' colours onto every class (no parameters
    to train, nothing learnt from labels). Its scores are a deterministic function of the image."""

    def __init__(self, cfg):
        super().__init__(cfg, 1)
        self.register_buffer("weight", torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), False)

    def eval_scores(self, images):
        return torch.einsum("kc,bchw->bkhw", self.weight[: len(self.eval_class_names)], images)


def make_plugin(name: str, meta_arch: str, **declares) -> MethodPlugin:
    def add_config(cfg):
        add_seen_only_config(cfg)

    plugin = MethodPlugin(name=name, add_config=add_config, config_dir=Path(__file__).parent / "method_configs",
                          description="test-only", **{"uses_clip": False, **declares})
    return plugin, ["MODEL.META_ARCHITECTURE", meta_arch]


def build_on_synth(world_dir: Path, output_dir: Path, method: str, opts: list[str], clip: str = "zss-micro-vit:random"):
    """A method's model as a run would build it on synth-15-5 (a tiny generated world at ``world_dir``),
    without training: -> (model, protocol)."""
    from detectron2.modeling import build_model

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    root = synth_world(world_dir, seed=3, n_train=4, n_val=2)
    protocol = load_protocol("synth-15-5")
    register_protocol(protocol, root)
    cfg = build_run_config(get_method(method), protocol, seed=0, output_dir=str(output_dir), data_root=str(root),
                           clip=clip, opts=opts)
    torch.manual_seed(0)
    return build_model(cfg), protocol
