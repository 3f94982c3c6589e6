"""`zss-bench reproduce`: a faithful re-run says *identical*; an edited record says *not reproduced*;
a re-run that could not be faithful is refused before anything trains."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from run_helpers import tiny
from zss_bench.engine.reproduce import ReproduceError, compare, plan, render, repeatable, reproduce
from zss_bench.engine.run import RunRequest, run_method
from zss_bench.metrics import ConfusionMatrix
from zss_bench.protocol import load_protocol
from zss_bench.records import load_run
from zss_bench.records.paths import expand_path, expand_spec, portable_path, portable_spec

MICRO = ["ZSS.CLIP", "zss-micro-vit:random"]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """One tiny Chimera-Seg run (micro CLIP, 4 iterations) on a small generated world."""
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.data.synth import generate_world

    base = tmp_path_factory.mktemp("repro")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZSS_BENCH_CACHE", str(base / "cache"))
        world = base / "world"
        generate_world(world, seed=3, size=32, n_train=24, n_val=8, progress=False)
        prepare_dataset("synth", world, load_protocol("synth-15-5"), progress=False)
        run_dir = run_method(RunRequest(method="chimera", protocol="synth-15-5", data_root=str(world),
                                        results_root=str(base / "results"), work_root=str(base / "work"),
                                        opts=[*tiny(4), *MICRO, "ZSS.LABEL", "tiny"]))
    return {"base": base, "world": world, "run": run_dir, "results": base / "results"}


@pytest.fixture
def prepared_world(recorded, isolated_cache):
    from zss_bench.data.prepare import prepare_dataset

    prepare_dataset("synth", recorded["world"], load_protocol("synth-15-5"), progress=False)
    return recorded


def _scratch_copy(recorded, tmp_path, edit) -> Path:
    """A copy of the recorded run under a scratch results root, its record.json edited by ``edit``."""
    src = recorded["run"]
    dst = tmp_path / "copy-results" / src.relative_to(recorded["results"])
    shutil.copytree(src, dst)
    rec = json.loads((dst / "record.json").read_text())
    edit(rec)
    (dst / "record.json").write_text(json.dumps(rec))
    return dst


def test_record_names_its_machine_and_keeps_paths_portable(recorded):
    rec = load_run(recorded["run"]).record
    dev = rec["provenance"]["device"]
    assert dev["device"] == "cpu" and dev["cpu_capability"] and dev["device_name"].startswith("cpu (")
    assert "cpu_count" in dev and "torch_threads" in dev
    assert rec["clip"]["spec"] == "zss-micro-vit:random"


def test_faithful_rerun_is_identical(prepared_world, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "reproduce", str(prepared_world["run"]), "--out", str(tmp_path / "re"),
                           "--n-boot", "200")
    assert rc == 0, err
    assert "verdict: identical" in out and "same confusion matrix" in out
    result = json.loads((tmp_path / "re" / "reproduction.json").read_text())
    assert result["verdict"] == "identical" and result["identical_confusion"]
    new = load_run(result["new_run"])
    assert Path(result["new_run"]).is_relative_to(tmp_path / "re")  # scratch, never the recorded root
    assert new.record["method"]["config_hash"] == load_run(prepared_world["run"]).record["method"]["config_hash"]
    assert all(r["delta"] == 0 for r in result["metrics"].values())


def test_record_with_altered_metrics_is_not_reproduced(prepared_world, tmp_path, capsys):
    def inflate(rec):
        rec["metrics"]["hIoU"] = float(rec["metrics"]["hIoU"] or 0) + 5.0
        rec["metrics"]["mIoU_unseen"] = float(rec["metrics"]["mIoU_unseen"] or 0) + 5.0

    copy = _scratch_copy(prepared_world, tmp_path, inflate)
    rc, out, err = run_cli(capsys, "reproduce", str(copy), "--out", str(tmp_path / "re"), "--n-boot", "200")
    assert rc == 1, err
    assert "verdict: not reproduced" in out and "record inconsistent: hIoU" in out
    assert "record inconsistent: mIoU(U)" in out


def test_a_real_difference_is_not_reproduced_and_noise_is_within_noise(prepared_world, tmp_path):
    """compare() on doctored confusion files: every prediction wrong -> CI excludes 0;
    one image's counts nudged -> CI covers 0."""
    from zss_bench.evaluation import score

    protocol = load_protocol("synth-15-5")
    old = load_run(prepared_world["run"])
    cm = ConfusionMatrix.load(old.confusion_path)

    def doctored(name, change):
        run_dir = tmp_path / name / "runs" / "synth-15-5" / "chimera" / name
        shutil.copytree(old.path, run_dir)
        new_cm = ConfusionMatrix.load(old.confusion_path)
        change(new_cm)
        new_cm.save(run_dir / "confusion.npz")
        rec = json.loads((run_dir / "record.json").read_text())
        rec["metrics"] = score(new_cm, protocol, n_boot=0)
        (run_dir / "record.json").write_text(json.dumps(rec))
        return load_run(run_dir)

    def perfect(c):  # every pixel right: a large, real difference
        gt = c._parts[0][1]
        c._parts = [(gt.copy(), gt.copy(), gt.copy())]
        c._acc[:, :-1] = np.diag(gt.sum(0))
        c._acc[:, -1] = 0

    def one_pixel(c):  # one pixel of one image flips to a wrong class: noise
        inter, gt, pred = (x.copy() for x in c._parts[0])
        i, k = map(int, np.argwhere(inter > 0)[0])
        inter[i, k] -= 1
        c._parts = [(inter, gt, pred)]
        c._acc[k, k] -= 1
        c._acc[k, (k + 1) % len(protocol.classes)] += 1

    assert cm.num_images > 1
    far = compare(old, doctored("far", perfect), protocol, n_boot=200)
    assert far["verdict"] == "not reproduced" and not far["identical_confusion"]
    assert not far["metrics"]["pAcc"]["ci_covers_0"] and far["metrics"]["pAcc"]["delta"] > 0
    near = compare(old, doctored("near", one_pixel), protocol, n_boot=200)
    assert near["verdict"] == "within noise" and not near["identical_confusion"], near
    assert near["metrics"]["pAcc"]["delta"] < 0


def test_refuses_a_changed_protocol_other_clip_weights_or_gone_keys(prepared_world, tmp_path):
    def other_protocol(rec):
        rec["protocol"]["hash"] = "f" * 64

    with pytest.raises(ReproduceError, match="has changed since the record"):
        plan(load_run(_scratch_copy(prepared_world, tmp_path / "a", other_protocol)))

    def other_clip(rec):
        rec["clip"]["weights_hash"] = "0" * 64

    with pytest.raises(ReproduceError, match="loads .* here; a re-run with other weights is not a reproduction"):
        plan(load_run(_scratch_copy(prepared_world, tmp_path / "b", other_clip)))

    def old_key(rec):
        rec["method"]["config"]["MODEL"]["CHIMERA"]["RETIRED_KNOB"] = 3

    with pytest.raises(ReproduceError, match="no longer has the config key.*MODEL.CHIMERA.RETIRED_KNOB"):
        plan(load_run(_scratch_copy(prepared_world, tmp_path / "c", old_key)))

    def moved_weights(rec):
        rec["method"]["config"]["MODEL"]["WEIGHTS"] = str(tmp_path / "gone" / "model_final.pth")
        rec["training"]["eval_only"] = True

    with pytest.raises(ReproduceError, match="evaluated the checkpoint .* which is not here"):
        plan(load_run(_scratch_copy(prepared_world, tmp_path / "d", moved_weights)))


def _on_cuda(rec: dict, requested: bool | None = None, ops=()) -> None:
    """Make a (copied) record say it ran on CUDA, with or without deterministic mode."""
    rec["provenance"]["device"].update(device="cuda", device_name="NVIDIA H200")
    rec["efficiency"].update(device="cuda", peak_memory_kind="cuda_max_allocated")
    rec["provenance"].pop("deterministic", None)
    if requested is not None:
        rec["provenance"]["deterministic"] = {"requested": requested, "nondeterministic_ops": list(ops),
                                              "repeatable": requested and not ops}


def test_identical_needs_two_runs_deterministic_on_one_device_type():
    """CPU runs count as deterministic (the committed CPU records reproduce identically); CUDA runs only
    in deterministic mode with no op reported as non-deterministic; never across device types."""
    def rec(device=None, requested=None, ops=(), **eff):
        out = {"provenance": {"device": {"device": device}} if device else {}, "efficiency": dict(eff)}
        if device == "cuda":
            _on_cuda(out, requested, ops)
        return out

    cpu, cuda_plain, cuda_det = rec("cpu"), rec("cuda"), rec("cuda", True)
    cpu_before_device_names = rec(peak_memory_kind="cpu_peak_rss")  # only its memory kind says CPU
    assert repeatable(cpu, cpu) and repeatable(cpu, cpu_before_device_names)
    assert repeatable(cuda_det, cuda_det)
    assert not repeatable(cuda_plain, cuda_plain) and not repeatable(cuda_det, cuda_plain)
    assert not repeatable(cuda_det, rec("cuda", True, ["upsample_bilinear2d_backward_out_cuda"]))
    assert not repeatable(cpu, cuda_det) and not repeatable(cuda_det, cpu)
    assert not repeatable({}, {})  # a record that does not say where it ran


def test_same_matrix_is_within_noise_unless_both_runs_were_deterministic_on_one_device(prepared_world, tmp_path):
    protocol = load_protocol("synth-15-5")
    old = load_run(prepared_world["run"])
    on_cuda = load_run(_scratch_copy(prepared_world, tmp_path / "a", _on_cuda))
    result = compare(old, on_cuda, protocol, n_boot=50)
    assert result["identical_confusion"] and result["verdict"] == "within noise"
    assert all(r["delta"] == 0 and r["ci_covers_0"] for r in result["metrics"].values())
    assert result["determinism"]["recorded"]["device"] == "cpu" and result["determinism"]["new"]["device"] == "cuda"
    assert ("verdict: within noise (the same confusion matrix, but 'identical' needs two runs deterministic on one "
            "device type: recorded on cpu, re-run on cuda)") in render(result, old, on_cuda)

    det_a, det_b = (load_run(_scratch_copy(prepared_world, tmp_path / n, lambda r: _on_cuda(r, True))) for n in "bc")
    assert compare(det_a, det_b, protocol, n_boot=50)["verdict"] == "identical"
    plain = load_run(_scratch_copy(prepared_world, tmp_path / "d", lambda r: _on_cuda(r, False)))
    result = compare(det_a, plain, protocol, n_boot=50)
    assert result["verdict"] == "within noise" and "the re-run run was not deterministic on cuda" in render(
        result, det_a, plain)
    leaky = load_run(_scratch_copy(prepared_world, tmp_path / "e", lambda r: _on_cuda(r, True, ["index_add_cuda_"])))
    result = compare(det_a, leaky, protocol, n_boot=50)
    assert result["verdict"] == "within noise" and "index_add_cuda_" in render(result, det_a, leaky)


def test_a_cuda_record_reruns_on_cuda_where_there_is_one(prepared_world, tmp_path, monkeypatch):
    import zss_bench.engine.launch as launch

    cuda_record = load_run(_scratch_copy(prepared_world, tmp_path, lambda r: _on_cuda(r, True)))
    monkeypatch.setattr(launch, "visible_gpus", lambda: 0)
    p = plan(cuda_record)
    assert p.device == "cpu" and any("no CUDA device is visible here" in n for n in p.notes)
    assert "MODEL.DEVICE" not in p.opts  # the device is the plan's, never a carried override
    monkeypatch.setattr(launch, "visible_gpus", lambda: 1)
    assert plan(cuda_record).device == "cuda"
    two = load_run(_scratch_copy(prepared_world, tmp_path / "two",
                                 lambda r: (_on_cuda(r, True), r["training"].update(world_size=2))))
    with pytest.raises(ReproduceError, match="ran 2 processes on 2 GPUs, but only 1 CUDA device visible here"):
        plan(two)
    assert plan(load_run(prepared_world["run"])).device == "cpu"  # a CPU record re-runs on the CPU, GPUs or not


def test_refuses_to_write_into_the_results_root(prepared_world, capsys):
    rc, out, err = run_cli(capsys, "reproduce", str(prepared_world["run"]), "--out",
                           str(prepared_world["results"] / "re"))
    assert rc == 2 and "lies inside the results root" in err


def test_dry_run_lists_the_overrides_and_trains_nothing(prepared_world, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "reproduce", str(prepared_world["run"]), "--dry-run", "--out", str(tmp_path / "x"))
    assert rc == 0, err
    assert "SOLVER.MAX_ITER 4" in out and "ZSS.CLIP zss-micro-vit:random" in out and "ZSS.LABEL tiny" in out
    assert not (tmp_path / "x").exists()


def test_paths_are_stored_relative_to_their_roots(isolated_cache, monkeypatch, tmp_path):
    inside = isolated_cache / "synth-world" / "v1-seed0"
    assert portable_path(inside) == "$ZSS_BENCH_CACHE/synth-world/v1-seed0"
    assert expand_path("$ZSS_BENCH_CACHE/synth-world/v1-seed0") == str(inside)
    home = Path.home() / "ckpts" / "a.pt"
    assert portable_path(home) == "~/ckpts/a.pt" and expand_path("~/ckpts/a.pt") == str(home)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "ds"))
    assert portable_path(tmp_path / "ds" / "VOCdevkit") == "$DETECTRON2_DATASETS/VOCdevkit"
    assert portable_path("relative/dir") == "relative/dir" and portable_path("/elsewhere/x") == "/elsewhere/x"
    spec = f"zss-toy-vit:{isolated_cache / 'toy-clip' / 'k' / 'checkpoint.pt'}"
    assert portable_spec(spec) == "zss-toy-vit:$ZSS_BENCH_CACHE/toy-clip/k/checkpoint.pt"
    assert expand_spec(portable_spec(spec)) == spec and portable_spec("ViT-B-16:openai") == "ViT-B-16:openai"
    # another machine's cache: the same portable text lands in that machine's cache
    monkeypatch.setenv("ZSS_BENCH_CACHE", str(tmp_path / "other-cache"))
    assert expand_path("$ZSS_BENCH_CACHE/synth-world/v1-seed0") == str(tmp_path / "other-cache" / "synth-world" / "v1-seed0")
    assert os.path.isabs(expand_path("$ZSS_BENCH_CACHE"))
