"""Assemble a run's detectron2 config: defaults + zss keys + method keys + method/protocol
file + command-line overrides, then the protocol-derived fields nobody may override.

Import-light: detectron2 (and with it torch) is imported by the functions that build configs, so
``zss_bench.engine.preflight`` can use this module's errors and messages in well under a second."""
from __future__ import annotations

import hashlib
import json

from zss_bench.engine.labels import HASHED_UNLESS_DEFAULT as _HASHED_UNLESS_DEFAULT
from zss_bench.engine.labels import NOT_HASHED as _NOT_HASHED  # keys outside the config hash (see there)
from zss_bench.engine.labels import overrides_label


# String keys with a fixed set of values (method configs add theirs with ``declare_choices``), so a
# typo ("cosin") fails when the config is built, not at the first training step.
_CHOICES: dict[str, tuple[str, ...]] = {}


def declare_choices(key: str, options) -> None:
    """Say that config ``key`` takes one of ``options`` (checked by :func:`build_run_config`)."""
    _CHOICES[key] = tuple(options)


def declare_method_choices(prefix: str, choices: dict) -> None:
    """:func:`declare_choices` for each ``{KEY: options}`` of a method's ``prefix`` (``MODEL.CHIMERA``)."""
    for key, options in choices.items():
        declare_choices(f"{prefix}.{key}", options)


def _check_choices(cfg) -> None:
    from zss_bench.registry import suggest

    flat = flat_keys(cfg)
    for key, options in _CHOICES.items():
        if key in flat and flat[key] not in options:
            close = suggest(str(flat[key]), options, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigOverrideError(f"{key} must be one of {' | '.join(repr(o) for o in options)}, "
                                      f"got {flat[key]!r}{hint}")


def add_zss_config(cfg) -> None:
    """Keys every zss-bench run has (documented in the README)."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.config import CfgNode as CN

    cfg.ZSS = CN()
    cfg.ZSS.METHOD = ""
    cfg.ZSS.PROTOCOL = ""
    cfg.ZSS.PROTOCOL_HASH = ""
    cfg.ZSS.PROTOCOL_FILE = ""  # the protocol YAML the run loaded (a shipped one or the user's own path)
    cfg.ZSS.CONFIG_FILE = ""  # the method config YAML the run was built from
    cfg.ZSS.DATA_ROOT = ""
    cfg.ZSS.CLIP = ""  # NAME:TAG | NAME:/path | dir | "" = the protocol's default (toy CLIP for synth)
    cfg.ZSS.LABEL = ""  # config label shown in leaderboards ("" = derived from overrides)
    cfg.ZSS.N_BOOT = 1000
    cfg.ZSS.PROGRESS = True
    cfg.ZSS.DETERMINISTIC = False  # torch deterministic algorithms + cuDNN/cuBLAS determinism (engine.launch); not hashed
    cfg.ZSS.EVAL = CN()
    cfg.ZSS.EVAL.MODE = "whole"  # whole | slide
    cfg.ZSS.EVAL.SLIDE_CROP = 512
    cfg.ZSS.EVAL.SLIDE_STRIDE = 426
    cfg.ZSS.EVAL.AMP = False  # evaluate under autocast to SOLVER.AMP.DTYPE (engine.precision)
    cfg.SOLVER.AMP.DTYPE = "bfloat16"  # bfloat16 | float16 (with a grad scaler) when SOLVER.AMP.ENABLED
    cfg.MODEL.CHANNELS_LAST = False  # NHWC convolution kernels and inputs (engine.precision)
    cfg.SOLVER.OPTIMIZER = "ADAMW"  # SGD | ADAMW
    # Never read: setting it is refused (engine.unused_keys points to SOLVER.CLIP_GRADIENTS.*, which the
    # optimizer applies). The key stays, at 0.0, because removing it would change every config hash.
    cfg.SOLVER.GRAD_CLIP = 0.0
    declare_choices("ZSS.EVAL.MODE", ("whole", "slide"))
    declare_choices("SOLVER.OPTIMIZER", ("SGD", "ADAMW", "sgd", "adamw"))
    declare_choices("SOLVER.AMP.DTYPE", ("bfloat16", "float16"))
    # detectron2 string keys whose other values would silently do nothing (a RANDOM_FLIP typo = no flip)
    # or fail only at the first training step
    declare_choices("INPUT.RANDOM_FLIP", ("none", "horizontal", "vertical"))
    declare_choices("SOLVER.LR_SCHEDULER_NAME", ("WarmupMultiStepLR", "WarmupCosineLR"))
    declare_choices("SOLVER.WARMUP_METHOD", ("linear", "constant"))
    declare_choices("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ("value", "norm"))


class ConfigOverrideError(ValueError):
    """A KEY VALUE override that does not fit the config: the message names the key and the fix."""


def flat_keys(node, prefix: str = "") -> dict:
    """{dotted KEY: value} of every leaf of a config node."""
    out = {}
    for key, value in node.items():
        if isinstance(value, dict):  # yacs' CfgNode is a dict subclass
            out.update(flat_keys(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def unknown_key_message(key: str, known) -> str:
    """The one-line error for an override of a key the config does not have (with "did you mean": never a
    key that may not be set)."""
    from zss_bench.engine.unused_keys import is_refused
    from zss_bench.registry import suggest

    known = [k for k in known if not is_refused(k)] or list(known)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    close = suggest(key, [k for k in known if k.startswith(parent)] or known, n=1, cutoff=0.5) \
        or suggest(key, known, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    return f"unknown config key {key}{hint} (`zss-bench run ... KEY VALUE` sets keys of the method's resolved config)"


def _coerce(default, value):
    """A whole number for a float key is that float (``SOLVER.BASE_LR 30``); yacs alone refuses the int."""
    if isinstance(default, float) and not isinstance(default, bool):
        try:
            number = int(str(value).strip())
        except ValueError:
            return value
        return repr(float(number))
    return value


def apply_overrides(cfg, opts: list[str]) -> None:
    """``cfg.merge_from_list(opts)`` with one-line errors instead of yacs tracebacks: an odd
    count, an unknown key (with "did you mean"), a key nothing reads or the run sets itself
    (``engine.unused_keys``), a value of the wrong type (with the expected one), and a key that the
    other keys switch off (``SOLVER.MOMENTUM`` under AdamW)."""
    from zss_bench.engine.unused_keys import inactive_override, refusal

    if len(opts) % 2:
        raise ConfigOverrideError(f"overrides must be KEY VALUE pairs; got {len(opts)} items and "
                                  f"'{opts[-1]}' has no value")
    known = flat_keys(cfg)
    for key, value in zip(opts[::2], opts[1::2]):
        if str(key).startswith("--"):
            raise ConfigOverrideError(f"option {key} after the KEY VALUE overrides: options go before the overrides "
                                      f"(zss-bench run --method M --protocol P {key} ... KEY VALUE ...)")
        if key not in known:
            raise ConfigOverrideError(unknown_key_message(key, known))
        refused = refusal(key)
        if refused:
            raise ConfigOverrideError(refused)
        try:
            cfg.merge_from_list([key, _coerce(known[key], value)])
        except (ValueError, AssertionError, SyntaxError):
            default = known[key]
            raise ConfigOverrideError(
                f"{key} expects {type(default).__name__} (default {default!r}), got {value!r}") from None
    effective = flat_keys(cfg)
    inactive = inactive_override(list(opts), effective.get)
    if inactive:
        raise ConfigOverrideError(inactive)


def check_method_file_keys(defaults: dict, merged: dict, path) -> None:
    """A method config file that changes a key nothing reads (``engine.unused_keys.UNUSED``) is the
    method author's error: one line naming the file. ``defaults``/``merged``: :func:`flat_keys` of the
    config before/after the file. Keys the run sets itself may appear (a run's own config.yaml holds them)."""
    from zss_bench.engine.unused_keys import unused_reason

    for key, value in merged.items():
        why = unused_reason(key)
        if why is not None and key in defaults and _norm(value) != _norm(defaults[key]):
            raise ConfigOverrideError(f"method config {path}: {key} is not used by zss-bench run; {why} "
                                      f"(remove it from the file)")


def _norm(value):
    """Tuples and lists compare equal (a YAML list for a tuple default is the same setting)."""
    return [_norm(v) for v in value] if isinstance(value, (list, tuple)) else value


def build_run_config(plugin, protocol, *, seed: int, output_dir: str, data_root: str = "", clip: str = "",
                     opts: list[str] | None = None, config_file: str | None = None):
    """The frozen config of one run of ``plugin`` on ``protocol`` (``config_file``: the method config
    YAML to use instead of the one picked for the protocol)."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.config import get_cfg

    cfg = get_cfg()
    add_zss_config(cfg)
    plugin.add_config(cfg)
    method_file = resolve_method_config(plugin, protocol, config_file)
    defaults = flat_keys(cfg)
    _merge_method_file(cfg, method_file)
    check_method_file_keys(defaults, flat_keys(cfg), method_file)
    opts = list(opts or [])
    apply_overrides(cfg, opts)
    from zss_bench.plugins import check_meta_architecture

    check_meta_architecture(plugin, cfg)  # before anything else trusts the model class
    _check_choices(cfg)
    _check_ignore_label(cfg, protocol, opts)
    cfg.ZSS.METHOD = plugin.name
    cfg.ZSS.PROTOCOL = protocol.name
    cfg.ZSS.PROTOCOL_HASH = protocol.content_hash
    cfg.ZSS.PROTOCOL_FILE = str(protocol.path or "")
    cfg.ZSS.CONFIG_FILE = str(method_file)
    cfg.MODEL.SEM_SEG_HEAD.IGNORE_VALUE = protocol.ignore_label  # one source: the protocol
    cfg.ZSS.DATA_ROOT = str(data_root or "")
    if clip:
        cfg.ZSS.CLIP = clip
    if not cfg.ZSS.LABEL:
        cfg.ZSS.LABEL = overrides_label(opts) or "default"
    cfg.DATASETS.TRAIN = (f"zss_{protocol.name}_train",)
    cfg.DATASETS.TEST = (f"zss_{protocol.name}_{protocol.eval_split}",)
    cfg.SEED = int(seed)
    cfg.OUTPUT_DIR = str(output_dir)
    cfg.freeze()
    return cfg


def resolve_method_config(plugin, protocol, config_file: str | None = None):
    """The method config YAML of a run: ``config_file`` when given (it must exist), else the
    plugin's file for this protocol (:meth:`MethodPlugin.config_file`)."""
    from pathlib import Path

    if config_file:
        path = Path(config_file).expanduser()
        if not path.is_file():
            raise ConfigOverrideError(f"--config {config_file}: no such file (a method config YAML, e.g. "
                                      f"{plugin.config_dir}/default.yaml)")
        return path.resolve()
    return plugin.config_file(protocol)


def _merge_method_file(cfg, path) -> None:
    """``cfg.merge_from_file`` with a one-line error naming the file (an unknown key, a value of the
    wrong type, broken YAML, a missing ``_BASE_``) instead of a yacs/yaml traceback."""
    import yaml

    try:
        cfg.merge_from_file(str(path))
    except (KeyError, ValueError, AssertionError, yaml.YAMLError, OSError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        raise ConfigOverrideError(f"method config {path}: {' '.join(str(message).split())}") from None


def _check_ignore_label(cfg, protocol, opts: list[str]) -> None:
    """The ignore label comes from the protocol; a config that says otherwise is an error, not a silent override."""
    asked = dict(zip(opts[::2], opts[1::2])).get("MODEL.SEM_SEG_HEAD.IGNORE_VALUE")
    if asked is not None and int(asked) != protocol.ignore_label:
        raise ConfigOverrideError(f"MODEL.SEM_SEG_HEAD.IGNORE_VALUE {asked} contradicts the protocol's ignore_label "
                                  f"{protocol.ignore_label} ({protocol.name}); the protocol is the one source of it")


def config_dict(cfg) -> dict:
    return json.loads(json.dumps(cfg, default=lambda o: list(o) if isinstance(o, tuple) else str(o)))


def config_hash(cfg) -> str:
    """sha256 of the resolved config without seed / output folder / bookkeeping keys."""
    doc = config_dict(cfg)
    flat = flat_keys(cfg)
    dropped = [k for k, default in _HASHED_UNLESS_DEFAULT.items() if k in flat and flat[k] == default]
    for dotted in (*_NOT_HASHED, *dropped):
        node = doc
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    return hashlib.sha256(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
