"""Chimera-Seg parts: SGD schedule and loss, the CLIP Semantic Head, the meta-architecture."""
from __future__ import annotations

import math

import pytest
import torch

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from zss_bench.methods.chimera.csh import CLIPSemanticHead, PlainProjection, entry_alignment_loss
from zss_bench.methods.chimera.sgd import keep_fraction, selective_global_distillation
from zss_bench.modeling.regions import box_mask, crop_boxes, crop_images

MICRO = "zss-micro-vit:random"


@pytest.fixture(scope="module")
def micro_clip():
    from zss_bench.clip import load_clip

    return load_clip(MICRO)


def test_keep_fraction_schedules():
    assert keep_fraction("linear", 0, 1.0, 0.1) == 1.0 and keep_fraction("linear", 1, 1.0, 0.1) == pytest.approx(0.1)
    assert keep_fraction("linear", 0.5, 1.0, 0.1) == pytest.approx(0.55)
    assert keep_fraction("cosine", 0.5, 1.0, 0.1) == pytest.approx(0.55)
    assert keep_fraction("cosine", 0.25, 1.0, 0.1) > keep_fraction("linear", 0.25, 1.0, 0.1)
    assert keep_fraction("step", 0.6, 1.0, 0.1) == 0.5 and keep_fraction("step", 0.8, 1.0, 0.1) == 0.25
    assert keep_fraction("fixed", 0.9, 0.3, 0.1) == 0.3
    fracs = [keep_fraction("linear", t / 10, 1.0, 0.1) for t in range(11)]
    assert all(a >= b for a, b in zip(fracs, fracs[1:]))  # fewer features as training goes on
    with pytest.raises(ValueError, match="unknown MODEL.CHIMERA.SGD.SCHEDULE 'exp'"):
        keep_fraction("exp", 0.5, 1, 0)


def test_sgd_selects_the_most_cls_like_positions():
    torch.manual_seed(0)
    cls = torch.randn(2, 8)
    z = torch.randn(2, 8, 4, 4)
    z[:, :, 0, 0] = cls * 3  # one position points exactly at the CLS embedding
    z.requires_grad_(True)
    loss, stats = selective_global_distillation(z, cls, fraction=1 / 16)
    assert stats["sgd_k"] == 1 and loss.item() == pytest.approx(0.0, abs=1e-6)
    loss_all, _ = selective_global_distillation(z, cls, fraction=1.0)
    assert loss_all.item() > 0.1
    loss_all.backward()
    assert z.grad.abs().sum() > 0
    z.grad = None
    loss_few, _ = selective_global_distillation(z + 0, cls, fraction=2 / 16, loss="l1")
    loss_few.backward()
    touched = (z.grad.abs().sum(1) > 0).flatten(1).sum(1)
    assert touched.tolist() == [2, 2]  # gradients reach only the selected positions
    for name in ("infonce",):
        value, _ = selective_global_distillation(z, cls, 0.5, loss=name)
        assert math.isfinite(value.item())
    with pytest.raises(ValueError, match="SGD.LOSS 'mse'"):
        selective_global_distillation(z, cls, 0.5, loss="mse")


def test_csh_is_partial_frozen_clip(micro_clip):
    from zss_bench.clip import PartialViT

    vit = PartialViT(micro_clip.model.visual).freeze()
    head = CLIPSemanticHead(16, vit, num_blocks=1)
    parent = torch.nn.Sequential(head)
    parent.train()
    assert head.adapter.training and not head.blocks.training  # frozen blocks stay in eval mode
    feats = torch.randn(2, 16, 6, 6)
    images = torch.randn(2, 3, 32, 32)
    entry = vit.run_blocks(vit.tokens(images), 0, vit.num_blocks - 1)
    head.update_stats(entry)
    assert torch.allclose(head.entry_mean, entry[:, 1:].reshape(-1, vit.width).mean(0))
    z, tokens, _ = head(feats, entry)
    assert z.shape == (2, vit.embed_dim, 6, 6) and tokens.shape == (2, 36, vit.width)
    (z.sum() + entry_alignment_loss(tokens, (6, 6), entry)).backward()
    assert head.adapter.weight.grad is not None
    assert all(p.grad is None for p in head.blocks.parameters())  # frozen
    assert all(not p.requires_grad for p in head.blocks.parameters())
    assert all(p.grad is None for p in vit.parameters())  # the teacher is untouched
    # the head's blocks equal CLIP's last block: running CLIP's own entry tokens through the
    # head's blocks + ln_post + proj reproduces CLIP's dense embeddings
    x = entry
    for blk in head.blocks:
        x = blk(x) if not head.seq_first else blk(x.transpose(0, 1)).transpose(0, 1)
    ours = head.ln_post(x[:, 1:]) @ head.proj
    ref = vit.dense_embeddings(images).flatten(2).transpose(1, 2)
    assert torch.allclose(ours, ref, atol=1e-5)


def test_csh_config_errors(micro_clip):
    from zss_bench.clip import PartialViT

    vit = PartialViT(micro_clip.model.visual).freeze()
    with pytest.raises(ValueError, match="NUM_BLOCKS=5 but the CLIP has 2 blocks"):
        CLIPSemanticHead(16, vit, num_blocks=5)
    with pytest.raises(ValueError, match="TOKEN_NORM 'bn'"):
        CLIPSemanticHead(16, vit, num_blocks=1, token_norm="bn")
    z, _, _ = PlainProjection(16, 32)(torch.randn(1, 16, 4, 4))
    assert z.shape == (1, 32, 4, 4)


def test_crop_boxes_masks_and_crops_agree():
    gen = torch.Generator().manual_seed(0)
    boxes = crop_boxes(5, (16, 16), (0.5, 0.75), gen)
    sides = boxes[:, 2:] - boxes[:, :2]
    assert (sides == sides[0]).all() and 8 <= int(sides[0, 0]) <= 12  # one size per batch, within the scale
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 16).all()
    mask = box_mask(boxes, (16, 16))
    assert mask.flatten(1).sum(1).tolist() == [int(sides[0, 0] * sides[0, 1])] * 5
    # an image whose value is its column index: the crop spans exactly the box's columns
    img = torch.arange(64.0).view(1, 1, 1, 64).expand(5, 3, 64, 64).contiguous()
    crops = crop_images(img, boxes, (16, 16))
    assert crops.shape == img.shape
    x0, x1 = boxes[:, 1] * 4, boxes[:, 3] * 4
    assert torch.allclose(crops[:, 0, 0, 0], x0.float(), atol=1.0) and torch.allclose(crops[:, 0, 0, -1], x1.float() - 1, atol=1.0)
    again = crop_boxes(5, (16, 16), (0.5, 0.75), torch.Generator().manual_seed(0))
    assert torch.equal(boxes, again)  # drawn from the generator only: reproducible on resume
    with pytest.raises(ValueError, match="CROP_SCALE"):
        crop_boxes(1, (16, 16), (0.0, 0.5), gen)


def test_sgd_with_a_mask_only_picks_positions_inside_it():
    cls = torch.zeros(1, 4)
    cls[0, 0] = 1
    z = torch.zeros(1, 4, 2, 2)
    z[0, 0, 0, 0] = 1  # the CLS-like position lies outside the mask
    z[0, 1, 1, 1] = 1
    valid = torch.tensor([[[False, False], [False, True]]])
    loss, stats = selective_global_distillation(z, cls, fraction=1.0, valid=valid)
    assert stats["sgd_k"] == 1 and loss.item() == pytest.approx(1.0)  # cos(e1, e0) = 0


def _model(tmp_path, world, *opts):
    from detectron2.modeling import build_model

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.engine.config import build_run_config
    from zss_bench.plugins import get_method
    from zss_bench.protocol import load_protocol

    protocol = load_protocol("synth-15-5")
    register_protocol(protocol, world)
    cfg = build_run_config(get_method("chimera"), protocol, seed=0, output_dir=str(tmp_path), data_root=str(world),
                           clip=MICRO, opts=["INPUT.MIN_SIZE_TEST", "32", "INPUT.MAX_SIZE_TEST", "32", *opts])
    return build_model(cfg), protocol


@pytest.fixture(scope="module")
def world(tmp_path_factory):

    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.data.synth import generate_world
    from zss_bench.protocol import load_protocol

    root = tmp_path_factory.mktemp("chimera-world")
    generate_world(root, seed=2, size=32, n_train=8, n_val=4, progress=False)
    return root


@pytest.mark.parametrize("opts,expected", [
    ((), {"loss_sam", "loss_sgd"}),
    (("MODEL.CHIMERA.CSH.ENABLED", "False"), {"loss_sam", "loss_sgd"}),
    (("MODEL.CHIMERA.SGD.ENABLED", "False"), {"loss_sam"}),
    (("MODEL.CHIMERA.SAM.ENABLED", "False"), {"loss_sgd"}),
    (("MODEL.CHIMERA.SGD.CROPS", "2"), {"loss_sam", "loss_sgd"}),
    (("MODEL.CHIMERA.SAM.AUX_WEIGHT", "0.5"), {"loss_sam", "loss_sam_aux", "loss_sgd"}),
    (("MODEL.CHIMERA.SAM.ANCHOR_WEIGHT", "0.5"), {"loss_sam", "loss_sam_anchor", "loss_sgd"}),
    (("MODEL.CHIMERA.CSH.ENTRY_ALIGN_WEIGHT", "1.0"), {"loss_sam", "loss_sgd", "loss_entry"}),
    (("MODEL.CHIMERA.CSH.ENTRY_ALIGN_WEIGHT", "1.0", "MODEL.CHIMERA.CSH.ENABLED", "False"), {"loss_sam", "loss_sgd"}),
])
def test_meta_arch_losses_follow_the_ablation_switches(tmp_path, world, opts, expected):
    from zss_bench.clip import text_encoder_audit
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    prepare_dataset("synth", world, load_protocol("synth-15-5"), progress=False)
    text_encoder_audit.reset()
    model, protocol = _model(tmp_path, world, *opts)
    assert text_encoder_audit.names() == set(protocol.seen_names)  # training knows seen names only
    model.train()
    batch = [{"image": torch.randint(0, 255, (3, 32, 32), dtype=torch.uint8).float(),
              "sem_seg": torch.randint(0, 15, (32, 32))} for _ in range(2)]
    losses = model(batch)
    assert set(losses) == expected and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.eval()
    with pytest.raises(RuntimeError, match="set_eval_classes"):
        model(batch)
    model.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    assert set(protocol.unseen_names) <= text_encoder_audit.names()
    with torch.no_grad():
        out = model([{"image": batch[0]["image"], "height": 40, "width": 36}])
    assert out[0]["sem_seg"].shape == (20, 40, 36)


def test_crop_distillation_is_a_function_of_seed_and_iteration(tmp_path, world):
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    prepare_dataset("synth", world, load_protocol("synth-15-5"), progress=False)
    model, _ = _model(tmp_path, world, "MODEL.CHIMERA.SGD.CROPS", "2")
    model.eval()  # fixed BN statistics: only the crops could make two evaluations differ
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        z = model._dense(images)[0]
        first, again = model._crop_distillation(images, z, 0.5), model._crop_distillation(images, z, 0.5)
        model.seed = 1
        other_seed = model._crop_distillation(images, z, 0.5)
    assert torch.isfinite(first) and first.item() > 0
    assert first.item() == again.item()  # same (seed, iteration): same crops, e.g. after --resume
    assert other_seed.item() != first.item()


def _eval_model(tmp_path, world):
    """A freshly built (untrained) Chimera-Seg in eval mode, told every class."""
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    prepare_dataset("synth", world, load_protocol("synth-15-5"), progress=False)
    model, protocol = _model(tmp_path, world)
    model.eval()
    model.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    return model, protocol


def test_seen_calibration_lowers_seen_scores(tmp_path, world):
    model, protocol = _eval_model(tmp_path, world)
    images = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        base = model.eval_scores(images)
        model.gamma = 0.1
        calibrated = model.eval_scores(images)
    diff = (base - calibrated) / model.logit_scale
    assert torch.allclose(diff[:, list(protocol.seen_ids)], torch.full_like(diff[:, list(protocol.seen_ids)], 0.1), atol=1e-5)
    assert torch.allclose(diff[:, list(protocol.unseen_ids)], torch.zeros_like(diff[:, list(protocol.unseen_ids)]), atol=1e-6)


def test_image_prior_adds_clips_image_level_log_probabilities(tmp_path, world):
    import torch.nn.functional as F

    model, _ = _eval_model(tmp_path, world)
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        base = model.eval_scores(images)
        model.image_prior = 0.5
        fused = model.eval_scores(images)
        cls = model.teacher(model.rgb255(images))["cls"]
    expected = 0.5 * F.log_softmax(model.logit_scale * F.normalize(cls, dim=-1) @ model.text.embeddings.t(), dim=1)
    shift = fused - F.log_softmax(base, dim=1)  # the same per-image class offset at every pixel
    assert torch.allclose(shift, expected[:, :, None, None].expand_as(shift), atol=1e-4)
    with torch.no_grad():
        model.image_prior = 1e4  # a dominant prior: every pixel takes CLIP's image-level class
        dominated = model.eval_scores(images).argmax(1)
    assert (dominated == expected.argmax(1)[:, None, None]).all()
    with pytest.raises(ValueError, match="IMAGE_PRIOR must be >= 0"):
        _model(tmp_path, world, "MODEL.CHIMERA.INFERENCE.IMAGE_PRIOR", "-1.0")


def test_anchor_loss_is_zero_on_the_own_text_direction_and_ignores_255(tmp_path, world):
    model, _ = _eval_model(tmp_path, world)
    seen = model.text.embeddings  # after set_eval_classes: all classes; any (C, D) table will do
    targets = torch.tensor([[[0, 3], [255, 1]]])
    z = seen[targets.clamp(max=seen.shape[0] - 1)].permute(0, 3, 1, 2)  # each pixel = its class text
    z[0, :, 1, 0] = -seen[0]  # an ignored pixel pointing anywhere must not count
    cos = model.text(z)
    assert model._anchor_loss(cos, targets).item() == pytest.approx(0.0, abs=1e-5)
    z[0, :, 0, 0] = seen[5]  # a labelled pixel on another class's direction costs 1 - cos(t_5, t_0)
    expected = (1 - float(seen[5] @ seen[0])) / 3
    assert model._anchor_loss(model.text(z), targets).item() == pytest.approx(expected, abs=1e-5)
    assert model._anchor_loss(cos, torch.full_like(targets, 255)).item() == 0.0
