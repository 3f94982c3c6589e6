"""Which optional part of zss-bench a missing module belongs to, and the one line that says how to get it.

Why: the core (protocols, evaluate, records, tables, metrics) installs without torch beside a user's own stack;
a verb or module that needs more must say which extra to install, never end in an ImportError traceback.
"""
from __future__ import annotations

DETECTRON2_HINT = "bash scripts/install_detectron2.sh (detectron2 is not on PyPI)"

# top-level module -> the extra of pyproject.toml that brings it
EXTRA_OF = {
    "torch": "train", "torchvision": "train", "open_clip": "train", "tensorboard": "train", "detectron2": "train",
    "matplotlib": "report", "submitit": "slurm", "mmengine": "mmseg",
}


TRAIN = ("train", ("torch", "torchvision", "open_clip", "detectron2"))

# verb -> (extra, modules) checked before the verb starts, so it fails in one line and not halfway through
# (grid and ablate: see verb_needs)
VERB_NEEDS = {
    "run": TRAIN, "demo": TRAIN, "reproduce": TRAIN, "speed": TRAIN, "toy-clip": ("train", ("torch", "open_clip")),
    "plot": ("report", ("matplotlib",)), "report": ("report", ("matplotlib",)),
}


def verb_needs(args) -> list[tuple[str, tuple[str, ...]]]:
    """The (extra, modules) pairs the parsed command ``args`` needs beyond the core (grid and ablate check
    every cell's config keys with detectron2 even for --dry-run; a Slurm submission also needs submitit)."""
    if args.command in ("grid", "ablate"):
        return [TRAIN] + ([("slurm", ("submitit",))] if getattr(args, "executor", "local") != "local" else [])
    return [VERB_NEEDS[args.command]] if args.command in VERB_NEEDS else []


class MissingExtraError(ImportError):
    """A module of an optional extra is not installed; the message is the one line to show."""


def hint_line(what: str, extra: str, module: str) -> str:
    """The one line: what needs which extra, and how to install it."""
    line = f'{what} needs the \'{extra}\' extra ({module} is not installed): pip install "zss-bench[{extra}]"'
    return line + (f", then {DETECTRON2_HINT}" if module == "detectron2" else "")


def missing_extra(exc: BaseException) -> str | None:
    """The extra whose absence raised ``exc`` (a ModuleNotFoundError of one of its modules), else None."""
    if isinstance(exc, MissingExtraError):
        return getattr(exc, "extra", None)
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return EXTRA_OF.get(exc.name.split(".")[0])
    return None


def install_hint(what: str, exc: BaseException) -> str | None:
    """``"<what> needs the 'train' extra: pip install "zss-bench[train]""`` for a missing extra's module (with
    detectron2's own script when that is what is missing), else None."""
    if isinstance(exc, MissingExtraError):
        return str(exc)
    extra = missing_extra(exc)
    if extra is None:
        return None
    return hint_line(what, extra, exc.name.split(".")[0])


def require(extra: str, *modules: str, what: str) -> None:
    """Raise :class:`MissingExtraError` naming ``extra`` unless every one of ``modules`` can be imported."""
    import importlib.util

    for module in modules:
        if importlib.util.find_spec(module) is None:
            exc = MissingExtraError(hint_line(what, extra, module))
            exc.extra = extra
            raise exc
