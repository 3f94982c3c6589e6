"""Start 1..N processes per machine on the device the run asked for, with the process-group backend
that device needs.

One rule decides the device and the launcher together (:func:`resolve_device`, :func:`backend_for`):
``--device auto`` (the default) is CUDA when a CUDA device is visible, else the CPU; ``--device cpu``
or ``cuda`` says it outright; the choice overrides the config's ``MODEL.DEVICE``. A CUDA run goes
through detectron2's launcher (NCCL, one process per GPU); a CPU run starts its processes the same
way with the gloo backend (and detectron2's per-machine process group), also on a machine that has
GPUs. So ``--num-gpus 2`` on a CPU machine runs 2 gloo processes: enough to test the distributed path
(sharded evaluation, ``all_reduce`` of the confusion matrix, DDP) anywhere.

``ZSS.DETERMINISTIC`` (:func:`determinism_scope` in the launching process, :func:`apply_determinism` in
each worker) switches on torch's deterministic algorithms, cuDNN determinism and the cuBLAS
workspace setting; ops that have no deterministic CUDA kernel still run (``warn_only``) and are
named in the record, which is what ``zss-bench reproduce`` reads.

Import-light: torch and detectron2 are imported by the functions that need them, so ``zss-bench run``
can refuse a contradictory device request before they load.
"""
from __future__ import annotations

import contextlib
import os
import re
import tempfile
import warnings
from pathlib import Path

DEVICES = ("auto", "cpu", "cuda")
# cuBLAS is deterministic only with one of these workspace configurations (CUDA >= 10.2)
CUBLAS_DETERMINISTIC = (":4096:8", ":16:8")
# torch's two wordings: an op without a deterministic kernel (warn_only), and a kernel that stays
# non-deterministic unless warn_only is off (memory-efficient attention's backward)
_NONDETERMINISTIC = re.compile(r"^(\S+) does not have a deterministic implementation|"
                               r"^(.+?) defaults to a non-deterministic algorithm")
_OPS: set[str] = set()  # ops torch reported as non-deterministic in this process since apply_determinism


def _usage_error(message: str) -> Exception:
    from zss_bench.engine.preflight import UsageError

    return UsageError(message)


def device_type(device: str) -> str:
    """``cuda`` for ``cuda``/``cuda:N``, else ``cpu``: the device *type* that decides the backend and
    whether a run can repeat bit for bit."""
    return "cuda" if str(device).startswith("cuda") else "cpu"


def backend_for(device: str) -> str:
    """The process-group backend of a run on ``device``: NCCL for CUDA, gloo for the CPU. A CPU model
    on an NCCL group fails when DDP is built, so the backend follows the device, never the machine."""
    return "nccl" if device_type(device) == "cuda" else "gloo"


def requested_device(device: str = "auto", opts=()) -> str:
    """``--device`` reconciled with a ``MODEL.DEVICE`` override among ``opts``, without torch:
    ``auto``, ``cpu`` or ``cuda``. With ``--device auto`` an explicit ``MODEL.DEVICE`` override is the
    request; ``--device cpu|cuda`` with a different ``MODEL.DEVICE`` override is an error (one line)."""
    if device not in DEVICES:
        raise _usage_error(f"--device {device}: choose one of {', '.join(DEVICES)}")
    opts = [str(o) for o in opts]
    given = [v for k, v in zip(opts[::2], opts[1::2]) if k == "MODEL.DEVICE"]
    if not given:
        return device
    value = given[-1]  # the last override wins, as in the config
    if value not in ("cpu", "cuda"):
        raise _usage_error(f"MODEL.DEVICE {value}: give the device type only, cpu or cuda (process i of a run "
                           "uses GPU i; choose the GPUs with CUDA_VISIBLE_DEVICES), or use --device")
    if device != "auto" and value != device:
        raise _usage_error(f"--device {device} contradicts the override MODEL.DEVICE {value}: give one of them")
    return value


def visible_gpus() -> int:
    """CUDA devices this process can use (0 without CUDA); does not initialise CUDA."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_device(device: str = "auto", num_gpus: int = 1) -> str:
    """The device type a run on this machine uses, ``cpu`` or ``cuda``: ``auto`` is CUDA when a CUDA
    device is visible. Asking for CUDA where none is visible, or for more processes on CUDA than there
    are visible GPUs, is a one-line error naming both numbers (detectron2 would stop at an assert)."""
    if device not in DEVICES:  # a concrete device from an earlier resolution passes through unchanged
        device = device_type(device)
    visible = visible_gpus()
    kind = ("cuda" if visible else "cpu") if device == "auto" else device
    if kind == "cuda" and not visible:
        raise _usage_error("--device cuda: no CUDA device is visible here (torch.cuda.is_available() is False); "
                           "use --device cpu, or --device auto")
    procs = max(1, int(num_gpus))
    if kind == "cuda" and procs > visible:
        shown = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={shown})" if shown is not None else ""
        raise _usage_error(f"--num-gpus {procs}: only {visible} CUDA device{'s' if visible != 1 else ''} visible "
                           f"here{where}; ask for at most {visible}, or --device cpu for {procs} gloo processes")
    return kind


def describe(device: str, num_gpus: int = 1, num_machines: int = 1) -> str:
    """``cuda, 2 processes (NCCL)``: the one line ``zss-bench run`` prints before it starts."""
    procs = max(1, int(num_gpus)) * max(1, int(num_machines))
    if procs == 1:
        return f"{device} (1 process)"
    return f"{device}, {procs} processes ({'NCCL' if backend_for(device) == 'nccl' else 'gloo'})"


# --------------------------------------------------------------------------- determinism


def _audit_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` while deterministic mode is on: note each op torch reports as having
    no deterministic implementation, and show its warning once (torch warns on every call)."""
    found = _NONDETERMINISTIC.match(str(message))
    if found:
        op = found.group(1) or found.group(2)
        if op in _OPS:
            return
        _OPS.add(op)
    _audit_warning.forward(message, category, filename, lineno, file, line)


_audit_warning.forward = warnings.showwarning


def apply_determinism(enabled: bool) -> None:
    """In a worker, before the model is built: ``ZSS.DETERMINISTIC`` on or off for this process.
    On: torch's deterministic algorithms (``warn_only``: an op with no deterministic CUDA kernel still
    runs, and :func:`nondeterministic_ops` names it), cuDNN determinism without autotuning, the cuBLAS
    workspace setting (inherited from :func:`determinism_scope`; set here too for workers started by
    another launcher, before this process first uses cuBLAS), and no memory-efficient attention kernel
    (its backward is non-deterministic under ``warn_only``; attention then takes the math kernel)."""
    import torch

    _OPS.clear()
    torch.use_deterministic_algorithms(bool(enabled), warn_only=True)
    torch.backends.cudnn.deterministic = bool(enabled)
    if not enabled:
        return
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_mem_efficient_sdp(False)
    if os.environ.get("CUBLAS_WORKSPACE_CONFIG") not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    warnings.filterwarnings("always", message=_NONDETERMINISTIC.pattern)  # every op reaches the audit...
    if warnings.showwarning is not _audit_warning:
        _audit_warning.forward = warnings.showwarning
        warnings.showwarning = _audit_warning  # ...which shows each once


def nondeterministic_ops() -> list[str]:
    """Ops that ran without a deterministic implementation in this process since :func:`apply_determinism`."""
    return sorted(_OPS)


@contextlib.contextmanager
def determinism_scope(enabled: bool):
    """Around a launch, in the launching process: with ``enabled``, the cuBLAS workspace setting is in the
    environment before any worker starts (spawned workers inherit it; cuBLAS reads it when first used).
    Afterwards torch's determinism switches, the warning hooks and the variable are as they were, so a
    run in this process (one process, the Python API, the tests) leaves none of them behind."""
    import torch

    saved = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
             torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark,
             os.environ.get("CUBLAS_WORKSPACE_CONFIG"), torch.backends.cuda.mem_efficient_sdp_enabled())
    if enabled and saved[4] not in CUBLAS_DETERMINISTIC:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_DETERMINISTIC[0]
    try:
        with warnings.catch_warnings():  # restores warnings.showwarning and the filters
            yield
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]
        torch.backends.cuda.enable_mem_efficient_sdp(saved[5])
        if saved[4] is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = saved[4]


# --------------------------------------------------------------------------- launch


class WorkerError(ValueError):
    """A user error (a refused request, a file that cannot be written) raised inside one of a run's gloo
    processes, brought back to the launching process as the same one line, not a spawn traceback."""


def _is_user_error(exc: BaseException) -> bool:
    from zss_bench.cli import _user_errors

    return isinstance(exc, _user_errors())


def _cpu_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args, error_dir=None):
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    import torch.distributed as dist
    from detectron2.utils import comm

    rank = machine_rank * procs_per_machine + local_rank
    dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size, rank=rank)
    num_machines = world_size // procs_per_machine
    for i in range(num_machines):  # detectron2's comm.get_local_rank() needs its local group
        ranks = list(range(i * procs_per_machine, (i + 1) * procs_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group
    comm.synchronize()
    try:
        main_func(*args)
    except BaseException as exc:
        if error_dir and _is_user_error(exc):  # the parent re-raises it as one line (WorkerError)
            message = " ".join(str(exc).split()) or type(exc).__name__
            Path(error_dir, f"rank{rank}.txt").write_text(message, encoding="utf-8")
        dist.destroy_process_group()  # no barrier: the other ranks may never reach one
        raise
    # Every rank tears the group down together: a rank that leaves while rank 0 still writes the
    # record could otherwise abort (SIGABRT) on a connection its peer closed under it.
    comm.synchronize()
    dist.destroy_process_group()


def _nccl_launch(main_func, procs: int, num_machines: int, machine_rank: int, dist_url: str, args: tuple):
    """detectron2's launcher: NCCL, one process per GPU (one process: ``main_func`` in this one)."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.engine import launch as d2_launch

    return d2_launch(main_func, procs, num_machines=num_machines, machine_rank=machine_rank,
                     dist_url=dist_url, args=args)


def launch(main_func, num_gpus: int = 1, num_machines: int = 1, machine_rank: int = 0, dist_url: str = "auto",
           args: tuple = (), device: str = "auto"):
    """Run ``main_func(*args)`` in ``num_gpus`` processes on each of ``num_machines`` machines, on
    ``device`` (resolved by :func:`resolve_device`): NCCL processes for CUDA, gloo processes for the CPU."""
    import torch.multiprocessing as mp

    device = resolve_device(device, num_gpus)
    procs = max(1, num_gpus)
    if backend_for(device) == "nccl":
        return _nccl_launch(main_func, procs, num_machines, machine_rank, dist_url, args)
    world = procs * num_machines
    if world == 1:
        return main_func(*args)
    if dist_url == "auto" and num_machines != 1:
        raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
    with tempfile.TemporaryDirectory(prefix="zss-bench-workers-") as error_dir:
        if dist_url == "auto":  # a file store: no rank hosts it, so no rank's exit can pull it from under another
            dist_url = Path(error_dir, "store").as_uri()
        try:
            mp.start_processes(_cpu_worker, nprocs=procs,
                               args=(main_func, world, procs, machine_rank, dist_url, args, error_dir),
                               daemon=False, start_method="spawn")
        except mp.ProcessRaisedException:
            reported = sorted(Path(error_dir).glob("rank*.txt"))
            if not reported:
                raise
            first = reported[0]
            raise WorkerError(f"{first.stem.replace('rank', 'process ')}: {first.read_text(encoding='utf-8')}") from None
