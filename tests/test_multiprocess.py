"""Multi-process training (2 gloo processes on CPU) gives one model: (a) the in-run evaluation equals
`--eval-only` of the final checkpoint in one process, (b) `--resume` from a mid-run checkpoint ends in the
same weights and scores, (c) every parameter and buffer is bit-identical on every rank after every step,
while per-rank randomness (the step seed) differs between ranks. Chimera-Seg (teacher statistics + BN),
CLIP-ZSS (memory bank + BN) and seen-only (BN alone, the synth body's NORM: BN)."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from run_helpers import make_plugin, tiny, world_fixtures
from detectron2.engine import HookBase
from detectron2.modeling import META_ARCH_REGISTRY
from zss_bench.engine import run as run_module
from zss_bench.engine.run import RunRequest, run_method
from zss_bench.methods.seen_only.meta_arch import SeenOnlySeg
from zss_bench.metrics import ConfusionMatrix
from zss_bench.records import load_run

MICRO = "zss-micro-vit:random"
DUMP_ENV = "ZSS_TEST_RANK_FINGERPRINTS"
_REAL_WORKER = run_module._worker  # the tests swap run._worker for _instrumented_worker, which calls this


@META_ARCH_REGISTRY.register()
class RankLocalSeg(SeenOnlySeg):
    """Keeps a buffer that its forward updates from its own shard and never syncs (what a new method could
    do by mistake): the trainer's rank check must stop the run at its first step."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.register_buffer("pixel_sum", torch.zeros((), dtype=torch.float64))

    def train_losses(self, images, targets):
        self.pixel_sum += images.double().sum()
        return super().train_losses(images, targets)


class _Fingerprints(HookBase):
    """Per rank, after every step: the sha256 of every parameter and buffer, and the step's torch seed."""

    def __init__(self, path: Path):
        self.path = path

    def after_step(self):
        model = self.trainer.bare_model
        tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        digest = {n: hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
                  for n, t in tensors.items()}
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"iter": self.trainer.iter, "seed": torch.initial_seed(), "tensors": digest}) + "\n")


def _instrumented_worker(req_dict, root, output_dir):
    """``run._worker`` in a spawned process, with the fingerprint hook (and the test-only method) added."""
    from detectron2.utils import comm

    from zss_bench.engine import trainer
    from zss_bench.plugins import register_method

    if req_dict["method"] == "rank-local":
        register_method(make_plugin("rank-local", "RankLocalSeg")[0], replace=True)
    original = trainer.ZSSTrainer.build_hooks
    dump = os.environ.get(DUMP_ENV)
    if dump:
        def build_hooks(self):
            return [*original(self), _Fingerprints(Path(dump) / f"rank{comm.get_rank()}.jsonl")]

        trainer.ZSSTrainer.build_hooks = build_hooks
    try:
        _REAL_WORKER(req_dict, root, output_dir)
    finally:
        trainer.ZSSTrainer.build_hooks = original


small_world, prepared = world_fixtures(n_train=16, n_val=8)


def _request(world, tmp_path, method: str, out: Path, extra=(), **kw) -> RunRequest:
    kw.setdefault("device", "cpu")  # gloo processes, also on a host with GPUs
    return RunRequest(method=method, protocol="synth-15-5", data_root=str(world), clip=MICRO, seed=5,
                      results_root=str(tmp_path / "results"), output_dir=str(out),
                      opts=tiny(4, 2, "ZSS.N_BOOT", "0", *extra), **kw)


def _scores(run_dir: Path):
    return load_run(run_dir).record, ConfusionMatrix.load(run_dir / "confusion.npz")


def _fingerprints(dump: Path, world: int = 2) -> list[list[dict]]:
    return [[json.loads(line) for line in (dump / f"rank{r}.jsonl").read_text().splitlines()] for r in range(world)]


def _check_ranks_identical(dump: Path, iterations: list[int]) -> None:
    rank0, rank1 = _fingerprints(dump)
    assert [s["iter"] for s in rank0] == [s["iter"] for s in rank1] == iterations
    for a, b in zip(rank0, rank1):
        differ = sorted(n for n in a["tensors"] if a["tensors"][n] != b["tensors"].get(n))
        assert not differ, f"after iteration {a['iter']} the ranks hold different {differ[:6]}"
        assert a["tensors"].keys() == b["tensors"].keys()
        # per-rank randomness: rank 0 keeps the one-process seed, rank 1 draws its own
        assert a["seed"] == 5 * 1_000_003 + a["iter"] and b["seed"] != a["seed"]


def _final_weights(out: Path) -> dict:
    return torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]


def _assert_same_scores(a: Path, b: Path) -> None:
    (ra, ca), (rb, cb) = _scores(a), _scores(b)
    np.testing.assert_array_equal(ca.matrix, cb.matrix)
    assert json.dumps(ra["metrics"], sort_keys=True) == json.dumps(rb["metrics"], sort_keys=True)


def _train_evaluate_resume(prepared, tmp_path, monkeypatch, method: str, extra=()) -> None:
    monkeypatch.setattr(run_module, "_worker", _instrumented_worker)
    full, dump = tmp_path / "full", tmp_path / "dump-full"
    dump.mkdir()
    monkeypatch.setenv(DUMP_ENV, str(dump))
    trained = run_method(_request(prepared, tmp_path, method, full, extra, num_gpus=2))
    assert load_run(trained).record["training"]["world_size"] == 2

    # (c) every parameter and buffer identical on both ranks after every step; seeds differ per rank
    _check_ranks_identical(dump, [0, 1, 2, 3])

    # (a) the 2-process in-run evaluation is what one process scores from the final checkpoint
    monkeypatch.delenv(DUMP_ENV)
    again = run_method(_request(prepared, tmp_path, method, full, extra, eval_only=True))
    assert load_run(again).record["training"]["world_size"] == 1
    _assert_same_scores(trained, again)

    # (b) a run stopped after its checkpoint at iteration 1 and resumed in 2 processes ends where the
    # uninterrupted one did: same weights and buffers bit for bit, same scores
    killed = tmp_path / "killed"
    shutil.copytree(full, killed, ignore=shutil.ignore_patterns("model_final.pth", "record_dir.txt", "*.lock"))
    (killed / "last_checkpoint").write_text("model_0000001.pth")
    resumed_dump = tmp_path / "dump-resumed"
    resumed_dump.mkdir()
    monkeypatch.setenv(DUMP_ENV, str(resumed_dump))
    resumed = run_method(_request(prepared, tmp_path, method, killed, extra, num_gpus=2, resume=True))
    assert load_run(resumed).record["training"]["resumed_from_iter"] == 2
    _check_ranks_identical(resumed_dump, [2, 3])
    assert _fingerprints(resumed_dump)[0][-1] == _fingerprints(dump)[0][-1]  # non-persistent buffers too
    wa, wb = _final_weights(full), _final_weights(killed)
    assert wa.keys() == wb.keys()
    assert not [k for k in wa if not torch.equal(wa[k], wb[k])]
    _assert_same_scores(trained, resumed)


def test_chimera_two_processes_one_model(prepared, tmp_path, monkeypatch):
    """Teacher statistics (all-reduced in the forward) and the body's BN statistics (averaged after each step);
    with one crop of multi-crop distillation (boxes drawn for the global batch, each rank takes its own)."""
    _train_evaluate_resume(prepared, tmp_path, monkeypatch, "chimera", ["MODEL.CHIMERA.SGD.CROPS", "1"])


def test_clip_zss_two_processes_one_model(prepared, tmp_path, monkeypatch):
    """The memory bank enqueues every rank's CLS (all_gather), so both ranks' banks are the same."""
    _train_evaluate_resume(prepared, tmp_path, monkeypatch, "clip-zss")


def test_batchnorm_body_two_processes_one_model(prepared, tmp_path, monkeypatch):
    """Seen-only on the synth body (ResNet and DeepLab head with NORM: BN): BN running statistics alone."""
    _train_evaluate_resume(prepared, tmp_path, monkeypatch, "seen-only")


def test_a_buffer_left_unsynced_stops_the_run_at_its_first_step(prepared, tmp_path, monkeypatch):
    from zss_bench.plugins import register_method, unregister_method

    monkeypatch.setattr(run_module, "_worker", _instrumented_worker)
    plugin, opts = make_plugin("rank-local", "RankLocalSeg")
    register_method(plugin)
    req = _request(prepared, tmp_path, "rank-local", tmp_path / "out", num_gpus=2)
    try:
        with pytest.raises(Exception, match=r"after iteration 0, the 2 processes hold different values of 1 "
                                            r"tensor\(s\): pixel_sum\."):
            run_method(RunRequest(**{**req.__dict__, "opts": [*req.opts, *opts]}))
    finally:
        unregister_method("rank-local")
    assert not (tmp_path / "out" / "model_0000001.pth").exists()  # stopped before anything was checkpointed


def test_step_seeds_keep_the_one_process_seed_on_rank_0_and_differ_per_rank():
    from zss_bench.engine.trainer import step_seed

    assert [step_seed(3, it) for it in range(3)] == [3 * 1_000_003 + it for it in range(3)]
    assert step_seed(3, 7, 0) == 3 * 1_000_003 + 7
    seeds = {step_seed(3, it, rank) for it in range(50) for rank in range(8)}
    assert len(seeds) == 400  # no two (iteration, rank) pairs share a stream
    assert step_seed(3, 7, 1) == step_seed(3, 7, 1) != step_seed(4, 7, 1)  # reproducible, and the seed matters


def test_crop_boxes_of_a_rank_are_its_images_share_of_the_global_batch(tmp_path, monkeypatch):
    """Multi-crop distillation draws boxes for the global batch and rank r keeps images r*B..(r+1)*B-1:
    ranks crop differently, and together as one process given the global batch does."""
    import sys

    from run_helpers import build_on_synth

    model, _ = build_on_synth(tmp_path / "world", tmp_path / "out", "chimera", ["MODEL.CHIMERA.SGD.CROPS", "1"])
    model.eval()  # fixed BN statistics; the crops are what is compared
    arch = sys.modules[type(model).__module__]
    seen, original = [], arch.box_mask
    monkeypatch.setattr(arch, "box_mask", lambda boxes, grid: (seen.append(boxes.clone()), original(boxes, grid))[1])
    images = torch.rand(4, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model._dense(images)[0]
        model._crop_distillation(images, z, 0.5)  # one process, global batch of 4
        for rank in (0, 1):
            monkeypatch.setattr(arch, "_rank_and_world", lambda rank=rank: (rank, 2))
            model._crop_distillation(images[2 * rank:2 * rank + 2], z[2 * rank:2 * rank + 2], 0.5)
    whole, rank0, rank1 = seen
    assert torch.equal(rank0, whole[:2]) and torch.equal(rank1, whole[2:])
    assert not torch.equal(rank0, rank1)


def _collectives(rank: int, world: int, url: str, out: str) -> None:
    """In each of 2 gloo processes: the helpers that keep buffers in sync, on this rank's half of fixed data."""
    import torch.distributed as dist

    from zss_bench.engine.trainer import average_across_ranks
    from zss_bench.methods.chimera.csh import _global_mean_std
    from zss_bench.methods.clip_zss.glm import gather_batch

    dist.init_process_group("gloo", init_method=url, world_size=world, rank=rank)
    try:
        tokens = torch.randn(10, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
        mean, std = _global_mean_std(tokens[[0, 1, 2, 3] if rank == 0 else [4, 5, 6, 7, 8, 9]])  # unequal shares
        cls = torch.arange(6.0).view(3, 2) + 10 * rank
        gathered, offset = gather_batch(cls)
        stats = [torch.full((3,), float(rank + 1)), torch.tensor([2.0 * rank])]
        average_across_ranks(stats)
        torch.save({"mean": mean, "std": std, "gathered": gathered, "offset": offset, "stats": stats},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_buffer_sync_helpers_give_every_rank_the_global_batchs_values(tmp_path):
    """The teacher statistics of a split batch are those of the whole batch (up to rounding) and the same
    bits on each rank; gather_batch is the global batch in rank order; BN statistics become the rank mean."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    mp.start_processes(_collectives, args=(2, url, str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    tokens = torch.randn(10, 6, generator=torch.Generator().manual_seed(0)) * 3 + 1
    for r in (r0, r1):
        torch.testing.assert_close(r["mean"], tokens.mean(0), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(r["std"], tokens.std(0), rtol=1e-6, atol=1e-6)
    assert torch.equal(r0["mean"], r1["mean"]) and torch.equal(r0["std"], r1["std"])
    whole = torch.cat([torch.arange(6.0).view(3, 2), torch.arange(6.0).view(3, 2) + 10])
    assert torch.equal(r0["gathered"], whole) and torch.equal(r1["gathered"], whole)
    assert (r0["offset"], r1["offset"]) == (0, 3)
    for r in (r0, r1):
        assert torch.equal(r["stats"][0], torch.full((3,), 1.5)) and torch.equal(r["stats"][1], torch.tensor([1.0]))


def _refuse_in_every_process(message: str) -> None:
    from zss_bench.records.store import RecordError

    raise RecordError(message)


def test_a_user_error_in_a_worker_process_comes_back_as_one_line(capsys):
    """A refusal raised inside the gloo processes (e.g. a record that cannot be written at the end) reaches the
    launching process as the same message, which the CLI prints as one line, not a spawn traceback."""
    from zss_bench.cli import _user_errors
    from zss_bench.engine.launch import WorkerError, launch

    with pytest.raises(WorkerError, match=r"^process 0: could not write the run record under /x \(Read-only\)$") as info:
        launch(_refuse_in_every_process, 2, device="cpu", args=("could not write the run record under /x\n(Read-only)",))
    assert isinstance(info.value, _user_errors())
    with pytest.raises(Exception, match="ZeroDivisionError"):  # anything else keeps its traceback
        launch(divmod, 2, device="cpu", args=(1, 0))
