"""The method registry: every method is a plugin package that zss-bench finds by name.

Built-in methods live in ``methods/<name>/`` (installed as ``zss_bench.methods.<name>``);
third-party packages can add methods through the ``zss_bench.methods`` entry-point group.
Each plugin exposes a module-level ``METHOD = MethodPlugin(...)``. Nothing is imported until
a method is asked for, so ``zss-bench --help`` stays fast and a broken plugin only breaks itself.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from zss_bench.registry import UnknownNameError

ENTRY_POINT_GROUP = "zss_bench.methods"


@dataclass(frozen=True)
class MethodPlugin:
    """What the runner needs to know about a method.

    ``add_config(cfg)`` adds the method's config keys (detectron2 ``add_<name>_config``);
    ``config_dir`` holds one YAML per protocol (``<protocol>.yaml``, else ``default.yaml``).
    """

    name: str
    add_config: Callable
    config_dir: Path
    description: str = ""
    uses_clip: bool = True  # builds a CLIP teacher/text classifier: its record must carry a CLIP block
    trains: bool = True  # False: training-free (no optimizer, no training loader, nothing to checkpoint)
    text_classifier: str = "none"  # none | fixed | learnable-no-object | learnable-prompts
    train_mapper: str = "semantic"  # semantic | per-class-masks (see zss_bench.engine.data.MAPPERS)
    meta_architecture: str = ""  # the META_ARCH_REGISTRY name its configs build (checked to subclass ZSSSegmentor)
    extra: dict = field(default_factory=dict)

    def config_file(self, protocol) -> Path:
        """``<protocol name>.yaml``, else ``<dataset>.yaml`` (e.g. ``synth.yaml`` for every synthetic
        protocol, so a custom synth protocol never silently gets the real-scale body), else ``default.yaml``."""
        name = getattr(protocol, "name", protocol)
        dataset = getattr(protocol, "dataset", None)
        candidates = [f"{name}.yaml", *([f"{dataset}.yaml"] if dataset else []), "default.yaml"]
        for candidate in candidates:
            path = self.config_dir / candidate
            if path.is_file():
                return path
        raise FileNotFoundError(f"method {self.name} has no config for protocol {name} "
                                f"(looked for {', '.join(candidates)} in {self.config_dir}); pass --config FILE")


def lazy_add_config(package: str, config_fn: str) -> Callable:
    """A plugin's ``add_config`` that imports ``<package>.meta_arch`` (registering the model) and
    ``<package>.config`` only when a run builds its config: listing methods stays free of torch."""

    def add_config(cfg) -> None:
        importlib.import_module(f"{package}.meta_arch")
        getattr(importlib.import_module(f"{package}.config"), config_fn)(cfg)

    add_config.__name__ = add_config.__qualname__ = config_fn
    return add_config


_RUNTIME: dict[str, MethodPlugin] = {}


def register_method(plugin: MethodPlugin) -> None:
    """Register a method at run time (tests, notebooks); replaces one of the same name."""
    _RUNTIME[plugin.name] = plugin


def _builtin_modules() -> dict[str, str]:
    import zss_bench.methods as pkg

    return {info.name.replace("_", "-"): f"zss_bench.methods.{info.name}"
            for info in pkgutil.iter_modules(pkg.__path__) if info.ispkg and not info.name.startswith("_")}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def list_methods() -> list[str]:
    return sorted(set(_builtin_modules()) | set(_entry_points()) | set(_RUNTIME))


def get_method(name: str) -> MethodPlugin:
    """Import and return the plugin called ``name`` (unknown -> did-you-mean error)."""
    if name in _RUNTIME:
        return _RUNTIME[name]
    builtin = _builtin_modules()
    if name in builtin:
        module = importlib.import_module(builtin[name])
    elif name in (eps := _entry_points()):
        module = eps[name].load()
    else:
        raise UnknownNameError.for_name("method", name, list_methods())
    plugin = getattr(module, "METHOD", None)
    if not isinstance(plugin, MethodPlugin):
        raise TypeError(f"method package {module.__name__} does not define METHOD = MethodPlugin(...)")
    return plugin
