"""On a CUDA machine: the device rule, detectron2's NCCL launcher and deterministic mode for real.

Collected everywhere and skipped, with the reason, where torch sees no CUDA device (tests/test_device.py
covers the same decisions there with a faked GPU count). ``scripts/gpu_check.sh`` runs this module and
the real configuration's smoke test on CUDA in one command (under 5 minutes on one GPU). The tests that
need two GPUs skip on a one-GPU machine, saying so.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from conftest import run_cli
from detectron2.modeling import META_ARCH_REGISTRY
from run_helpers import make_plugin, tiny, world_fixtures
from zss_bench.methods.seen_only.meta_arch import SeenOnlySeg
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (torch.cuda.is_available() is False here); "
                                       "on a GPU machine run scripts/gpu_check.sh")
TWO_GPUS = pytest.mark.skipif(torch.cuda.is_available() and torch.cuda.device_count() < 2,
                              reason=f"needs 2 CUDA devices (NCCL across processes); {torch.cuda.device_count()} visible")
MICRO = ["ZSS.CLIP", "zss-micro-vit:random"]


small_world, prepared = world_fixtures(n_train=48, n_val=16)


def _run(capsys, tmp_path: Path, name: str, *argv: str, method: str = "chimera"):
    """``zss-bench run`` in this process -> (stdout, the loaded record)."""
    rc, out, err = run_cli(capsys, "run", "--method", method, "--protocol", "synth-15-5",
                           "--results", str(tmp_path / "results"), "--output-dir", str(tmp_path / name), *argv)
    assert rc == 0, err
    return out, load_run(Path(out.strip().splitlines()[-1].split("record: ")[1]))


def _matrix(run) -> np.ndarray:
    return ConfusionMatrix.load(run.confusion_path).matrix


def test_auto_means_cuda_here():
    from zss_bench.engine.launch import resolve_device

    assert resolve_device("auto") == "cuda" and resolve_device("auto", torch.cuda.device_count()) == "cuda"


def test_one_gpu_chimera_run_on_synth_records_cuda(prepared, tmp_path, capsys):
    """The synth configs say ``MODEL.DEVICE: cpu``; ``--device cuda`` trains and evaluates on the GPU
    (before: silently on the CPU), and the record names the GPU and its memory figure."""
    out, run = _run(capsys, tmp_path, "one", "--device", "cuda", "--data-root", str(prepared), *tiny(4), *MICRO)
    rec = run.record
    assert "device: cuda (1 process)" in out
    assert rec["method"]["config"]["MODEL"]["DEVICE"] == "cuda" and rec["training"]["world_size"] == 1
    dev = rec["provenance"]["device"]
    assert dev["device"] == "cuda" and dev["device_name"] == torch.cuda.get_device_name(0)
    assert rec["efficiency"]["device"] == "cuda" and rec["efficiency"]["peak_memory_kind"] == "cuda_max_allocated"
    assert rec["efficiency"]["peak_memory_mb"] > 0 and rec["metrics"]["hIoU"] is not None


def test_more_gpus_than_visible_is_one_line(tmp_path, capsys):
    n = torch.cuda.device_count()
    for flags in ([], ["--device", "cuda"]):
        rc, out, err = run_cli(capsys, "run", "--method", "seen-only", "--protocol", "synth-15-5", *flags,
                               "--num-gpus", str(n + 1), "--work-dir", str(tmp_path / "work"))
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert f"--num-gpus {n + 1}: only {n} CUDA device" in err
    assert not (tmp_path / "work").exists()


def test_cpu_processes_on_a_gpu_machine_use_gloo(prepared, tmp_path, capsys):
    """``--device cpu --num-gpus 2`` on a GPU machine: 2 gloo processes on the CPU (before: detectron2's
    NCCL launcher with a CPU model), scoring exactly what one process scores."""
    common = ["--device", "cpu", "--data-root", str(prepared)]
    _, one = _run(capsys, tmp_path, "cpu", *common, *tiny(3), method="seen-only")
    out, two = _run(capsys, tmp_path, "cpu", *common, "--eval-only", "--num-gpus", "2", *tiny(3), method="seen-only")
    assert "device: cpu, 2 processes (gloo)" in out
    assert two.record["provenance"]["world_size"] == 2 and two.record["provenance"]["device"]["device"] == "cpu"
    np.testing.assert_array_equal(_matrix(one), _matrix(two))


@TWO_GPUS
def test_two_gpu_run_scores_what_its_checkpoint_scores(prepared, tmp_path, capsys):
    """2 NCCL processes: the in-run evaluation equals an --eval-only of the checkpoint it wrote (every rank
    evaluates its shard with the same model, buffers included)."""
    common = ["--device", "cuda", "--data-root", str(prepared)]
    out, trained = _run(capsys, tmp_path, "two", *common, "--num-gpus", "2", *tiny(4), *MICRO)
    assert "device: cuda, 2 processes (NCCL)" in out and trained.record["training"]["world_size"] == 2
    _, rescored = _run(capsys, tmp_path, "two", *common, "--eval-only", *tiny(4), *MICRO)
    np.testing.assert_array_equal(_matrix(trained), _matrix(rescored))
    assert trained.record["metrics"]["hIoU"] == rescored.record["metrics"]["hIoU"]


@META_ARCH_REGISTRY.register()
class FlatCrossEntropySeg(SeenOnlySeg):
    """Seen-only with its cross-entropy over flattened pixels: the same loss, but through CUDA's 1-D NLL
    kernel, which is deterministic (the 2-D one, ``nll_loss2d``, has none: every method's
    ``F.cross_entropy`` on (B, C, H, W) maps hits it)."""

    def train_losses(self, images, targets):
        logits = F.interpolate(self.classifier(self.body(images)), size=targets.shape[-2:], mode="bilinear",
                               align_corners=False)
        flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        return {"loss_ce": F.cross_entropy(flat, targets.reshape(-1), ignore_index=self.ignore_value)}


@pytest.fixture
def flat_ce_method():
    from zss_bench.plugins import register_method, unregister_method

    plugin, opts = make_plugin("flat-ce", "FlatCrossEntropySeg")
    register_method(plugin)
    yield opts
    unregister_method("flat-ce")


def _deterministic_twice(capsys, tmp_path, method: str, *argv: str):
    """Two runs with ``ZSS.DETERMINISTIC True`` on one GPU -> (records, reproduce's verdict on the pair)."""
    from zss_bench.engine.reproduce import compare
    from zss_bench.protocol import load_protocol

    runs = [_run(capsys, tmp_path, name, "--device", "cuda", *argv, "ZSS.DETERMINISTIC", "True", method=method)[1]
            for name in ("det-a", "det-b")]
    for run in runs:
        assert run.record["provenance"]["deterministic"]["requested"] is True
    return runs, compare(runs[0], runs[1], load_protocol("synth-15-5"), n_boot=50)["verdict"]


def test_deterministic_mode_twice_is_identical(prepared, tmp_path, capsys, flat_ce_method):
    """The harness's part: deterministic algorithms, cuDNN, cuBLAS and attention settings make two GPU
    trainings of a model whose ops all have deterministic kernels bit-identical, and ``reproduce``
    calls the pair identical."""
    runs, verdict = _deterministic_twice(capsys, tmp_path, "flat-ce", "--data-root", str(prepared),
                                         *tiny(4), *flat_ce_method)
    for run in runs:
        assert run.record["provenance"]["deterministic"]["nondeterministic_ops"] == []
        assert run.record["provenance"]["deterministic"]["repeatable"] is True
    np.testing.assert_array_equal(_matrix(runs[0]), _matrix(runs[1]))
    assert verdict == "identical"


def test_chimera_in_deterministic_mode_records_what_stayed_non_deterministic(prepared, tmp_path, capsys):
    """Chimera-Seg's training calls ops torch has no deterministic CUDA kernel for (``nll_loss2d``, from
    ``F.cross_entropy`` on 4-D maps): the records name them, and ``reproduce`` says *identical* only for
    a pair with none (else at best *within noise*, even if the matrices agree)."""
    runs, verdict = _deterministic_twice(capsys, tmp_path, "chimera", "--data-root", str(prepared),
                                         *tiny(4), *MICRO)
    ops = [run.record["provenance"]["deterministic"]["nondeterministic_ops"] for run in runs]
    assert ops[0] == ops[1]
    assert "Memory Efficient attention" not in ops[0]  # turned off in deterministic mode
    with capsys.disabled():
        print(f"\n[chimera deterministic on {torch.cuda.get_device_name(0)}] ops without a deterministic kernel: "
              f"{ops[0] or 'none'}; confusion matrices equal: "
              f"{np.array_equal(_matrix(runs[0]), _matrix(runs[1]))}; verdict: {verdict}")
    if ops[0]:
        assert runs[0].record["provenance"]["deterministic"]["repeatable"] is False and verdict != "identical"
    else:
        np.testing.assert_array_equal(_matrix(runs[0]), _matrix(runs[1]))
        assert verdict == "identical"
