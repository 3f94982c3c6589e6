"""Protocol files and loader: exact class splits, index spaces, hashing and validation errors."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from zss_bench.protocol import (
    Protocol,
    ProtocolError,
    list_protocols,
    load_protocol,
    protocols_dir,
)
from zss_bench.registry import Registry, UnknownNameError, suggest

SHIPPED = ["coco-stuff-156-15", "context-59-cascade", "context-59-zs3", "synth-15-5", "synth-15-5@2", "voc-15-5"]

VOC_UNSEEN = ("potted plant", "sheep", "sofa", "train", "tvmonitor")

COCO_UNSEEN = ("cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors",
               "cardboard", "clouds", "grass", "playingfield", "river", "road", "tree",
               "wall-concrete")
COCO_UNSEEN_PNG = (20, 24, 32, 33, 40, 56, 86, 99, 105, 123, 144, 147, 148, 168, 171)
COCO_UNSEEN_IDS = (19, 23, 28, 29, 36, 51, 76, 88, 94, 112, 133, 136, 137, 157, 160)
# stuffthingmaps values of the 11 categories removed from COCO (ids 12, 26, 29, 30, 45, 66,
# 68, 69, 71, 83, 91 minus one).
COCO_UNUSED_PNG = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

CTX_ZS3_UNSEEN = ("cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor",
                  "keyboard", "aeroplane")
CTX_ZS3_IDS = (19, 33, 48, 14, 7, 24, 6, 54, 31, 0)
CTX_CASCADE_UNSEEN = ("aeroplane", "bed", "bedclothes", "boat", "bottle", "car", "cloth", "cow",
                      "keyboard", "plate")
CTX_CASCADE_IDS = (0, 2, 3, 7, 9, 13, 17, 19, 31, 37)


def _raw(name: str) -> dict:
    return yaml.safe_load((protocols_dir() / f"{name}.yaml").read_text())


def _write(tmp_path: Path, doc: dict | str, name: str = "voc-15-5") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False))
    return path


# --------------------------------------------------------------------------- shipped files


def test_list_protocols_is_sorted_and_complete():
    assert list_protocols() == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_protocol_is_consistent(name):
    p = load_protocol(name)
    assert isinstance(p, Protocol)
    assert p.ref == name == p.path.stem and name.split("@")[0] == p.name
    assert p.version == (int(name.split("@")[1]) if "@" in name else 1)
    assert p.num_classes == len(p.classes) == len(set(p.classes))
    seen, unseen = set(p.seen_ids), set(p.unseen_ids)
    assert seen | unseen == set(range(p.num_classes))
    assert not seen & unseen and seen and unseen
    assert list(p.seen_ids) == sorted(p.seen_ids) and list(p.unseen_ids) == sorted(p.unseen_ids)
    assert p.seen_names == tuple(p.classes[i] for i in p.seen_ids)
    assert p.unseen_names == tuple(p.classes[i] for i in p.unseen_ids)
    assert p.ignore_label == 255 >= p.num_classes
    assert p.background == "ignored"
    assert p.unseen_pixel_policy == "ignore"
    assert p.headline_convention == "mmseg"
    assert p.eval_split == "val" and "train" in p.image_sets
    # Every contiguous id is reachable from exactly one native value.
    lut = p.native_lut()
    assert sorted(v for v in lut.tolist() if 0 <= v < p.num_classes) == list(range(p.num_classes))
    assert lut[255] == p.ignore_label
    for kind in ("single", "ensemble"):
        templates = p.templates(kind)
        assert templates and all(t.count("{}") == 1 for t in templates)
    assert p.templates() == p.templates(p.prompts["default"])
    for name_ in p.classes:
        assert p.class_index(name_) == p.classes.index(name_)


def test_voc_15_5():
    p = load_protocol("voc-15-5")
    assert p.dataset == "voc" and p.num_classes == 20
    assert p.classes[:3] == ("aeroplane", "bicycle", "bird") and p.classes[10] == "diningtable"
    assert p.unseen_ids == (15, 16, 17, 18, 19)
    assert p.unseen_names == VOC_UNSEEN
    assert p.seen_ids == tuple(range(15))
    assert p.image_sets == {"train": {"list": "train_aug", "count": 10582},
                            "val": {"list": "val", "count": 1449}}
    lut = p.native_lut()
    assert lut.dtype == np.int32 and lut.shape == (256,)
    assert lut[0] == 255 and lut[1] == 0 and lut[20] == 19 and lut[21] == -1 and lut[255] == 255
    assert [int(lut[v]) for v in (16, 17, 18, 19, 20)] == list(p.unseen_ids)
    assert (lut[21:255] == -1).all()
    assert p.native_lut(size=1024).shape == (1024,)
    assert p.native_lut(size=0).shape == (256,)  # never shorter than the largest native + 1


def test_coco_stuff_156_15():
    p = load_protocol("coco-stuff-156-15")
    assert p.dataset == "coco-stuff" and p.num_classes == 171
    assert len(p.seen_ids) == 156
    assert p.classes[:5] == ("person", "bicycle", "car", "motorcycle", "airplane")
    assert p.classes[79:82] == ("toothbrush", "banner", "blanket")  # 80 things, then stuff
    assert p.classes[-1] == "wood"
    assert p.unseen_ids == COCO_UNSEEN_IDS
    assert p.unseen_names == COCO_UNSEEN
    lut = p.native_lut()
    assert tuple(int(lut[v]) for v in COCO_UNSEEN_PNG) == COCO_UNSEEN_IDS
    assert all(lut[v] == -1 for v in COCO_UNUSED_PNG)
    assert (lut[182:255] == -1).all()
    assert lut[255] == 255
    assert (lut >= 0).sum() == 171 + 1  # every class plus the ignored 255
    assert p.native_map[181] == 170 and p.native_map[0] == 0
    assert p.image_sets["val"] == {"list": "val2017", "count": 5000}
    assert p.image_sets["train"] == {"list": "train2017", "count": 118287}


@pytest.mark.parametrize("name, unseen, ids", [
    ("context-59-zs3", CTX_ZS3_UNSEEN, CTX_ZS3_IDS),
    ("context-59-cascade", CTX_CASCADE_UNSEEN, CTX_CASCADE_IDS),
])
def test_context_splits(name, unseen, ids):
    p = load_protocol(name)
    assert p.dataset == "context" and p.num_classes == 59 and len(p.seen_ids) == 49
    assert tuple(p.class_index(n) for n in unseen) == ids
    assert p.unseen_ids == tuple(sorted(ids))
    assert set(p.unseen_names) == set(unseen)
    lut = p.native_lut()
    assert lut[0] == 255 and lut[1] == 0 and lut[59] == 58 and lut[60] == -1
    assert p.image_sets["train"]["count"] == 4998 and p.image_sets["val"]["count"] == 5105


def test_context_splits_share_classes_but_differ():
    a, b = load_protocol("context-59-zs3"), load_protocol("context-59-cascade")
    assert a.classes == b.classes
    assert a.classes[39] == "pottedplant" and a.classes[54] == "tvmonitor"
    assert a.native_map == b.native_map
    assert a.unseen_ids != b.unseen_ids and a.content_hash != b.content_hash


def test_synth_placeholder():
    p = load_protocol("synth-15-5")
    assert p.dataset == "synth" and p.num_classes == 20
    assert p.classes[:5] == ("red circle", "red square", "red triangle", "red cross", "red star")
    assert p.unseen_ids == (4, 9, 12, 14, 19)
    assert set(p.unseen_names) == {"red star", "green star", "blue star", "yellow star",
                                   "blue triangle"}
    # No seen class is a star: the shape attribute itself is unseen.
    assert not any(n.endswith("star") for n in p.seen_names)
    assert all(v["count"] is None for v in p.image_sets.values())
    assert len(p.templates("ensemble")) >= 3


# --------------------------------------------------------------------------- API details


def test_aliases_and_class_index():
    p = load_protocol("voc-15-5")
    assert p.class_index("pottedplant") == p.class_index("potted plant") == 15
    assert p.class_index("Potted Plant") == 15
    assert p.class_index("tv monitor") == p.class_index("tvmonitor") == 19
    assert p.class_index("dining table") == 10
    with pytest.raises(UnknownNameError) as info:
        p.class_index("shep")
    assert "sheep" in str(info.value) and not str(info.value).startswith(("'", '"'))
    ctx = load_protocol("context-59-zs3")
    assert ctx.class_index("potted plant") == ctx.class_index("pottedplant") == 39


def test_unknown_protocol_suggests():
    with pytest.raises(UnknownNameError) as info:
        load_protocol("voc-15-6")
    msg = str(info.value)
    assert msg.startswith("unknown protocol 'voc-15-6'")
    assert "did you mean 'voc-15-5'?" in msg
    assert info.value.suggestions[0] == "voc-15-5"
    assert isinstance(info.value, KeyError)


def test_missing_path_is_protocol_error(tmp_path):
    with pytest.raises(ProtocolError, match="not found"):
        load_protocol(tmp_path / "nope.yaml")


def test_protocol_is_immutable_and_cached():
    p = load_protocol("voc-15-5")
    assert load_protocol("voc-15-5") is p
    assert load_protocol(p.path) is p
    assert load_protocol(str(p.path)) is p
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.name = "other"  # type: ignore[misc]
    d = p.to_dict()
    d["classes"].append("extra")
    d["prompts"]["single"].clear()
    assert p.to_dict()["classes"] == list(p.classes)
    assert p.templates("single")
    assert hash(p) == hash(load_protocol("voc-15-5"))


def test_to_dict_and_hash_are_consistent():
    for name in SHIPPED:
        p = load_protocol(name)
        d = p.to_dict()
        canonical = json.dumps(d, sort_keys=True, separators=(",", ":"))
        assert hashlib.sha256(canonical.encode()).hexdigest() == p.content_hash
        assert p.short_hash == p.content_hash[:12] and len(p.content_hash) == 64
        assert d["name"] == p.name == name.split("@")[0] and d["version"] == p.version
        assert d["native_ids"]["map"]["1" if name != "coco-stuff-156-15" else "0"] == 0
    hashes = {load_protocol(n).content_hash for n in SHIPPED}
    assert len(hashes) == len(SHIPPED)


def test_summary():
    s = load_protocol("voc-15-5").summary()
    assert s == {
        "name": "voc-15-5", "version": 1, "dataset": "voc", "num_classes": 20, "num_seen": 15,
        "num_unseen": 5, "unseen": list(VOC_UNSEEN), "seen": s["seen"],
        "headline_convention": "mmseg", "unseen_pixel_policy": "ignore",
        "hash": load_protocol("voc-15-5").short_hash,
    }
    assert len(s["seen"]) == 15 and s["seen"][0] == "aeroplane"
    json.dumps(s)


def test_templates_unknown_kind():
    with pytest.raises(UnknownNameError, match="ensemble"):
        load_protocol("voc-15-5").templates("ensembel")


# --------------------------------------------------------------------------- hashing


def test_hash_ignores_formatting_and_comments(tmp_path):
    shipped = load_protocol("voc-15-5")
    raw = _raw("voc-15-5")
    # Block style, reordered keys, no comments.
    reordered = dict(reversed(list(raw.items())))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = load_protocol(_write(tmp_path / "a", reordered))
    # Flow style with a comment on top.
    text = "# a comment\n" + yaml.safe_dump(raw, default_flow_style=True, width=60)
    b = load_protocol(_write(tmp_path / "b", text))
    assert a.content_hash == b.content_hash == shipped.content_hash
    assert a == shipped  # equality ignores the path


def test_hash_normalises_aliases_and_unseen_order(tmp_path):
    raw = _raw("voc-15-5")
    raw["unseen"] = ["tvmonitor", "pottedplant", "Sheep", "sofa", "train"]
    p = load_protocol(_write(tmp_path, raw))
    assert p.content_hash == load_protocol("voc-15-5").content_hash
    assert p.unseen_names == VOC_UNSEEN


def _set(doc: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        doc = doc[key]
    doc[last] = value


@pytest.mark.parametrize("dotted, value", [
    ("version", 2),
    ("description", "changed"),
    ("unseen", ["sheep", "sofa", "train", "tvmonitor", "cow"]),
    ("ignore_label", 254),
    ("native_ids.ignore", [0]),
    ("training.unseen_pixels", "drop-images"),
    ("evaluation.headline_convention", "detectron2"),
    ("prompts.default", "ensemble"),
    ("prompts.single", ["a photo of the {}."]),
    ("image_sets.val", {"list": "val", "count": 1448}),
    ("references", []),
    ("class_aliases", {"pottedplant": "potted plant"}),
])
def test_hash_changes_with_any_field(tmp_path, dotted, value):
    raw = _raw("voc-15-5")
    _set(raw, dotted, value)
    p = load_protocol(_write(tmp_path, raw))
    assert p.content_hash != load_protocol("voc-15-5").content_hash


def test_hash_changes_with_native_map(tmp_path):
    raw = _raw("voc-15-5")
    raw["native_ids"]["map"][1], raw["native_ids"]["map"][2] = 1, 0
    p = load_protocol(_write(tmp_path, raw))
    assert p.content_hash != load_protocol("voc-15-5").content_hash
    assert p.native_lut()[1] == 1


def test_edited_file_is_revalidated(tmp_path):
    raw = _raw("voc-15-5")
    path = _write(tmp_path, raw)
    first = load_protocol(path)
    raw["version"] = 2
    _write(tmp_path, raw)
    second = load_protocol(path)
    assert (first.version, second.version) == (1, 2)
    assert load_protocol(path) is second


# --------------------------------------------------------------------------- bad files


def _mutate(fn):
    def apply(raw):
        fn(raw)
        return raw
    return apply


def _del(key):
    return _mutate(lambda r: r.pop(key))


BAD_CASES = [
    # (id, mutation of the parsed VOC doc or raw text, field, extra substring)
    ("unknown-key", _mutate(lambda r: r.update(clases=[])), "clases", "did you mean 'classes'"),
    ("unknown-nested-key", _mutate(lambda r: r["prompts"].update(defualt="single")),
     "prompts.defualt", "allowed keys"),
    ("missing-classes", _del("classes"), "classes", "missing"),
    ("missing-native-ignore", _mutate(lambda r: r["native_ids"].pop("ignore")),
     "native_ids.ignore", "missing"),
    ("duplicate-class", _mutate(lambda r: r["classes"].__setitem__(3, "bird")), "classes[3]",
     "duplicate"),
    ("duplicate-class-case", _mutate(lambda r: r["classes"].__setitem__(3, "Bird")), "classes[3]",
     "duplicate"),
    ("empty-class", _mutate(lambda r: r["classes"].__setitem__(0, "")), "classes[0]", "non-empty"),
    ("class-not-string", _mutate(lambda r: r["classes"].__setitem__(0, 7)), "classes[0]",
     "integer 7"),
    ("unseen-not-class", _mutate(lambda r: r["unseen"].__setitem__(1, "shep")), "unseen[1]",
     "did you mean 'sheep'"),
    ("unseen-repeated", _mutate(lambda r: r["unseen"].__setitem__(1, "pottedplant")), "unseen[1]",
     "repeats"),
    ("all-unseen", _mutate(lambda r: r.__setitem__("unseen", list(r["classes"]))), "unseen",
     "seen class"),
    ("ignore-label-below-k", _mutate(lambda r: r.__setitem__("ignore_label", 10)), "ignore_label",
     ">= the number of classes (20)"),
    ("ignore-label-type", _mutate(lambda r: r.__setitem__("ignore_label", "255")), "ignore_label",
     "string '255'"),
    ("version-bool", _mutate(lambda r: r.__setitem__("version", True)), "version", "boolean"),
    ("version-zero", _mutate(lambda r: r.__setitem__("version", 0)), "version", ">= 1"),
    ("map-not-injective", _mutate(lambda r: r["native_ids"]["map"].__setitem__(2, 0)),
     "native_ids.map[2]", "one-to-one"),
    ("map-not-onto", _mutate(lambda r: r["native_ids"]["map"].pop(20)), "native_ids.map",
     "[19]"),
    ("map-out-of-range", _mutate(lambda r: r["native_ids"]["map"].__setitem__(21, 20)),
     "native_ids.map[21]", "out of range"),
    ("map-native-too-big", _mutate(lambda r: r["native_ids"]["map"].__setitem__(70000, 0)),
     "native_ids.map[70000]", "0..65535"),
    ("map-string-key", _mutate(lambda r: r["native_ids"]["map"].__setitem__("x", 0)),
     "native_ids.map[x]", "expected an integer"),
    ("map-ignore-overlap", _mutate(lambda r: r["native_ids"].__setitem__("ignore", [0, 1, 255])),
     "native_ids.ignore[1]", "also a key"),
    ("bad-template", _mutate(lambda r: r["prompts"]["ensemble"].__setitem__(2, "a photo")),
     "prompts.ensemble[2]", "exactly one"),
    ("template-two-slots", _mutate(lambda r: r["prompts"].__setitem__("single", ["{} {}"])),
     "prompts.single[0]", "exactly one"),
    ("template-named-slot", _mutate(lambda r: r["prompts"].__setitem__("single", ["a {} {x}"])),
     "prompts.single[0]", "other braces"),
    ("duplicate-template", _mutate(lambda r: r["prompts"]["ensemble"].append("a photo of a {}.")),
     "prompts.ensemble[10]", "duplicate"),
    ("empty-ensemble", _mutate(lambda r: r["prompts"].__setitem__("ensemble", [])),
     "prompts.ensemble", "non-empty"),
    ("bad-prompt-default", _mutate(lambda r: r["prompts"].__setitem__("default", "both")),
     "prompts.default", "single, ensemble"),
    ("bad-policy", _mutate(lambda r: r["training"].__setitem__("unseen_pixels", "drop")),
     "training.unseen_pixels", "ignore, drop-images, drop-empty"),
    ("bad-convention", _mutate(lambda r: r["evaluation"].__setitem__("headline_convention", "mmsegg")),
     "evaluation.headline_convention", "did you mean 'mmseg'"),
    ("bad-dataset", _mutate(lambda r: r.__setitem__("dataset", "pascal")), "dataset", "voc"),
    ("bad-background", _mutate(lambda r: r.__setitem__("background", "yes")), "background",
     "ignored, class"),
    ("background-class-missing", _mutate(lambda r: r.__setitem__("background", "class")),
     "background", "'background'"),
    ("eval-split-unknown", _mutate(lambda r: r["evaluation"].__setitem__("split", "test")),
     "evaluation.split", "image_sets"),
    ("image-set-count", _mutate(lambda r: r["image_sets"]["val"].__setitem__("count", -1)),
     "image_sets.val.count", "found -1"),
    ("image-set-no-list", _mutate(lambda r: r["image_sets"]["val"].pop("list")),
     "image_sets.val.list", "missing"),
    ("alias-is-class", _mutate(lambda r: r["class_aliases"].__setitem__("sheep", "cow")),
     "class_aliases.sheep", "already a class"),
    ("alias-bad-target", _mutate(lambda r: r["class_aliases"].__setitem__("kitty", "kat")),
     "class_aliases.kitty", "did you mean 'cat'"),
    ("references-type", _mutate(lambda r: r.__setitem__("references", "x")), "references",
     "expected a list"),
    ("name-not-stem", _mutate(lambda r: r.__setitem__("name", "voc-15-6")), "name",
     "expected 'voc-15-5'"),
    ("description-type", _mutate(lambda r: r.__setitem__("description", None)), "description",
     "null"),
]


@pytest.mark.parametrize("case_id, mutate, field, extra", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_protocol_fields(tmp_path, case_id, mutate, field, extra):
    path = _write(tmp_path, mutate(copy.deepcopy(_raw("voc-15-5"))))
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    msg = str(info.value)
    assert "voc-15-5.yaml" in msg
    assert f"field '{field}'" in msg
    assert extra in msg
    assert info.value.field == field


BAD_TEXT = [
    ("malformed", "name: voc-15-5\nclasses: [a, b\n", "malformed YAML at line"),
    ("top-level-list", "- a\n- b\n", "top level must be a mapping, found a list"),
    ("empty", "", "empty file"),
    ("duplicate-yaml-key", "name: voc-15-5\nname: voc-15-5\n", "duplicate key 'name'"),
    ("tab-indent", "name: voc-15-5\n\tversion: 1\n", "malformed YAML"),
]


@pytest.mark.parametrize("case_id, text, extra", BAD_TEXT, ids=[c[0] for c in BAD_TEXT])
def test_bad_protocol_text(tmp_path, case_id, text, extra):
    path = _write(tmp_path, text)
    with pytest.raises(ProtocolError) as info:
        load_protocol(path)
    assert "voc-15-5.yaml" in str(info.value)
    assert extra in str(info.value)
    assert isinstance(info.value, ValueError)


def test_duplicate_native_key_in_yaml_is_rejected(tmp_path):
    text = (protocols_dir() / "voc-15-5.yaml").read_text().replace("    2: 1 ", "    1: 1 ", 1)
    assert text != (protocols_dir() / "voc-15-5.yaml").read_text()
    with pytest.raises(ProtocolError, match="duplicate key 1"):
        load_protocol(_write(tmp_path, text))


def test_defaults_for_optional_fields(tmp_path):
    raw = _raw("voc-15-5")
    for key in ("training", "references", "class_aliases"):
        raw.pop(key)
    p = load_protocol(_write(tmp_path, raw))
    assert p.unseen_pixel_policy == "ignore"
    assert p.references == () and p.class_aliases == {}
    assert p.to_dict()["training"] == {"unseen_pixels": "ignore"}
    with pytest.raises(UnknownNameError):
        p.class_index("pottedplant")


def test_background_as_class(tmp_path):
    raw = _raw("voc-15-5")
    raw["classes"] = ["background"] + raw["classes"]
    raw["background"] = "class"
    raw["native_ids"] = {"map": {k: k for k in range(21)}, "ignore": [255]}
    p = load_protocol(_write(tmp_path, raw))
    assert p.num_classes == 21 and p.class_index("background") == 0
    assert p.unseen_ids == (16, 17, 18, 19, 20) and 0 in p.seen_ids
    assert p.native_lut()[0] == 0


# --------------------------------------------------------------------------- registry


def test_registry_errors_and_suggestions():
    reg = Registry("method")
    reg.register("chimera", object())
    reg.register("zegclip", 1)

    @reg.register("maskclip")
    def _maskclip():
        return None

    assert reg.get("maskclip") is _maskclip
    assert reg.names() == ["chimera", "maskclip", "zegclip"]
    assert "chimera" in reg and "nope" not in reg and len(reg) == 3
    with pytest.raises(ValueError, match="already registered"):
        reg.register("chimera", 2)
    with pytest.raises(KeyError) as info:
        reg.get("chimra")
    err = info.value
    assert isinstance(err, UnknownNameError)
    assert str(err) == ("unknown method 'chimra'; did you mean 'chimera'? "
                        "known: chimera, maskclip, zegclip")
    assert err.kind == "method" and err.name == "chimra" and err.suggestions == ("chimera",)
    with pytest.raises(UnknownNameError, match="no protocols are registered"):
        Registry("protocol").get("x")


def test_suggest_is_case_insensitive():
    assert suggest("VOC-15-6", ["voc-15-5", "coco"]) == ["voc-15-5"]
    assert suggest("xyz", ["voc-15-5"]) == []
    assert len(suggest("a", ["a", "ab", "abc", "abcd"], n=2)) == 2
