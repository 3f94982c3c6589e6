"""Class text embeddings: prompt ensembling, the disk cache key, and the encoder audit."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from zss_bench.clip import load_clip
from zss_bench.clip.text_embeddings import (
    TextEncoderAudit,
    cache_key,
    class_text_embeddings,
    text_encoder_audit,
)

NAMES = ["red circle", "blue star", "yellow cross"]
TEMPLATES = ["a photo of a {}.", "a {} shape.", "a drawing of a {}."]


@pytest.fixture
def clip(monkeypatch):
    """The micro CLIP with a counter of encode_text calls (and prompts encoded)."""
    c = load_clip("zss-micro-vit:random")
    real = c.model.encode_text
    c.calls = []

    def counting(tokens, normalize=False):
        c.calls.append(tokens.shape[0])
        return real(tokens, normalize=normalize)

    monkeypatch.setattr(c.model, "encode_text", counting)
    return c


def _direct(clip, prompts):
    with torch.no_grad():
        return F.normalize(clip.model.encode_text(clip.tokenizer(prompts)).float(), dim=-1)


def test_single_template_is_that_prompt(clip):
    emb = class_text_embeddings(clip, NAMES, ["a photo of a {}."], cache=False)
    assert emb.shape == (3, clip.embed_dim) and emb.dtype == torch.float32
    torch.testing.assert_close(emb, _direct(clip, [f"a photo of a {n}." for n in NAMES]))


def test_ensemble_is_renormalised_mean(clip):
    emb = class_text_embeddings(clip, NAMES, TEMPLATES, cache=False)
    for i, n in enumerate(NAMES):
        ref = F.normalize(_direct(clip, [t.format(n) for t in TEMPLATES]).mean(0), dim=0)
        torch.testing.assert_close(emb[i], ref)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3))


def test_small_batches_give_the_same_result(clip):
    a = class_text_embeddings(clip, NAMES, TEMPLATES, cache=False)
    b = class_text_embeddings(clip, NAMES, TEMPLATES, cache=False, batch_size=2)
    torch.testing.assert_close(a, b)
    assert max(clip.calls[-5:]) == 2


def test_cache_hit_skips_the_text_encoder(clip, isolated_cache):
    first = class_text_embeddings(clip, NAMES, TEMPLATES)
    n_calls = len(clip.calls)
    assert n_calls >= 1
    files = sorted(p.name for p in (isolated_cache / "text-embeddings").rglob("*") if p.is_file())
    key = cache_key(clip, NAMES, TEMPLATES)
    assert files == [f"{key}.json", f"{key}.npy"]
    second = class_text_embeddings(clip, NAMES, TEMPLATES)
    assert len(clip.calls) == n_calls  # served from disk
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_key_covers_everything_that_matters(clip):
    base = cache_key(clip, NAMES, TEMPLATES)
    assert cache_key(clip, list(NAMES), tuple(TEMPLATES)) == base
    variants = [
        cache_key(clip, NAMES[::-1], TEMPLATES),
        cache_key(clip, NAMES[:2], TEMPLATES),
        cache_key(clip, NAMES, TEMPLATES[::-1]),
        cache_key(clip, NAMES, TEMPLATES[:2]),
        cache_key(dataclasses.replace(clip, weights_hash="0" * 64), NAMES, TEMPLATES),
        cache_key(dataclasses.replace(clip, name="zss-toy-vit"), NAMES, TEMPLATES),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_changed_order_or_weights_is_a_miss(clip):
    a = class_text_embeddings(clip, NAMES, TEMPLATES)
    calls = len(clip.calls)
    b = class_text_embeddings(clip, NAMES[::-1], TEMPLATES)
    assert len(clip.calls) > calls
    torch.testing.assert_close(b, a.flip(0))
    calls = len(clip.calls)
    class_text_embeddings(dataclasses.replace(clip, weights_hash="f" * 64), NAMES, TEMPLATES)
    assert len(clip.calls) > calls


def test_cache_false_writes_nothing(clip, isolated_cache):
    class_text_embeddings(clip, NAMES, TEMPLATES, cache=False)
    assert not (isolated_cache / "text-embeddings").exists()


def test_corrupt_entry_is_recomputed(clip, isolated_cache):
    good = class_text_embeddings(clip, NAMES, TEMPLATES)
    npy = next((isolated_cache / "text-embeddings").rglob("*.npy"))
    npy.write_bytes(b"garbage")
    calls = len(clip.calls)
    again = class_text_embeddings(clip, NAMES, TEMPLATES)
    assert len(clip.calls) > calls
    torch.testing.assert_close(again, good)


def test_audit_records_encoded_and_cached_names(clip):
    text_encoder_audit.reset()
    seen = ["red circle", "yellow cross"]
    class_text_embeddings(clip, seen, TEMPLATES)
    class_text_embeddings(clip, seen, TEMPLATES)  # cache hit: still recorded
    assert text_encoder_audit.names() == set(seen)
    assert [e["source"] for e in text_encoder_audit.events()] == ["encoded", "cache"]
    assert text_encoder_audit.leaked(["Blue Star", "green star"]) == []
    class_text_embeddings(clip, ["blue star"], TEMPLATES)
    assert text_encoder_audit.leaked(["Blue Star", "green star"]) == ["blue star"]
    text_encoder_audit.reset()
    assert text_encoder_audit.names() == set()


def test_private_audit(clip):
    text_encoder_audit.reset()
    mine = TextEncoderAudit()
    class_text_embeddings(clip, NAMES, TEMPLATES, audit=mine)
    assert mine.names() == set(NAMES) and text_encoder_audit.names() == set()


@pytest.mark.parametrize("names, templates, exc", [
    ("red circle", TEMPLATES, TypeError),
    ([], TEMPLATES, ValueError),
    (NAMES, [], ValueError),
    (NAMES, ["a photo"], ValueError),
    (NAMES, ["{} and {}"], ValueError),
    (["red circle", ""], TEMPLATES, ValueError),
])
def test_bad_inputs(clip, names, templates, exc):
    with pytest.raises(exc):
        class_text_embeddings(clip, names, templates)
