"""Dense zero-shot accuracy of a teacher (zss_bench.modeling.dense_zero_shot, `toy-clip eval`)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from zss_bench.clip import load_clip
from zss_bench.clip.text_embeddings import TextEncoderAudit
from zss_bench.modeling import dense_zero_shot as dz

MICRO = "zss-micro-vit:random"


def test_patch_labels_take_the_majority_class_and_leave_background_and_mixed_patches_out():
    m = np.zeros((16, 24), dtype=np.uint8)
    m[0:8, 0:8] = 4  # all class 3
    m[0:8, 8:16] = 0
    m[0:4, 8:16] = 6  # half class 5, half background: purity 0.5 is enough
    m[8:16, 0:8] = 2
    m[8:16, 0:3] = 7  # class 1 has 5/8 of the patch
    m[8:16, 8:16] = np.arange(8)[None, :] % 3 + 1  # three classes, none with half
    # the last column of patches stays background
    labels = dz.patch_labels(m, 8)
    assert labels.tolist() == [[3, 5, -1], [1, -1, -1]]
    assert dz.patch_labels(m, 8, min_purity=0.6).tolist() == [[3, -1, -1], [1, -1, -1]]


def test_a_teacher_whose_patches_are_their_class_text_scores_100_and_the_grid_is_not_transposed(monkeypatch):
    """Hand-made scenes whose red channel is 10 * (class + 1) inside objects; a fake teacher returns, per
    patch, the text embedding of the class its pixels say. Every scored patch must then be right: a
    transposed grid, a shifted label or a wrong readout would not be."""
    clip = load_clip(MICRO)
    audit = TextEncoderAudit()
    rng = np.random.default_rng(0)

    def scenes(protocol, n, seed, size, surface="flat"):
        masks = np.zeros((n, size, size), dtype=np.uint8)
        present = []
        for i in range(n):
            a, b = (int(x) for x in rng.choice(20, 2, replace=False))
            masks[i, : size // 2, :] = a + 1
            masks[i, size // 2:, : size // 4] = b + 1  # a non-square layout catches a transposed grid
            present.append(sorted({a, b}))
        images = np.zeros((n, size, size, 3), dtype=np.uint8)
        images[..., 0] = masks * 10
        return images, masks, present

    from zss_bench.clip.text_embeddings import class_text_embeddings
    from zss_bench.protocol import load_protocol

    proto = load_protocol("synth-15-5")
    text = class_text_embeddings(clip, proto.classes, proto.templates(None), audit=audit)

    def encode(self, rgb, need, resolution="input"):
        patch = self.vit.patch_size[0]
        red = rgb[:, 0].unfold(1, patch, patch).unfold(2, patch, patch)  # (B, h, w, p, p)
        cls = torch.mode(red.flatten(-2).round().long(), dim=-1).values // 10 - 1  # (B, h, w)
        feats = text[cls.clamp(min=0)].permute(0, 3, 1, 2)  # (B, D, h, w)
        return {r: feats for r in need}

    monkeypatch.setattr(dz, "_scenes", scenes)
    monkeypatch.setattr(dz.ClipTeacher, "encode", encode)
    out = dz.evaluate_dense_zero_shot(clip, n_images=6, size=32, audit=audit, batch_size=4)
    assert out["grid"] == [4, 4] and out["patches"] > 0
    for r in dz.READOUTS:
        assert out[r]["overall"] == 100.0 and out[r]["in_image"] == 100.0


def test_dense_accuracy_of_a_random_micro_clip_is_well_formed_and_deterministic():
    clip = load_clip(MICRO)
    a = dz.evaluate_dense_zero_shot(clip, n_images=6, size=32, audit=TextEncoderAudit())
    b = dz.evaluate_dense_zero_shot(clip, n_images=6, size=32, audit=TextEncoderAudit())
    assert a == b
    assert a["grid"] == [4, 4] and a["patches"] > 0 and a["chance"] == 5.0
    assert 0 < a["in_image_chance"] < 100
    for r in dz.READOUTS:
        assert set(a[r]) == {"overall", "seen", "unseen", "mean_class", "in_image", "colour", "shape"}
        assert all(0.0 <= v <= 100.0 for v in a[r].values())


def test_dense_accuracy_refuses_a_real_protocol():
    with pytest.raises(ValueError, match="synthetic protocol"):
        dz.evaluate_dense_zero_shot(load_clip(MICRO), protocol_name="voc-15-5", n_images=1)


def test_toy_clip_eval_reports_dense_accuracy(capsys):
    from zss_bench.cli import main

    assert main(["toy-clip", "eval", "--clip", MICRO, "--n-per-class", "2", "--dense-images", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["dense"]["n_images"] == 3 and {"dense", "value"} <= set(out["dense"])
