"""Surface patterns of synthetic objects: the local class evidence a real image has and v1 lacks.

Why: in a real photo a 16x16 patch inside a cat shows fur, an eye or an ear, so a CLIP's dense tokens
carry class evidence locally. In the flat v1 world an object's interior is one colour: its *shape*
(half of every class name, and all that tells the unseen stars apart) exists only along its outline,
and the shipped teacher's dense tokens classify shape at chance (protocols/synth/FIDELITY.md). A
``textured`` world paints each shape with its own fine pattern (a "material": rings, checks,
stripes, a grid, dots) that follows the object's rotation, so every patch of an object carries
shape evidence, as texture and parts do on real objects. ``flat`` draws nothing and consumes no
random numbers, so flat worlds stay byte-identical to v1.
"""
from __future__ import annotations

import math

import numpy as np

SURFACES: tuple[str, ...] = ("flat", "textured", "coarse")
# surface -> (pattern period in pixels at 64 px, scaled with the image side; contrast: dark parts of a pattern
# keep 1 - this of the brightness, hue unchanged). "coarse": one period per 8-px ViT patch, stronger.
SURFACE_PARAMS = {"textured": (4.0, 0.35), "coarse": (8.0, 0.6)}


def _rings(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return (np.hypot(u, v) % p) < p / 2


def _checks(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return (np.floor(u / p) + np.floor(v / p)) % 2 == 0


def _stripes(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return (u % p) < p / 2


def _grid(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    return ((u % p) < p / 3) | ((v % p) < p / 3)


def _dots(u: np.ndarray, v: np.ndarray, p: float) -> np.ndarray:
    du, dv = (u % p) - p / 2, (v % p) - p / 2
    return du * du + dv * dv < (0.3 * p) ** 2


# One pattern per shape of synth.SHAPES (a test keeps the two in step).
PATTERNS = {"circle": _rings, "square": _checks, "triangle": _stripes, "cross": _grid, "star": _dots}


def check_surface(surface: object) -> str:
    if surface not in SURFACES:
        raise ValueError(f"surface must be one of {', '.join(SURFACES)}, got {surface!r}")
    return str(surface)


def surface_gain(rng: np.random.Generator, surface: str, shape: str, xs: np.ndarray, ys: np.ndarray,
                 cx: float, cy: float, angle: float, size: int) -> np.ndarray | None:
    """Brightness factor per object pixel (``xs``, ``ys``), or None for a flat surface.

    The pattern lives in the object's own frame (centred, rotated with it, random phase), so it
    turns with the shape; circles (angle 0) get a random pattern rotation instead.
    """
    if surface == "flat":
        return None
    base_period, contrast = SURFACE_PARAMS[surface]
    period = base_period * size / 64.0
    phase = rng.uniform(0.0, period, size=2)
    turn = angle if angle else float(rng.uniform(0.0, 2 * math.pi))
    c, s = math.cos(turn), math.sin(turn)
    dx, dy = xs + 0.5 - cx, ys + 0.5 - cy
    u = dx * c + dy * s + phase[0]
    v = -dx * s + dy * c + phase[1]
    dark = PATTERNS[shape](u, v, period)
    return 1.0 - contrast * dark.astype(np.float32)
