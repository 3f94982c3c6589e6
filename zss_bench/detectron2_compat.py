"""Make detectron2 importable on machines that only have its pure-Python build.

Import this module before any ``detectron2`` import in the project (``import
zss_bench.detectron2_compat`` or ``from zss_bench.detectron2_compat import detectron2``).

Why: detectron2 is not on PyPI; the installable ``pb1-detectron2==0.6`` sdist lacks the
C++ sources, so ``scripts/install_detectron2.sh`` installs it without ``detectron2._C``.
zss-bench never uses those compiled ops (deformable conv, rotated boxes/ROIAlign, COCO
fast-eval), but detectron2 imports ``_C`` at module import time. We register a stand-in
module whose every attribute use raises an error naming the op. Where a full detectron2 is
installed, its real ``_C`` is found first and nothing is replaced.

Pillow >= 10 removed ``Image.LINEAR`` (and friends) that detectron2 0.6's transforms use as
default arguments; we add the aliases only where they are missing.

We deliberately do NOT restore ``np.int``/``np.float``/``np.bool``: the detectron2 code
that needs them (``SemSegEvaluator``, ``utils/visualizer.py``, the class histogram in
``data/build.py``) is replaced by zss-bench's own evaluator and plots.
"""
from __future__ import annotations

import importlib.util
import sys
import types
import warnings

__all__ = ["MissingDetectron2Op", "detectron2", "has_compiled_ops"]

_WHY = (
    "this detectron2 was installed from the pb1-detectron2 0.6 sdist, which has no C++ "
    "sources, so compiled ops are unavailable; zss-bench does not use them. Install a full "
    "detectron2 build if you need them."
)


class MissingDetectron2Op(AttributeError):
    """Raised when code reaches a compiled detectron2 op that this install does not have.

    An AttributeError so that ``hasattr``/``getattr(..., default)`` probes behave normally.
    """


class _MissingCompiledOps(types.ModuleType):
    """Stand-in for ``detectron2._C``: any non-dunder attribute raises a clear error."""

    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        raise MissingDetectron2Op(f"detectron2._C.{name} is not available: {_WHY}")


def _install_pillow_aliases() -> None:
    from PIL import Image

    aliases = {
        "LINEAR": Image.Resampling.BILINEAR,
        "CUBIC": Image.Resampling.BICUBIC,
        "ANTIALIAS": Image.Resampling.LANCZOS,
        "NEAREST": Image.Resampling.NEAREST,
        "BILINEAR": Image.Resampling.BILINEAR,
        "BICUBIC": Image.Resampling.BICUBIC,
        "LANCZOS": Image.Resampling.LANCZOS,
    }
    for name, value in aliases.items():
        if not hasattr(Image, name):
            setattr(Image, name, value)


def _install_missing_compiled_ops() -> bool:
    """Register the stand-in ``detectron2._C`` unless a real one exists. Returns True if real."""
    if "detectron2._C" in sys.modules:
        return not isinstance(sys.modules["detectron2._C"], _MissingCompiledOps)
    if importlib.util.find_spec("detectron2") is None:  # one line naming the extra and detectron2's script
        from zss_bench.extras import require

        require("train", "torch", "detectron2", what="zss-bench's training and evaluation engine")
    if importlib.util.find_spec("detectron2._C") is not None:
        return True
    stub = _MissingCompiledOps("detectron2._C", "stand-in for detectron2's missing compiled ops")
    sys.modules["detectron2._C"] = stub
    import detectron2 as _d2

    _d2._C = stub  # `from detectron2 import _C` reads the attribute
    return False


_install_pillow_aliases()
# detectron2 0.6 scripts a few helpers at import; torch 2.14 warns about every one of them.
warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
_HAS_COMPILED_OPS = _install_missing_compiled_ops()

import detectron2  # noqa: E402  (after the shims, by design)


def has_compiled_ops() -> bool:
    """True when a full detectron2 with its compiled ``_C`` extension is installed."""
    return _HAS_COMPILED_OPS
