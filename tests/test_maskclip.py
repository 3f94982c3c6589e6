"""Training-free MaskCLIP: value-path features by hand, key smoothing and prompt denoising on constructed
inputs, and a run through the harness that trains nothing."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.methods.maskclip.smoothing import REMOVED, key_smoothing, prompt_denoising

MICRO = "zss-micro-vit:random"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from run_helpers import build_on_synth, tiny

    net, protocol = build_on_synth(tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("o"), "maskclip",
                                   tiny(1, 1000, "MODEL.MASKCLIP.KEY_SMOOTHING.ENABLED", "False"))
    net.eval().set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    return net, protocol


def test_value_path_features_equal_a_hand_computed_forward_of_the_last_block(model):
    net, _ = model
    visual = net.clip.model.visual
    images = torch.randn(1, 3, 40, 48)  # not CLIP's 32 px: the input's own size, 5 x 6 patches
    with torch.no_grad():
        value, _ = net.dense_features(images)
        # by hand: CLIP's normalisation, patchify, class token, bicubic positions, ln_pre, block 0 as open_clip runs it
        x = (net.rgb255(images) / 255.0 - net.teacher.mean) / net.teacher.std
        tok = visual.conv1(x).flatten(2).transpose(1, 2)  # (1, 30, width)
        pos = visual.positional_embedding
        grid = F.interpolate(pos[1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2), size=(5, 6), mode="bicubic",
                             align_corners=False).permute(0, 2, 3, 1).reshape(30, -1)
        tok = torch.cat([visual.class_embedding.view(1, 1, -1), tok], 1) + torch.cat([pos[:1], grid])
        tok = visual.ln_pre(tok)
        first = visual.transformer.resblocks[0]
        tok = first(tok) if first.attn.batch_first else first(tok.transpose(0, 1)).transpose(0, 1)
        # the last block: ln_1 -> the value rows of the packed in-projection -> out_proj; no q.k, no residual, no MLP
        last = visual.transformer.resblocks[1]
        width = tok.shape[-1]
        wv, bv = last.attn.in_proj_weight[2 * width:], last.attn.in_proj_bias[2 * width:]
        v = last.ln_1(tok) @ wv.t() + bv
        out = v @ last.attn.out_proj.weight.t() + last.attn.out_proj.bias
        expected = (visual.ln_post(out[:, 1:]) @ visual.proj).transpose(1, 2).reshape(1, -1, 5, 6)
    torch.testing.assert_close(value, expected, rtol=1e-4, atol=1e-5)
    # the scores are the cosine of those features with every class's text embedding at CLIP's scale
    with torch.no_grad():
        scores = net.eval_scores(images)
    cos = torch.einsum("bdhw,cd->bchw", F.normalize(expected, dim=1), net.text.embeddings)
    torch.testing.assert_close(scores, cos / 0.01, rtol=1e-4, atol=1e-3)
    assert scores.shape[1] == 20


def test_key_smoothing_averages_over_tokens_with_similar_keys():
    # 4 tokens in a row: keys of tokens 0, 1, 2 point the same way, token 3 is orthogonal
    keys = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.9, 0.0], [0.0, 1.0]]).t().reshape(1, 2, 1, 4)
    scores = torch.tensor([[3.0, 0.0, 0.0, 5.0], [0.0, 3.0, 0.0, 1.0]]).reshape(1, 2, 1, 4)
    out = key_smoothing(scores, keys, threshold=0.9, chunk=3)  # chunk < N: the chunked path is exercised
    k = F.normalize(keys.flatten(2)[0].t(), dim=-1)
    affinity = k @ k.t()
    weight = affinity * (affinity >= 0.9)
    expected = (weight / weight.sum(1, keepdim=True)) @ scores.flatten(2)[0].t()
    torch.testing.assert_close(out.flatten(2)[0].t(), expected)
    torch.testing.assert_close(out[0, :, 0, 3], scores[0, :, 0, 3])  # the lone token keeps its own scores
    assert float(out[0, 0, 0, 1]) > 0.5  # token 1 borrows class 0 from its neighbours
    assert torch.equal(key_smoothing(scores, keys, threshold=1.01), scores * 0)  # nothing similar enough: 0 weight


def test_prompt_denoising_removes_classes_never_confident_anywhere():
    logits = torch.zeros(1, 3, 1, 2)
    logits[0, 0, 0, 0] = 5.0  # class 0 confident at pixel 0
    logits[0, 1, 0, 1] = 0.5  # class 1 wins pixel 1 but only weakly (p ~ 0.45)
    out = prompt_denoising(logits, threshold=0.5)
    assert float(out[0, 1].max()) == REMOVED and float(out[0, 2].max()) == REMOVED
    torch.testing.assert_close(out[0, 0], logits[0, 0])
    assert torch.equal(prompt_denoising(logits, threshold=0.0), logits)


def test_maskclip_through_the_harness_trains_nothing(tmp_path):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=4, n_val=4)
    run_dir = run_method(RunRequest(method="maskclip", protocol="synth-15-5", data_root=str(root), clip=MICRO,
                                    results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                    opts=tiny(5, 1000, "MODEL.MASKCLIP.KEY_SMOOTHING.ENABLED", "True",
                                              "MODEL.MASKCLIP.PROMPT_DENOISING.ENABLED", "True")))
    rec = load_run(run_dir).record
    tr = rec["training"]
    assert tr["performed"] is False and tr["training_free"] is True and tr["optimizer_built"] is False
    assert tr["max_iter"] == 0 and tr["final_total_loss"] is None
    assert rec["leakage"]["unseen_names_before_eval"] == [] and rec["leakage"]["training_targets_checked"] is None
    assert rec["efficiency"]["params_trainable"] == 0 and math.isfinite(rec["metrics"]["hIoU"])
    assert not list((tmp_path / "work").rglob("*.pth"))  # nothing to checkpoint
