"""Start 1..N processes per machine: detectron2's launcher on GPUs, the same scheme on CPU.

detectron2 0.6's ``launch`` insists on CUDA + NCCL; on CPU we start the processes the same way
with the gloo backend (and set up detectron2's per-machine process group), so
``--num-gpus 2`` on a CPU machine runs 2 gloo processes: enough to test the distributed path
(sharded evaluation, ``all_reduce`` of the confusion matrix, DDP) anywhere.
"""
from __future__ import annotations

import socket

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cpu_worker(local_rank, main_func, world_size, procs_per_machine, machine_rank, dist_url, args):
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
    finally:
        dist.destroy_process_group()


def launch(main_func, num_gpus: int = 1, num_machines: int = 1, machine_rank: int = 0, dist_url: str = "auto",
           args: tuple = ()):
    """Run ``main_func(*args)`` in ``num_gpus`` processes on each of ``num_machines`` machines."""
    procs = max(1, num_gpus)
    if torch.cuda.is_available() and num_gpus >= 1:
        return d2_launch(main_func, procs, num_machines=num_machines, machine_rank=machine_rank,
                         dist_url=dist_url, args=args)
    world = procs * num_machines
    if world == 1:
        return main_func(*args)
    if dist_url == "auto":
        if num_machines != 1:
            raise ValueError("--dist-url auto only works on one machine; pass tcp://HOST:PORT")
        dist_url = f"tcp://127.0.0.1:{_free_port()}"
    mp.start_processes(_cpu_worker, nprocs=procs, args=(main_func, world, procs, machine_rank, dist_url, args),
                       daemon=False, start_method="spawn")
