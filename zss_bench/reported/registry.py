"""The registry of published results: ``results/reported/<protocol>.yaml``, one file per protocol.

Published tables copy each other's numbers, sometimes wrongly, and the aggregator sites that kept them
are gone. Each entry here is one printed row of a primary source (the method's own paper or its official
README), with that source and the setting it was measured in. Numbers are kept exactly as printed: the
loader keeps each number's printed text (``40.20`` stays ``40.20``), so ``--check`` knows the rounding
the source applied and nothing downstream re-rounds a printed figure.

Structure is strict (unknown or missing keys, wrong types, duplicate YAML keys): the error names the file,
the entry and the key. What a registry may legitimately hold but must be fixed before it is trusted (no
source, an unknown protocol or setting, an h that contradicts its S and U, a duplicate) is not a load
error: :mod:`zss_bench.reported.check` reports it, one finding per line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zss_bench.protocol import _display_path, _StrictLoader, _found, _hint

__all__ = ["Printed", "RegistryError", "ReportedEntry", "Registry", "default_registry_dir", "load_registry",
           "load_registry_file", "SETTINGS", "ENTRY_KEYS", "UNITS"]

SETTINGS = ("inductive", "transductive")
FILE_KEYS = {"protocol": True, "entries": True, "description": False}  # key -> required
ENTRY_KEYS = {  # key -> required (every listed key must be present; its value may be null where allowed)
    "method": True, "variant": False, "paper": True, "venue": True, "year": True, "source": True,
    "setting": True, "backbone": True, "clip": True, "crop": True, "schedule": True,
    "S": True, "U": True, "h": True, "pAcc": False, "unit": False, "notes": True,
    "acknowledged": False,
}
UNITS = ("percent", "fraction")  # a few READMEs print 0.7840 for 78.40 %; kept as printed, with its unit
_NULLABLE = {"variant", "source", "backbone", "clip", "crop", "schedule", "S", "U", "h", "pAcc", "unit", "notes", "acknowledged"}
_NUMBERS = ("S", "U", "h", "pAcc")
_PRINTED_NUMBER = re.compile(r"^[0-9]+(\.[0-9]+)?$")


class RegistryError(ValueError):
    """A registry file that does not parse as the schema; the message names the file, entry and key."""


class Printed(float):
    """A number exactly as a source printed it: the value, and the text with its decimals."""

    text: str

    def __new__(cls, text: str) -> "Printed":
        obj = super().__new__(cls, float(text))
        obj.text = text
        return obj

    @property
    def decimals(self) -> int:
        return len(self.text.partition(".")[2])

    @property
    def half_unit(self) -> float:
        """Half the last printed digit: the printed value stands for anything within this of it."""
        return 0.5 * 10.0 ** -self.decimals

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Printed({self.text!r})"


class _PrintedLoader(_StrictLoader):
    """The protocols' strict loader (duplicate keys refused) that keeps every number's printed text."""


def _construct_number(loader: _PrintedLoader, node: yaml.ScalarNode) -> Printed | str:
    text = loader.construct_scalar(node)
    return Printed(text) if _PRINTED_NUMBER.match(text) else text  # .inf, 1e3, 0x10 ...: refused below


for _tag in ("tag:yaml.org,2002:float", "tag:yaml.org,2002:int"):
    _PrintedLoader.add_constructor(_tag, _construct_number)


@dataclass(frozen=True)
class ReportedEntry:
    """One printed row: ``S``, ``U``, ``h`` (and ``pAcc``) are :class:`Printed` or None (not printed)."""

    protocol: str
    method: str
    paper: str
    venue: str
    year: int
    source: str | None
    setting: str
    backbone: str | None
    clip: str | None
    crop: str | None
    schedule: str | None
    S: Printed | None
    U: Printed | None
    h: Printed | None
    notes: str | None = None
    variant: str | None = None
    pAcc: Printed | None = None
    unit: str = "percent"
    acknowledged: str | None = None  # why a printed h that contradicts S and U stands (the source's own error)
    file: str = ""
    index: int = 0  # position in its file, from 1: what error messages and findings call "entry N"

    @property
    def where(self) -> str:
        return f"{self.file}: entry {self.index} ({self.method}{f' [{self.variant}]' if self.variant else ''})"

    def percent(self, key: str) -> float | None:
        """``key``'s printed value in percent (a fraction times 100), for arithmetic against the harness."""
        value = getattr(self, key)
        return None if value is None else float(value) * (100.0 if self.unit == "fraction" else 1.0)

    @property
    def label(self) -> str:
        """The method as a table names it: ``zegclip [cascade]``."""
        return self.method + (f" [{self.variant}]" if self.variant else "")


@dataclass
class Registry:
    """Every entry of the files read, and the protocol each file declares (by file)."""

    entries: list[ReportedEntry] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # file -> its protocol key

    def for_protocol(self, protocol: str) -> list[ReportedEntry]:
        return [e for e in self.entries if e.protocol == protocol]

    @property
    def protocols(self) -> list[str]:
        return sorted({e.protocol for e in self.entries} | set(self.files.values()))


def default_registry_dir() -> Path:
    """``results/reported`` of the checkout this package runs from (the registry is committed data)."""
    return Path(__file__).resolve().parents[2] / "results" / "reported"


def _text(value: Any, where: str, key: str, nullable: bool) -> str | None:
    if value is None and nullable:
        return None
    if isinstance(value, Printed):
        value = value.text  # e.g. a crop printed as 512
    if not isinstance(value, str) or not value.strip():
        raise RegistryError(f"{where}: key '{key}': expected {'text or null' if nullable else 'text'}, "
                            f"found {_found(value)}")
    return value.strip()


def _number(value: Any, where: str, key: str, unit: str = "percent") -> Printed | None:
    if value is None:
        return None
    if isinstance(value, str) and _PRINTED_NUMBER.match(value.strip()):
        value = Printed(value.strip())  # a quoted "40.20" is as good as a bare one
    if not isinstance(value, Printed):
        extra = " (a ± spread goes in notes)" if isinstance(value, str) and "±" in value else ""
        raise RegistryError(f"{where}: key '{key}': expected a number exactly as printed, e.g. 84.3, or null; "
                            f"found {_found(value)}{extra}")
    top = 1 if unit == "fraction" else 100
    if not 0 <= value <= top:
        raise RegistryError(f"{where}: key '{key}': {value.text} is not a {unit} in [0, {top}]"
                            + (" (a source that prints fractions: unit: fraction)" if unit == "percent" else ""))
    return value


def _year(value: Any, where: str) -> int:
    if not isinstance(value, Printed) or value.decimals or not 1990 <= value <= 2100:
        raise RegistryError(f"{where}: key 'year': expected a year such as 2023, found {_found(value)}")
    return int(value)


def _entry(raw: Any, file: str, protocol: str, index: int) -> ReportedEntry:
    where = f"{file}: entry {index}"
    if not isinstance(raw, dict):
        raise RegistryError(f"{where}: expected a mapping of {', '.join(ENTRY_KEYS)}, found {_found(raw)}")
    if isinstance(raw.get("method"), str):
        where += f" ({raw['method']})"
    unknown = [k for k in raw if k not in ENTRY_KEYS]
    if unknown:
        key = str(unknown[0])
        raise RegistryError(f"{where}: unknown key '{key}'{_hint(key, ENTRY_KEYS)}; "
                            f"an entry has {', '.join(ENTRY_KEYS)}")
    missing = [k for k, required in ENTRY_KEYS.items() if required and k not in raw]
    if missing:
        raise RegistryError(f"{where}: missing key '{missing[0]}' (every entry names it; null where the source "
                            "prints none)" if missing[0] in _NULLABLE else f"{where}: missing key '{missing[0]}'")
    unit = raw.get("unit") or "percent"
    if unit not in UNITS:
        raise RegistryError(f"{where}: key 'unit': expected one of {', '.join(UNITS)} (default percent), "
                            f"found {_found(unit)}")
    values: dict[str, Any] = {"unit": unit}
    for key in ENTRY_KEYS:
        if key == "unit":
            continue
        if key in _NUMBERS:
            values[key] = _number(raw.get(key), where, key, unit)
        elif key == "year":
            values[key] = _year(raw.get(key), where)
        elif key == "setting":
            values[key] = _text(raw.get(key), where, key, nullable=False)  # its value is --check's to judge
        else:
            values[key] = _text(raw.get(key), where, key, nullable=key in _NULLABLE)
    return ReportedEntry(protocol=protocol, file=file, index=index, **values)


def load_registry_file(path: str | Path) -> tuple[str, list[ReportedEntry]]:
    """(the protocol the file declares, its entries); RegistryError on anything that is not the schema."""
    path = Path(path)
    file = _display_path(path.absolute())
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RegistryError(f"{file}: cannot read ({exc})") from None
    try:
        data = yaml.load(text, Loader=_PrintedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise RegistryError(f"{file}: malformed YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise RegistryError(f"{file}: expected a mapping with keys protocol and entries, found {_found(data)}")
    unknown = [k for k in data if k not in FILE_KEYS]
    if unknown:
        key = str(unknown[0])
        raise RegistryError(f"{file}: unknown top-level key '{key}'{_hint(key, FILE_KEYS)}; "
                            f"a registry file has {', '.join(FILE_KEYS)}")
    for key, required in FILE_KEYS.items():
        if required and key not in data:
            raise RegistryError(f"{file}: missing top-level key '{key}'")
    protocol = _text(data["protocol"], file, "protocol", nullable=False)
    if data.get("description") is not None:
        _text(data["description"], file, "description", nullable=False)
    entries = data["entries"]
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise RegistryError(f"{file}: key 'entries': expected a list of entries, found {_found(entries)}")
    return protocol, [_entry(raw, file, protocol, i) for i, raw in enumerate(entries, start=1)]


def load_registry(directory: str | Path | None = None) -> Registry:
    """Every ``*.yaml`` file of ``directory`` (default: the project's ``results/reported``), sorted by name."""
    directory = Path(directory) if directory is not None else default_registry_dir()
    if not directory.is_dir():
        raise RegistryError(f"reported-results folder {directory} does not exist (pass --dir DIR, a folder of "
                            "<protocol>.yaml files; the project's registry is results/reported)")
    registry = Registry()
    for path in sorted(directory.glob("*.yaml")):
        protocol, entries = load_registry_file(path)
        registry.files[str(path)] = protocol
        registry.entries += entries
    return registry
