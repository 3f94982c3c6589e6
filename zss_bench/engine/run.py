"""``zss-bench run``: protocol -> dataset -> method -> train -> evaluate -> record.

The parent process resolves everything that can fail cheaply (protocol, method, dataset
prepared, config) and then launches 1..N worker processes (``engine.launch``); each worker
registers the datasets, trains with ``ZSSTrainer``, evaluates with ``ZSSEvaluator`` and rank 0
writes the run record. The leakage guard runs in every worker before evaluation starts.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from zss_bench.engine.run_folder import RunFolderError, sha256_file  # noqa: F401  (RunFolderError: part of this API)
from zss_bench.protocol import Protocol, load_protocol

logger = logging.getLogger("zss_bench.run")
RECORD_POINTER = "record_dir.txt"
SYNTH_WORLD = {"seed": 0, "size": 64, "n_train": 2000, "n_val": 300}


class RunRequestError(ValueError):
    """A run request that cannot be carried out as given (weights that are not there, nothing to
    evaluate); the message names the option and what was expected, before any work starts."""


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training: says where it stopped and how to continue (one line, no traceback)."""

    def __init__(self, iteration: int, output_dir: str):
        super().__init__(f"interrupted at iteration {iteration}; the last checkpoint in {output_dir} is kept: "
                         "re-run the same command with --resume (or the grid) to continue")


@dataclass
class RunRequest:
    method: str
    protocol: str
    data_root: str | None = None
    clip: str = ""
    seed: int = 0
    output_dir: str | None = None
    resume: bool = False
    eval_only: bool = False
    overwrite: bool = False
    num_gpus: int = 1
    num_machines: int = 1
    machine_rank: int = 0
    dist_url: str = "auto"
    opts: list[str] = field(default_factory=list)
    results_root: str | None = None  # None: $ZSS_BENCH_RESULTS or ./zss-results (never the committed results/)
    work_root: str = "work_dirs"
    config_file: str | None = None  # the method's config YAML (None: picked by protocol, see MethodPlugin.config_file)
    save_predictions: int = 0  # keep the first N test predictions (with GT and image) in the record, for pictures
    device: str = "auto"  # auto | cpu | cuda: overrides MODEL.DEVICE (auto: CUDA when visible; engine.launch)


def default_synth_world_dir(protocol: Protocol | None = None) -> Path:
    """Where the default world of a synthetic protocol (synth-15-5 v1 when None) lives in the cache (not
    generated here); a textured world (v2) gets its own folder."""
    from zss_bench.cache import cache_path
    from zss_bench.data.synth import GENERATOR_VERSION

    w = SYNTH_WORLD
    surface = protocol.world["surface"] if protocol is not None else "flat"
    tail = "" if surface == "flat" else f"-{surface}"
    return cache_path("synth-world",
                      f"v{GENERATOR_VERSION}-seed{w['seed']}-{w['size']}px-{w['n_train']}-{w['n_val']}{tail}")


def default_synth_world(protocol: Protocol | None = None) -> Path:
    """The world of a synthetic protocol used when no --data-root is given: generated and prepared once, cached."""
    from zss_bench.data.synth import generate_world

    w = SYNTH_WORLD
    root = default_synth_world_dir(protocol)
    if not (root / "world.json").is_file() or json.loads((root / "world.json").read_text()).get("complete") is False:
        generate_world(root, seed=w["seed"], size=w["size"], n_train=w["n_train"], n_val=w["n_val"],
                       protocol=protocol if protocol is not None else "synth-15-5")
    return root


def ensure_dataset(protocol: Protocol, data_root: str | None) -> Path:
    """The dataset root for ``protocol``, prepared (synth: generated + prepared on demand)."""
    from zss_bench.data.layouts import dataset_root
    from zss_bench.data.prepare import PrepareError, load_index, prepare_dataset

    if protocol.dataset == "synth" and not data_root:
        root = default_synth_world(protocol)
    else:
        root = dataset_root(data_root, flag="--data-root")
    try:
        load_index(protocol, root)
    except PrepareError:
        if protocol.dataset != "synth":
            raise
        prepare_dataset("synth", root, protocol)
    return root


def _resolve(req: RunRequest):
    from zss_bench.engine.config import build_run_config, config_hash
    from zss_bench.plugins import get_method

    protocol = load_protocol(req.protocol)
    plugin = get_method(req.method)
    root = ensure_dataset(protocol, req.data_root)
    cfg = _with_device(build_run_config(plugin, protocol, seed=req.seed, output_dir=req.output_dir or "",
                                        data_root=str(root), clip=req.clip, opts=req.opts,
                                        config_file=req.config_file), req.device)
    if not req.output_dir:
        # the dataset root is not part of the config hash (it names no method choice), but two
        # roots must not share, and so wipe, one training folder
        data_tag = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:6]
        out = Path(req.work_root) / protocol.name / plugin.name / f"{config_hash(cfg)[:10]}-data{data_tag}-seed{req.seed}"
        cfg.defrost()
        cfg.OUTPUT_DIR = str(out)
        cfg.freeze()
    return protocol, plugin, root, cfg


def run_method(req: RunRequest) -> Path:
    """Train and evaluate one (method, protocol, seed); return the run record's directory.

    Everything that can be refused is refused before any work: the seed, the output locations
    (writable), the folder (locked by another run? holding another run's identity or an earlier
    run's checkpoints? weights to evaluate?). A run refused or failing before it trains leaves no
    stub folder behind."""
    from dataclasses import replace

    from zss_bench.engine import run_folder
    from zss_bench.engine.launch import determinism_scope, launch, requested_device, resolve_device
    from zss_bench.engine.preflight import check_seed
    from zss_bench.records.store import default_results_root
    from zss_bench.records.writable import check_writable_dir

    check_seed(req.seed)  # numpy (detectron2's seed_all_rng) takes [0, 2**32): refused at second 0, not 11 s in
    # the device type every process uses (and with it the backend), decided once, here: one line if impossible
    req = replace(req, device=resolve_device(requested_device(req.device, req.opts), req.num_gpus))
    main_machine = req.machine_rank == 0
    if main_machine:
        check_writable_dir(req.results_root or default_results_root(), "--results")
    if req.output_dir:
        check_writable_dir(req.output_dir, "--output-dir")
    protocol, plugin, root, cfg = _resolve(req)
    out = Path(cfg.OUTPUT_DIR)
    if not req.output_dir:
        check_writable_dir(out, "--work-dir")
    identity = run_folder.run_identity(cfg, plugin, protocol, root)  # a bad --clip fails here, folder untouched
    holder = (f"zss-bench run --method {req.method} --protocol {req.protocol} --seed {req.seed}"
              + (" --resume" if req.resume else "") + (" --eval-only" if req.eval_only else ""))
    with run_folder.claim(out, lock=main_machine, command=holder):
        if main_machine:
            _prepare_folder(req, plugin, cfg, out, identity)
        with determinism_scope(cfg.ZSS.DETERMINISTIC):
            launch(_worker, req.num_gpus, num_machines=req.num_machines, machine_rank=req.machine_rank,
                   dist_url=req.dist_url, args=(asdict(req), str(root), cfg.OUTPUT_DIR), device=req.device)
    pointer = out / RECORD_POINTER
    if not main_machine:
        return out
    if not pointer.is_file():
        raise RuntimeError(f"run finished without writing a record (see the log in {out})")
    return Path(pointer.read_text().strip())


def _with_device(cfg, device: str):
    """``cfg`` with ``MODEL.DEVICE`` set to the run's resolved device (``--device`` overrides the config
    file; MODEL.DEVICE is outside the config hash, so CPU and CUDA runs of one config are one cell)."""
    if device in ("cpu", "cuda"):
        cfg.defrost()
        cfg.MODEL.DEVICE = device
        cfg.freeze()
    return cfg


def _prepare_folder(req: RunRequest, plugin, cfg, out: Path, identity: dict) -> None:
    """Under the folder's lock: refuse what would destroy or misfile a run, then write the identity and
    ``config.yaml`` of this one."""
    from zss_bench.engine import run_folder
    from zss_bench.records.store import atomic_write_text

    if not req.resume and not req.eval_only:
        earlier = sorted(p.name for p in out.glob("model_*.pth"))
        if (earlier or (out / "last_checkpoint").exists()) and not req.overwrite:
            shown = ", ".join(earlier[-3:]) or "last_checkpoint"
            raise RunFolderError(
                f"{out} holds an earlier run's checkpoints ({shown}); --resume continues that run, "
                "--overwrite deletes them and starts over, --output-dir DIR trains elsewhere")
    else:
        run_folder.check_identity(out, identity, cfg, "--eval-only" if req.eval_only else "--resume")
    _check_weights(req, plugin, cfg, out)
    if not req.resume and not req.eval_only:
        for stale in [*out.glob("model_*.pth"), out / "last_checkpoint", out / "metrics.json", out / RECORD_POINTER]:
            stale.unlink(missing_ok=True)  # --overwrite: a fresh run must not silently continue an old one
    (out / RECORD_POINTER).unlink(missing_ok=True)
    run_folder.write_identity(out, identity)
    atomic_write_text(out / "config.yaml", cfg.dump())


def _check_weights(req: RunRequest, plugin, cfg, out: Path) -> None:
    """The weights a run starts from must be there: the folder's last checkpoint (``--resume``,
    ``--eval-only``) or ``MODEL.WEIGHTS``. ``--eval-only`` of a method that trains with neither would
    score random weights, so it is refused; a missing ``MODEL.WEIGHTS`` file is named in one line."""
    if not plugin.trains:
        return  # training-free: nothing is loaded
    pointer = out / "last_checkpoint"
    if (req.resume or req.eval_only) and pointer.is_file():
        name = pointer.read_text().strip()
        if not (out / name).is_file():
            raise RunFolderError(f"{pointer} names {name}, which is not in {out}; point it at a checkpoint "
                                 f"that is there ({', '.join(sorted(p.name for p in out.glob('model_*.pth'))) or 'none'})")
        return
    weights = str(cfg.MODEL.WEIGHTS or "")
    if not weights:
        if req.eval_only:
            raise RunRequestError(
                f"--eval-only: {out} holds no checkpoint and no MODEL.WEIGHTS is given, so there are no trained "
                f"weights of {plugin.name} to evaluate; train first, or pass MODEL.WEIGHTS /path/to/model.pth")
        return
    if "://" not in weights and not Path(weights).expanduser().is_file():
        what = "is a folder, not a checkpoint file" if Path(weights).expanduser().is_dir() else "does not exist"
        raise RunRequestError(f"MODEL.WEIGHTS {weights}: the file {what}")


def _worker(req_dict: dict, root: str, output_dir: str) -> None:
    """One process of a run (rank 0 writes the record)."""
    import zss_bench.detectron2_compat  # noqa: F401
    import torch
    from detectron2.utils import comm
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.engine.config import build_run_config, config_dict, config_hash
    from zss_bench.engine.launch import apply_determinism, nondeterministic_ops
    from zss_bench.engine.trainer import ZSSTrainer
    from zss_bench.plugins import get_method

    req = RunRequest(**req_dict)
    protocol = load_protocol(req.protocol)
    plugin = get_method(req.method)
    cfg = _with_device(build_run_config(plugin, protocol, seed=req.seed, output_dir=output_dir, data_root=root,
                                        clip=req.clip, opts=req.opts, config_file=req.config_file), req.device)
    apply_determinism(cfg.ZSS.DETERMINISTIC)  # before the model is built
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="detectron2")
    setup_logger(output_dir, distributed_rank=comm.get_rank(), name="zss_bench")
    torch.set_num_threads(max(1, torch.get_num_threads() // max(1, comm.get_local_size())))
    register_protocol(protocol, root)
    seed_all_rng(cfg.SEED)
    audit = _reset_text_audit()
    started = time.time()
    trains = plugin.trains and not req.eval_only
    if trains:
        trainer = ZSSTrainer(cfg, mapper=plugin.train_mapper)
        _check_model(plugin, trainer.bare_model)  # before any training is spent on it
        trainer.resume_or_load(resume=req.resume)
        resumed_from = trainer.start_iter
        try:
            trainer.train()
        except KeyboardInterrupt:
            raise RunInterrupted(int(getattr(trainer, "iter", resumed_from)), output_dir) from None
        model, storage, mapper = trainer.bare_model, trainer.storage, trainer.mapper
        step_seconds = getattr(trainer, "step_seconds", None)
        weights = {"origin": "trained here", "file": str(Path(output_dir) / "model_final.pth")}
    else:  # detectron2's own evaluation path: build the model, load weights, evaluate; no optimizer, no loader
        model = ZSSTrainer.build_model(cfg)
        _check_model(plugin, model)
        resumed_from, weights = _load_for_evaluation(model, cfg) if plugin.trains else (0, {"origin": "training-free"})
        storage = mapper = step_seconds = None
    train_time = time.time() - started
    leakage = _leakage_guard(protocol, audit, cfg, mapper)
    cm, evaluation, kept = _evaluate(cfg, model, protocol, req.save_predictions)
    if not comm.is_main_process():
        return
    from zss_bench.evaluation import score
    from zss_bench.records import collect_provenance, write_run
    from zss_bench.engine.precision import precision_block
    from zss_bench.records.efficiency import efficiency_block
    from zss_bench.records.provenance import determinism_block
    from zss_bench.records.fingerprint import fingerprint_dataset
    from zss_bench.records.paths import portable_path, portable_spec

    history = storage.history("total_loss") if storage is not None and "total_loss" in storage.histories() else None
    record = {
        "kind": "run",
        "protocol": {"name": protocol.name, "version": protocol.version, "hash": protocol.content_hash,
                     "file": portable_path(cfg.ZSS.PROTOCOL_FILE)},
        "method": {"name": plugin.name, "label": cfg.ZSS.LABEL, "config_hash": config_hash(cfg),
                   "config_file": portable_path(cfg.ZSS.CONFIG_FILE),
                   "declares": {"trains": plugin.trains, "uses_clip": plugin.uses_clip,
                                "text_classifier": plugin.text_classifier, "train_mapper": plugin.train_mapper},
                   "config": _portable_config(config_dict(cfg), portable_path, portable_spec)},
        "clip": _portable_clip(model.clip_record(), portable_spec),
        "training": {"performed": trains, "training_free": not plugin.trains,
                     "max_iter": cfg.SOLVER.MAX_ITER if plugin.trains else 0, "resumed_from_iter": resumed_from,
                     "eval_only": req.eval_only, "optimizer_built": trains,
                     "ims_per_batch": cfg.SOLVER.IMS_PER_BATCH, "world_size": comm.get_world_size(),
                     "final_total_loss": history.latest() if history else None, "train_time_s": round(train_time, 1),
                     "weights": {**weights, **({"file": portable_path(weights["file"])} if "file" in weights else {})},
                     "output_dir": portable_path(output_dir)},
        "leakage": leakage,
        "dataset": {"root": portable_path(root), "train_images": _train_size(cfg),
                    "test_set": fingerprint_dataset(cfg.DATASETS.TEST[0], image_ids=cm.image_stats.ids)},
        "metrics": score(cm, protocol, n_boot=cfg.ZSS.N_BOOT, seed=cfg.SEED),
        "efficiency": {**efficiency_block(model, evaluation, step_seconds, output_dir, cfg.MODEL.DEVICE),
                       "precision": precision_block(cfg, trained=trains)},
        "provenance": collect_provenance(seed=cfg.SEED, started=_iso(started), duration_s=round(time.time() - started, 1),
                                         world_size=comm.get_world_size(), device=cfg.MODEL.DEVICE,
                                         deterministic=determinism_block(cfg.ZSS.DETERMINISTIC, cfg.MODEL.DEVICE,
                                                                         nondeterministic_ops())),
    }
    from zss_bench.records.store import RecordError, atomic_write_text, default_results_root

    own = trains or ("file" in weights and Path(weights["file"]).resolve().parent == Path(output_dir).resolve())
    extra = _record_extras(record, output_dir, kept, own_training=own)
    results = req.results_root or default_results_root()
    try:
        run_dir = write_run(results, record, cm, extra_files=extra)
    except (OSError, RecordError) as exc:
        raise RecordError(_unwritten_record_message(req, results, output_dir, weights, exc)) from exc
    try:
        atomic_write_text(Path(output_dir) / RECORD_POINTER, str(run_dir))
    except OSError as exc:
        raise RecordError(f"the run record was written to {run_dir}, but {output_dir} is no longer writable "
                          f"({exc.strerror or exc})") from exc


def _unwritten_record_message(req: RunRequest, results: str, output_dir: str, weights: dict, exc) -> str:
    """Where the work of a run whose record could not be written is, and the command that writes the
    record from it (the same run, ``--eval-only`` on its own folder: same identity, same weights)."""
    import shlex

    why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    cmd = ["zss-bench", "run", "--method", req.method, "--protocol", req.protocol, "--seed", str(req.seed),
           *(["--data-root", req.data_root] if req.data_root else []), *(["--clip", req.clip] if req.clip else []),
           *(["--config", req.config_file] if req.config_file else []),
           "--output-dir", output_dir, "--eval-only", "--results", "WRITABLE_DIR", *map(str, req.opts)]
    where = (f"the weights are kept in {weights['file']}" if weights.get("file") else
             "this method trains nothing, so nothing is lost")
    return (f"could not write the run record under {results} ({why}); {where}; write the record with: "
            f"{shlex.join(cmd)}")


def _record_extras(record: dict, output_dir: str, kept: list, own_training: bool) -> dict:
    """Files the record keeps for pictures (and names in ``record``): detectron2's ``metrics.json``
    (the training curves; only when these weights were trained in this output folder, so an imported
    checkpoint never shows another run's curves) and the kept predictions."""
    from zss_bench.records.predictions import prediction_files
    from zss_bench.records.store import CURVES_FILE

    extra: dict = {}
    curves = Path(output_dir) / "metrics.json"
    if own_training and curves.is_file() and curves.stat().st_size > 0:
        extra[CURVES_FILE] = curves
    record["training"]["curves"] = CURVES_FILE if extra else None
    if kept:
        files, record["predictions"] = prediction_files(kept)
        extra.update(files)
    return extra


def _portable_config(doc: dict, portable_path, portable_spec) -> dict:
    """The resolved config with its machine paths relative to their roots (the hash is of the real one)."""
    doc["OUTPUT_DIR"] = portable_path(doc.get("OUTPUT_DIR", ""))
    doc["MODEL"]["WEIGHTS"] = portable_path(doc["MODEL"].get("WEIGHTS", ""))
    doc["ZSS"]["DATA_ROOT"] = portable_path(doc["ZSS"].get("DATA_ROOT", ""))
    doc["ZSS"]["CLIP"] = portable_spec(doc["ZSS"].get("CLIP", ""))
    return doc


def _portable_clip(block: dict | None, portable_spec) -> dict | None:
    if block and block.get("spec"):
        block = {**block, "spec": portable_spec(block["spec"])}
    return block


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds")


def _train_size(cfg) -> int:
    from detectron2.data import DatasetCatalog

    return len(DatasetCatalog.get(cfg.DATASETS.TRAIN[0]))


def _reset_text_audit():
    try:
        from zss_bench.clip.text_embeddings import text_encoder_audit
    except ImportError:  # pragma: no cover - the CLIP layer is part of the package
        return None
    text_encoder_audit.reset()
    return text_encoder_audit


def _load_for_evaluation(model, cfg) -> tuple[int, dict]:
    """--eval-only: the output folder's last checkpoint, else MODEL.WEIGHTS (detectron2's resume_or_load
    semantics) -> (the iteration the weights were saved after, 0 for an untrained model; where they come
    from). Weights count as *trained here* when the harness wrote them: this run's own output folder, a
    checkpoint carrying the trainer's zss-bench marker, or one beside a finished run's record pointer;
    anything else is *imported* (a released checkpoint), named by its sha256, and the leaderboard keeps
    such rows apart: released and retrained weights of one method are known to differ."""
    from detectron2.checkpoint import DetectionCheckpointer

    checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR)
    own = checkpointer.has_checkpoint()
    path = checkpointer.get_checkpoint_file() if own else cfg.MODEL.WEIGHTS
    checkpoint = checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=True)
    iteration = int(checkpoint.get("iteration", -1)) + 1 if own else 0
    if not path:
        return iteration, {"origin": "untrained"}
    marked = isinstance(checkpoint.get("trainer"), dict) and "zss_bench" in checkpoint["trainer"]
    if own or marked or (Path(path).parent / RECORD_POINTER).is_file():
        return iteration, {"origin": "trained here", "file": str(path)}
    return iteration, {"origin": "imported", "file": str(path), "sha256": sha256_file(path)}


def _check_model(plugin, model) -> None:
    """A method that declares CLIP must say which CLIP it ran with: never a record with a silent null."""
    from zss_bench.modeling.segmentor import ZSSSegmentor

    if not isinstance(model, ZSSSegmentor):
        raise TypeError(f"method {plugin.name}: {type(model).__name__} does not subclass zss_bench's ZSSSegmentor")
    if plugin.uses_clip and not model.clip_record():
        raise ValueError(f"method {plugin.name} declares uses_clip=True but its model {type(model).__name__} has no "
                         "CLIP record: call self.use_clip(clip) when the model is built")


def _leakage_guard(protocol: Protocol, audit, cfg, mapper) -> dict:
    """Fail the run if an unseen class name reached the text encoder before evaluation."""
    from zss_bench.data.inductive import LeakageError

    names = sorted(audit.names()) if audit is not None else []
    leaked = audit.leaked(protocol.unseen_names) if audit is not None else []
    if leaked:
        raise LeakageError(
            f"method {cfg.ZSS.METHOD} encoded unseen class name(s) {leaked} with the CLIP text encoder "
            f"before evaluation; in inductive ZSS only seen names ({len(protocol.seen_names)}) may reach training"
        )
    checked = mapper.targets_checked if mapper is not None and cfg.DATALOADER.NUM_WORKERS == 0 else None
    return {"text_encoder_names_before_eval": names, "unseen_names_before_eval": leaked,
            "training_targets_checked": checked,
            "training_target_guard": ("assert_seen_only on every training target; a violation aborts the run"
                                      if mapper is not None else "no training in this run: no target was read"),
            "train_view": _train_audit(cfg)}


def _train_audit(cfg) -> dict:
    from detectron2.data import MetadataCatalog

    return dict(getattr(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]), "zss_leakage_audit", {}) or {})


def _evaluate(cfg, model, protocol: Protocol, save_predictions: int = 0):
    """-> (confusion matrix, {images, seconds, peak memory}, the first ``save_predictions`` predictions)
    of evaluating ``model`` on the test split."""
    from detectron2.data import build_detection_test_loader
    from detectron2.evaluation import inference_on_dataset

    import torch

    from zss_bench.engine.evaluator import ZSSEvaluator
    from zss_bench.engine.precision import evaluation_precision
    from zss_bench.records.efficiency import PeakMemory

    model.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    evaluator = ZSSEvaluator(cfg.DATASETS.TEST[0], save_predictions=save_predictions)
    loader = build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    # inference_mode (no autograd bookkeeping at all; set_eval_classes ran outside it, so nothing the model
    # keeps becomes an inference tensor) and ZSS.EVAL.AMP's autocast around detectron2's loop
    with PeakMemory(cfg.MODEL.DEVICE) as peak, torch.inference_mode(), evaluation_precision(cfg).autocast():
        started = time.perf_counter()
        inference_on_dataset(model, loader, evaluator)
        seconds = time.perf_counter() - started
    return evaluator.cm, {"images": len(loader.dataset), "seconds": seconds, **peak.figures()}, evaluator.kept
