"""Where grid and sweep cells run: local processes, or a cluster through submitit (Slurm).

Every cell is the same ``zss-bench run`` command line whichever executor runs it (timm's
one-process-per-cell rule): a crash or a leak in one cell cannot touch another. The unit of work
is :class:`CellJob`, a picklable callable that runs the command with its output in the cell's
log, writes the failed-cell note if it fails and removes it when it succeeds, so the note is
written on the node that ran the cell, Slurm or local alike. The harness schedules nothing
itself: locally a bounded pool of processes, on a cluster one submitit job array per sweep.
"""
from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from zss_bench.records.failed import clear_note, write_note

INTERRUPTED = (130, -2)  # Ctrl-C: the cell is resumed by the next run, not noted as failed


@dataclass
class CellJob:
    """One cell's command, its log file and its failed-note file."""

    tag: str
    argv: list[str]
    log: str
    note: str
    identity: dict = field(default_factory=dict)  # what the failed note says the cell is
    env: dict = field(default_factory=dict)
    echo: bool = False  # also stream the output to this process's stdout

    def __call__(self) -> int:
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            devices = self.env.get("CUDA_VISIBLE_DEVICES")  # which GPU(s) the cell ran on, for its log
            shown = f"CUDA_VISIBLE_DEVICES={devices} " if devices is not None else ""
            log.write(f"$ {shown}{' '.join(self.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**os.environ, **self.env})
            for chunk in iter(lambda: proc.stdout.read1(65536), b""):
                log.write(chunk)
                if self.echo:
                    sys.stdout.buffer.write(chunk)
                    sys.stdout.flush()
            rc = proc.wait()
        if rc == 0:
            clear_note(self.note)
        elif rc not in INTERRUPTED:
            write_note(self.note, self.identity, rc, self.log, self.argv)
        return rc


def _cuda_device_count() -> int:
    """CUDA devices torch sees (0 without CUDA or without torch). The grid has imported torch already to
    hash the cells' configs, so this costs nothing there; tests replace it to fake a GPU host."""
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def visible_devices() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries: the parent's own list when it has
    one (indices or GPU-/MIG- UUIDs; CUDA stops at the first invalid entry, e.g. -1), else ``0..N-1``."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is None:
        return [str(i) for i in range(_cuda_device_count())]
    out = []
    for entry in (e.strip() for e in listed.split(",")):
        if not entry or entry.lstrip("-").isdigit() and int(entry) < 0:
            break
        out.append(entry)
    return out


class LocalExecutor:
    """Up to ``max_parallel`` cells at once on this machine, the CPU threads split between them. On a GPU host
    each running cell gets its own ``gpus_per_cell`` GPUs through ``CUDA_VISIBLE_DEVICES`` (without it, every
    cell would compute on the same first GPU): the visible devices are cut into groups of that size, handed
    out round-robin as cells start and returned when they end, so no two running cells share a GPU.
    The GPUs are counted when cells are about to run (counting imports torch, which a usage error must not)."""

    def __init__(self, max_parallel: int = 1, gpus_per_cell: int | None = None, devices: list[str] | None = None):
        from zss_bench.engine.preflight import UsageError

        if max_parallel < 1:
            raise UsageError(f"--max-parallel must be >= 1, got {max_parallel}")
        if gpus_per_cell is not None and gpus_per_cell < 0:
            raise UsageError(f"--gpus-per-cell must be >= 0, got {gpus_per_cell}")
        self.max_parallel, self._asked, self._devices = max_parallel, gpus_per_cell, devices
        self._resolved: tuple[list[str], int, list[list[str]]] | None = None

    def _resolve(self) -> tuple[list[str], int, list[list[str]]]:
        """(visible devices, GPUs per cell, the device groups); a one-line error when they cannot fit."""
        if self._resolved is None:
            from zss_bench.engine.preflight import UsageError

            devices = list(visible_devices() if self._devices is None else self._devices)
            k = (1 if devices else 0) if self._asked is None else int(self._asked)
            need = self.max_parallel * k
            if need > len(devices):
                seen = os.environ.get("CUDA_VISIBLE_DEVICES")
                where = f" (CUDA_VISIBLE_DEVICES={seen})" if seen is not None else ""
                raise UsageError(f"--max-parallel {self.max_parallel} x --gpus-per-cell {k} needs {need} "
                                 f"GPU{'' if need == 1 else 's'}, but {len(devices)} "
                                 f"{'is' if len(devices) == 1 else 'are'} visible{where}; lower --max-parallel or "
                                 "--gpus-per-cell (0 = cells on the CPU)")
            # the device groups; a GPU left over when the count is not a multiple of K is not used
            groups = [devices[i:i + k] for i in range(0, len(devices) - k + 1, k)] if k else []
            self._resolved = (devices, k, groups)
        return self._resolved

    @property
    def devices(self) -> list[str]:
        return self._resolve()[0]

    @property
    def gpus_per_cell(self) -> int:
        return self._resolve()[1]

    def describe(self) -> str:
        """One line: how the cells share this machine."""
        if self.gpus_per_cell:
            return (f"local: up to {self.max_parallel} cell(s) at once, each on {self.gpus_per_cell} of "
                    f"{len(self.devices)} visible GPU(s) (CUDA_VISIBLE_DEVICES per cell)")
        gpus = " with no GPU (CUDA_VISIBLE_DEVICES='')" if self.devices else ""
        return f"local: up to {self.max_parallel} cell(s) at once{gpus}"

    def run(self, jobs: list[CellJob], on_done=None) -> list[int]:
        import queue

        if not jobs:
            return []
        devices, per_cell, groups = self._resolve()
        threads = max(1, (os.cpu_count() or 1) // self.max_parallel)
        for job in jobs:
            job.echo = self.max_parallel == 1
            if self.max_parallel > 1:  # N processes x all cores each would thrash
                job.env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), **job.env}
            if per_cell > 1:  # a multi-GPU cell: detectron2's launcher starts one process per GPU
                at = job.argv.index("run") + 1 if "run" in job.argv else len(job.argv)
                if "--num-gpus" not in job.argv:
                    job.argv[at:at] = ["--num-gpus", str(per_cell)]
            if devices and not per_cell:  # --gpus-per-cell 0 on a GPU host: the CPU
                job.env = {**job.env, "CUDA_VISIBLE_DEVICES": ""}
        if devices:
            print(self.describe(), flush=True)
        free: queue.Queue = queue.Queue()
        for group in groups:
            free.put(group)

        def one(job: CellJob) -> int:
            group = free.get() if groups else None  # never waits: at most max_parallel <= groups run
            try:
                if group is not None:
                    job.env = {**job.env, "CUDA_VISIBLE_DEVICES": ",".join(group)}
                rc = job()
            finally:
                if group is not None:
                    free.put(group)  # to the back of the queue: round-robin over the devices
            if on_done is not None:
                on_done(job, rc)
            return rc

        if self.max_parallel == 1:
            return [one(job) for job in jobs]
        with ThreadPoolExecutor(self.max_parallel) as pool:
            return list(pool.map(one, jobs))


@dataclass
class SlurmOptions:
    """Resources of every job of one array (one sweep's cells need the same)."""

    partition: str | None = None
    gpus_per_node: int = 1
    cpus_per_task: int | None = None
    time_min: int = 240
    mem_gb: float | None = None
    account: str | None = None
    max_parallel: int = 64  # the array's %N: how many cells run at once
    sbatch: list[str] = field(default_factory=list)  # extra sbatch flags, e.g. ["--qos=high", "--constraint=a100"]
    setup: list[str] = field(default_factory=list)  # shell lines before the command (module load, conda activate)

    def additional_parameters(self) -> dict:
        """``--flag=value`` / ``--flag`` strings as submitit's ``slurm_additional_parameters``."""
        extra = {}
        for flag in self.sbatch:
            key, sep, value = str(flag).lstrip("-").partition("=")
            if not key:
                raise ValueError(f"--sbatch {flag!r}: expected --flag or --flag=value")
            extra[key.replace("-", "_")] = value if sep else True
        return extra


class SubmititExecutor:
    """The cells as one submitit job array: ``cluster='slurm'`` on a real cluster, ``'local'`` (submitit's
    own local processes) or ``'debug'`` (in this process) to try a sweep without one. ``dry_run`` (Slurm
    only) writes the sbatch script submitit would submit and the pickled cells, and submits nothing, so a
    submission can be inspected (and tested) where no cluster exists."""

    def __init__(self, folder: str | Path, cluster: str = "slurm", options: SlurmOptions | None = None,
                 dry_run: bool = False, wait: bool = False):
        if cluster not in ("slurm", "local", "debug"):
            raise ValueError(f"unknown submitit cluster '{cluster}' (slurm, local, debug)")
        self.folder, self.cluster, self.options = Path(folder), cluster, options or SlurmOptions()
        self.dry_run, self.wait = dry_run, wait
        self.jobs = []  # submitit Job objects of the last run()
        self.dry_script: Path | None = None  # the sbatch script of the last dry run

    def slurm_parameters(self) -> dict:
        """submitit SlurmExecutor parameters (sbatch flags) for every job of the array."""
        o = self.options
        params = {"job_name": "zss-bench", "time": o.time_min, "nodes": 1, "ntasks_per_node": 1,
                  "gpus_per_node": o.gpus_per_node, "array_parallelism": o.max_parallel}
        for key, value in (("partition", o.partition), ("cpus_per_task", o.cpus_per_task),
                           ("mem", None if o.mem_gb is None else f"{int(o.mem_gb)}GB"), ("account", o.account)):
            if value is not None:
                params[key] = value
        if o.sbatch:
            params["additional_parameters"] = o.additional_parameters()
        if o.setup:
            params["setup"] = list(o.setup)
        return params

    def executor(self):
        import submitit

        if self.cluster == "debug":
            return submitit.DebugExecutor(folder=self.folder)
        if self.cluster == "local":
            ex = submitit.LocalExecutor(folder=self.folder)
            ex.update_parameters(timeout_min=self.options.time_min)
            return ex
        ex = submitit.SlurmExecutor(folder=self.folder)
        ex.update_parameters(**self.slurm_parameters())
        return ex

    def dry_submission(self, jobs: list[CellJob]) -> Path:
        """What ``sbatch`` would get, written by submitit's own script builder (the array line included)
        with each cell pickled as submitit pickles it; nothing is submitted. Returns the script's path."""
        import shlex

        from submitit.core.utils import DelayedSubmission
        from submitit.slurm.slurm import _make_sbatch_string

        folder = Path(str(self.folder).replace("%j", "dry-run"))
        folder.mkdir(parents=True, exist_ok=True)
        for i, job in enumerate(jobs):
            DelayedSubmission(job).dump(folder / f"cell-{i}.pkl")
        command = " ".join([shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(self.folder))])
        script = _make_sbatch_string(command=command, folder=self.folder, map_count=len(jobs), **self.slurm_parameters())
        path = folder / "submission.sh"
        path.write_text(script)
        self.dry_script = path
        return path

    def run(self, jobs: list[CellJob], on_done=None) -> list[int | None]:
        """Submit ``jobs`` as one array; with ``wait`` (and always for local/debug) block for the exit
        codes, else return None per job (the cells write their own notes when they end)."""
        if not jobs:
            return []
        gpus = self.options.gpus_per_node if self.cluster == "slurm" else 1
        if gpus > 1:  # a multi-GPU cell: detectron2's launcher inside the job starts one process per GPU
            for job in jobs:
                at = job.argv.index("run") + 1 if "run" in job.argv else len(job.argv)
                if "--num-gpus" not in job.argv:
                    job.argv[at:at] = ["--num-gpus", str(gpus)]
        if self.dry_run:
            path = self.dry_submission(jobs)
            print(f"slurm dry run: {len(jobs)} cell(s) as one array; sbatch script {path}, cells pickled beside it")
            return [None] * len(jobs)
        ex = self.executor()
        with ex.batch():
            submitted = [ex.submit(job) for job in jobs]
        self.jobs = submitted
        if self.cluster == "slurm" and not self.wait:
            return [None] * len(jobs)
        codes = []
        for job, sub in zip(jobs, submitted):
            try:
                rc = sub.result()
            except Exception as exc:  # noqa: BLE001 - the scheduler killed it (time, memory, node failure)
                rc = -1
                write_note(job.note, {**job.identity, "scheduler_error": str(exc)[-2000:]}, rc,
                           sub.paths.stderr, job.argv)
            codes.append(rc)
            if on_done is not None:
                on_done(job, rc)
        return codes
