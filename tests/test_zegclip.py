"""ZegCLIP-style baseline (and the Cascade-CLIP variant): deep prompts, the relationship descriptor, the
per-class losses on labelled pixels, inference, gradients reaching only prompts and decoder, the guard."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.clip import load_clip
from zss_bench.methods.zegclip.decoder import relationship_descriptor
from zss_bench.methods.zegclip.vpt import PromptedViT
from zss_bench.modeling.mask_losses import classwise_dice_loss, classwise_mask_loss

MICRO = "zss-micro-vit:random"


def test_relationship_descriptor_is_text_times_image_then_text():
    text, cls = torch.tensor([[3.0, 4.0], [1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    out = relationship_descriptor(text, cls)
    t = torch.tensor([[0.6, 0.8], [1.0, 0.0]])
    torch.testing.assert_close(out[0], torch.cat([t * torch.tensor([0.0, 1.0]), t], dim=-1))


def test_prompted_vit_without_prompts_is_the_plain_encoder_and_prompts_change_it():
    clip = load_clip(MICRO)
    x = torch.randn(2, 3, 40, 48)
    plain = PromptedViT(clip.model.visual, num_tokens=0)
    tokens, cls, grid = plain(x, keep=(0,))
    vit = plain.vit
    with torch.no_grad():
        ref = vit.run_blocks(vit.tokens(x))
        torch.testing.assert_close(tokens[1], ref[:, 1:], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(tokens[0], vit.run_blocks(vit.tokens(x), 0, 1)[:, 1:], rtol=1e-4, atol=1e-5)
    assert grid == (5, 6) and cls.shape == (2, 64)
    deep = PromptedViT(clip.model.visual, num_tokens=3, deep=True)
    assert deep.prompts.shape == (2, 3, 64)
    out, _, _ = deep(x)
    assert out[1].shape == ref[:, 1:].shape and not torch.allclose(out[1], ref[:, 1:], atol=1e-3)
    out[1].sum().backward()  # gradients reach the prompts of every block through the frozen blocks
    assert deep.prompts.grad is not None and bool((deep.prompts.grad.abs().sum((1, 2)) > 0).all())
    assert all(p.grad is None for p in deep.vit.parameters())
    shallow = PromptedViT(clip.model.visual, num_tokens=3, deep=False)
    assert shallow.prompts.shape == (1, 3, 64)


def test_classwise_losses_count_labelled_pixels_only():
    logits = torch.tensor([[[4.0, -4.0, 4.0]], [[-4.0, 4.0, -4.0]]]).reshape(1, 2, 3)  # (B=1, C=2, N=3)
    target = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 1.0]]]).reshape(1, 2, 3)
    valid = torch.tensor([[True, True, False]])  # pixel 2 is wrong for both classes but unlabelled
    assert float(classwise_mask_loss(logits, target, valid, "bce")) < 0.02
    assert float(classwise_dice_loss(logits, target, valid)) < 0.02
    everything = torch.ones(1, 3, dtype=torch.bool)
    assert float(classwise_mask_loss(logits, target, everything, "bce")) > 1.0
    manual = F.binary_cross_entropy_with_logits(torch.tensor([4.0, -4.0, -4.0, 4.0]), torch.tensor([1.0, 0, 0, 1]))
    assert math.isclose(float(classwise_mask_loss(logits, target, valid, "bce")), float(manual), rel_tol=1e-5)
    with pytest.raises(ValueError, match="unknown MODEL.ZEGCLIP.MASK_LOSS 'l1'"):
        classwise_mask_loss(logits, target, valid, "l1", key="MODEL.ZEGCLIP.MASK_LOSS")


@pytest.fixture(scope="module", params=["zegclip", "cascade"])
def model(request, tmp_path_factory):
    from run_helpers import build_on_synth, tiny

    extra = ["MODEL.ZEGCLIP.CASCADE.OUT_INDICES", "(0,)"] if request.param == "cascade" else []
    net, protocol = build_on_synth(tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("o"), "zegclip",
                                   tiny(1, 1000, "MODEL.ZEGCLIP.VPT.NUM_TOKENS", "2", *extra))
    return net, protocol, request.param


def test_inference_is_sigmoid_masks_minus_gamma_and_training_moves_only_prompts_and_decoders(model):
    net, protocol, variant = model
    assert len(net.decoders) == (2 if variant == "cascade" else 1)
    net.train()
    targets = torch.randint(0, 15, (2, 32, 32))
    targets[1, :16] = 255
    losses = net.train_losses(torch.randn(2, 3, 32, 32), targets)
    layers = 3 * len(net.decoders)  # deep supervision: every layer of every level
    assert len(losses) == 2 * layers and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    trained = {n for n, p in net.named_parameters() if p.grad is not None}
    assert "encoder.prompts" in trained and any(n.startswith("decoders.") for n in trained)
    assert not any(n.startswith(("encoder.vit.", "preprocess.")) for n in trained)
    assert not any(k.startswith(("encoder.vit.", "preprocess.")) for k in net.state_dict())  # frozen CLIP not saved
    net.eval()
    net.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        scores = net.eval_scores(images)
        probs = net._predict(images)[-1].sigmoid()
    assert scores.shape == (1, protocol.num_classes, 4, 4)
    expected = probs.clone()
    expected[:, list(protocol.seen_ids)] -= 0.05  # the seen subtraction (default gamma, chosen on the dev world)
    torch.testing.assert_close(scores, expected)


def test_cascade_indices_are_checked(tmp_path):
    from run_helpers import build_on_synth, tiny

    with pytest.raises(ValueError, match=r"OUT_INDICES \(1,\) must be blocks 0..0"):
        build_on_synth(tmp_path / "world", tmp_path / "o", "zegclip", tiny(1, 1000, "MODEL.ZEGCLIP.CASCADE.OUT_INDICES", "(1,)"))


def test_a_tiny_zegclip_run_passes_the_leakage_guard(tmp_path):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.protocol import load_protocol
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=8, n_val=4)
    run_dir = run_method(RunRequest(method="zegclip", protocol="synth-15-5", data_root=str(root), clip=MICRO,
                                    results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                    opts=tiny(2, 1000)))
    rec = load_run(run_dir).record
    leak = rec["leakage"]
    assert leak["unseen_names_before_eval"] == [] and leak["training_targets_checked"] == 2 * 4
    assert set(leak["text_encoder_names_before_eval"]) == set(load_protocol("synth-15-5").seen_names)
    assert rec["efficiency"]["params_trainable"] < rec["efficiency"]["params_total"]
    assert math.isfinite(rec["metrics"]["hIoU"])
