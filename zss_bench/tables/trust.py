"""Before a table shows a record's numbers, check them against the record's own confusion matrix.

Why: ``record.json`` is a text file anyone can edit, and a torn copy or a hand "fix" must not reach a
leaderboard. The matrix in ``confusion.npz`` is what every metric was computed from, so each headline metric
(S, U, hIoU, pAcc, mIoU) and each per-class IoU the table or report would show is recomputed from it and
must agree; a record whose numbers do not parse, disagree, or cannot be checked (no ``confusion.npz``) is
skipped with a warning naming it and what is wrong, and the rest of the table stands. Only the (K, K+1)
matrix is read, not the per-image statistics, so checking ~100 records costs a few hundredths of a second.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from zss_bench.records.fingerprint import check_fingerprint_block
from zss_bench.records.store import CONFUSION_FILE, LoadedRun

METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")
# percent points. Records store full float precision (zss-bench writes the matrix's values unrounded: the
# committed records agree to the last bit); 1e-6 also admits values rounded to 6 decimals.
TOLERANCE = 1e-6


class UntrustedRecord(ValueError):
    """A record's numbers do not parse or do not match its confusion matrix (the message says which)."""


def number(value, where: str) -> float | None:
    """``value`` as a float (None stays None: an undefined metric); anything else is an UntrustedRecord
    naming the key and what it holds."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UntrustedRecord(f"{where} is {value!r}, expected a number or null")
    if not math.isfinite(value):
        raise UntrustedRecord(f"{where} is {value!r}, expected a finite number or null")
    return float(value)


def _disagrees(stored: float | None, recomputed: float | None) -> bool:
    if stored is None or recomputed is None:
        return (stored is None) != (recomputed is None)
    return abs(stored - recomputed) > TOLERANCE + 1e-9 * abs(recomputed)


def _f(x) -> str:
    return "null" if x is None else f"{x:.6g}"


def _pct(x: float) -> float | None:
    return None if x is None or math.isnan(x) else 100.0 * float(x)


class RecordChecker:
    """Checks records one by one; protocols (the seen/unseen split) are loaded once per protocol hash."""

    def __init__(self):
        self._protocols: dict[str, object] = {}

    def protocol(self, record: dict):
        """The protocol definition the record was scored with, or None when it cannot be recovered here
        (an edited definition, a user's file that is not on this machine)."""
        block = record["protocol"]
        key = str(block.get("hash"))
        if key not in self._protocols:
            self._protocols[key] = self._find_protocol(block)
        return self._protocols[key]

    @staticmethod
    def _find_protocol(block: dict):
        from zss_bench.protocol import load_protocol, protocol_ref
        from zss_bench.records.paths import expand_path

        candidates = [block.get("name")]
        if isinstance(block.get("name"), str) and block.get("version") is not None:
            candidates.insert(0, protocol_ref(block))
        if isinstance(block.get("file"), str):
            candidates.append(expand_path(block["file"]))
        for spec in candidates:
            if not isinstance(spec, str) or not spec:
                continue
            try:
                proto = load_protocol(spec)
            except Exception:  # noqa: BLE001 - not installed / not here: try the next, else check what we can
                continue
            if proto.content_hash == block.get("hash"):
                return proto
        return None

    def check(self, run: LoadedRun, convention: str | None = None) -> tuple[str, dict]:
        """-> (the convention, its metrics block) for a table; UntrustedRecord says why not."""
        rec = run.record
        metrics = rec["metrics"]
        conv = convention or metrics.get("convention")
        if not isinstance(conv, str) or not conv:
            raise UntrustedRecord("its metrics name no headline convention ('metrics.convention' is "
                                  f"{metrics.get('convention')!r}); pass --convention mmseg|detectron2")
        conventions = metrics.get("conventions")
        if not isinstance(conventions, dict) or not isinstance(conventions.get(conv), dict):
            have = sorted(conventions) if isinstance(conventions, dict) else []
            raise UntrustedRecord(f"no metrics under convention '{conv}' (metrics.conventions has "
                                  f"{', '.join(have) or 'none'})")
        block = conventions[conv]
        headline = metrics.get("convention") if isinstance(metrics.get("convention"), str) else None
        stated = {(conv, k): number(block.get(k), f"metrics.conventions.{conv}.{k}") for k in METRICS}
        if headline:  # the top-level copy (read by sweep pivots and the report's record list)
            stated.update({("top", k): number(metrics.get(k), f"metrics.{k}") for k in METRICS if k in metrics})
        per_class = block.get("per_class")
        if per_class is not None and not isinstance(per_class, dict):
            raise UntrustedRecord(f"metrics.conventions.{conv}.per_class is {type(per_class).__name__}, expected "
                                  "an object")
        per_class = {name: number(v, f"metrics.conventions.{conv}.per_class[{name!r}]")
                     for name, v in (per_class or {}).items()}
        problem = check_fingerprint_block(rec)
        if problem:
            raise UntrustedRecord(problem)
        test_set = (rec.get("dataset") or {}).get("test_set")
        inter, gt, pred, num_images = self._totals(run, with_images=bool(test_set))
        if test_set and test_set["n_images"] != num_images:
            raise UntrustedRecord(f"dataset.test_set.n_images is {test_set['n_images']}, its {CONFUSION_FILE} "
                                  f"holds {num_images} images")
        proto = self.protocol(rec)
        bad, recomputed = [], {}
        for where, c in ((conv, conv), ("top", headline)):
            keys = [k for k in METRICS if (where, k) in stated]
            if c is None or not keys:
                continue
            if c not in ("mmseg", "detectron2"):
                raise UntrustedRecord(f"unknown convention '{c}' (expected mmseg or detectron2)")
            if c not in recomputed:
                recomputed[c] = self._recompute(inter, gt, pred, proto, c)
            again = recomputed[c]
            for k in keys:
                if again[k] != "?" and _disagrees(stated[(where, k)], again[k]):
                    name = f"metrics.{k}" if where == "top" else f"metrics.conventions.{c}.{k}"
                    bad.append(f"{name} is {_f(stated[(where, k)])}, its {CONFUSION_FILE} gives {_f(again[k])}")
        bad += self._per_class(per_class, recomputed[conv]["iou"], proto, conv)
        if proto is None:  # no split here: at least hIoU must be the harmonic mean of the S and U it states
            s, u, h = (stated[(conv, k)] for k in ("mIoU_seen", "mIoU_unseen", "hIoU"))
            if s is not None and u is not None:
                want = 0.0 if s + u == 0 else 2 * s * u / (s + u)
                if _disagrees(h, want):
                    bad.append(f"metrics.conventions.{conv}.hIoU is {_f(h)}, but 2·S·U/(S+U) of its S {_f(s)} and "
                               f"U {_f(u)} is {_f(want)}")
        if bad:
            raise UntrustedRecord("its numbers disagree with its own confusion matrix: " + "; ".join(bad[:4])
                                  + (f"; ... ({len(bad)} in all)" if len(bad) > 4 else ""))
        return conv, block

    @staticmethod
    def _totals(run: LoadedRun, with_images: bool):
        """Per-class (I, G, P) from the matrix alone (the per-image statistics are not read: speed), and the
        number of images when asked."""
        path = Path(run.path) / CONFUSION_FILE
        if not path.is_file():
            raise UntrustedRecord(f"no {CONFUSION_FILE} beside it: its metrics cannot be checked against the "
                                  "confusion matrix they were computed from")
        try:
            with np.load(path, allow_pickle=False) as z:
                matrix, missed = np.asarray(z["matrix"], np.int64), np.asarray(z["missed"], np.int64)
                num_images = int(z["num_images"]) if with_images else None
        except Exception as exc:  # noqa: BLE001 - a torn or foreign file: say so, never crash the table
            raise UntrustedRecord(f"{path.name} is unreadable ({type(exc).__name__}: {exc})") from None
        k = matrix.shape[0] if matrix.ndim == 2 else -1
        if matrix.shape != (k, k) or missed.shape != (k,):
            raise UntrustedRecord(f"{path.name}: matrix {matrix.shape} and missed {missed.shape} do not fit together")
        return np.diagonal(matrix).copy(), matrix.sum(1) + missed, matrix.sum(0), num_images

    @staticmethod
    def _recompute(inter, gt, pred, proto, conv: str) -> dict:
        from zss_bench.metrics import summarize

        k = len(inter)
        if proto is not None and proto.num_classes != k:
            raise UntrustedRecord(f"its {CONFUSION_FILE} has {k} classes, protocol {proto.name} has "
                                  f"{proto.num_classes}")
        if proto is not None:
            s = summarize(inter, gt, pred, list(proto.seen_ids), list(proto.unseen_ids), conv)
            out = {m: _pct(getattr(s, m)) for m in METRICS}
        else:  # mIoU, pAcc and per-class IoU do not need the split
            s = summarize(inter, gt, pred, list(range(k)), [], conv)
            out = {"mIoU": _pct(s.mIoU), "pAcc": _pct(s.pAcc), **{m: "?" for m in ("mIoU_seen", "mIoU_unseen", "hIoU")}}
        out["iou"] = [_pct(v) for v in s.iou]
        return out

    @staticmethod
    def _per_class(per_class: dict, iou: list, proto, conv: str) -> list[str]:
        if not per_class:
            return []
        names = list(proto.classes) if proto is not None else list(per_class)
        if len(names) != len(iou):
            return [f"metrics.conventions.{conv}.per_class has {len(per_class)} classes, its {CONFUSION_FILE} "
                    f"{len(iou)}"]
        bad = []
        for name, value in zip(names, iou):
            if name in per_class and _disagrees(per_class[name], value):
                bad.append(f"metrics.conventions.{conv}.per_class[{name!r}] is {_f(per_class[name])}, its "
                           f"{CONFUSION_FILE} gives {_f(value)}")
        return bad
