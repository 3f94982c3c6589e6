"""The synthetic world of synth-15-5: determinism, VOC layout, class coverage, captions,
learnable colours, the single-object set and refusal of foreign output folders."""
from __future__ import annotations

import colorsys
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zss_bench.data import read_label_png, to_contiguous
from zss_bench.data.synth import (
    COLOURS,
    SHAPES,
    SynthWorldError,
    colour_prototypes,
    generate_single_object_set,
    generate_world,
    parse_class_name,
    render_scene,
)
from zss_bench.protocol import load_protocol

PROTO = load_protocol("synth-15-5")
N_TRAIN, N_VAL = 200, 100


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _stems(root: Path, split: str) -> list[str]:
    return (root / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "world"
    summary = generate_world(out, seed=0, size=64, n_train=N_TRAIN, n_val=N_VAL, progress=False)
    return out, summary


# --------------------------------------------------------------------------- determinism


def test_same_seed_is_byte_identical_across_workers(world, tmp_path):
    out, summary = world
    again = generate_world(tmp_path / "b", seed=0, size=64, n_train=N_TRAIN, n_val=N_VAL,
                           workers=2, progress=False)
    assert again == summary
    a, b = _files(out), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert [k for k in a if a[k] != b[k]] == []


def test_other_seed_differs_and_image_i_does_not_depend_on_count(tmp_path):
    small = generate_world(tmp_path / "s5", seed=3, n_train=5, n_val=4, progress=False)
    generate_world(tmp_path / "s10", seed=3, n_train=10, n_val=4, progress=False)
    generate_world(tmp_path / "o", seed=4, n_train=5, n_val=4, progress=False)
    f5, f10, other = _files(tmp_path / "s5"), _files(tmp_path / "s10"), _files(tmp_path / "o")
    images = [k for k in f5 if k.startswith(("JPEGImages/", "SegmentationClass/"))]
    assert len(images) == 2 * (5 + 4)
    assert all(f5[k] == f10[k] for k in images)
    assert all(f5[k] != other[k] for k in images if k.startswith("JPEGImages/"))
    assert small["seed"] == 3 and small["counts"]["train"]["images"] == 5


def test_overwriting_a_previous_world_leaves_no_stale_files(tmp_path):
    out = tmp_path / "w"
    generate_world(out, seed=1, n_train=10, n_val=3, progress=False)
    generate_world(out, seed=1, n_train=5, n_val=3, progress=False)
    assert len(list((out / "JPEGImages").glob("*.jpg"))) == 8
    assert len(list((out / "SegmentationClass").glob("*.png"))) == 8
    assert len((out / "captions.jsonl").read_text().splitlines()) == 5


# --------------------------------------------------------------------------- layout


def test_layout_lists_and_masks(world):
    out, summary = world
    train, val = _stems(out, "train"), _stems(out, "val")
    assert len(train) == N_TRAIN and len(val) == N_VAL
    assert train == sorted(train) and val == sorted(val) and not set(train) & set(val)
    assert train[0] == "synth_train_000000" and val[-1] == f"synth_val_{N_VAL - 1:06d}"
    lut = PROTO.native_lut()
    for stem in train + val:
        jpg = out / "JPEGImages" / f"{stem}.jpg"
        png = out / "SegmentationClass" / f"{stem}.png"
        with Image.open(jpg) as im:
            assert im.format == "JPEG" and im.mode == "RGB" and im.size == (64, 64)
        with Image.open(png) as im:
            assert im.format == "PNG" and im.mode == "P" and im.size == (64, 64)
        native = read_label_png(png)
        assert native.max() <= 20
        contiguous = to_contiguous(native, lut, png)  # the data layer accepts every mask
        assert set(np.unique(contiguous).tolist()) <= set(range(20)) | {255}
    assert len(list((out / "JPEGImages").iterdir())) == N_TRAIN + N_VAL
    assert len(list((out / "SegmentationClass").iterdir())) == N_TRAIN + N_VAL


def test_world_json(world):
    out, summary = world
    on_disk = json.loads((out / "world.json").read_text())
    assert on_disk == summary and summary["complete"] is True
    assert summary["protocol"] == {"name": "synth-15-5", "version": PROTO.version,
                                   "content_hash": PROTO.content_hash}
    assert summary["classes"] == list(PROTO.classes)
    assert summary["unseen"] == list(PROTO.unseen_names)
    assert (summary["seed"], summary["size"], summary["n_train"], summary["n_val"]) == (0, 64, N_TRAIN, N_VAL)
    assert isinstance(summary["generator_version"], int)
    # per-class image counts agree with the masks
    for split in ("train", "val"):
        seen_in = {c: 0 for c in PROTO.classes}
        for stem in _stems(out, split):
            for v in np.unique(read_label_png(out / "SegmentationClass" / f"{stem}.png")):
                if v:
                    seen_in[PROTO.classes[v - 1]] += 1
        assert summary["counts"][split]["images_per_class"] == seen_in


# --------------------------------------------------------------------------- content


def test_every_class_in_both_splits_and_unseen_in_train(world):
    out, summary = world
    for split in ("train", "val"):
        present = set()
        for stem in _stems(out, split):
            present |= set(np.unique(read_label_png(out / "SegmentationClass" / f"{stem}.png")).tolist())
        assert present == set(range(21)), split
    per_class = summary["counts"]["train"]["images_per_class"]
    assert all(per_class[name] > 0 for name in PROTO.unseen_names)


def test_captions_name_every_object(world):
    out, _ = world
    lines = [json.loads(line) for line in (out / "captions.jsonl").read_text().splitlines()]
    assert [d["image"] for d in lines] == _stems(out, "train")
    unseen_named = 0
    for d in lines:
        native = read_label_png(out / "SegmentationClass" / f"{d['image']}.png")
        in_mask = {PROTO.classes[v - 1] for v in np.unique(native) if v}
        assert set(d["classes"]) == in_mask, d  # every object named, none fully occluded
        assert len(d["classes"]) == len(set(d["classes"]))
        for name in d["classes"]:
            assert f"a {name}" in d["caption"]
        assert d["caption"].endswith("on a background")
        unseen_named += bool(set(d["classes"]) & set(PROTO.unseen_names))
    assert unseen_named > 0  # unseen names reach the captions: text is not pixel supervision


def _saturation(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float64)
    mx, mn = rgb.max(-1), rgb.min(-1)
    return np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-9), 0.0)


def test_object_colours_are_learnable_from_pixels(world):
    out, _ = world
    protos = colour_prototypes()
    names, table = list(protos), np.array([protos[n] for n in protos], dtype=np.float64)
    checked = 0
    for stem in _stems(out, "train")[:80] + _stems(out, "val")[:40]:
        rgb = np.asarray(Image.open(out / "JPEGImages" / f"{stem}.jpg").convert("RGB"))
        native = read_label_png(out / "SegmentationClass" / f"{stem}.png")
        bg = native == 0
        assert _saturation(rgb[bg]).mean() < 0.3  # muted background
        for v in np.unique(native[~bg]):
            colour, _ = parse_class_name(PROTO.classes[v - 1])
            px = rgb[native == v]
            mean = px.reshape(-1, 3).mean(0)
            nearest = names[int(np.argmin(((table - mean) ** 2).sum(1)))]
            assert nearest == colour, (stem, PROTO.classes[v - 1], mean)
            assert _saturation(px).mean() > 0.55  # saturated, never background-like
            checked += 1
    assert checked > 200


def test_render_scene_invariants():
    classes = PROTO.classes
    for i in range(300):
        rgb, mask, objects = render_scene(np.random.default_rng(i), 64, classes)
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert mask.shape == (64, 64) and mask.dtype == np.uint8
        assert 1 <= len(objects) <= 4
        ids = [o["class_id"] for o in objects]
        assert len(set(ids)) == len(ids)
        assert set(np.unique(mask).tolist()) - {0} == {c + 1 for c in ids}
        for o in objects:
            assert o["class"] == classes[o["class_id"]]
            assert (o["colour"], o["shape"]) == parse_class_name(o["class"])
            assert o["visible"] == int((mask == o["class_id"] + 1).sum())
            assert o["visible"] >= 0.4 * o["area"]
        # objects of one colour never touch (4-neighbourhood): their boundary stays visible
        for a in objects:
            for b in objects:
                if a is not b and a["colour"] == b["colour"]:
                    ma, mb = mask == a["class_id"] + 1, mask == b["class_id"] + 1
                    assert not (ma[1:] & mb[:-1]).any() and not (ma[:, 1:] & mb[:, :-1]).any()


# --------------------------------------------------------------------------- single-object set


def test_single_object_set():
    images, labels = generate_single_object_set(3, seed=0, size=48)
    assert images.shape == (60, 48, 48, 3) and images.dtype == np.uint8
    assert labels.shape == (60,) and np.bincount(labels).tolist() == [3] * 20
    again, labels2 = generate_single_object_set(3, seed=0, size=48)
    assert np.array_equal(images, again) and np.array_equal(labels, labels2)
    assert not np.array_equal(images, generate_single_object_set(3, seed=1, size=48)[0])
    protos = colour_prototypes()
    names, table = list(protos), np.array([protos[n] for n in protos], dtype=np.float64)
    for img, lab in zip(images, labels):
        colour, _ = parse_class_name(PROTO.classes[lab])
        sat = _saturation(img)
        assert (sat > 0.5).mean() > 0.15  # a large object
        mean = img[sat > 0.5].mean(0)
        assert names[int(np.argmin(((table - mean) ** 2).sum(1)))] == colour


# --------------------------------------------------------------------------- errors


def test_refuses_a_foreign_non_empty_folder(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(SynthWorldError, match="not empty.*not a synthetic world"):
        generate_world(out, n_train=2, n_val=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]
    afile = tmp_path / "file"
    afile.write_text("x")
    with pytest.raises(SynthWorldError, match="not a folder"):
        generate_world(afile, n_train=2, n_val=2, progress=False)
    # a previous world with a foreign file added is refused too
    world = tmp_path / "w"
    generate_world(world, n_train=2, n_val=2, progress=False)
    (world / "notes.txt").write_text("x")
    with pytest.raises(SynthWorldError, match="foreign"):
        generate_world(world, n_train=2, n_val=2, progress=False)


def test_class_names_must_parse(tmp_path):
    assert parse_class_name("Blue  Star") == ("blue", "star")
    assert set(COLOURS) == {"red", "green", "blue", "yellow"} and len(SHAPES) == 5
    for bad in ("purple circle", "red hexagon", "red", "big red circle"):
        with pytest.raises(SynthWorldError, match="colour"):
            parse_class_name(bad)
    text = PROTO.path.read_text().replace("red circle", "red blob")
    custom = tmp_path / "synth-15-5.yaml"
    custom.write_text(text)
    with pytest.raises(SynthWorldError, match="red blob"):
        generate_world(tmp_path / "out", n_train=2, n_val=2, progress=False, protocol=custom)


def test_shipped_protocol_classes_are_the_colour_shape_grid():
    parsed = [parse_class_name(c) for c in PROTO.classes]
    assert parsed == [(c, s) for c in COLOURS for s in SHAPES]  # id = 5 * colour + shape
    assert {s for _, s in (parsed[i] for i in PROTO.seen_ids)} == set(SHAPES) - {"star"}
