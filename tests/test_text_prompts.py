"""Learnable prompts (CoOp-style) on the frozen text tower: equal to the tower's own encoding of the
init phrase before training, trainable context only, names audited."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.clip import load_clip
from zss_bench.clip.text_embeddings import text_encoder_audit
from zss_bench.modeling.text import PromptLearnerTextClassifier


@pytest.fixture(scope="module")
def clip():
    return load_clip("zss-micro-vit:random")


def test_initial_prompts_equal_the_text_towers_own_encoding(clip):
    names = ["red circle", "blue star"]
    text = PromptLearnerTextClassifier(clip, names, n_ctx=4, init="a photo of a")
    with torch.no_grad():
        expected = F.normalize(clip.model.encode_text(clip.tokenizer([f"a photo of a {n}." for n in names])).float(), dim=-1)
        torch.testing.assert_close(text.classes_embeddings(), expected, atol=1e-5, rtol=1e-5)


def test_only_the_context_trains_and_names_are_audited(clip):
    text_encoder_audit.reset()
    text = PromptLearnerTextClassifier(clip, ["red circle"], n_ctx=4)
    assert text_encoder_audit.names() == {"red circle"}
    assert [n for n, p in text.named_parameters()] == ["ctx"]  # the tower is not a submodule: not in checkpoints
    z = torch.randn(2, clip.embed_dim, 3, 3)
    text(z).sum().backward()
    assert text.ctx.grad is not None and text.ctx.grad.abs().sum() > 0
    text.set_classes(["red circle", "green square"])
    assert text(z).shape == (2, 2, 3, 3) and "green square" in text_encoder_audit.names()


def test_context_length_must_match_the_init_phrase(clip):
    with pytest.raises(ValueError, match="has 2 tokens, expected n_ctx=4"):
        PromptLearnerTextClassifier(clip, ["red circle"], n_ctx=4, init="a photo")


def test_plugin_declarations_match_what_the_toolkit_implements():
    from zss_bench.engine.data import MAPPERS
    from zss_bench.plugins import TRAIN_MAPPERS, MethodPlugin, PluginError

    assert set(MAPPERS) == set(TRAIN_MAPPERS)
    with pytest.raises(PluginError, match="text_classifier 'learned' is not one of"):
        MethodPlugin(name="x", add_config=lambda cfg: None, config_dir=".", text_classifier="learned")
