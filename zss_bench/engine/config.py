"""Assemble a run's detectron2 config: defaults + zss keys + method keys + method/protocol
file + command-line overrides, then the protocol-derived fields nobody may override."""
from __future__ import annotations

import hashlib
import json

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from detectron2.config import CfgNode as CN
from detectron2.config import get_cfg

# Fields that identify *where/how often* a run happens, not *what* is trained: they do not
# enter the config hash, so seeds and output folders of one configuration group together.
_NOT_HASHED = ("SEED", "OUTPUT_DIR", "ZSS.DATA_ROOT", "ZSS.LABEL", "SOLVER.CHECKPOINT_PERIOD", "DATALOADER.NUM_WORKERS",
               "MODEL.DEVICE", "ZSS.N_BOOT", "ZSS.PROGRESS")


def add_zss_config(cfg) -> None:
    """Keys every zss-bench run has (documented in the README)."""
    cfg.ZSS = CN()
    cfg.ZSS.METHOD = ""
    cfg.ZSS.PROTOCOL = ""
    cfg.ZSS.PROTOCOL_HASH = ""
    cfg.ZSS.DATA_ROOT = ""
    cfg.ZSS.CLIP = ""  # NAME:TAG | NAME:/path | dir | "" = the protocol's default (toy CLIP for synth)
    cfg.ZSS.LABEL = ""  # config label shown in leaderboards ("" = derived from overrides)
    cfg.ZSS.N_BOOT = 1000
    cfg.ZSS.PROGRESS = True
    cfg.ZSS.EVAL = CN()
    cfg.ZSS.EVAL.MODE = "whole"  # whole | slide
    cfg.ZSS.EVAL.SLIDE_CROP = 512
    cfg.ZSS.EVAL.SLIDE_STRIDE = 426
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # SGD | ADAMW
    cfg.SOLVER.GRAD_CLIP = 0.0  # max grad norm; 0 = off


def build_run_config(plugin, protocol, *, seed: int, output_dir: str, data_root: str = "", clip: str = "",
                     opts: list[str] | None = None):
    """The frozen config of one run of ``plugin`` on ``protocol``."""
    cfg = get_cfg()
    add_zss_config(cfg)
    plugin.add_config(cfg)
    cfg.merge_from_file(str(plugin.config_file(protocol.name)))
    opts = list(opts or [])
    if len(opts) % 2:
        raise ValueError(f"overrides must be KEY VALUE pairs, got an odd number: {opts}")
    cfg.merge_from_list(opts)
    cfg.ZSS.METHOD = plugin.name
    cfg.ZSS.PROTOCOL = protocol.name
    cfg.ZSS.PROTOCOL_HASH = protocol.content_hash
    cfg.ZSS.DATA_ROOT = str(data_root or "")
    if clip:
        cfg.ZSS.CLIP = clip
    if not cfg.ZSS.LABEL:
        pairs = [f"{opts[i].split('.')[-1]}={opts[i + 1]}" for i in range(0, len(opts), 2)
                 if opts[i] not in ("ZSS.LABEL",) and opts[i] not in _NOT_HASHED]
        cfg.ZSS.LABEL = ",".join(pairs) if pairs else "default"
    cfg.DATASETS.TRAIN = (f"zss_{protocol.name}_train",)
    cfg.DATASETS.TEST = (f"zss_{protocol.name}_{protocol.eval_split}",)
    cfg.SEED = int(seed)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg


def config_dict(cfg) -> dict:
    return json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def config_hash(cfg) -> str:
    """sha256 of the resolved config without seed / output folder / bookkeeping keys."""
    doc = config_dict(cfg)
    for dotted in _NOT_HASHED:
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
