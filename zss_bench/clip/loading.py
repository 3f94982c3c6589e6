"""One entry point for every CLIP a benchmark run may use: :func:`load_clip`.

Why: methods must not each re-implement "which weights, which preprocessing, which
tokenizer", and a run record must say exactly which weights produced it. A spec string
names the model; the result carries the frozen model, its tokenizer and eval transform,
the resolved preprocessing and a content hash of the weights.

Accepted specs::

    ViT-B-16:openai                open_clip pretrained tag (local HF / clip cache, or download)
    ViT-B-16:/path/to/ckpt.pt      a local .pt/.pth/.bin/.safetensors state dict or checkpoint
    /path/to/dir, local-dir:/path  a folder with open_clip_config.json + weights (open_clip layout)
    zss-micro-vit:random           a model config with seeded random weights (tests, smoke runs)
    zss-toy-vit:synth-v1           a tag whose weights ship with zss-bench (sha256-pinned, no download)
    zss-toy-vit                    that model's reference shipped tag (the synth-15-5 teacher)

Tags never hang offline: weights already in the local cache are loaded from it directly;
otherwise the hub is probed with a short timeout first and an unreachable hub (or
``HF_HUB_OFFLINE=1``) gives a :class:`ClipLoadError` at once.
"""
from __future__ import annotations

import concurrent.futures as cf
import hashlib
import json
import logging
import os
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlparse

import torch

from zss_bench.cache import cache_path
from zss_bench.registry import suggest

__all__ = [
    "ClipLoadError",
    "LoadedClip",
    "MODEL_CONFIG_DIR",
    "TOY_MODELS",
    "load_clip",
    "register_model_configs",
    "file_sha256",
    "state_dict_sha256",
]

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
RANDOM_TAG = "random"
RANDOM_SEED = 0
PROBE_TIMEOUT_S = 2.0
# Bare names that resolve to their reference shipped tag (zss_bench/clip/weights/tags.json).
TOY_MODELS = ("zss-toy-vit",)
_PREPROCESS_RECORD_KEYS = ("size", "mean", "std", "interpolation", "resize_mode")
_TRUE = ("1", "true", "yes", "on")


class ClipLoadError(ValueError):
    """A spec that cannot be turned into a model; the message says why and what to pass."""


# --------------------------------------------------------------------------- configs

_registered = False
_register_lock = threading.Lock()


def register_model_configs() -> None:
    """Add zss-bench's model configs (``model_configs/*.json``) to open_clip (idempotent)."""
    global _registered
    with _register_lock:
        if _registered:
            return
        import open_clip

        known = set(open_clip.list_models())
        if not all(p.stem in known for p in MODEL_CONFIG_DIR.glob("*.json")):
            open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


# --------------------------------------------------------------------------- hashing


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor, in sorted-name order."""
    h = hashlib.sha256()
    for key in sorted(state_dict):
        t = state_dict[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}\n".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


_file_hash_memo: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, memoised in-process and on disk by (path, mtime, size).

    Large checkpoints take seconds to hash; runs load the same file again and again.
    """
    p = Path(path).resolve()
    st = p.stat()
    memo_key = (str(p), st.st_mtime_ns, st.st_size)
    if memo_key in _file_hash_memo:
        return _file_hash_memo[memo_key]
    slot = cache_path("weights-hash", hashlib.sha256(repr(memo_key).encode()).hexdigest()[:32] + ".json")
    try:
        doc = json.loads(slot.read_text(encoding="utf-8"))
        if doc.get("key") == list(memo_key):
            _file_hash_memo[memo_key] = doc["sha256"]
            return doc["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    from zss_bench.clip.shipped import sha256_of

    digest = sha256_of(p)
    _file_hash_memo[memo_key] = digest
    try:
        from zss_bench.records.store import atomic_write_text

        atomic_write_text(slot, json.dumps({"key": list(memo_key), "sha256": digest}) + "\n")
    except OSError:
        pass  # a read-only cache only costs a re-hash next time
    return digest


# --------------------------------------------------------------------------- result


@dataclass
class LoadedClip:
    """A frozen CLIP in eval mode plus everything needed to use and to record it."""

    model: torch.nn.Module
    tokenizer: Callable
    preprocess: Callable
    name: str
    spec: str
    preprocess_cfg: dict[str, Any]
    weights_hash: str
    embed_dim: int
    checkpoint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def record(self) -> dict[str, Any]:
        """What a run record stores about the CLIP (JSON-serialisable)."""
        out = {"name": self.name, "spec": self.spec, "weights_hash": self.weights_hash,
               "preprocess_cfg": dict(self.preprocess_cfg), "embed_dim": self.embed_dim}
        if self.extra.get("shipped_tag"):
            out["shipped_tag"] = self.extra["shipped_tag"]  # weights pinned in zss_bench/clip/weights/tags.json
        return out

    @property
    def context_length(self) -> int:
        return int(getattr(self.tokenizer, "context_length", 77))


# --------------------------------------------------------------------------- spec parsing


def _known_models() -> list[str]:
    import open_clip

    register_model_configs()
    return list(open_clip.list_models())


def _check_name(name: str) -> None:
    known = _known_models()
    if name in known:
        return
    hints = suggest(name, known, n=3)
    msg = f"unknown CLIP model '{name}'"
    if hints:
        msg += "; did you mean " + " or ".join(f"'{h}'" for h in hints) + "?"
    msg += f" ({len(known)} models known to open_clip; list them with open_clip.list_models())"
    raise ClipLoadError(msg)


def _looks_like_path(text: str) -> bool:
    return ("/" in text or "\\" in text or text.startswith((".", "~"))
            or text.lower().endswith(CHECKPOINT_SUFFIXES) or Path(text).expanduser().exists())


@dataclass(frozen=True)
class _Spec:
    kind: str  # "dir" | "file" | "tag" | "shipped" | "random"
    name: str
    target: str = ""


def _parse(spec: str) -> _Spec:
    import open_clip

    if not isinstance(spec, str) or not spec.strip():
        raise ClipLoadError(f"empty CLIP spec {spec!r}; expected NAME:TAG, NAME:/path/to/checkpoint "
                            "or a local open_clip folder")
    spec = spec.strip()
    if spec.startswith("local-dir:"):
        return _Spec("dir", "", spec[len("local-dir:"):])
    if ":" not in spec and Path(spec).expanduser().is_dir():
        return _Spec("dir", "", spec)
    if ":" not in spec and _looks_like_path(spec) and not Path(spec).expanduser().exists():
        raise ClipLoadError(f"{spec}: no such file or directory (a CLIP folder holds open_clip_config.json + weights; "
                            "a checkpoint file is given as NAME:/path/to/file)")
    if ":" not in spec:
        if spec in TOY_MODELS:
            from zss_bench.clip.shipped import REFERENCE_TOY

            return _Spec("shipped", spec, REFERENCE_TOY[1])
        if Path(spec).expanduser().is_file():
            raise ClipLoadError(f"'{spec}' is a file; say which architecture it holds: NAME:{spec}")
        _check_name(spec)
        from zss_bench.clip.shipped import shipped_tags

        tags = [*open_clip.list_pretrained_tags_by_model(spec), *shipped_tags(spec)]
        shown = ", ".join(tags[:8]) + (", ..." if len(tags) > 8 else "") if tags else "none"
        raise ClipLoadError(f"'{spec}' names an architecture but no weights; pass {spec}:TAG "
                            f"(tags: {shown}), {spec}:/path/to/checkpoint or {spec}:{RANDOM_TAG}")
    name, rest = spec.split(":", 1)
    if not name:
        raise ClipLoadError(f"CLIP spec '{spec}' has no model name before ':'")
    _check_name(name)
    from zss_bench.clip.shipped import shipped_tags

    if rest in shipped_tags(name):
        return _Spec("shipped", name, rest)
    tags = [*open_clip.list_pretrained_tags_by_model(name), *shipped_tags(name)]
    if rest in tags:
        return _Spec("tag", name, rest)
    if rest == RANDOM_TAG:
        return _Spec("random", name)
    if _looks_like_path(rest):
        return _Spec("file", name, rest)
    hints = suggest(rest, tags, n=3)
    msg = f"unknown pretrained tag '{rest}' for {name}"
    if hints:
        msg += "; did you mean " + " or ".join(f"'{h}'" for h in hints) + "?"
    msg += (f" (tags: {', '.join(tags)})" if tags else f" ({name} has no pretrained tags)")
    msg += f"; a local checkpoint is given as {name}:/path/to/checkpoint"
    raise ClipLoadError(msg)


# --------------------------------------------------------------------------- building


def _preprocess_record(model: torch.nn.Module) -> dict[str, Any]:
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    out = {}
    for key in _PREPROCESS_RECORD_KEYS:
        if key in cfg:
            value = cfg[key]
            out["image_size" if key == "size" else key] = list(value) if isinstance(value, tuple) else value
    size = out.get("image_size")
    if isinstance(size, int):
        out["image_size"] = [size, size]
    return out


def _finish(model, preprocess, name: str, spec: str, config_name: str, weights_hash: str,
            device, checkpoint: str | None) -> LoadedClip:
    import open_clip

    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    tokenizer = open_clip.get_tokenizer(config_name)
    embed_dim = int(getattr(model.visual, "output_dim", 0) or model.text_projection.shape[-1])
    return LoadedClip(model=model, tokenizer=tokenizer, preprocess=preprocess, name=name, spec=spec,
                      preprocess_cfg=_preprocess_record(model), weights_hash=weights_hash,
                      embed_dim=embed_dim, checkpoint=checkpoint)


class _DropRandomInitWarning(logging.Filter):
    """open_clip warns "initialized randomly" before we load the weights ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Model initialized randomly" not in record.getMessage()


def _create(config_name: str, **kwargs):
    import open_clip

    root = logging.getLogger()
    quiet = _DropRandomInitWarning()
    root.addFilter(quiet)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(config_name, **kwargs)
    finally:
        root.removeFilter(quiet)
    return model, preprocess


def _shape(t: Any) -> str:
    return "x".join(str(s) for s in getattr(t, "shape", ())) or "scalar"


def _diagnose(model: torch.nn.Module, path: str) -> str | None:
    """Short missing/unexpected/size-mismatch summary of a checkpoint against a model, or
    None when the keys and shapes fit (or the file cannot be read as a state dict)."""
    from open_clip.factory import load_state_dict

    try:
        sd = load_state_dict(path)
    except Exception:  # noqa: BLE001 - the caller reports the original error
        return None
    own = model.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    mismatch = [f"{k} ({_shape(sd[k])} vs {_shape(own[k])})" for k in own
                if k in sd and tuple(getattr(sd[k], "shape", ())) != tuple(own[k].shape)]

    def brief(items: list[str]) -> str:
        return ", ".join(items[:4]) + (f", ... ({len(items)} in total)" if len(items) > 4 else "")

    parts = []
    if missing:
        parts.append(f"missing keys {brief(missing)}")
    if unexpected:
        parts.append(f"unexpected keys {brief(unexpected)}")
    if mismatch:
        parts.append(f"size mismatch {brief(mismatch)} (checkpoint vs model)")
    return "; ".join(parts) or None


def _load_weights(model: torch.nn.Module, path: str, name: str) -> None:
    """open_clip's loader (format conversions, position resizing), with readable errors."""
    import open_clip

    try:
        open_clip.load_checkpoint(model, path, strict=True)
    except Exception as exc:  # noqa: BLE001 - corrupt/foreign files raise many types
        problem = _diagnose(model, path)
        if problem:
            raise ClipLoadError(f"checkpoint {path} does not fit model {name}: {problem}") from None
        raise ClipLoadError(f"could not read checkpoint {path} for {name}: "
                            f"{type(exc).__name__}: {exc}") from None


def _from_file(name: str, path: str, spec: str, device, digest: str | None = None) -> LoadedClip:
    """A local checkpoint file; ``digest``: its sha256 when the caller has just verified it."""
    p = Path(path).expanduser()
    if not p.is_file():
        what = "is a folder, not a checkpoint file" if p.is_dir() else "does not exist"
        raise ClipLoadError(f"checkpoint file {p} {what} (spec '{spec}')")
    model, preprocess = _create(name)
    _load_weights(model, str(p), name)
    return _finish(model, preprocess, name, spec, name, digest or file_sha256(p), device, str(p))


def _from_dir(path: str, spec: str, device) -> LoadedClip:
    import open_clip

    d = Path(path).expanduser()
    if not d.is_dir():
        raise ClipLoadError(f"model folder {d} does not exist (spec '{spec}')")
    cfg_file = d / "open_clip_config.json"
    if not cfg_file.is_file():
        raise ClipLoadError(f"{d} has no open_clip_config.json (expected open_clip's folder layout: "
                            "open_clip_config.json + open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
        model_cfg = cfg["model_cfg"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ClipLoadError(f"{cfg_file}: not a valid open_clip config ({type(exc).__name__}: {exc})") from None
    weights = open_clip.factory._find_checkpoint_in_dir(d)
    if weights is None:
        raise ClipLoadError(f"{d} has no weights file (open_clip_model.safetensors, "
                            "open_clip_pytorch_model.bin, ...)")
    local = f"local-dir:{d.resolve()}"
    try:
        model, preprocess = _create(local, load_weights=False)
    except Exception as exc:  # noqa: BLE001
        raise ClipLoadError(f"{cfg_file}: could not build the model ({type(exc).__name__}: {exc})") from None
    name = str(cfg.get("model_name") or model_cfg.get("model_name") or d.name)
    _load_weights(model, weights, name)
    return _finish(model, preprocess, name, spec, local, file_sha256(weights), device, weights)


def _from_random(name: str, spec: str, device) -> LoadedClip:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        model, preprocess = _create(name)
    return _finish(model, preprocess, name, spec, name, state_dict_sha256(model.state_dict()), device, None)


# --------------------------------------------------------------------------- pretrained tags


def _hub_cache_dir() -> str:
    if os.environ.get("HF_HUB_CACHE"):
        return os.environ["HF_HUB_CACHE"]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    import huggingface_hub.constants as hfc

    return hfc.HF_HUB_CACHE


def _url_cache_dir() -> str:
    return os.path.expanduser("~/.cache/clip")  # open_clip's default for URL downloads


def _cached_tag_file(cfg: dict) -> str | None:
    """Path of the tag's weights if they are already on this machine, without any network."""
    if cfg.get("file"):
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = cfg.get("hf_hub", "")
    if hub:
        try:
            from huggingface_hub import try_to_load_from_cache
            from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives
        except ImportError:
            pass
        else:
            repo, filename = os.path.split(hub)  # "org/repo/" -> ("org/repo", "")
            filename = filename or HF_WEIGHTS_NAME
            for candidate in [*_get_safe_alternatives(filename), filename]:
                found = try_to_load_from_cache(repo, candidate, cache_dir=_hub_cache_dir())
                if isinstance(found, str) and os.path.isfile(found):
                    return found
    url = cfg.get("url", "")
    if url:
        local = os.path.join(_url_cache_dir(), os.path.basename(url))
        if os.path.isfile(local):
            return local
    return None


def _probe_url(cfg: dict) -> str:
    """The first URL a download of this tag would fetch from (hub API or the direct URL)."""
    if cfg.get("hf_hub"):
        import huggingface_hub.constants as hfc

        endpoint = os.environ.get("HF_ENDPOINT") or hfc.ENDPOINT
        return f"{endpoint.rstrip('/')}/api/models/{os.path.split(cfg['hf_hub'])[0]}"
    return cfg.get("url", "")


def _reachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """One HEAD request (proxies honoured, TLS verified) under a hard deadline: DNS, connect
    and handshake all run in a worker thread. Any HTTP answer, even an error, counts."""
    if not url:
        return False

    def attempt() -> bool:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout):
                return True
        except urllib.error.HTTPError:
            return True

    pool = cf.ThreadPoolExecutor(max_workers=1)
    try:
        return bool(pool.submit(attempt).result(timeout=timeout + 1.0))
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False
    finally:
        pool.shutdown(wait=False)


def _hub_offline() -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return True
    try:
        import huggingface_hub.constants as hfc

        return bool(hfc.HF_HUB_OFFLINE)
    except ImportError:
        return False


def _from_tag(name: str, tag: str, spec: str, device) -> LoadedClip:
    import open_clip

    cfg = open_clip.get_pretrained_cfg(name, tag)
    force = {"force_quick_gelu": bool(cfg.get("quick_gelu", False)),
             **{f"image_{k}": cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}}
    local = _cached_tag_file(cfg)
    if local is not None:
        model, preprocess = _create(name, **force)
        _load_weights(model, local, spec)
        return _finish(model, preprocess, name, spec, name, file_sha256(local), device, local)
    offline_msg = (f"weights for {spec} are not in the local cache and could not be downloaded "
                   f"(offline?); pass {name}:/path/to/checkpoint instead")
    if _hub_offline():
        raise ClipLoadError(offline_msg + " (HF_HUB_OFFLINE is set)")
    url = _probe_url(cfg)
    if not _reachable(url):
        raise ClipLoadError(offline_msg + f" ({urlparse(url).netloc or 'no download source'} "
                            f"unreachable within {PROBE_TIMEOUT_S:g} s)")
    try:
        model, preprocess = _create(name, pretrained=tag)
    except Exception as exc:  # noqa: BLE001
        raise ClipLoadError(f"{offline_msg} ({type(exc).__name__}: {exc})") from None
    local = _cached_tag_file(cfg)
    digest = file_sha256(local) if local else state_dict_sha256(model.state_dict())
    return _finish(model, preprocess, name, spec, name, digest, device, local)


def _from_shipped(name: str, tag: str, spec: str, device) -> LoadedClip:
    """A tag whose weights ship with zss-bench: verify the pinned sha256, then load the file
    exactly like a user's local checkpoint (``NAME:/path``)."""
    from zss_bench.clip.shipped import ShippedWeightsError, verified_weights

    try:
        path, entry = verified_weights(name, tag)
    except ShippedWeightsError as exc:
        raise ClipLoadError(str(exc)) from None
    clip = _from_file(name, str(path), f"{name}:{tag}", device, digest=entry["sha256"])
    clip.extra["shipped_tag"] = tag
    return clip


# --------------------------------------------------------------------------- entry point


def load_clip(spec: str, device: str | torch.device = "cpu") -> LoadedClip:
    """Build the CLIP named by ``spec`` (see the module docstring), frozen and in eval mode.

    Raises :class:`ClipLoadError` for an unknown model or tag (with suggestions), a missing
    file, weights that do not fit the architecture, or tag weights that are neither cached
    nor downloadable.
    """
    register_model_configs()
    parsed = _parse(spec)
    spec = spec.strip()
    if parsed.kind == "dir":
        return _from_dir(parsed.target, spec, device)
    if parsed.kind == "file":
        return _from_file(parsed.name, parsed.target, spec, device)
    if parsed.kind == "random":
        return _from_random(parsed.name, spec, device)
    if parsed.kind == "tag":
        return _from_tag(parsed.name, parsed.target, spec, device)
    return _from_shipped(parsed.name, parsed.target, spec, device)
