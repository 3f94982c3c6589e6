"""The inductive rule, enforced where training targets are produced.

A training target may only hold *seen* classes, re-indexed 0..S-1 in the protocol's seen
order, plus the ignore label: unseen pixels become ignore (or their images are dropped, per
the protocol's policy), and unseen class names are never exposed by the training view. Every
place that produces a training target calls :func:`assert_seen_only`, so a bug (or a
method) that lets an unseen id through fails loudly instead of quietly leaking labels.
"""
from __future__ import annotations

import numpy as np

from zss_bench.protocol import Protocol


class LeakageError(RuntimeError):
    """An unseen class reached the training side of an inductive protocol."""


def full_to_seen(protocol: Protocol) -> np.ndarray:
    """Array K: contiguous id -> index among seen classes, or the ignore label for unseen ids."""
    table = np.full(protocol.num_classes, protocol.ignore_label, dtype=np.int64)
    table[list(protocol.seen_ids)] = np.arange(len(protocol.seen_ids))
    return table


def training_lut(protocol: Protocol, native_lut: np.ndarray) -> np.ndarray:
    """Compose native -> contiguous -> seen-index; unseen and ignored natives -> ignore, invalid -> -1."""
    lut = np.asarray(native_lut, dtype=np.int64).copy()
    classes = (lut >= 0) & (lut < protocol.num_classes)
    lut[classes] = full_to_seen(protocol)[lut[classes]]
    return lut


def keeps_image(policy: str, has_unseen: bool, has_seen: bool) -> bool:
    """Whether a training image survives the protocol's unseen-pixel policy."""
    if policy == "ignore":
        return True
    if policy == "drop-images":  # ZS3Net: no image that shows an unseen class
        return not has_unseen
    if policy == "drop-empty":  # zsseg: no image left without a labelled pixel
        return has_seen
    raise ValueError(f"unknown unseen-pixel policy '{policy}'")


def assert_seen_only(target, num_seen: int, ignore_label: int, where: str = "training target") -> None:
    """Raise LeakageError unless every value of ``target`` is a seen index or ``ignore_label``."""
    values = np.unique(np.asarray(target.cpu() if hasattr(target, "cpu") else target))
    bad = values[(values != ignore_label) & ((values < 0) | (values >= num_seen))]
    if bad.size:
        raise LeakageError(
            f"{where} holds ids {bad[:10].tolist()} outside the {num_seen} seen classes (allowed: 0..{num_seen - 1} "
            f"and {ignore_label}); unseen labels must never reach training"
        )
