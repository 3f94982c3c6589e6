"""Is a patch's class *in* the frozen teacher's tokens at all? Linear probes per depth (protocols/synth/FIDELITY.md).

Zero-shot dense accuracy (``toy-clip eval --dense-images``) asks whether tokens align with the class *text*;
a method such as ZegCLIP trains a decoder on the frozen tokens, so what limits it is whether class, colour
and shape can be *decoded* from them at all. For each depth (the patch embedding = block 0, after each block,
and MaskCLIP's value readout) a linear classifier is fitted on the object patches of 400 scenes and scored
on 200 others (both from the dev world's validation stream, disjoint indices), for the patch's class (chance
5 %), colour (25 %) and shape (20 %).

Usage: python scripts/fidelity/probe_tokens.py CLIP_SPEC [--surface flat|textured] [--world-seed 7]
Prints one JSON line.
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from zss_bench.clip import load_clip
from zss_bench.clip.partial import value_path
from zss_bench.modeling.dense_zero_shot import _scenes, patch_labels
from zss_bench.modeling.teacher import ClipTeacher
from zss_bench.protocol import load_protocol


@torch.no_grad()
def _features(teacher: ClipTeacher, images: np.ndarray) -> dict[str, torch.Tensor]:
    """{depth name: (N, h*w, C)} patch tokens (class token dropped)."""
    rgb = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    x = teacher.vit.tokens(teacher.clip_input(rgb, "input"))
    out = {"block0": x[:, 1:].clone()}
    n = teacher.vit.num_blocks
    for b in range(n):
        if b == n - 1:
            out["value"] = teacher.vit.project(value_path(teacher.vit.blocks[b], x)[:, 1:])
        x = teacher.vit.run_blocks(x, b, b + 1)
        out[f"block{b + 1}"] = x[:, 1:].clone()
    return out


def _probe(x_tr, y_tr, x_te, y_te, classes: int, steps: int = 300) -> float:
    mean, std = x_tr.mean(0), x_tr.std(0) + 1e-6
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    g = torch.Generator().manual_seed(0)
    lin = torch.nn.Linear(x_tr.shape[1], classes)
    torch.nn.init.normal_(lin.weight, std=0.01, generator=g)
    opt = torch.optim.LBFGS(lin.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(lin(x_tr), y_tr) + 1e-3 * lin.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return round(100.0 * float((lin(x_te).argmax(1) == y_te).float().mean()), 1)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("clip")
    ap.add_argument("--surface", default="flat")
    ap.add_argument("--world-seed", type=int, default=7)
    args = ap.parse_args()
    proto = load_protocol("synth-15-5")
    teacher = ClipTeacher(load_clip(args.clip)).eval()
    size, patch = int(teacher.image_size[0]), teacher.vit.patch_size[0]
    images, masks, _ = _scenes(proto, 600, args.world_seed, size, args.surface)
    labels = torch.from_numpy(np.stack([patch_labels(m, patch, 0.5) for m in masks]).reshape(len(masks), -1))
    colour = torch.tensor([i // 5 for i in range(20)])
    shape = torch.tensor([i % 5 for i in range(20)])
    feats = _features(teacher, images)
    result = {"clip": args.clip, "surface": args.surface, "train_scenes": 400, "test_scenes": 200}
    for name, f in feats.items():
        f = f.float()
        split = {"tr": slice(0, 400), "te": slice(400, 600)}
        xs, ys = {}, {}
        for k, sl in split.items():
            lab = labels[sl].reshape(-1)
            keep = lab >= 0
            xs[k], ys[k] = f[sl].reshape(-1, f.shape[-1])[keep], lab[keep]
        result[name] = {"class": _probe(xs["tr"], ys["tr"], xs["te"], ys["te"], 20),
                        "colour": _probe(xs["tr"], colour[ys["tr"]], xs["te"], colour[ys["te"]], 4),
                        "shape": _probe(xs["tr"], shape[ys["tr"]], xs["te"], shape[ys["te"]], 5)}
    result["patches"] = {"train": int(len(ys["tr"])), "test": int(len(ys["te"]))}
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
