"""Textured object surfaces (synth v2 candidate): flat worlds stay v1 byte for byte, textures carry shape."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from zss_bench.data.synth import SHAPES, generate_single_object_set, generate_world, render_scene
from zss_bench.data.synth_surfaces import PATTERNS, SURFACES, check_surface, surface_gain
from zss_bench.protocol import load_protocol

CLASSES = load_protocol("synth-15-5").classes
# sha256 of 20 dev-world validation scenes (rgb + mask) and 40 single-object images without JPEG, as the v1
# generator (before surfaces existed) drew them: a flat world must never change.
V1_DIGEST = "9742ac7f842fd2d08a7f5bea9a917df62876f351de55d088844d1c4d4e7803ee"


def _digest(**kw) -> str:
    h = hashlib.sha256()
    for i in range(20):
        rgb, mask, _ = render_scene(np.random.default_rng(np.random.SeedSequence([7, 1, i])), 64, CLASSES, **kw)
        h.update(rgb.tobytes())
        h.update(mask.tobytes())
    images, _ = generate_single_object_set(2, seed=1, jpeg_quality=None, **kw)
    h.update(images.tobytes())
    return h.hexdigest()


def test_flat_is_v1_byte_for_byte():
    assert _digest() == V1_DIGEST
    assert _digest(surface="flat") == V1_DIGEST
    assert _digest(surface="textured") != V1_DIGEST


def test_flat_surface_draws_no_random_numbers():
    rng = np.random.default_rng(0)
    before = rng.bit_generator.state
    assert surface_gain(rng, "flat", "star", np.arange(3), np.arange(3), 1.0, 1.0, 0.5, 64) is None
    assert rng.bit_generator.state == before


def test_every_shape_has_its_own_pattern():
    assert set(PATTERNS) == set(SHAPES)
    u, v = np.meshgrid(np.arange(0, 16, 0.5), np.arange(0, 16, 0.5))
    maps = {s: PATTERNS[s](u + 0.25, v + 0.25, 4.0) for s in SHAPES}
    for s, m in maps.items():
        assert 0.1 < m.mean() < 0.9, s  # a pattern, not a flat fill
    for a in SHAPES:
        for b in SHAPES:
            if a < b:
                assert (maps[a] != maps[b]).mean() > 0.1, (a, b)


def test_textured_objects_keep_colour_and_gain_texture():
    rng_flat, rng_tex = (np.random.default_rng(np.random.SeedSequence([3, 1, 0])) for _ in range(2))
    spreads = {}
    for surface, rng in (("flat", rng_flat), ("textured", rng_tex)):
        values = []
        for _ in range(30):
            rgb, mask, objects = render_scene(rng, 64, CLASSES, surface=surface)
            for o in objects:
                px = rgb[mask == o["class_id"] + 1].astype(float)
                if len(px) > 50:
                    values.append(px.max(1).std() / px.max(1).mean())  # relative brightness spread
                    assert np.argmax(px.mean(0)) == np.argmax(o["rgb"])  # dominant channel = the colour's
        spreads[surface] = float(np.mean(values))
    assert spreads["textured"] > 2 * spreads["flat"]


def test_world_json_names_a_non_flat_surface(tmp_path):
    flat = generate_world(tmp_path / "flat", seed=0, n_train=4, n_val=2, progress=False)
    tex = generate_world(tmp_path / "tex", seed=0, n_train=4, n_val=2, progress=False, surface="textured")
    assert "surface" not in flat
    assert tex["surface"] == "textured"
    assert json.loads((tmp_path / "tex" / "world.json").read_text())["surface"] == "textured"
    assert (tmp_path / "flat" / "SegmentationClass").exists()


def test_unknown_surface_is_refused():
    assert check_surface("flat") == "flat" and SURFACES == ("flat", "textured", "coarse")
    with pytest.raises(ValueError, match="surface must be one of flat, textured, coarse, got 'shiny'"):
        render_scene(np.random.default_rng(0), 64, CLASSES, surface="shiny")


def test_close_ups_fill_the_frame():
    """`scale` > 1 draws close-ups (a teacher-pretraining option): the object covers most of the image."""
    def coverage(scale):
        images, _ = generate_single_object_set(2, seed=3, jpeg_quality=None, surface="flat", scale=scale)
        sat = images.max(-1).astype(int) - images.min(-1)  # objects are saturated, backgrounds muted
        return float((sat > 90).mean())

    assert coverage((1.6, 2.0)) > 0.7 > 0.45 > coverage((0.60, 0.78))
