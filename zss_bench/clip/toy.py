"""A toy CLIP pretrained offline, on CPU, on the synthetic world.

Why: the synth-15-5 protocol needs a CLIP whose text tower knows every class name (as a
web-scale CLIP does) but that can be built without the internet in minutes on two CPU
cores. :func:`pretrain_toy_clip` trains open_clip's own model code (``zss-toy-vit``
config, real BPE tokenizer, real ``ClipLoss``) and caches the checkpoint under
``cache_path("toy-clip", <config hash>)``, so it is trained once per configuration.

Data, like a web CLIP's: (1) the world's scenes with captions naming every object, unseen
classes included (image-level text is not pixel supervision), and (2) object-centric
"photos of one thing" from the world's single-object generator (its own seed stream;
evaluation draws from another). Each batch mixes both (``single_fraction``). A ViT learns
shape slowly from small, off-centre objects in scenes; the object-centric half is what
makes shapes learnable within the CPU budget. Augmentations never change colours (colour
is half of every class name): flips, 90 degree rotations and mild zoom-in crops only.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from zss_bench.cache import cache_path
from zss_bench.clip.loading import (
    LoadedClip,
    _create,
    load_clip,
    register_model_configs,
    state_dict_sha256,
)
from zss_bench.records.store import atomic_write_text

__all__ = [
    "CODE_VERSION",
    "DEFAULT_MODEL",
    "ToyClipConfig",
    "default_toy_clip",
    "evaluate_toy_clip",
    "pretrain_toy_clip",
    "toy_captions",
]

CODE_VERSION = 2  # bump when training code changes in a way that changes the weights
DEFAULT_MODEL = "zss-toy-vit"
CHECKPOINT_FILE = "checkpoint.pt"
INFO_FILE = "info.json"

# Caption phrasings drawn per step: the text tower must not tie a class to one sentence frame.
CAPTION_FRAMES = (
    "{} on a background",
    "a photo of {}.",
    "{}.",
    "a picture of {}.",
    "an image with {}.",
    "{} on a plain background.",
)


@dataclass(frozen=True)
class ToyClipConfig:
    """Every knob that changes the trained weights (all part of the cache key)."""

    model: str = DEFAULT_MODEL
    steps: int = 1600
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 60
    seed: int = 0
    world_seed: int = 0
    world_size: int = 4000
    zoom: float = 0.75  # crops keep >= this fraction of the side (1.0 = no zoom)
    caption_variants: float = 1.0  # probability of a random caption frame and object order
    temperature: float = 0.07  # initial softmax temperature (learned afterwards)
    object_bias: float = 0.0  # sample world images with n objects with weight n ** -object_bias
    single_fraction: float = 0.8  # share of each batch drawn from object-centric images
    single_per_class: int = 400  # object-centric images per class (0: world captions only)
    single_seed: int = 1000  # their seed stream (evaluation draws from seed 123)
    surface: str = "flat"  # object surfaces of the world drawn (zss_bench.data.synth_surfaces)
    single_scale: tuple = (0.60, 0.78)  # object diameter / side of the single-object images (> 1: close-ups)


# --------------------------------------------------------------------------- helpers


def _model_cfg(name: str) -> dict:
    import open_clip

    register_model_configs()
    cfg = open_clip.get_model_config(name)
    if cfg is None:
        from zss_bench.clip.loading import _check_name

        _check_name(name)  # raises with suggestions
    return cfg


def _image_size(name: str) -> int:
    size = _model_cfg(name)["vision_cfg"]["image_size"]
    return int(size if isinstance(size, int) else size[0])


# Fields added after synth-v1, at their v1 values: left out of the hash so every earlier key stays valid.
_LATER_FIELDS = {"surface": "flat", "single_scale": [0.60, 0.78]}


def config_doc(cfg: ToyClipConfig) -> dict:
    """The config as JSON reads it back (tuples become lists): what info.json and the hash see."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_hash(cfg: ToyClipConfig) -> str:
    from zss_bench.data.synth import GENERATOR_VERSION

    config = {k: v for k, v in config_doc(cfg).items() if _LATER_FIELDS.get(k, object()) != v}
    doc = {"config": config, "code_version": CODE_VERSION,
           "generator_version": GENERATOR_VERSION, "model_cfg": _model_cfg(cfg.model)}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def toy_captions(classes: list[str], rng: np.random.Generator, variants: bool = True) -> str:
    """One caption for an image holding ``classes``: random object order and sentence frame."""
    if not variants:
        from zss_bench.data.synth import caption_for

        return caption_for(classes)
    names = [classes[i] for i in rng.permutation(len(classes))]
    parts = [f"{_article(n)} {n}" for n in names]
    body = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
    return CAPTION_FRAMES[int(rng.integers(len(CAPTION_FRAMES)))].format(body)


def _world(seed: int, size: int, n_train: int, progress: bool, surface: str = "flat") -> Path:
    """The caption world, generated once into the cache and reused."""
    from zss_bench.data.synth import GENERATOR_VERSION, generate_world

    tail = "" if surface == "flat" else f"-{surface}"
    out = cache_path("toy-clip", "worlds", f"g{GENERATOR_VERSION}-seed{seed}-size{size}-n{n_train}{tail}")
    marker = out / "world.json"
    try:
        doc = json.loads(marker.read_text(encoding="utf-8"))
        if doc.get("complete") and doc.get("n_train") == n_train:
            return out
    except (OSError, ValueError):
        pass
    generate_world(out, seed=seed, size=size, n_train=n_train, n_val=1,
                   workers=min(2, os.cpu_count() or 1), progress=progress, surface=surface)
    return out


def _load_world(root: Path) -> tuple[torch.Tensor, list[list[str]]]:
    from PIL import Image

    images, classes = [], []
    with open(root / "captions.jsonl", encoding="utf-8") as fh:
        for line in fh:
            item = json.loads(line)
            with Image.open(root / "JPEGImages" / f"{item['image']}.jpg") as im:
                images.append(np.asarray(im.convert("RGB")))
            classes.append(list(item["classes"]))
    arr = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous()  # uint8 N,3,H,W
    return arr, classes


def _augment(x: torch.Tensor, g: torch.Generator, zoom: float) -> torch.Tensor:
    """Flips, 90-degree rotations and a mild zoom-in crop, per image (float N,3,H,W)."""
    n, _, h, w = x.shape
    out = torch.empty_like(x)
    flips = torch.rand(n, 2, generator=g) < 0.5
    rots = torch.randint(0, 4, (n,), generator=g)
    fracs = zoom + (1 - zoom) * torch.rand(n, generator=g)
    offs = torch.rand(n, 2, generator=g)
    for i in range(n):
        img = x[i]
        if zoom < 1.0:
            ch, cw = max(1, round(h * float(fracs[i]))), max(1, round(w * float(fracs[i])))
            y0, x0 = int(offs[i, 0] * (h - ch + 1)), int(offs[i, 1] * (w - cw + 1))
            img = img[:, y0:y0 + ch, x0:x0 + cw]
            if (ch, cw) != (h, w):
                img = F.interpolate(img[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        if flips[i, 0]:
            img = img.flip(-1)
        if flips[i, 1]:
            img = img.flip(-2)
        out[i] = torch.rot90(img, int(rots[i]), dims=(-2, -1))
    return out


def _normalizer(preprocess_cfg: dict) -> Callable[[torch.Tensor], torch.Tensor]:
    mean = torch.tensor(preprocess_cfg["mean"]).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(preprocess_cfg["std"]).view(1, 3, 1, 1) * 255.0
    return lambda u8: (u8.float() - mean) / std


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lr_at(step: int, cfg: ToyClipConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    t = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))


def _bar(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, disable=not enabled, desc=desc, file=sys.stderr, dynamic_ncols=True)


# --------------------------------------------------------------------------- training


class _Sampler:
    """Deterministic indices into one pool: epochs of permutations, or (``bias`` > 0) draws
    without replacement within a batch, weighted by ``n_objects ** -bias`` so that images
    with few objects (cleaner image-text pairs) come more often."""

    def __init__(self, classes: list[list[str]], bias: float, g: torch.Generator) -> None:
        self.n, self.g = len(classes), g
        counts = torch.tensor([max(1, len(c)) for c in classes], dtype=torch.float64)
        self.weights = counts.pow(-bias) if bias else None
        self.order, self.pos = torch.randperm(self.n, generator=g), 0

    def take(self, k: int) -> torch.Tensor:
        if k == 0:
            return torch.zeros(0, dtype=torch.long)
        if self.weights is not None:
            return torch.multinomial(self.weights, k, replacement=False, generator=self.g)
        if self.pos + k > self.n:
            self.order, self.pos = torch.randperm(self.n, generator=self.g), 0
        self.pos += k
        return self.order[self.pos - k:self.pos]


def _singles(cfg: ToyClipConfig, size: int) -> tuple[torch.Tensor, list[list[str]]]:
    """Object-centric images (one large object, captioned with its class): the "photo of one
    thing" part of a real CLIP's web data. Drawn from the synthetic world's single-object
    generator with ``cfg.single_seed`` (evaluation uses seed 123); regenerated per training
    run (seconds), so nothing large is cached."""
    from zss_bench.data.synth import generate_single_object_set
    from zss_bench.protocol import load_protocol

    proto = load_protocol("synth-15-5")
    images, labels = generate_single_object_set(cfg.single_per_class, seed=cfg.single_seed,
                                                size=size, protocol=proto, surface=cfg.surface,
                                                scale=tuple(cfg.single_scale))
    arr = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return arr, [[proto.classes[int(k)]] for k in labels]


def _train(cfg: ToyClipConfig, progress: bool, on_step: Callable | None = None) -> tuple[dict, dict]:
    """Train from scratch; returns (state_dict, training info). ``on_step(step, model, loss)``
    is called after every optimiser step (experiments, tests)."""
    import open_clip

    register_model_configs()
    size = _image_size(cfg.model)
    world = _world(cfg.world_seed, size, cfg.world_size, progress, cfg.surface)
    images, classes = _load_world(world)
    n_world = len(classes)
    n_single = round(cfg.single_fraction * cfg.batch_size) if cfg.single_per_class else 0
    if n_single:
        s_images, s_classes = _singles(cfg, size)
        images, classes = torch.cat([images, s_images]), classes + s_classes
    torch.manual_seed(cfg.seed)
    model, _ = _create(cfg.model)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / cfg.temperature))
    model.train()
    tokenizer = open_clip.get_tokenizer(cfg.model)
    normalize = _normalizer(model.visual.preprocess_cfg)
    loss_fn = open_clip.ClipLoss()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.98), eps=1e-6)
    g = torch.Generator().manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    world_pool = _Sampler(classes[:n_world], cfg.object_bias, g)
    single_pool = _Sampler(classes[n_world:], 0.0, g) if n_single else None
    losses: list[float] = []
    t0 = time.perf_counter()
    with _bar(cfg.steps, progress, f"toy CLIP ({cfg.model})") as bar:
        for step in range(cfg.steps):
            idx = world_pool.take(cfg.batch_size - n_single)
            if single_pool is not None:
                idx = torch.cat([idx, n_world + single_pool.take(n_single)])
            x = normalize(_augment(images[idx].float(), g, cfg.zoom))
            texts = tokenizer([toy_captions(classes[i], rng, bool(rng.random() < cfg.caption_variants))
                               for i in idx.tolist()])
            for group in opt.param_groups:
                group["lr"] = _lr_at(step, cfg)
            img_f, txt_f, scale = model(x, texts)
            loss = loss_fn(img_f, txt_f, scale)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            bar.update(1)
            if step % 10 == 0 or step == cfg.steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if on_step is not None:
                on_step(step, model, losses[-1])
    elapsed = time.perf_counter() - t0
    tail = losses[-min(20, len(losses)):]
    info = {"train_time_s": round(elapsed, 2), "final_loss": round(float(np.mean(tail)), 4),
            "loss_curve": [round(v, 4) for v in losses[::10]], "n_world_images": n_world,
            "n_single_images": len(classes) - n_world, "world": str(world),
            "torch_threads": torch.get_num_threads(),
            "logit_scale": round(float(model.logit_scale.detach().exp()), 3)}
    return model.state_dict(), info


def _save_checkpoint(path: Path, state_dict: dict, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        torch.save({"state_dict": state_dict, "zss_bench_toy_clip": meta}, tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _cached(out: Path, key: str) -> dict | None:
    try:
        info = json.loads((out / INFO_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if info.get("config_hash") != key or not (out / CHECKPOINT_FILE).is_file():
        return None
    return info


def pretrain_toy_clip(*, steps: int | None = None, batch_size: int | None = None, seed: int = 0,
                      world_size: int | None = None, model: str = DEFAULT_MODEL, cache: bool = True,
                      progress: bool = True, evaluate: bool = True, **overrides: Any) -> tuple[Path, dict]:
    """Train (or reuse) a toy CLIP; returns ``(checkpoint_path, info)``.

    ``None`` arguments take :class:`ToyClipConfig` defaults; ``overrides`` set any other
    field (``lr``, ``warmup``, ``world_seed``, ``zoom``, ...). The result lives in
    ``cache_path("toy-clip", <config hash>)``: ``checkpoint.pt`` (``{"state_dict": ...}``,
    loadable with ``load_clip(f"{model}:{path}")``) and ``info.json`` (config, final loss,
    time, zero-shot accuracy). With ``cache=True`` an existing result for the same
    configuration is returned without training.
    """
    fields = {"model": model, "seed": seed, **overrides}
    for key, value in (("steps", steps), ("batch_size", batch_size), ("world_size", world_size)):
        if value is not None:
            fields[key] = value
    unknown = set(fields) - {f.name for f in dataclasses.fields(ToyClipConfig)}
    if unknown:
        raise TypeError(f"unknown toy CLIP option(s): {', '.join(sorted(unknown))}")
    cfg = ToyClipConfig(**fields)
    if cfg.steps < 1 or cfg.batch_size < 2 or cfg.world_size < cfg.batch_size:
        raise ValueError(f"need steps >= 1, batch_size >= 2 and world_size >= batch_size; got {cfg}")
    if not 0.0 <= cfg.single_fraction < 1.0 or cfg.single_per_class < 0:
        raise ValueError(f"need 0 <= single_fraction < 1 and single_per_class >= 0; got {cfg}")
    key = config_hash(cfg)
    out = cache_path("toy-clip", key[:16])
    ckpt = out / CHECKPOINT_FILE
    if cache:
        info = _cached(out, key)
        if info is not None:
            return ckpt, {**info, "checkpoint": str(ckpt)}  # the cache may have been moved
    t0 = time.perf_counter()
    state_dict, info = _train(cfg, progress)
    meta = {"config": config_doc(cfg), "config_hash": key, "code_version": CODE_VERSION}
    _save_checkpoint(ckpt, state_dict, meta)
    info = {**meta, **info, "state_dict_sha256": state_dict_sha256(state_dict),
            "checkpoint": str(ckpt), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if evaluate:
        from zss_bench.clip.text_embeddings import TextEncoderAudit

        clip = load_clip(f"{cfg.model}:{ckpt}")
        audit = TextEncoderAudit()  # pretraining is not a run: keep the process-wide audit clean
        info["eval"] = evaluate_toy_clip(clip, audit=audit, surface=cfg.surface)
        info["eval_ensemble"] = evaluate_toy_clip(clip, prompt_kind="ensemble", audit=audit, surface=cfg.surface)
    info["total_time_s"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out / INFO_FILE, json.dumps(info, indent=1) + "\n")
    return ckpt, info


def default_toy_clip(device: str = "cpu") -> LoadedClip:
    """The reference toy CLIP: the shipped, sha256-pinned tag ``zss-toy-vit:synth-v1`` (no training).

    A checkpoint from :func:`pretrain_toy_clip` never replaces it; load one of those with
    ``load_clip(f"zss-toy-vit:{path}")``.
    """
    from zss_bench.clip.shipped import reference_toy_spec

    return load_clip(reference_toy_spec(), device=device)


# --------------------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate_toy_clip(clip: LoadedClip, protocol_name: str = "synth-15-5", n_per_class: int = 50,
                      seed: int = 123, prompt_kind: str | None = None, audit=None,
                      batch_size: int = 250, surface: str | None = None) -> dict:
    """Zero-shot classification of single-object images with the protocol's class names and
    prompt templates (``prompt_kind``: 'single', 'ensemble', default: the protocol's), drawn with
    ``surface`` object surfaces (default: the protocol's world).

    Returns accuracies in percent: ``{"overall", "seen", "unseen", "per_class", "n", ...}``.
    """
    from PIL import Image

    from zss_bench.clip.text_embeddings import class_text_embeddings
    from zss_bench.data.synth import generate_single_object_set
    from zss_bench.protocol import load_protocol

    proto = load_protocol(protocol_name)
    size = int(clip.preprocess_cfg.get("image_size", [64])[0])
    images, labels = generate_single_object_set(n_per_class, seed=seed, size=size, protocol=proto,
                                                surface=surface)
    templates = proto.templates(prompt_kind)
    text = class_text_embeddings(clip, proto.classes, templates, audit=audit)
    device = next(clip.model.parameters()).device
    preds = []
    for i in range(0, len(images), batch_size):
        batch = torch.stack([clip.preprocess(Image.fromarray(im)) for im in images[i:i + batch_size]])
        feats = F.normalize(clip.model.encode_image(batch.to(device)).float(), dim=-1).cpu()
        preds.append((feats @ text.T).argmax(dim=1))
    pred = torch.cat(preds).numpy()
    correct = pred == labels
    per_class = {c: round(100.0 * float(correct[labels == k].mean()), 2) for k, c in enumerate(proto.classes)}
    seen, unseen = list(proto.seen_ids), list(proto.unseen_ids)

    def acc(ids: list[int]) -> float:
        mask = np.isin(labels, ids)
        return round(100.0 * float(correct[mask].mean()), 2)

    return {"overall": round(100.0 * float(correct.mean()), 2), "seen": acc(seen), "unseen": acc(unseen),
            "per_class": per_class, "n": int(len(labels)), "protocol": proto.ref,
            "prompt_kind": prompt_kind or proto.prompts["default"], "templates": list(templates)}

