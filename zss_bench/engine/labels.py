"""Which overrides name a configuration, and the label derived from them: shared by ``zss-bench run``
(``build_run_config``) and ``zss-bench grid`` (cells run with ``--opts``). Import-light (no detectron2)."""
from __future__ import annotations

# Fields that identify *where/how often* a run happens, not *what* is trained: they do not
# enter the config hash, so seeds and output folders of one configuration group together.
# MODEL.WEIGHTS names a file (a re-scored cell's own checkpoint differs per seed), not a choice;
# the protocol's file and the method's config file are where the choices came from, not the choices.
# MODEL.DEVICE and ZSS.DETERMINISTIC say how the numbers are computed (which device, which kernels), not
# what is trained: CPU, CUDA and deterministic runs of one config are seeds of one cell, and each record
# names its device and determinism (provenance.device, provenance.deterministic) for `reproduce`.
NOT_HASHED = ("SEED", "OUTPUT_DIR", "ZSS.DATA_ROOT", "ZSS.LABEL", "SOLVER.CHECKPOINT_PERIOD", "DATALOADER.NUM_WORKERS",
              "MODEL.DEVICE", "ZSS.N_BOOT", "ZSS.PROGRESS", "MODEL.WEIGHTS", "ZSS.PROTOCOL_FILE", "ZSS.CONFIG_FILE",
              "ZSS.DETERMINISTIC")

# Keys added after records were committed: at their default they are left out of the config hash, so every
# earlier configuration keeps its hash (and its grid cells stay done); set to anything else, they are hashed.
HASHED_UNLESS_DEFAULT = {"SOLVER.AMP.DTYPE": "bfloat16", "ZSS.EVAL.AMP": False, "MODEL.CHANNELS_LAST": False}


def overrides_label(opts: list[str], skip: tuple[str, ...] = ()) -> str:
    """``LEAF=VALUE`` of each KEY VALUE override that names a configuration choice, comma-joined
    (``SOLVER.MAX_ITER 20`` -> ``MAX_ITER=20``); keys in :data:`NOT_HASHED` and ``skip`` are left
    out. ``""`` when nothing is left."""
    opts = [str(o) for o in opts]
    return ",".join(f"{key.split('.')[-1]}={value}" for key, value in zip(opts[::2], opts[1::2])
                    if key not in NOT_HASHED and key not in skip)
