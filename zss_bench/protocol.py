"""Benchmark protocols: the YAML files that pin down everything that changes the numbers.

Published zero-shot segmentation results differ in class lists, unseen splits, label
index spaces, unseen-pixel handling and metric conventions (see
``shared/research/methods.md`` section 3). A protocol file names each of these
choices explicitly; this module validates such a file strictly (a typo must fail loudly,
not silently change an experiment) and fingerprints its normalised content so every
result can record exactly which protocol produced it.

Versions: a shipped protocol whose definition changed keeps its old file; the new one is
``<name>@<version>.yaml`` (same ``name``, higher ``version``), loaded as ``"<name>@<version>"``;
``"<name>@<v>"`` also loads the bare ``<name>.yaml`` when that file is version ``v``, so a record's
``(name, version)`` always finds its definition (:func:`protocol_ref`).

Public API: :func:`load_protocol`, :func:`list_protocols`, :func:`protocol_ref`, :class:`Protocol`,
:class:`ProtocolError`.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from zss_bench.registry import UnknownNameError, suggest

__all__ = [
    "Protocol",
    "ProtocolError",
    "load_protocol",
    "list_protocols",
    "protocol_from_dict",
    "protocol_ref",
    "protocols_dir",
]

DATASETS = ("voc", "coco-stuff", "context", "synth")
BACKGROUND_MODES = ("ignored", "class")
UNSEEN_PIXEL_POLICIES = ("ignore", "drop-images", "drop-empty")
HEADLINE_CONVENTIONS = ("mmseg", "detectron2")
PROMPT_KINDS = ("single", "ensemble")
MAX_LABEL = 65535  # largest value a 16-bit annotation PNG can hold

_REQUIRED_KEYS = (
    "name", "version", "description", "dataset", "classes", "unseen", "ignore_label",
    "native_ids", "background", "evaluation", "prompts", "image_sets",
)
_OPTIONAL_KEYS = ("class_aliases", "training", "references", "world")
WORLD_SURFACES = ("flat", "textured", "coarse")  # = zss_bench.data.synth_surfaces.SURFACES (a test keeps them equal)
DEFAULT_WORLD = {"surface": "flat", "teacher": "zss-toy-vit:synth-v1"}  # synth-15-5 v1, before `world` existed


# --------------------------------------------------------------------------- errors


def _display_path(path: Path | None) -> str:
    if path is None:
        return "<protocol>"
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


class ProtocolError(ValueError):
    """An invalid protocol file; the message names the file, the field and the problem."""

    def __init__(self, path: Path | None, field: str | None, detail: str) -> None:
        self.path = path
        self.field = field
        self.detail = detail
        where = _display_path(path)
        super().__init__(f"{where}: field '{field}': {detail}" if field else f"{where}: {detail}")


def _found(value: Any) -> str:
    """Describe a YAML value for "expected X, found Y" messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {value!r}"
    if isinstance(value, int):
        return f"integer {value}"
    if isinstance(value, float):
        return f"number {value!r}"
    if isinstance(value, str):
        return f"string {value!r}"
    if isinstance(value, list):
        return f"a list of {len(value)} items"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _hint(name: str, choices: Any) -> str:
    hints = suggest(name, choices, n=1)
    return f" (did you mean '{hints[0]}'?)" if hints else ""


# --------------------------------------------------------------------------- YAML


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that rejects duplicate mapping keys (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        self.flatten_mapping(node)
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
            except TypeError:  # unhashable key; let the base class report it
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping", node.start_mark,
                    f"found duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(raw: bytes, path: Path | None) -> Any:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(path, None, f"file is not valid UTF-8 ({exc})") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise ProtocolError(path, None, f"malformed YAML{where}: {problem}") from None


# --------------------------------------------------------------------------- validation


class _Validator:
    """Checks one raw YAML document and builds its normalised dict."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    def fail(self, field: str | None, detail: str) -> ProtocolError:
        return ProtocolError(self.path, field, detail)

    # -- primitive checks
    def mapping(self, value: Any, field: str, required: tuple[str, ...],
                optional: tuple[str, ...] = ()) -> dict:
        if not isinstance(value, dict):
            raise self.fail(field or None, f"expected a mapping, found {_found(value)}")
        allowed = required + optional
        prefix = f"{field}." if field else ""
        for key in value:
            if not isinstance(key, str):
                raise self.fail(field or None, f"keys must be strings, found {_found(key)}")
            if key not in allowed:
                raise self.fail(f"{prefix}{key}", f"unknown key{_hint(key, allowed)}; "
                                f"allowed keys: {', '.join(allowed)}")
        for key in required:
            if key not in value:
                raise self.fail(f"{prefix}{key}", "required field is missing")
        return value

    def string(self, value: Any, field: str) -> str:
        if not isinstance(value, str):
            raise self.fail(field, f"expected a string, found {_found(value)}")
        if not value.strip():
            raise self.fail(field, "expected a non-empty string")
        if value != value.strip():
            raise self.fail(field, f"{value!r} has leading or trailing whitespace")
        return value

    def integer(self, value: Any, field: str, lo: int, hi: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(field, f"expected an integer, found {_found(value)}")
        if value < lo or (hi is not None and value > hi):
            bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
            raise self.fail(field, f"expected an integer {bound}, found {value}")
        return value

    def choice(self, value: Any, field: str, options: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in options:
            hint = _hint(value, options) if isinstance(value, str) else ""
            raise self.fail(field, f"expected one of {', '.join(options)}; found {_found(value)}{hint}")
        return value

    def list_of(self, value: Any, field: str, *, non_empty: bool = True) -> list:
        if not isinstance(value, list):
            raise self.fail(field, f"expected a list, found {_found(value)}")
        if non_empty and not value:
            raise self.fail(field, "expected a non-empty list")
        return value

    # -- the document
    def run(self, raw: Any) -> dict:
        if not isinstance(raw, dict):
            extra = " (empty file?)" if raw is None else ""
            raise self.fail(None, f"top level must be a mapping, found {_found(raw)}{extra}")
        self.mapping(raw, "", _REQUIRED_KEYS, _OPTIONAL_KEYS)

        name = self.string(raw["name"], "name")
        version = self.integer(raw["version"], "version", 1)
        if self.path is not None and self.path.stem not in (name, f"{name}@{version}"):
            raise self.fail("name", f"expected '{self.path.stem}' (the file name without .yaml; a later version "
                            f"of a protocol: <name>@<version>.yaml), found '{name}' version {version}")
        doc: dict[str, Any] = {
            "name": name,
            "version": version,
            "description": self._description(raw["description"]),
            "dataset": self.choice(raw["dataset"], "dataset", DATASETS),
        }
        classes = self._classes(raw["classes"])
        aliases = self._aliases(raw.get("class_aliases", {}), classes)
        lookup = _name_lookup(classes, aliases)
        doc["classes"] = classes
        doc["class_aliases"] = aliases
        doc["unseen"] = self._unseen(raw["unseen"], classes, lookup)
        doc["ignore_label"] = self._ignore_label(raw["ignore_label"], len(classes))
        doc["native_ids"] = self._native_ids(raw["native_ids"], len(classes))
        doc["background"] = self._background(raw["background"], lookup)
        doc["training"] = self._training(raw.get("training", {}))
        image_sets = self._image_sets(raw["image_sets"])
        doc["evaluation"] = self._evaluation(raw["evaluation"], image_sets)
        doc["prompts"] = self._prompts(raw["prompts"])
        doc["image_sets"] = image_sets
        doc["references"] = self._references(raw.get("references", []))
        if "world" in raw:  # only when written: older protocols keep their hash
            doc["world"] = self._world(raw["world"], doc["dataset"])
        return doc

    def _world(self, value: Any, dataset: str) -> dict:
        """How a generated world is drawn and which teacher is its CLIP (synthetic protocols only)."""
        if dataset != "synth":
            raise self.fail("world", f"only a synthetic protocol (dataset: synth) generates a world; "
                            f"this one is for dataset {dataset!r}")
        self.mapping(value, "world", (), ("surface", "teacher"))
        return {"surface": self.choice(value.get("surface", DEFAULT_WORLD["surface"]), "world.surface",
                                       WORLD_SURFACES),
                "teacher": self.string(value.get("teacher", DEFAULT_WORLD["teacher"]), "world.teacher")}

    def _description(self, value: Any) -> str:
        if not isinstance(value, str):
            raise self.fail("description", f"expected a string, found {_found(value)}")
        return value.strip()  # folded/literal YAML scalars differ only in trailing newlines

    def _classes(self, value: Any) -> list[str]:
        names = self.list_of(value, "classes")
        first: dict[str, int] = {}
        for i, item in enumerate(names):
            cname = self.string(item, f"classes[{i}]")
            key = cname.casefold()
            if key in first:
                raise self.fail(f"classes[{i}]", f"duplicate class '{cname}' "
                                f"(same as classes[{first[key]}], compared case-insensitively)")
            first[key] = i
        return list(names)

    def _aliases(self, value: Any, classes: list[str]) -> dict[str, str]:
        if not isinstance(value, dict):
            raise self.fail("class_aliases", f"expected a mapping, found {_found(value)}")
        by_folded = {c.casefold(): c for c in classes}
        out: dict[str, str] = {}
        seen: set[str] = set()
        for alias, target in value.items():
            fld = f"class_aliases.{alias}"
            alias = self.string(alias, "class_aliases")
            if alias.casefold() in by_folded:
                raise self.fail(fld, f"alias '{alias}' is already a class name")
            if alias.casefold() in seen:
                raise self.fail(fld, f"duplicate alias '{alias}' (compared case-insensitively)")
            seen.add(alias.casefold())
            target = self.string(target, fld)
            if target.casefold() not in by_folded:
                raise self.fail(fld, f"'{target}' is not one of the classes{_hint(target, classes)}")
            out[alias] = by_folded[target.casefold()]
        return dict(sorted(out.items()))

    def _unseen(self, value: Any, classes: list[str], lookup: dict[str, int]) -> list[str]:
        items = self.list_of(value, "unseen")
        ids: dict[int, int] = {}
        for i, item in enumerate(items):
            fld = f"unseen[{i}]"
            uname = self.string(item, fld)
            idx = lookup.get(uname.casefold())
            if idx is None:
                raise self.fail(fld, f"'{uname}' is not one of the classes{_hint(uname, classes)}")
            if idx in ids:
                raise self.fail(fld, f"'{uname}' repeats unseen[{ids[idx]}] (class '{classes[idx]}')")
            ids[idx] = i
        if len(ids) == len(classes):
            raise self.fail("unseen", "every class is unseen; at least one seen class is needed")
        return [classes[i] for i in sorted(ids)]  # normalised: canonical names, class order

    def _ignore_label(self, value: Any, num_classes: int) -> int:
        label = self.integer(value, "ignore_label", 0, MAX_LABEL)
        if label < num_classes:
            raise self.fail("ignore_label", f"must be >= the number of classes ({num_classes}) so it "
                            f"cannot collide with a class id, found {label}")
        return label

    def _native_ids(self, value: Any, num_classes: int) -> dict:
        self.mapping(value, "native_ids", ("map", "ignore"))
        raw_map = value["map"]
        if not isinstance(raw_map, dict) or not raw_map:
            raise self.fail("native_ids.map", f"expected a non-empty mapping native -> contiguous id, "
                            f"found {_found(raw_map)}")
        hit_by: dict[int, int] = {}
        for native, cid in raw_map.items():
            fld = f"native_ids.map[{native}]"
            self.integer(native, fld, 0, MAX_LABEL)
            self.integer(cid, fld, 0)
            if cid >= num_classes:
                raise self.fail(fld, f"contiguous id {cid} is out of range 0..{num_classes - 1}")
            if cid in hit_by:
                raise self.fail(fld, f"contiguous id {cid} is already the target of native "
                                f"{hit_by[cid]}; the map must be one-to-one")
            hit_by[cid] = native
        missing = [c for c in range(num_classes) if c not in hit_by]
        if missing:
            raise self.fail("native_ids.map", f"contiguous ids {missing} are not the target of any "
                            f"native value; every id 0..{num_classes - 1} must be hit exactly once")
        ignore = self.list_of(value["ignore"], "native_ids.ignore", non_empty=False)
        seen: set[int] = set()
        for i, native in enumerate(ignore):
            fld = f"native_ids.ignore[{i}]"
            self.integer(native, fld, 0, MAX_LABEL)
            if native in seen:
                raise self.fail(fld, f"duplicate native value {native}")
            if native in raw_map:
                raise self.fail(fld, f"native value {native} is also a key of native_ids.map; "
                                "a value is either mapped or ignored")
            seen.add(native)
        # JSON has string keys only: normalised map keys are decimal strings, in numeric order.
        return {"map": {str(k): raw_map[k] for k in sorted(raw_map)}, "ignore": sorted(ignore)}

    def _background(self, value: Any, lookup: dict[str, int]) -> str:
        mode = self.choice(value, "background", BACKGROUND_MODES)
        has_bg = "background" in lookup
        if mode == "class" and not has_bg:
            raise self.fail("background", "'class' requires a class named 'background' in classes")
        if mode == "ignored" and has_bg:
            raise self.fail("background", "'ignored' but classes contain 'background'; "
                            "use background: class or remove it from classes")
        return mode

    def _training(self, value: Any) -> dict:
        self.mapping(value, "training", (), ("unseen_pixels",))
        return {"unseen_pixels": self.choice(value.get("unseen_pixels", "ignore"),
                                             "training.unseen_pixels", UNSEEN_PIXEL_POLICIES)}

    def _image_sets(self, value: Any) -> dict:
        if not isinstance(value, dict) or not value:
            raise self.fail("image_sets", f"expected a non-empty mapping split -> "
                            f"{{list, count}}, found {_found(value)}")
        out = {}
        for split, spec in value.items():
            split = self.string(split, "image_sets")
            fld = f"image_sets.{split}"
            self.mapping(spec, fld, ("list",), ("count",))
            count = spec.get("count")
            out[split] = {
                "list": self.string(spec["list"], f"{fld}.list"),
                "count": None if count is None else self.integer(count, f"{fld}.count", 1),
            }
        return out

    def _evaluation(self, value: Any, image_sets: dict) -> dict:
        self.mapping(value, "evaluation", ("split", "headline_convention"))
        split = self.string(value["split"], "evaluation.split")
        if split not in image_sets:
            raise self.fail("evaluation.split", f"'{split}' is not a key of image_sets"
                            f"{_hint(split, image_sets)}; known: {', '.join(image_sets)}")
        return {"split": split, "headline_convention": self.choice(
            value["headline_convention"], "evaluation.headline_convention", HEADLINE_CONVENTIONS)}

    def _prompts(self, value: Any) -> dict:
        self.mapping(value, "prompts", ("single", "ensemble", "default"))
        out: dict[str, Any] = {}
        for kind in PROMPT_KINDS:
            templates = self.list_of(value[kind], f"prompts.{kind}")
            for i, tpl in enumerate(templates):
                fld = f"prompts.{kind}[{i}]"
                tpl = self.string(tpl, fld)
                rest = tpl.replace("{}", "", 1)
                if "{}" not in tpl or "{" in rest or "}" in rest:
                    raise self.fail(fld, f"template must contain exactly one '{{}}' and no other "
                                    f"braces, found {tpl!r}")
                if tpl in templates[:i]:
                    raise self.fail(fld, f"duplicate template {tpl!r}")
            out[kind] = list(templates)
        out["default"] = self.choice(value["default"], "prompts.default", PROMPT_KINDS)
        return out

    def _references(self, value: Any) -> list[str]:
        refs = self.list_of(value, "references", non_empty=False)
        return [self.string(r, f"references[{i}]") for i, r in enumerate(refs)]


def _name_lookup(classes: list[str] | tuple[str, ...], aliases: dict[str, str]) -> dict[str, int]:
    """casefolded class name or alias -> contiguous id."""
    lookup = {c.casefold(): i for i, c in enumerate(classes)}
    for alias, target in aliases.items():
        lookup[alias.casefold()] = lookup[target.casefold()]
    return lookup


def _canonical_json(doc: dict) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


# --------------------------------------------------------------------------- Protocol


@dataclass(frozen=True)
class Protocol:
    """A validated protocol. Immutable; build it with :func:`load_protocol`.

    ``content_hash`` is the sha256 of the canonical JSON of :meth:`to_dict` (all fields,
    including ``version`` and ``description``), so YAML comments and formatting do not
    change it but any content change does.
    """

    name: str
    version: int
    description: str
    dataset: str
    classes: tuple[str, ...]
    unseen_ids: tuple[int, ...]
    ignore_label: int
    background: str
    unseen_pixel_policy: str
    headline_convention: str
    eval_split: str
    content_hash: str
    path: Path | None = field(default=None, compare=False)
    _canonical: str = field(default="{}", compare=False, repr=False)

    # -- derived views
    @functools.cached_property
    def _doc(self) -> dict:
        return json.loads(self._canonical)

    @functools.cached_property
    def _lookup(self) -> dict[str, int]:
        return _name_lookup(self.classes, self._doc["class_aliases"])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def seen_ids(self) -> tuple[int, ...]:
        unseen = set(self.unseen_ids)
        return tuple(i for i in range(self.num_classes) if i not in unseen)

    @property
    def seen_names(self) -> tuple[str, ...]:
        return tuple(self.classes[i] for i in self.seen_ids)

    @property
    def unseen_names(self) -> tuple[str, ...]:
        """Unseen class names in class order (matching ``unseen_ids``)."""
        return tuple(self.classes[i] for i in self.unseen_ids)

    @property
    def class_aliases(self) -> dict[str, str]:
        return dict(self._doc["class_aliases"])

    @property
    def references(self) -> tuple[str, ...]:
        return tuple(self._doc["references"])

    @property
    def world(self) -> dict[str, str]:
        """Synthetic protocols: ``{"surface", "teacher"}`` of the generated world (v1's when unwritten)."""
        return {**DEFAULT_WORLD, **self._doc.get("world", {})}

    @property
    def ref(self) -> str:
        """The string that loads exactly this definition: ``name``, or ``name@version`` for a later version
        shipped beside the bare file (also what CLI hints print)."""
        if self.path is not None and "@" in self.path.stem:
            return self.path.stem
        return self.name

    @property
    def prompts(self) -> dict[str, Any]:
        p = self._doc["prompts"]
        return {"single": tuple(p["single"]), "ensemble": tuple(p["ensemble"]), "default": p["default"]}

    def templates(self, kind: str | None = None) -> tuple[str, ...]:
        """Prompt templates of ``kind`` ('single' or 'ensemble'; the protocol default if None)."""
        p = self._doc["prompts"]
        kind = p["default"] if kind is None else kind
        if kind not in PROMPT_KINDS:
            raise UnknownNameError.for_name("prompt set", str(kind), PROMPT_KINDS)
        return tuple(p[kind])

    @property
    def image_sets(self) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._doc["image_sets"].items()}

    @property
    def native_map(self) -> dict[int, int]:
        """native annotation value -> contiguous id."""
        return {int(k): v for k, v in self._doc["native_ids"]["map"].items()}

    @property
    def native_ignore(self) -> tuple[int, ...]:
        return tuple(self._doc["native_ids"]["ignore"])

    def native_lut(self, size: int = 256) -> np.ndarray:
        """Lookup table ``lut[native] -> contiguous id``; ignored natives give ``ignore_label``,
        natives in neither list give -1 (invalid: an annotation containing one is an error).

        Length is ``max(size, largest listed native + 1)``. A fresh array each call.
        """
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative int, got {size!r}")
        natives = self.native_map
        largest = max([*natives, *self.native_ignore])
        lut = np.full(max(size, largest + 1), -1, dtype=np.int32)
        lut[list(self.native_ignore)] = self.ignore_label
        lut[list(natives)] = list(natives.values())
        return lut

    @property
    def short_hash(self) -> str:
        return self.content_hash[:12]

    def to_dict(self) -> dict[str, Any]:
        """The normalised content (a fresh, JSON-serialisable dict).

        Normalisation: unseen names are canonical (aliases resolved) and in class order;
        ``native_ids.map`` keys are decimal strings; ``native_ids.ignore`` is sorted;
        optional fields are filled with defaults; description is stripped.
        """
        return json.loads(self._canonical)

    def class_index(self, name: str) -> int:
        """Contiguous id of a class name or alias (case-insensitive)."""
        idx = self._lookup.get(str(name).strip().casefold())
        if idx is None:
            raise UnknownNameError.for_name(
                "class", str(name), [*self.classes, *self._doc["class_aliases"]])
        return idx

    def summary(self) -> dict[str, Any]:
        """A short dict for listings; ``hash`` is the 12-character :attr:`short_hash`."""
        return {
            "name": self.name,
            "version": self.version,
            "dataset": self.dataset,
            "num_classes": self.num_classes,
            "num_seen": len(self.seen_ids),
            "num_unseen": len(self.unseen_ids),
            "unseen": list(self.unseen_names),
            "seen": list(self.seen_names),
            "headline_convention": self.headline_convention,
            "unseen_pixel_policy": self.unseen_pixel_policy,
            "hash": self.short_hash,
        }


def protocol_from_dict(raw: Any, path: Path | None = None) -> Protocol:
    """Validate a parsed document and build a :class:`Protocol`.

    With ``path`` the ``name`` must equal the file stem; errors name ``path``.
    """
    doc = _Validator(path).run(raw)
    canonical = _canonical_json(doc)
    classes = tuple(doc["classes"])
    return Protocol(
        name=doc["name"],
        version=doc["version"],
        description=doc["description"],
        dataset=doc["dataset"],
        classes=classes,
        unseen_ids=tuple(classes.index(n) for n in doc["unseen"]),
        ignore_label=doc["ignore_label"],
        background=doc["background"],
        unseen_pixel_policy=doc["training"]["unseen_pixels"],
        headline_convention=doc["evaluation"]["headline_convention"],
        eval_split=doc["evaluation"]["split"],
        content_hash=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        path=path,
        _canonical=canonical,
    )


# --------------------------------------------------------------------------- loading


def protocols_dir() -> Path:
    """Folder of the shipped protocol YAMLs.

    Installed, it is the package ``zss_bench.protocols``; in a source checkout that is not
    installed, it is ``<repo>/protocols`` next to the ``zss_bench/`` folder.
    """
    try:
        folder = importlib.resources.files("zss_bench.protocols")
    except ModuleNotFoundError:
        folder = None
    if isinstance(folder, Path) and folder.is_dir():
        return folder
    return Path(__file__).resolve().parent.parent / "protocols"


def protocol_ref(info: dict) -> str:
    """``name@version`` for a record's ``protocol`` block (``{"name", "version", ...}``; name alone when it
    has no version): the argument of :func:`load_protocol` that finds the definition the record used."""
    version = info.get("version")
    return f"{info['name']}@{version}" if version is not None else str(info["name"])


def list_protocols() -> list[str]:
    """Sorted names of the shipped protocols (YAML file stems; later versions as ``name@version``)."""
    folder = protocols_dir()
    if not folder.is_dir():
        return []
    return sorted(p.stem for p in folder.glob("*.yaml") if p.is_file())


def _resolve(name_or_path: str | os.PathLike) -> Path:
    text = os.fspath(name_or_path)
    looks_like_path = (
        not isinstance(name_or_path, str)
        or text.endswith((".yaml", ".yml"))
        or "/" in text
        or os.sep in text
    )
    if looks_like_path:
        path = Path(text).expanduser().resolve()
        if not path.is_file():
            raise ProtocolError(Path(text), None, "protocol file not found")
        return path
    names = list_protocols()
    if text not in names:
        base, at, version = text.partition("@")
        if at and base in names and version.isdigit():  # name@v of the bare file, when it is version v
            bare = (protocols_dir() / f"{base}.yaml").resolve()
            raw = _parse_yaml(bare.read_bytes(), bare)
            if isinstance(raw, dict) and str(raw.get("version")) == version:
                return bare
            versions = sorted([str(raw.get("version")) if isinstance(raw, dict) else "?"]
                              + [n.partition("@")[2] for n in names if n.startswith(base + "@")])
            raise UnknownNameError(f"protocol {base!r} has no version {version} here (shipped: "
                                   f"{', '.join(versions)}); a record made with it needs that definition")
        raise UnknownNameError.for_name("protocol", text, names)
    return (protocols_dir() / f"{text}.yaml").resolve()


@functools.lru_cache(maxsize=64)
def _load_cached(path: Path, raw: bytes) -> Protocol:
    return protocol_from_dict(_parse_yaml(raw, path), path=path)


def load_protocol(name_or_path: str | os.PathLike) -> Protocol:
    """Load a shipped protocol by name (e.g. ``"voc-15-5"``) or any ``.yaml`` file by path.

    Unknown names raise :class:`~zss_bench.registry.UnknownNameError` with suggestions;
    invalid files raise :class:`ProtocolError`. Results are cached per (resolved path,
    file bytes), so repeated loads of an unchanged file return the same object while an
    edited file is re-validated.
    """
    path = _resolve(name_or_path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ProtocolError(path, None, f"cannot read file ({exc.strerror})") from None
    return _load_cached(path, raw)
