"""Dense zero-shot accuracy of a CLIP teacher: every patch classified against the class prompts.

Why: a CLIP that classifies whole images well may still carry no class where a class is. Methods
that read the frozen teacher's patch tokens (MaskCLIP, ZegCLIP, Cascade-CLIP) inherit exactly that
dense behaviour, so the embedded world is a faithful proxy only if its teacher's dense accuracy sits
where a real CLIP's does: far below its global accuracy, well above chance. Two readouts, the two
the methods use: ``dense`` (the last block's patch tokens through ln_post and the projection) and
``value`` (MaskCLIP's value-path tokens of the last block).

Scenes are the synthetic world's validation images, drawn in memory exactly as
``generate_world(seed=...)`` draws them (same seed stream, same JPEG round trip). A patch is scored
when one class covers at least ``min_purity`` of its pixels (background and mixed patches are left
out); its label is that class.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from zss_bench.clip import LoadedClip
from zss_bench.modeling.teacher import ClipTeacher

READOUTS = ("dense", "value")

__all__ = ["READOUTS", "evaluate_dense_zero_shot", "patch_labels"]


def patch_labels(native: np.ndarray, patch: int, min_purity: float = 0.5) -> np.ndarray:
    """Native mask (H, W) with 0 = background and k = class k-1 -> (H // patch, W // patch) contiguous
    class ids, -1 where no class covers ``min_purity`` of the patch (background counts against it)."""
    h, w = native.shape[0] // patch, native.shape[1] // patch
    cells = native[:h * patch, :w * patch].reshape(h, patch, w, patch).transpose(0, 2, 1, 3).reshape(h, w, -1)
    k = int(native.max()) + 1
    counts = np.zeros((h, w, max(k, 1)), dtype=np.int64)
    for c in range(1, k):
        counts[..., c] = (cells == c).sum(-1)
    best = counts.argmax(-1)
    share = np.take_along_axis(counts, best[..., None], -1)[..., 0] / cells.shape[-1]
    return np.where((best > 0) & (share >= min_purity), best - 1, -1)


def _scenes(protocol, n_images: int, seed: int, size: int, surface: str = "flat"):
    from zss_bench.data.synth import JPEG_QUALITY, _SPLIT_INDEX, _jpeg_roundtrip, render_scene

    images, masks, present = [], [], []
    for i in range(n_images):
        rng = np.random.default_rng(np.random.SeedSequence([seed, _SPLIT_INDEX["val"], i]))
        rgb, mask, objects = render_scene(rng, size, protocol.classes, surface=surface)
        images.append(_jpeg_roundtrip(rgb, JPEG_QUALITY))
        masks.append(mask)
        present.append(sorted({o["class_id"] for o in objects}))
    return np.stack(images), np.stack(masks), present


def _attributes(classes) -> tuple[np.ndarray, np.ndarray] | None:
    """(colour index, shape index) per class for synth names, else None."""
    from zss_bench.data.synth import SynthWorldError, parse_class_name

    try:
        parsed = [parse_class_name(c) for c in classes]
    except SynthWorldError:
        return None
    colours, shapes = sorted({c for c, _ in parsed}), sorted({s for _, s in parsed})
    return (np.array([colours.index(c) for c, _ in parsed]), np.array([shapes.index(s) for _, s in parsed]))


@torch.no_grad()
def evaluate_dense_zero_shot(clip: LoadedClip, protocol_name: str = "synth-15-5", n_images: int = 200,
                             seed: int = 7, size: int | None = None, prompt_kind: str | None = None,
                             min_purity: float = 0.5, audit=None, batch_size: int = 50,
                             surface: str | None = None) -> dict:
    """Per-patch zero-shot classification on ``n_images`` validation scenes of the synthetic world of
    ``seed`` (default 7, the dev world) at ``size`` px (default: CLIP's own input size), objects drawn
    with ``surface`` (default: the protocol's world; flat: v1).

    Returns, per readout (``dense``, ``value``), accuracies in percent over scored patches: ``overall``,
    ``seen``, ``unseen``, ``mean_class`` (mean of per-class accuracies) and ``in_image`` (share of patches
    whose prediction is one of the classes present in their image: high ``in_image`` with low accuracy
    means the tokens carry the image's content but not its layout), and for synth names ``colour`` and
    ``shape`` (the share of patches whose predicted class has the right colour / the right shape); plus ``chance`` (100 / K),
    ``in_image_chance`` (the ``in_image`` share of a uniformly random guess), the grid and the number of
    scored patches."""
    from zss_bench.clip.text_embeddings import class_text_embeddings
    from zss_bench.protocol import load_protocol

    proto = load_protocol(protocol_name)
    if proto.dataset != "synth":
        raise ValueError(f"dense zero-shot accuracy needs a synthetic protocol (its scenes are drawn here); "
                         f"{proto.name!r} is for dataset {proto.dataset!r}")
    teacher = ClipTeacher(clip).eval()
    size = int(size or teacher.image_size[0])
    patch = teacher.vit.patch_size[0]
    images, masks, present = _scenes(proto, n_images, seed, size, surface or proto.world["surface"])
    text = F.normalize(class_text_embeddings(clip, proto.classes, proto.templates(prompt_kind), audit=audit), dim=-1)
    device = next(clip.model.parameters()).device
    preds = {r: [] for r in READOUTS}
    for i in range(0, n_images, batch_size):
        rgb = torch.from_numpy(images[i:i + batch_size]).permute(0, 3, 1, 2).float().to(device)
        out = teacher.encode(rgb, READOUTS, resolution="input")
        for r in READOUTS:
            feats = F.normalize(out[r].float(), dim=1)
            preds[r].append(torch.einsum("bdhw,kd->bkhw", feats, text.to(feats)).argmax(1).cpu().numpy())
    labels = np.stack([patch_labels(m, patch, min_purity) for m in masks])
    scored = labels >= 0
    seen, unseen = np.array(proto.seen_ids), np.array(proto.unseen_ids)
    k = len(proto.classes)
    result = {"protocol": proto.ref, "world_seed": seed, "n_images": n_images, "size": size,
              "grid": list(labels.shape[1:]), "patches": int(scored.sum()), "min_purity": min_purity,
              "chance": round(100.0 / k, 2), "prompt_kind": prompt_kind or proto.prompts["default"]}
    attrs = _attributes(proto.classes)
    n_present = np.array([len(ids) for ids in present], dtype=float)[:, None, None] * np.ones(labels.shape)
    result["in_image_chance"] = round(100.0 * float(n_present[scored].mean()) / k, 2)
    in_image = np.zeros(labels.shape, dtype=bool)
    for r in READOUTS:
        pred = np.concatenate(preds[r])
        for j, ids in enumerate(present):
            in_image[j] = np.isin(pred[j], ids)
        correct = (pred == labels)[scored]
        y = labels[scored]
        per_class = [float(correct[y == c].mean()) for c in range(k) if (y == c).any()]
        result[r] = {
            "overall": round(100.0 * float(correct.mean()), 2),
            "seen": round(100.0 * float(correct[np.isin(y, seen)].mean()), 2),
            "unseen": round(100.0 * float(correct[np.isin(y, unseen)].mean()), 2),
            "mean_class": round(100.0 * float(np.mean(per_class)), 2),
            "in_image": round(100.0 * float(in_image[scored].mean()), 2),
        }
        if attrs is not None:  # synth names are "<colour> <shape>": which half of the name a patch gets right
            for j, part in enumerate(("colour", "shape")):
                result[r][part] = round(100.0 * float((attrs[j][pred[scored]] == attrs[j][y]).mean()), 2)
    return result
