"""Versioned protocols (``name@version``) and the synthetic ``world`` block (issue #27: synth-15-5 v2)."""
from __future__ import annotations

import pytest
import yaml

import zss_bench.protocol as protocol_mod
from zss_bench.data.synth import generate_world
from zss_bench.data.synth_surfaces import SURFACES
from zss_bench.protocol import (
    WORLD_SURFACES,
    ProtocolError,
    load_protocol,
    protocol_ref,
    protocols_dir,
)
from zss_bench.registry import UnknownNameError

V1_HASH = "970501a41fe1c6765cdb62e3d598c86567f896242e455136266683b3f111907c"  # every committed v1 record's


def _synth_doc(version: int = 1, world: dict | None = None) -> dict:
    doc = yaml.safe_load((protocols_dir() / "synth-15-5.yaml").read_text())
    doc["version"] = version
    if world is not None:
        doc["world"] = world
    return doc


@pytest.fixture
def shipped(tmp_path, monkeypatch):
    """A protocols folder with synth-15-5 (v1, the shipped bytes) and synth-15-5@2 (textured)."""
    folder = tmp_path / "protocols"
    folder.mkdir()
    (folder / "synth-15-5.yaml").write_bytes((protocols_dir() / "synth-15-5.yaml").read_bytes())
    v2 = _synth_doc(2, {"surface": "textured", "teacher": "zss-toy-vit:synth-v2"})
    (folder / "synth-15-5@2.yaml").write_text(yaml.safe_dump(v2, sort_keys=False))
    monkeypatch.setattr(protocol_mod, "protocols_dir", lambda: folder)
    return folder


def test_v1_keeps_its_hash_and_world_defaults():
    p = load_protocol("synth-15-5")
    assert p.content_hash == V1_HASH  # adding the optional `world` key changed no old definition
    assert p.world == {"surface": "flat", "teacher": "zss-toy-vit:synth-v1"}
    assert p.ref == "synth-15-5"
    assert WORLD_SURFACES == SURFACES


def test_name_at_version_loads_each_definition(shipped):
    v1, v2 = load_protocol("synth-15-5"), load_protocol("synth-15-5@2")
    assert (v1.version, v2.version) == (1, 2) and v1.name == v2.name == "synth-15-5"
    assert v1.content_hash == V1_HASH != v2.content_hash
    assert v2.world == {"surface": "textured", "teacher": "zss-toy-vit:synth-v2"} and v2.ref == "synth-15-5@2"
    assert load_protocol("synth-15-5@1") is v1  # name@v finds the bare file when it is version v
    assert protocol_ref({"name": "synth-15-5", "version": 2}) == "synth-15-5@2"
    assert load_protocol(protocol_ref({"name": "synth-15-5", "version": 1, "hash": V1_HASH})) is v1
    with pytest.raises(UnknownNameError, match=r"protocol 'synth-15-5' has no version 3 here \(shipped: 1, 2\)"):
        load_protocol("synth-15-5@3")


def test_a_versioned_file_must_hold_that_version(tmp_path):
    path = tmp_path / "synth-15-5@2.yaml"
    path.write_text(yaml.safe_dump(_synth_doc(3), sort_keys=False))
    with pytest.raises(ProtocolError, match=r"synth-15-5@2\.yaml.*expected 'synth-15-5@2'.*found 'synth-15-5' version 3"):
        load_protocol(path)


@pytest.mark.parametrize("world, message", [
    ({"surface": "shiny"}, r"world\.surface.*shiny"),
    ({"colour": "red"}, r"world.*colour"),
    ({"teacher": 3}, r"world\.teacher"),
])
def test_world_block_is_strict(tmp_path, world, message):
    path = tmp_path / "synth-15-5.yaml"
    path.write_text(yaml.safe_dump(_synth_doc(1, world), sort_keys=False))
    with pytest.raises(ProtocolError, match=message):
        load_protocol(path)


def test_world_block_only_on_synthetic_protocols(tmp_path):
    doc = yaml.safe_load((protocols_dir() / "voc-15-5.yaml").read_text())
    doc["world"] = {"surface": "textured"}
    path = tmp_path / "voc-15-5.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(ProtocolError, match="only a synthetic protocol"):
        load_protocol(path)


def test_the_world_and_its_default_teacher_follow_the_protocol(shipped, tmp_path):
    from zss_bench.data.prepare import PrepareError, prepare_dataset
    from zss_bench.modeling.clip_support import resolve_clip_spec

    v1, v2 = load_protocol("synth-15-5"), load_protocol("synth-15-5@2")
    assert resolve_clip_spec("", v1) == "zss-toy-vit:synth-v1"
    assert resolve_clip_spec("", v2) == "zss-toy-vit:synth-v2"
    assert resolve_clip_spec("zss-toy-vit:/x.pt", v2) == "zss-toy-vit:/x.pt"
    flat = generate_world(tmp_path / "flat", seed=0, n_train=4, n_val=2, progress=False, protocol=v1)
    tex = generate_world(tmp_path / "tex", seed=0, n_train=4, n_val=2, progress=False, protocol=v2)
    assert "surface" not in flat and tex["surface"] == "textured"
    assert tex["protocol"]["version"] == 2
    with pytest.raises(PrepareError, match=r"drawn with flat object surfaces, but protocol synth-15-5@2 \(v2\) "
                                           r"needs textured ones.*synth generate --protocol synth-15-5@2"):
        prepare_dataset("synth", tmp_path / "flat", v2, progress=False)
    with pytest.raises(PrepareError, match="drawn with textured object surfaces, but protocol synth-15-5 "):
        prepare_dataset("synth", tmp_path / "tex", v1, progress=False)
    report = prepare_dataset("synth", tmp_path / "tex", v2, progress=False, workers=1)
    assert report["protocol"]["version"] == 2


def test_export_ships_a_new_tag_and_never_rebinds(tmp_path):
    import json

    from zss_bench.clip.export import export_toy_clip
    from zss_bench.clip.shipped import ShippedWeightsError

    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    table = tmp_path / "tags.json"
    table.write_text(json.dumps({"models": {"zss-toy-vit": {"synth-v1": {"file": "a.pt", "sha256": "0" * 64}}}}))
    with pytest.raises(ShippedWeightsError, match="info.json: missing"):
        export_toy_clip(ckpt, "synth-v2", "d", weights_dir=tmp_path, table_path=table)
    (ckpt.parent / "info.json").write_text(json.dumps({
        "config": {"model": "zss-toy-vit", "surface": "textured"}, "config_hash": "h", "code_version": 2,
        "train_time_s": 1.0, "eval": {"overall": 90.0, "per_class": {}}, "eval_ensemble": None}))
    with pytest.raises(ShippedWeightsError, match="already shipped"):
        export_toy_clip(ckpt, "synth-v1", "d", weights_dir=tmp_path, table_path=table)
    with pytest.raises(ShippedWeightsError, match="expected lowercase"):
        export_toy_clip(ckpt, "Synth V2", "d", weights_dir=tmp_path, table_path=table)
    entry = export_toy_clip(ckpt, "synth-v2", "textured teacher", dense={"value": {"overall": 30.0}},
                            weights_dir=tmp_path, table_path=table)
    assert (tmp_path / "zss-toy-vit-synth-v2.pt").read_bytes() == b"weights"
    doc = json.loads(table.read_text())
    assert doc["models"]["zss-toy-vit"]["synth-v2"] == entry
    assert entry["bytes"] == 7 and entry["recipe"]["config"]["surface"] == "textured"
    assert entry["zero_shot"]["single"] == {"overall": 90.0} and entry["dense_zero_shot"]["value"]["overall"] == 30.0
    assert doc["models"]["zss-toy-vit"]["synth-v1"]["file"] == "a.pt"  # the old tag untouched
