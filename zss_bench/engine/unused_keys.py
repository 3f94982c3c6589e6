"""Config keys that ``zss-bench run`` refuses to set, and why: the result of auditing every key of
detectron2's ``get_cfg()`` (and of the zss-bench/DeepLab keys) against the code a run executes.

A key that is accepted but read by nothing makes two "different" rows of one model: it changes the
config hash and the leaderboard label and nothing else. So a key is either read by some code path of
the engine, or setting it is refused in one line saying why. Refused keys stay in the config node at
their defaults (removing one would change the config hash of every committed record); what is refused
is *setting* them: any KEY VALUE override, or a method config file that changes the default.

Import-light (no detectron2): ``engine.preflight`` refuses the same keys before torch is imported.
``tests/test_config_keys.py`` checks the table against detectron2's config and the code.
"""
from __future__ import annotations

_DETECTION = ("zss-bench models are semantic segmentors (a body + the method's head): detectron2's "
              "detection/instance heads and proposals are never built")
_TRAIN_DATA = ("training reads zss-bench's own seeded data stream (engine/data.py), not detectron2's "
               "train loader or sampler")

# KEY or KEY-prefix (a whole subtree) -> why nothing reads it. Message: "KEY is not used by zss-bench run; WHY".
UNUSED: dict[str, str] = {
    # --- detectron2: engine / precision -----------------------------------------------------------
    "SOLVER.REFERENCE_WORLD_SIZE": "ZSSTrainer never rescales the batch or LR by world size "
                                   "(set SOLVER.IMS_PER_BATCH and SOLVER.BASE_LR for the total batch)",
    "VIS_PERIOD": "no training visualisations are written (`zss-bench plot` draws from records)",
    "GLOBAL": "detectron2's placeholder node; nothing reads it",
    "VERSION": "it is the config file format version (detectron2 upgrades older files when loading them), "
               "not a setting",
    # --- detectron2: evaluation (zss-bench's own evaluator: ZSS.EVAL.*, INPUT.MIN_SIZE_TEST/MAX_SIZE_TEST) ----
    "TEST.EVAL_PERIOD": "the run evaluates once, after training (no periodic evaluation hook)",
    "TEST.EXPECTED_RESULTS": "results are checked by `zss-bench reproduce`, not detectron2's verify_results",
    "TEST.AUG": "evaluation has no test-time augmentation (ZSS.EVAL.MODE whole | slide)",
    "TEST.PRECISE_BN": "there is no PreciseBN hook",
    "TEST.DETECTIONS_PER_IMAGE": _DETECTION,
    "TEST.KEYPOINT_OKS_SIGMAS": _DETECTION,
    # --- detectron2: data ------------------------------------------------------------------------------
    "DATALOADER.SAMPLER_TRAIN": _TRAIN_DATA,
    "DATALOADER.REPEAT_THRESHOLD": _TRAIN_DATA,
    "DATALOADER.FILTER_EMPTY_ANNOTATIONS": _TRAIN_DATA,
    "DATASETS.PROPOSAL_FILES_TRAIN": _DETECTION,
    "DATASETS.PROPOSAL_FILES_TEST": _DETECTION,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TRAIN": _DETECTION,
    "DATASETS.PRECOMPUTED_PROPOSAL_TOPK_TEST": _DETECTION,
    "INPUT.MIN_SIZE_TRAIN_SAMPLING": "the training mapper always picks one of INPUT.MIN_SIZE_TRAIN ('choice')",
    "INPUT.MASK_FORMAT": "targets are semantic maps; there are no instance masks",
    "INPUT.CROP.SINGLE_CATEGORY_MAX_AREA": "the training crop is a plain random crop (engine/data.py)",
    # --- detectron2: model -----------------------------------------------------------------------------
    **{key: _DETECTION for key in (
        "MODEL.ANCHOR_GENERATOR", "MODEL.PROPOSAL_GENERATOR", "MODEL.RPN", "MODEL.ROI_HEADS", "MODEL.ROI_BOX_HEAD",
        "MODEL.ROI_BOX_CASCADE_HEAD", "MODEL.ROI_MASK_HEAD", "MODEL.ROI_KEYPOINT_HEAD", "MODEL.RETINANET",
        "MODEL.PANOPTIC_FPN", "MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "MODEL.LOAD_PROPOSALS")},
    "MODEL.SEM_SEG_HEAD.NAME": "the body's decoder is always DeepLabV3+ (modeling/body.py), not a registry head",
    "MODEL.SEM_SEG_HEAD.NUM_CLASSES": "the classes come from the protocol (the body's decoder has no classifier)",
    "MODEL.SEM_SEG_HEAD.LOSS_WEIGHT": "the body's decoder has no loss of its own; the method's keys "
                                      "(MODEL.<METHOD>.*) weigh its losses",
    "MODEL.SEM_SEG_HEAD.LOSS_TYPE": "the body's decoder has no loss of its own; the method's keys "
                                    "(MODEL.<METHOD>.*) choose its losses",
    "MODEL.SEM_SEG_HEAD.PROJECT_FEATURES": "detectron2's DeepLabV3+ head projects every MODEL.SEM_SEG_HEAD.IN_FEATURES "
                                           "entry but the last (sizes: MODEL.SEM_SEG_HEAD.PROJECT_CHANNELS)",
    # --- detectron2 DeepLab project keys (added with the body) -----------------------------------------------
    "SOLVER.POLY_LR_POWER": "the LR schedule is detectron2's build_lr_scheduler (SOLVER.LR_SCHEDULER_NAME "
                            "WarmupMultiStepLR | WarmupCosineLR); DeepLab's WarmupPolyLR is not available",
    "SOLVER.POLY_LR_CONSTANT_ENDING": "the LR schedule is detectron2's build_lr_scheduler (SOLVER.LR_SCHEDULER_NAME "
                                      "WarmupMultiStepLR | WarmupCosineLR); DeepLab's WarmupPolyLR is not available",
    # --- zss-bench keys kept only so config hashes stay unchanged -----------------------------------------
    "SOLVER.GRAD_CLIP": "gradient clipping is detectron2's, applied by the optimizer: SOLVER.CLIP_GRADIENTS.ENABLED "
                        "True SOLVER.CLIP_GRADIENTS.CLIP_TYPE norm SOLVER.CLIP_GRADIENTS.CLIP_VALUE X",
    "ZSS.PROGRESS": "nothing reads it (detectron2's metric printer writes the progress lines)",
}

# KEY -> the option it comes from: the run overwrites these after the overrides, so an override would be
# silently replaced. Message: "KEY is set by zss-bench run from OPTION; ...". Method config files may hold
# them (a run's own config.yaml does): they are overwritten there too, harmlessly.
SET_BY_RUN: dict[str, str] = {
    "SEED": "--seed",
    "OUTPUT_DIR": "--output-dir",
    "DATASETS.TRAIN": "--protocol (its training split)",
    "DATASETS.TEST": "--protocol (its evaluation split)",
    "ZSS.METHOD": "--method",
    "ZSS.PROTOCOL": "--protocol",
    "ZSS.PROTOCOL_HASH": "--protocol",
    "ZSS.PROTOCOL_FILE": "--protocol",
    "ZSS.CONFIG_FILE": "--config",
    "ZSS.DATA_ROOT": "--data-root",
}

# KEY -> ((deciding KEY, the values under which KEY is read), ...), why: an override of KEY while a deciding
# key (after the method file and all overrides) has another value would do nothing, so it is refused.
_SGD = (("SOLVER.OPTIMIZER", ("SGD", "sgd")),)
_STEPS = (("SOLVER.LR_SCHEDULER_NAME", ("WarmupMultiStepLR",)),)
_CLIP = (("SOLVER.CLIP_GRADIENTS.ENABLED", (True,)),)
_CROP = (("INPUT.CROP.ENABLED", (True,)),)
_DEEPLAB = (("MODEL.BACKBONE.NAME", ("build_resnet_deeplab_backbone",)),)
_FPN = (("MODEL.BACKBONE.NAME", ("build_resnet_fpn_backbone", "build_retinanet_resnet_fpn_backbone")),)
ONLY_WITH: dict[str, tuple[tuple, str]] = {
    "SOLVER.MOMENTUM": (_SGD, "AdamW has no momentum term"),
    "SOLVER.NESTEROV": (_SGD, "AdamW has no momentum term"),
    "SOLVER.STEPS": (_STEPS, "only the multi-step schedule has steps"),
    "SOLVER.GAMMA": (_STEPS, "only the multi-step schedule has steps"),
    "SOLVER.CLIP_GRADIENTS.CLIP_TYPE": (_CLIP, "clipping is off"),
    "SOLVER.CLIP_GRADIENTS.CLIP_VALUE": (_CLIP, "clipping is off"),
    "SOLVER.CLIP_GRADIENTS.NORM_TYPE": (_CLIP + (("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ("norm",)),),
                                        "only norm clipping has a norm type"),
    "INPUT.CROP.SIZE": (_CROP, "the training images are not cropped"),
    "INPUT.CROP.TYPE": (_CROP, "the training images are not cropped"),
    "MODEL.RESNETS.STEM_TYPE": (_DEEPLAB, "only DeepLab's ResNet reads it"),
    "MODEL.RESNETS.RES4_DILATION": (_DEEPLAB, "only DeepLab's ResNet reads it"),
    "MODEL.RESNETS.RES5_MULTI_GRID": (_DEEPLAB, "only DeepLab's ResNet reads it"),
    **{f"MODEL.FPN.{leaf}": (_FPN, "only an FPN backbone reads it")
       for leaf in ("IN_FEATURES", "OUT_CHANNELS", "NORM", "FUSE_TYPE")},
}

# Keys nothing reads that a committed method config sets, so they are not refused (yet): see the README.
UNUSED_BUT_COMMITTED: dict[str, str] = {
    "DATALOADER.ASPECT_RATIO_GROUPING": _TRAIN_DATA + " (methods/_base/*.yaml set it to False)",
}


def unused_reason(key: str) -> str | None:
    """Why ``key`` is read by nothing (it or a parent node is in :data:`UNUSED`), else None."""
    parts = str(key).split(".")
    for n in range(len(parts), 0, -1):
        why = UNUSED.get(".".join(parts[:n]))
        if why is not None:
            return why
    return None


def refusal(key: str) -> str | None:
    """The one-line error for overriding ``key``, or None when it may be set."""
    why = unused_reason(key)
    if why is not None:
        return f"{key} is not used by zss-bench run; {why}"
    if key in SET_BY_RUN:
        return (f"{key} is set by zss-bench run from {SET_BY_RUN[key]}; use that option instead of a "
                "KEY VALUE override")
    return None


def is_refused(key: str) -> bool:
    return refusal(key) is not None


def inactive_override(opts: list, effective) -> str | None:
    """The one-line error for the first override in ``opts`` that a deciding key switches off (see
    :data:`ONLY_WITH`), else None. ``effective(KEY)``: the key's value after the method file and every override."""
    for key in [str(k) for k in opts[::2]]:
        if key not in ONLY_WITH:
            continue
        conditions, why = ONLY_WITH[key]
        for decider, values in conditions:
            value = effective(decider)
            if value not in values:
                shown = {}  # one spelling per value ("SGD", not "SGD | sgd")
                for v in values:
                    shown.setdefault(str(v).casefold(), str(v))
                wanted = " | ".join(shown.values())
                return (f"{key} is not used while {decider} is {value} ({why}); set {decider} {wanted} "
                        f"as well, or leave {key} out")
    return None
