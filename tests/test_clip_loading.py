"""load_clip: every spec form, the record, and errors that say what to do (all offline)."""
from __future__ import annotations

import json
import time

import open_clip
import pytest
import torch

from zss_bench.clip import ClipLoadError, load_clip
from zss_bench.clip import loading

MICRO = "zss-micro-vit"


@pytest.fixture
def micro():
    return load_clip(f"{MICRO}:random")


def _perturbed_state(clip) -> dict:
    """Weights different from the seeded random init, so a load that ignored them would show."""
    sd = {k: v.clone() for k, v in clip.model.state_dict().items()}
    g = torch.Generator().manual_seed(5)
    for k, v in sd.items():
        if v.is_floating_point():
            v.add_(0.01 * torch.randn(v.shape, generator=g))
    return sd


def _assert_same_weights(model, sd):
    own = model.state_dict()
    assert set(own) == set(sd)
    for k in own:
        assert torch.equal(own[k], sd[k]), k


def test_configs_registered():
    assert {"zss-toy-vit", "zss-micro-vit"} <= set(open_clip.list_models())
    before = list(open_clip.factory._MODEL_CONFIG_PATHS)
    loading.register_model_configs()
    assert list(open_clip.factory._MODEL_CONFIG_PATHS) == before  # idempotent


def test_random_is_frozen_seeded_and_recorded(micro):
    assert not micro.model.training
    assert not any(p.requires_grad for p in micro.model.parameters())
    again = load_clip(f"{MICRO}:random")
    assert again.weights_hash == micro.weights_hash
    rec = micro.record()
    assert set(rec) == {"name", "spec", "weights_hash", "preprocess_cfg", "embed_dim"}
    assert rec["name"] == MICRO and rec["spec"] == f"{MICRO}:random" and rec["embed_dim"] == 32
    assert rec["preprocess_cfg"]["image_size"] == [32, 32]
    assert {"mean", "std", "interpolation", "resize_mode"} <= set(rec["preprocess_cfg"])
    json.dumps(rec)
    tokens = micro.tokenizer(["a red star"])
    assert tokens.shape == (1, 24)
    assert micro.preprocess.transforms  # a torchvision Compose


@pytest.mark.parametrize("form", ["plain", "checkpoint", "safetensors"])
def test_checkpoint_file_round_trip(micro, tmp_path, form):
    sd = _perturbed_state(micro)
    if form == "safetensors":
        from safetensors.torch import save_file

        path = tmp_path / "w.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({"state_dict": sd, "epoch": 3} if form == "checkpoint" else sd, path)
    clip = load_clip(f"{MICRO}:{path}")
    _assert_same_weights(clip.model, sd)
    assert clip.weights_hash == loading.file_sha256(path) != micro.weights_hash
    assert load_clip(f"{MICRO}:{path}").weights_hash == clip.weights_hash  # stable
    assert clip.checkpoint == str(path) and clip.spec == f"{MICRO}:{path}"
    assert not any(p.requires_grad for p in clip.model.parameters())


def test_file_hash_is_cached_on_disk(tmp_path, isolated_cache):
    path = tmp_path / "blob.bin"
    path.write_bytes(b"x" * 1000)
    first = loading.file_sha256(path)
    loading._file_hash_memo.clear()
    assert list((isolated_cache / "weights-hash").glob("*.json"))
    assert loading.file_sha256(path) == first
    path.write_bytes(b"y" * 1001)  # size (and mtime) change: re-hashed
    assert loading.file_sha256(path) != first


@pytest.mark.parametrize("weights_name", ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"])
def test_local_directory(micro, tmp_path, weights_name):
    sd = _perturbed_state(micro)
    folder = tmp_path / "my-clip"
    folder.mkdir()
    cfg = {"model_cfg": open_clip.get_model_config(MICRO),
           "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}}
    (folder / "open_clip_config.json").write_text(json.dumps(cfg))
    if weights_name.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / weights_name))
    else:
        torch.save(sd, folder / weights_name)
    for spec in (str(folder), f"local-dir:{folder}"):
        clip = load_clip(spec)
        _assert_same_weights(clip.model, sd)
        assert clip.preprocess_cfg["mean"] == [0.5, 0.5, 0.5]
        assert clip.weights_hash == loading.file_sha256(folder / weights_name)
        assert clip.tokenizer(["a blue star"]).shape == (1, 24)


def test_local_directory_without_config(tmp_path):
    with pytest.raises(ClipLoadError, match="open_clip_config.json"):
        load_clip(f"local-dir:{tmp_path}")


@pytest.mark.parametrize("spec, hint", [
    ("zss-micro-vti:random", "zss-micro-vit"),
    ("ViT-B-61:openai", "ViT-B-16"),
])
def test_unknown_model_suggests(spec, hint):
    with pytest.raises(ClipLoadError, match="unknown CLIP model") as exc:
        load_clip(spec)
    assert f"'{hint}'" in str(exc.value)


def test_unknown_tag_suggests():
    with pytest.raises(ClipLoadError, match="unknown pretrained tag 'opneai'") as exc:
        load_clip("ViT-B-16:opneai")
    assert "did you mean 'openai'" in str(exc.value)


def test_bare_name_needs_weights():
    with pytest.raises(ClipLoadError, match="ViT-B-16:TAG") as exc:
        load_clip("ViT-B-16")
    assert "openai" in str(exc.value)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nope" / "weights.pt"
    with pytest.raises(ClipLoadError, match="does not exist") as exc:
        load_clip(f"{MICRO}:{missing}")
    assert str(missing) in str(exc.value)


def test_file_without_name(tmp_path):
    path = tmp_path / "w.pt"
    path.write_bytes(b"")
    with pytest.raises(ClipLoadError, match="NAME:"):
        load_clip(str(path))


def test_wrong_architecture(micro, tmp_path):
    path = tmp_path / "micro.pt"
    torch.save(micro.model.state_dict(), path)
    with pytest.raises(ClipLoadError, match="does not fit model zss-toy-vit") as exc:
        load_clip(f"zss-toy-vit:{path}")
    msg = str(exc.value)
    assert str(path) in msg and "size mismatch" in msg and "missing keys" in msg
    assert len(msg) < 1500  # brief, not torch's full key dump


def test_corrupt_checkpoint(tmp_path):
    path = tmp_path / "broken.pt"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ClipLoadError, match="could not read checkpoint"):
        load_clip(f"{MICRO}:{path}")


# --------------------------------------------------------------------------- hub tags offline


@pytest.fixture
def empty_weight_caches(tmp_path, monkeypatch):
    """No cached hub/URL weights, and no real download can ever start from these tests."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(loading, "_url_cache_dir", lambda: str(tmp_path / "clip"))

    def no_download(name, **kwargs):
        if kwargs.get("pretrained"):
            raise AssertionError("a download was attempted")
        return real_create(name, **kwargs)

    real_create = loading._create
    monkeypatch.setattr(loading, "_create", no_download)


def _offline_error(spec: str) -> tuple[str, float]:
    t0 = time.perf_counter()
    with pytest.raises(ClipLoadError) as exc:
        load_clip(spec)
    return str(exc.value), time.perf_counter() - t0


def test_tag_offline_flag_fails_fast(empty_weight_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    msg, elapsed = _offline_error("ViT-B-16:openai")
    assert elapsed < 15
    assert ("weights for ViT-B-16:openai are not in the local cache and could not be downloaded "
            "(offline?); pass ViT-B-16:/path/to/checkpoint instead") in msg


@pytest.mark.parametrize("url", ["https://127.0.0.1:9/", "https://10.255.255.1/"],
                         ids=["refused", "blackhole-or-intercepted"])
def test_tag_unreachable_hub_fails_fast(empty_weight_caches, monkeypatch, url):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(loading, "_probe_url", lambda cfg: url)
    msg, elapsed = _offline_error("ViT-B-16:openai")
    assert elapsed < 15
    assert "not in the local cache" in msg and "unreachable" in msg


def test_tag_real_probe_never_hangs(empty_weight_caches, monkeypatch):
    """The real probe: offline it must fail within seconds; online no download starts."""
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    t0 = time.perf_counter()
    try:
        load_clip("ViT-B-16:openai")
    except ClipLoadError as exc:
        assert "not in the local cache" in str(exc)
    except AssertionError as exc:  # the hub answered: we are online, which is fine
        assert "download was attempted" in str(exc)
    assert time.perf_counter() - t0 < 15


def test_tag_from_local_cache_needs_no_network(micro, tmp_path, monkeypatch):
    """A tag whose weights are already cached loads without probing the network."""
    sd = _perturbed_state(micro)
    path = tmp_path / "cached.pt"
    torch.save(sd, path)
    monkeypatch.setattr(open_clip, "list_pretrained_tags_by_model",
                        lambda name: ["fake"] if name == MICRO else [])
    monkeypatch.setattr(open_clip, "get_pretrained_cfg",
                        lambda name, tag: {"file": str(path), "mean": (0.1, 0.2, 0.3)})
    monkeypatch.setattr(loading, "_reachable", lambda *a, **k: pytest.fail("network probed"))
    clip = load_clip(f"{MICRO}:fake")
    _assert_same_weights(clip.model, sd)
    assert clip.preprocess_cfg["mean"] == [0.1, 0.2, 0.3]
    assert clip.weights_hash == loading.file_sha256(path)


def test_missing_folder_says_so_not_unknown_model(tmp_path):
    with pytest.raises(ClipLoadError, match="no such file or directory") as exc:
        load_clip(str(tmp_path / "missing" / "dir"))
    assert "unknown CLIP model" not in str(exc.value)
