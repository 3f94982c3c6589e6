"""Sweeps: the Cartesian product of ``KEY: [v1, v2]`` lists becomes grid cells.

A sweep is declared in a grid file (``sweep: {KEY: [v1, v2], ...}`` in a cell) or on the command
line (``zss-bench ablate --grid KEY=v1,v2``); both expand here, so one sweep is one set of cells
whichever way it was written. Each cell's label is derived from its values
(``CSH.NUM_BLOCKS=2,SGD.END_FRACTION=0.3``) and its identity is its *resolved configuration*: the config
hash of (method, every override), plus seed, protocol hash and CLIP weights. A swept point that
equals the method's defaults is therefore the ``default`` run already on record, and is not
trained twice.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field



class SweepError(ValueError):
    """A sweep declaration is malformed."""


@dataclass(frozen=True)
class Sweep:
    """One declared sweep: which keys vary over which values, the rest fixed."""

    method: str
    keys: tuple[str, ...]
    values: tuple[tuple[str, ...], ...]  # per key, in the declared order
    seeds: tuple[int, ...] = (0,)
    opts: tuple[str, ...] = ()  # fixed overrides added to every point (part of its identity)
    name: str = ""  # a title for tables; default: the method and the swept leaves

    @property
    def title(self) -> str:
        return self.name or f"{self.method}: " + " x ".join(short_key(k) for k in self.keys)

    def points(self) -> list[dict[str, str]]:
        """Every combination of the swept values, first key varying slowest."""
        return [dict(zip(self.keys, combo)) for combo in itertools.product(*self.values)]


@dataclass
class SweepPoint:
    """One swept configuration, as the overrides that make it and the label derived from them."""

    values: dict[str, str]
    opts: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        return ",".join(f"{short_key(k)}={v}" for k, v in self.values.items())

    @property
    def overrides(self) -> list[str]:
        return [*self.opts, *(x for k, v in self.values.items() for x in (k, v))]


def short_key(key: str) -> str:
    """The last two parts of a config key (``SAM.WEIGHT``): unambiguous where the leaf alone is not."""
    return ".".join(key.split(".")[-2:])


def sweep_points(sweep: Sweep) -> list[SweepPoint]:
    return [SweepPoint(values, list(sweep.opts)) for values in sweep.points()]


def split_values(text: str) -> list[str]:
    """``1,2,(1, 2)`` -> ``['1', '2', '(1, 2)']``: commas inside brackets or quotes do not split."""
    out, depth, quote, current = [], 0, "", ""
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            out.append(current.strip())
            current = ""
            continue
        current += ch
    out.append(current.strip())
    return out


_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)*$")


def parse_grid_args(items: list[str]) -> dict[str, list[str]]:
    """``['MODEL.X=1,2', 'SOLVER.MAX_ITER=10']`` -> ``{'MODEL.X': ['1', '2'], 'SOLVER.MAX_ITER': ['10']}``."""
    swept: dict[str, list[str]] = {}
    for item in items:
        key, sep, values = str(item).partition("=")
        key = key.strip()
        if not sep or not values.strip():
            raise SweepError(f"--grid {item!r}: expected KEY=v1,v2 (a config key, '=', comma-separated values)")
        _check_key(key, f"--grid {item!r}")
        if key in swept:
            raise SweepError(f"--grid names {key} twice; give all its values once: {key}=v1,v2")
        swept[key] = _check_values(split_values(values), f"--grid {item!r}")
    if not swept:
        raise SweepError("--grid needs at least one KEY=v1,v2")
    return swept


def sweep_from_mapping(where: str, method: str, mapping, seeds, opts, name: str = "") -> Sweep:
    """A :class:`Sweep` from a grid file's ``sweep:`` mapping (``where`` names it in errors)."""
    if not isinstance(mapping, dict) or not mapping:
        raise SweepError(f"{where}.sweep: expected a mapping KEY: [v1, v2, ...]")
    keys, values = [], []
    for key, vals in mapping.items():
        _check_key(str(key), f"{where}.sweep")
        if not isinstance(vals, list) or not vals:
            raise SweepError(f"{where}.sweep.{key}: expected a non-empty list of values, got {vals!r}")
        keys.append(str(key))
        values.append(tuple(_check_values([_yaml_value(v) for v in vals], f"{where}.sweep.{key}")))
    opts = [str(x) for x in (opts or [])]
    if len(opts) % 2:
        raise SweepError(f"{where}.opts must be KEY VALUE pairs")
    clash = set(keys) & set(opts[::2])
    if clash:
        raise SweepError(f"{where}: {', '.join(sorted(clash))} is both swept and fixed in opts")
    return Sweep(method, tuple(keys), tuple(values), tuple(int(s) for s in (seeds or [0])), tuple(opts), name)


def _yaml_value(value) -> str:
    """A YAML scalar as detectron2 reads an override (``True``, ``0.5``, ``(1, 2)``)."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(_yaml_value(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return str(value)


def _check_key(key: str, where: str) -> None:
    if not _KEY.match(key):
        raise SweepError(f"{where}: {key!r} is not a config key (dotted upper-case, e.g. MODEL.CHIMERA.SAM.WEIGHT)")
    if key in ("ZSS.LABEL", "SEED"):
        raise SweepError(f"{where}: {key} cannot be swept (labels are derived; seeds are their own list)")


def _check_values(values: list[str], where: str) -> list[str]:
    if any(v == "" for v in values):
        raise SweepError(f"{where}: an empty value (a stray comma?)")
    if len(set(values)) != len(values):
        raise SweepError(f"{where}: a value is listed twice ({values})")
    return values
