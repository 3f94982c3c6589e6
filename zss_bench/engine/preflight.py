"""Usage errors before the heavy imports: a typo in a method name, a config key, a value's type, a seed
or an option written after the overrides is refused in well under a second, not after torch and
detectron2 (2–3 s) and a synthetic world (10 s) were loaded.

Key names and default types come from the method's *config schema*: every key of its config with its
value after the method's config file (the default the user overrides), built once by the real config
path and cached as JSON under the zss-bench cache, keyed by a digest of the code that defines the keys
(``engine/``, ``modeling/``, the plugin's package, the detectron2 version) and of the config file with
its ``_BASE_`` chain. A stale schema is never used, and
with no cached schema the check falls back to the full build (slow, but it then caches the schema).
The full build still runs later and stays the authority: this module only moves the errors earlier.
"""
from __future__ import annotations

import ast
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path

SEED_LIMIT = 2 ** 32  # numpy's SeedSequence/legacy seeding range, which detectron2's seed_all_rng uses
_ENGINE = Path(__file__).resolve().parent
_MODELING = _ENGINE.parent / "modeling"


class UsageError(ValueError):
    """A command line that cannot run as written (one line: what is wrong and how to write it)."""


def check_seed(seed: int, flag: str = "--seed") -> int:
    if not 0 <= int(seed) < SEED_LIMIT:
        raise UsageError(f"{flag} {seed}: a seed must be a whole number from 0 to {SEED_LIMIT - 1} (2^32 - 1)")
    return int(seed)


def check_override_pairs(opts: list[str], verb: str = "run") -> None:
    """KEY VALUE pairs only: an ``--option`` among them was meant for the command, not the config."""
    for item in opts[::2]:
        if str(item).startswith("--"):
            raise UsageError(f"option {item} after the KEY VALUE overrides: options go before the overrides "
                             f"(zss-bench {verb} --method M --protocol P {item} ... KEY VALUE ...)")
    if len(opts) % 2:
        raise UsageError(f"overrides must be KEY VALUE pairs; got {len(opts)} items and '{opts[-1]}' has no value")


def _config_chain(path: Path, seen: set | None = None) -> list[Path]:
    """A method config file and the ``_BASE_`` files it builds on (cheap: YAML only)."""
    import yaml

    seen = seen if seen is not None else set()
    path = Path(path).resolve()
    if path in seen or not path.is_file():
        return []
    seen.add(path)
    try:
        base = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("_BASE_")
    except (yaml.YAMLError, AttributeError, OSError):
        base = None
    chain = [path]
    if isinstance(base, str):
        chain += _config_chain(path.parent / base if not Path(base).is_absolute() else Path(base), seen)
    return chain


def _digest(plugin, method_file: Path | None) -> str:
    """Of everything that can change a method's keys or their defaults."""
    h = hashlib.sha256()
    for version in ("zss-bench", "detectron2", "pb1-detectron2"):
        try:
            h.update(f"{version}={metadata.version(version)};".encode())
        except metadata.PackageNotFoundError:
            pass
    folders = [_ENGINE, _MODELING, Path(plugin.config_dir).resolve().parent]
    for folder in folders:
        for path in sorted(folder.glob("*.py")):
            h.update(path.name.encode())
            h.update(path.read_bytes())
    h.update(plugin.name.encode())
    for path in _config_chain(method_file) if method_file else []:
        h.update(str(path).encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def _schema_path(plugin, method_file: Path | None = None) -> Path:
    from zss_bench.cache import cache_path

    return cache_path("config-schema", f"{plugin.name}-{_digest(plugin, method_file)}.json")


def _build_schema(plugin, method_file: Path | None) -> dict:
    """{KEY: default} of the method's config after its config file, before any override (the slow, real path)."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.config import get_cfg

    from zss_bench.engine.config import (_merge_method_file, add_zss_config, check_method_file_keys, config_dict,
                                         flat_keys)

    cfg = get_cfg()
    add_zss_config(cfg)
    plugin.add_config(cfg)
    defaults = flat_keys(cfg)
    if method_file:
        _merge_method_file(cfg, method_file)
    flat = flat_keys(cfg)
    if method_file:  # a file setting a key nothing reads: refused here too (and never cached)
        check_method_file_keys(defaults, flat, method_file)
    doc = config_dict(cfg)  # JSON-safe values (tuples as lists)
    out = {}
    for key in flat:
        node = doc
        for part in key.split("."):
            node = node[part]
        out[key] = {"type": type(flat[key]).__name__, "default": node}
    return out


def config_schema(plugin, method_file: Path | None = None) -> dict:
    """The method's {KEY: {"type", "default"}} (defaults after ``method_file``, when given), from the cache
    when the code and files behind it are unchanged."""
    path = _schema_path(plugin, method_file)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        pass
    schema = _build_schema(plugin, method_file)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(schema))
        os.replace(tmp, path)
    except OSError:  # a read-only cache only costs speed
        pass
    return schema


def _literal(value: str):
    try:
        return ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, TypeError):
        return value


def value_fits(expected: str, value: str) -> bool:
    """Would yacs accept ``value`` for a key whose default has type ``expected`` (as
    :func:`zss_bench.engine.config.apply_overrides` coerces: a whole number for a float key is fine)."""
    got = type(_literal(value)).__name__
    if expected in ("NoneType",) or got == expected:
        return True
    if expected == "float" and got == "int":
        return True
    return {expected, got} <= {"tuple", "list"}


def check_overrides(plugin, opts: list[str], verb: str = "run", method_file: Path | None = None) -> None:
    """Every KEY is a key of ``plugin``'s config that may be set (``engine.unused_keys``: the same refusals
    as :func:`zss_bench.engine.config.apply_overrides`) and every VALUE fits its type (one-line errors)."""
    check_override_pairs(opts, verb)
    if not opts:
        return
    schema = config_schema(plugin, method_file)
    from zss_bench.engine.config import ConfigOverrideError, unknown_key_message
    from zss_bench.engine.unused_keys import inactive_override, refusal

    for key, value in zip(opts[::2], opts[1::2]):
        if key not in schema:
            raise ConfigOverrideError(unknown_key_message(key, schema))
        refused = refusal(key)
        if refused:
            raise ConfigOverrideError(refused)
        entry = schema[key]
        if not value_fits(entry["type"], str(value)):
            raise ConfigOverrideError(f"{key} expects {entry['type']} (default {entry['default']!r}), got {value!r}")
        if key == "ZSS.N_BOOT" and isinstance(_literal(str(value)), int) and _literal(str(value)) < 0:
            raise ConfigOverrideError(f"ZSS.N_BOOT {value}: bootstrap resamples must be >= 0 (0 = no intervals)")
    given = {str(k): _literal(str(v)) for k, v in zip(opts[::2], opts[1::2])}
    inactive = inactive_override(list(opts), lambda k: given[k] if k in given else schema.get(k, {}).get("default"))
    if inactive:
        raise ConfigOverrideError(inactive)


def check_run_request(method: str, protocol: str, *, opts: list[str], seed: int = 0, config_file: str | None = None,
                      verb: str = "run"):
    """Everything about a ``run`` that can be checked without torch: -> (plugin, protocol)."""
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    check_seed(seed)
    check_override_pairs(list(opts), verb)
    plugin = get_method(method)
    proto = load_protocol(protocol)
    from zss_bench.engine.config import resolve_method_config

    method_file = resolve_method_config(plugin, proto, config_file)  # a missing --config file: one line
    check_overrides(plugin, list(opts), verb, method_file)
    return plugin, proto
