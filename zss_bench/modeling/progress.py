"""Where training stands, from inside a model (detectron2's event storage), for schedules that
change with progress (Chimera-Seg's SGD keep fraction) and per-step seeds; safe outside a trainer."""
from __future__ import annotations


def current_iteration() -> int:
    """The trainer's iteration, 0 outside a trainer (unit tests, evaluation)."""
    from detectron2.utils.events import get_event_storage

    try:
        return get_event_storage().iter
    except AssertionError:
        return 0


def training_progress(max_iter: int) -> float:
    """0 at the first iteration, 1 at the last."""
    return current_iteration() / max(1, max_iter - 1)


def put_scalar(name: str, value: float) -> None:
    """Log a scalar to the trainer's metrics (metrics.json, TensorBoard); a no-op outside a trainer."""
    from detectron2.utils.events import get_event_storage

    try:
        get_event_storage().put_scalar(name, value, smoothing_hint=False)
    except AssertionError:
        pass
