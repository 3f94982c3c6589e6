"""The method registry: every method is a plugin package that zss-bench finds by name.

Built-in methods live in ``methods/<name>/`` (installed as ``zss_bench.methods.<name>``);
third-party packages can add methods through the ``zss_bench.methods`` entry-point group.
Each plugin exposes a module-level ``METHOD = MethodPlugin(...)``. Nothing is imported until
a method is asked for, so ``zss-bench --help`` stays fast and a broken plugin only breaks itself.

A name belongs to one source: a built-in method and an entry-point plugin of the same name is an
error naming both (never a silent shadowing), and ``register_method`` refuses a taken name unless
``replace=True``. A plugin package imports its own modules relatively (``from .meta_arch import
...``), so it works the same installed as ``zss_bench.methods.<name>`` or as its own top-level package.
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
# what a plugin may declare (zss_bench.modeling.text and zss_bench.engine.data implement them)
TEXT_CLASSIFIERS = ("none", "fixed", "learnable-no-object", "learnable-prompts")
TRAIN_MAPPERS = ("semantic", "per-class-masks")


class PluginError(ValueError):
    """A method plugin that cannot be used as declared: a name claimed twice, a missing config."""


class MethodConfigError(FileNotFoundError):
    """A method has no config YAML for a protocol (and no ``--config FILE`` was given)."""


class MetaArchitectureError(TypeError):
    """A method's ``MODEL.META_ARCHITECTURE`` is not registered or does not subclass ``ZSSSegmentor``."""


@dataclass(frozen=True)
class MethodPlugin:
    """What the runner needs to know about a method.

    ``add_config(cfg)`` adds the method's config keys (detectron2 ``add_<name>_config``);
    ``config_dir`` holds the method's config YAMLs (see :meth:`config_file`). The declarations
    (``trains``, ``uses_clip``, ``text_classifier``, ``train_mapper``, ``meta_architecture``) are
    listed by ``zss-bench methods`` and checked by the runner.
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

    def __post_init__(self):
        for key, value, options in (("text_classifier", self.text_classifier, TEXT_CLASSIFIERS),
                                    ("train_mapper", self.train_mapper, TRAIN_MAPPERS)):
            if value not in options:
                raise PluginError(f"method {self.name}: {key} '{value}' is not one of {' | '.join(options)}")

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
        raise MethodConfigError(f"method {self.name} has no config for protocol {name} "
                                f"(looked for {', '.join(candidates)} in {self.config_dir}); pass --config FILE")


def lazy_add_config(package: str, config_fn: str) -> Callable:
    """A plugin's ``add_config`` that imports ``<package>.meta_arch`` (registering the model) and
    ``<package>.config`` only when a run builds its config: listing methods stays free of torch.
    ``package`` is the plugin package's own ``__name__`` (``zss_bench.methods.chimera`` for a
    built-in, ``my_method`` for a third-party package), so the plugin never hard-codes where it lives."""

    def add_config(cfg) -> None:
        importlib.import_module(f"{package}.meta_arch")
        getattr(importlib.import_module(f"{package}.config"), config_fn)(cfg)

    add_config.__name__ = add_config.__qualname__ = config_fn
    return add_config


def lazy_model(package: str, class_name: str) -> Callable:
    """A plugin package's module ``__getattr__`` that imports ``<package>.meta_arch`` for ``class_name`` on
    first use (``from zss_bench.methods.chimera import ChimeraSeg``), keeping the package import torch-free."""

    def __getattr__(name: str):
        if name == class_name:
            return getattr(importlib.import_module(f"{package}.meta_arch"), class_name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__


_RUNTIME: dict[str, MethodPlugin] = {}


def register_method(plugin: MethodPlugin, *, replace: bool = False) -> None:
    """Register a method at run time (tests, notebooks). A name that is already a method (built-in,
    entry point or registered earlier) is an error naming where it comes from, unless ``replace=True``:
    then this plugin is the one ``get_method`` returns until :func:`unregister_method`."""
    if not isinstance(plugin, MethodPlugin):
        raise TypeError(f"register_method expects a MethodPlugin, got {type(plugin).__name__}")
    if not replace:
        taken = _sources(plugin.name)
        if taken:
            raise PluginError(f"method '{plugin.name}' already exists ({'; '.join(taken)}); pick another name "
                              "or register_method(plugin, replace=True)")
    _RUNTIME[plugin.name] = plugin


def unregister_method(name: str) -> None:
    """Forget a method registered with :func:`register_method` (built-ins and entry points stay)."""
    _RUNTIME.pop(name, None)


def _builtin_modules() -> dict[str, str]:
    import zss_bench.methods as pkg

    return {info.name.replace("_", "-"): f"zss_bench.methods.{info.name}"
            for info in pkgutil.iter_modules(pkg.__path__) if info.ispkg and not info.name.startswith("_")}


def _entry_points() -> dict[str, metadata.EntryPoint]:
    return {ep.name: ep for ep in metadata.entry_points(group=ENTRY_POINT_GROUP)}


def _describe_entry_point(ep: metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    where = f", distribution {dist.name}" if dist is not None else ""
    return f"entry point {ep.group} '{ep.name} = {ep.value}'{where}"


def _sources(name: str) -> list[str]:
    """Every place that provides a method called ``name``, in words (none: [])."""
    out = []
    if name in _RUNTIME:
        out.append("registered at run time with register_method")
    if name in (builtin := _builtin_modules()):
        out.append(f"built-in {builtin[name]}")
    if name in (eps := _entry_points()):
        out.append(_describe_entry_point(eps[name]))
    return out


def list_methods() -> list[str]:
    return sorted(set(_builtin_modules()) | set(_entry_points()) | set(_RUNTIME))


def get_method(name: str) -> MethodPlugin:
    """Import and return the plugin called ``name`` (unknown -> did-you-mean error; a name that a
    built-in and an entry point both claim -> an error naming both)."""
    if name in _RUNTIME:  # register_method already refused a taken name unless told to replace it
        return _RUNTIME[name]
    builtin, eps = _builtin_modules(), _entry_points()
    if name in builtin and name in eps:
        raise PluginError(f"method '{name}' is defined twice: built-in {builtin[name]} and "
                          f"{_describe_entry_point(eps[name])}; uninstall or rename the plugin")
    if name in builtin:
        loaded = importlib.import_module(builtin[name])
    elif name in eps:
        loaded = eps[name].load()  # a module with METHOD, or ``module:METHOD`` itself
    else:
        raise UnknownNameError.for_name("method", name, list_methods())
    plugin = loaded if isinstance(loaded, MethodPlugin) else getattr(loaded, "METHOD", None)
    if not isinstance(plugin, MethodPlugin):
        where = getattr(loaded, "__name__", repr(loaded))
        raise TypeError(f"method package {where} does not define METHOD = MethodPlugin(...)")
    return plugin


def check_meta_architecture(plugin: MethodPlugin, cfg) -> None:
    """``cfg.MODEL.META_ARCHITECTURE`` must be registered in detectron2's ``META_ARCH_REGISTRY`` and
    subclass :class:`zss_bench.modeling.segmentor.ZSSSegmentor` (the runner relies on its interface:
    ``set_eval_classes``, ``train_losses``, ``eval_scores``). Raises :class:`MetaArchitectureError`
    (a ``TypeError``) before any model is built."""
    import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
    from detectron2.modeling import META_ARCH_REGISTRY

    from zss_bench.modeling.segmentor import ZSSSegmentor

    name = cfg.MODEL.META_ARCHITECTURE
    try:
        arch = META_ARCH_REGISTRY.get(name)
    except KeyError:
        raise MetaArchitectureError(f"method {plugin.name}: meta-architecture {name} is not registered in "
                                    "detectron2's META_ARCH_REGISTRY (the method's add_config must import the "
                                    "module that registers it)") from None
    if not (isinstance(arch, type) and issubclass(arch, ZSSSegmentor)):
        raise MetaArchitectureError(f"method {plugin.name}: meta-architecture {name} does not subclass zss_bench's "
                                    "ZSSSegmentor (zss_bench.modeling.segmentor); the runner needs its interface "
                                    "(set_eval_classes after training, train_losses, eval_scores)")
