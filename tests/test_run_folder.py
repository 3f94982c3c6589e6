"""A run's output folder: its lock (one run at a time, stale locks taken over), the identity of the run
it holds (what --resume / --eval-only must match), and no stub folder left by a failed start."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from run_helpers import tiny
from zss_bench.engine.run_folder import (IDENTITY_FILE, LOCK_FILE, FolderLock, RunFolderLocked, claim,
                                         identity_difference, run_identity, write_identity)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _lock_doc(pid: int, host: str | None = None) -> str:
    return json.dumps({"pid": pid, "host": host or socket.gethostname(), "pid_start": None,
                       "started": "2026-01-01T00:00:00+00:00", "command": "zss-bench run ...", "token": "x"}) + "\n"


# --------------------------------------------------------------------------- lock


def test_lock_is_exclusive_and_names_its_holder(tmp_path):
    lock = FolderLock.acquire(tmp_path)
    doc = json.loads((tmp_path / LOCK_FILE).read_text())
    assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname() and doc["started"]
    with pytest.raises(RunFolderLocked, match=rf"in use by another run: pid {os.getpid()} on host .*another --output-dir"):
        FolderLock.acquire(tmp_path)
    lock.release()
    assert not (tmp_path / LOCK_FILE).exists()
    FolderLock.acquire(tmp_path).release()  # free again


def test_a_live_process_on_this_host_keeps_its_lock(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_FILE).write_text(_lock_doc(holder.pid))
        with pytest.raises(RunFolderLocked, match=rf"pid {holder.pid} on host"):
            FolderLock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()  # refused without touching it


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_message(tmp_path):
    dead = _dead_pid()
    (tmp_path / LOCK_FILE).write_text(_lock_doc(dead))
    said = []
    lock = FolderLock.acquire(tmp_path, announce=said.append)
    assert len(said) == 1 and f"stale lock {tmp_path / LOCK_FILE} of pid {dead}" in said[0] and "no longer running" in said[0]
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    lock.release()
    assert sorted(os.listdir(tmp_path)) == []  # no set-aside copy is left behind


def test_a_lock_of_another_host_is_refused_with_how_to_remove_it(tmp_path):
    (tmp_path / LOCK_FILE).write_text(_lock_doc(1, host="some-other-node"))
    with pytest.raises(RunFolderLocked, match=rf"host some-other-node.*cannot be checked from here.*delete {tmp_path / LOCK_FILE}"):
        FolderLock.acquire(tmp_path)


def test_a_broken_lock_file_is_refused_not_ignored(tmp_path):
    (tmp_path / LOCK_FILE).write_text("garbage")
    with pytest.raises(RunFolderLocked, match="not a zss-bench lock or was left half written.*delete"):
        FolderLock.acquire(tmp_path)


@pytest.mark.parametrize("stale", [False, True])
def test_racing_runs_get_one_lock(tmp_path, stale):
    """Two runs starting together (on a free folder, or both finding the same stale lock): one wins."""
    if stale:
        (tmp_path / LOCK_FILE).write_text(_lock_doc(_dead_pid()))
    barrier, won, lost = threading.Barrier(2), [], []

    def start():
        barrier.wait()
        try:
            won.append(FolderLock.acquire(tmp_path, announce=lambda msg: None))
        except RunFolderLocked as exc:
            lost.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(lost) == 1
    assert (tmp_path / LOCK_FILE).read_text() == won[0]._text
    won[0].release()
    assert not (tmp_path / LOCK_FILE).exists()


# --------------------------------------------------------------------------- claim: no stub folders


def test_a_failed_start_leaves_no_stub_folder(tmp_path):
    out = tmp_path / "work" / "synth-15-5" / "m" / "abc-seed0"
    with pytest.raises(RuntimeError):
        with claim(out, announce=lambda m: None):
            (out / "config.yaml").write_text("x")
            (out / "log.txt").write_text("x")
            raise RuntimeError("model build failed")
    assert not (tmp_path / "work").exists()  # every folder it created is gone
    with pytest.raises(KeyboardInterrupt):
        with claim(out):
            raise KeyboardInterrupt
    assert not (tmp_path / "work").exists()


def test_a_failed_start_keeps_what_the_folder_held_before(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        with claim(out):
            (out / "config.yaml").write_text("x")
            raise RuntimeError("refused")
    assert sorted(os.listdir(out)) == ["notes.txt"]


def test_a_run_that_trained_keeps_its_folder_when_it_fails(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with claim(out):
            (out / "model_before_nan_iter_0000003.pth").write_bytes(b"w")
            (out / "log.txt").write_text("x")
            raise RuntimeError("diverged")
    assert sorted(os.listdir(out)) == ["log.txt", "model_before_nan_iter_0000003.pth"]  # lock released


def test_a_refused_claim_touches_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_FILE).write_text(_lock_doc(1, host="elsewhere"))
    with pytest.raises(RunFolderLocked):
        with claim(out):
            pytest.fail("ran without the lock")
    assert sorted(os.listdir(out)) == [LOCK_FILE]


# --------------------------------------------------------------------------- identity


@pytest.fixture
def make_cfg(tmp_path):
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    protocol = load_protocol("synth-15-5")
    (tmp_path / "data").mkdir()

    def make(method="seen-only", seed=0, opts=(), clip="", root=None):
        plugin = get_method(method)
        root = root or tmp_path / "data"
        cfg = build_run_config(plugin, protocol, seed=seed, output_dir=str(tmp_path / "out"), data_root=str(root),
                               clip=clip, opts=list(opts))
        return cfg, run_identity(cfg, plugin, protocol, root)

    return make


def _folder_of(tmp_path, cfg, identity, legacy=False) -> Path:
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    (out / "config.yaml").write_text(cfg.dump())
    if not legacy:
        write_identity(out, identity)
    return out


@pytest.mark.parametrize("legacy", [False, True])
def test_identity_names_the_first_difference(tmp_path, make_cfg, legacy):
    """--resume --seed 7 on a seed-0 folder, or SOLVER.BASE_LR 0.5 on a folder trained at another rate, is
    another run; folders from before run_identity.json are compared on their config.yaml."""
    cfg, ident = make_cfg(opts=tiny(3))
    out = _folder_of(tmp_path, cfg, ident, legacy)
    assert identity_difference(out, ident, cfg) is None
    # keys outside the config hash (checkpoint period, bootstrap count, label) are not the run's identity
    same_cfg, same = make_cfg(opts=[*tiny(3), "SOLVER.CHECKPOINT_PERIOD", "7", "ZSS.N_BOOT", "9", "ZSS.LABEL", "x"])
    assert identity_difference(out, same, same_cfg) is None
    suffix = " (its config.yaml)" if legacy else ""
    seed_cfg, seed = make_cfg(seed=7, opts=tiny(3))
    assert identity_difference(out, seed, seed_cfg) == f"seed is 0 there, 7 here{suffix}"
    lr_cfg, lr = make_cfg(opts=[*tiny(3), "SOLVER.BASE_LR", "0.5"])
    assert identity_difference(out, lr, lr_cfg) == \
        f"config SOLVER.BASE_LR is {cfg.SOLVER.BASE_LR!r} there, 0.5 here{suffix}"
    other_root = tmp_path / "elsewhere"
    other_root.mkdir()
    root_cfg, moved = make_cfg(opts=tiny(3), root=other_root)
    assert identity_difference(out, moved, root_cfg) == \
        f"data root is {str((tmp_path / 'data').resolve())!r} there, {str(other_root.resolve())!r} here{suffix}"
    method_cfg, method = make_cfg(method="spnet", opts=tiny(3))
    assert identity_difference(out, method, method_cfg).startswith("method is 'seen-only' there, 'spnet' here")


def test_identity_compares_the_clip_weights_behind_a_spec(tmp_path, make_cfg):
    ckpt = tmp_path / "clip.pt"
    ckpt.write_bytes(b"weights v1")
    spec = f"zss-micro-vit:{ckpt}"
    cfg, ident = make_cfg(method="chimera", clip=spec, opts=tiny(3))
    assert ident["clip"]["spec"] == spec and len(ident["clip"]["sha256"]) == 64
    out = _folder_of(tmp_path, cfg, ident)
    other_cfg, other = make_cfg(method="chimera", clip="zss-micro-vit:random", opts=tiny(3))
    assert identity_difference(out, other, other_cfg) == f"CLIP spec is {spec!r} there, 'zss-micro-vit:random' here"
    ckpt.write_bytes(b"weights v2, same path")  # the same spec now names other weights
    again_cfg, again = make_cfg(method="chimera", clip=spec, opts=tiny(3))
    assert identity_difference(out, again, again_cfg).startswith(
        f"CLIP weights sha256 is {ident['clip']['sha256'][:12]}… there, {again['clip']['sha256'][:12]}… here")
    shipped = make_cfg(method="chimera", opts=tiny(3))[1]["clip"]  # the protocol's default: the pinned hash
    assert shipped["spec"] == "zss-toy-vit:synth-v1" and shipped["sha256"].startswith("0bbd62d0")


def test_a_folder_without_identity_or_config_holds_no_known_run(tmp_path, make_cfg):
    cfg, ident = make_cfg(opts=tiny(3))
    (tmp_path / "out").mkdir()
    assert identity_difference(tmp_path / "out", ident, cfg) is None
    assert json.loads(json.dumps(ident))["seed"] == 0 and IDENTITY_FILE == "run_identity.json"


def test_an_empty_metrics_file_is_not_training(tmp_path):
    """detectron2's JSONWriter opens metrics.json when the trainer is built, before any step."""
    out = tmp_path / "out"
    with pytest.raises(ValueError):
        with claim(out):
            (out / "metrics.json").touch()
            raise ValueError("the model failed a check")
    assert not out.exists()
    with pytest.raises(ValueError):
        with claim(out):
            (out / "metrics.json").write_text('{"iteration": 0}\n')
            raise ValueError("failed at step 3")
    assert (out / "metrics.json").is_file()
