"""The shared modeling toolkit: partial-ViT blocks, the CLIP teacher, text classifiers, score calibration,
region crops, sliding-window inference, per-class-mask training targets, and the pooled CLIP Semantic Head.

Every reference here is computed independently of the helpers under test (open_clip's own modules,
plain matmuls, pixel loops), on the tiny random CLIP ``zss-micro-vit`` (32 px, patch 8, width 64,
2 blocks, joint space 32).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from zss_bench.clip import PartialViT, load_clip
from zss_bench.clip.partial import PartialViTError, run_block, value_path
from zss_bench.modeling.calibration import calibrate_seen, image_prior
from zss_bench.modeling.inference import infer, slide_inference, slide_windows, whole_inference
from zss_bench.modeling.regions import classify_regions, mask_boxes, masked_region_crops
from zss_bench.modeling.teacher import OUTPUTS, ClipTeacher
from zss_bench.modeling.text import NoObjectTextClassifier, TextClassifier

MICRO = "zss-micro-vit:random"
TEMPLATES = ("a photo of a {}.",)
NAMES = ["red circle", "blue square", "green star"]
TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def clip():
    """Shared read-only CLIP (ClipTeacher freezes its visual tower; nothing here trains it)."""
    return load_clip(MICRO)


@pytest.fixture
def fresh_clip():
    return load_clip(MICRO)


def _rgb(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) * 255


def _block(batch_first: bool, ls_init_value=None, seed=0, width=64, heads=4) -> ResidualAttentionBlock:
    torch.manual_seed(seed)
    blk = ResidualAttentionBlock(width, heads, ls_init_value=ls_init_value, batch_first=batch_first)
    with torch.no_grad():  # non-trivial biases and LN affines (open_clip initialises some to 0 / 1)
        for p in blk.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return blk


# ---------------------------------------------------------------- run_block / value_path / run_blocks

@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("ls", [None, 0.3], ids=["no-layerscale", "layerscale"])
def test_run_block_equals_open_clip_block_in_eval_no_grad(batch_first, ls):
    blk = _block(batch_first, ls).eval()
    x = torch.randn(2, 17, 64) if batch_first else torch.randn(17, 2, 64)
    with torch.no_grad():
        ref = blk(x)  # nn.MultiheadAttention (its inference fast path where it applies)
        out = run_block(blk, x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, ref, **TOL)
    assert not torch.allclose(out, x)  # the block did something


@pytest.mark.parametrize("batch_first", [True, False], ids=["batch-first", "seq-first"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_run_block_values_and_gradients_match_with_autograd(batch_first, mode):
    blk = _block(batch_first, 0.3, seed=1).train(mode == "train")
    x = (torch.randn(3, 9, 64) if batch_first else torch.randn(9, 3, 64)).requires_grad_()
    cot = torch.randn(x.shape)
    params = [blk.attn.in_proj_weight, blk.attn.out_proj.weight, blk.ln_1.weight, blk.mlp.c_fc.weight]
    ref = blk(x)
    ref_grads = torch.autograd.grad((ref * cot).sum(), [x, *params])
    out = run_block(blk, x)
    assert out.requires_grad
    grads = torch.autograd.grad((out * cot).sum(), [x, *params])
    torch.testing.assert_close(out, ref, **TOL)
    for g, r in zip(grads, ref_grads):
        assert r.abs().sum() > 0
        torch.testing.assert_close(g, r, **TOL)


def test_run_block_on_the_clip_s_own_blocks(clip):
    blk = clip.model.visual.transformer.resblocks[0]
    x = torch.randn(2, 17, 64, requires_grad=True)
    torch.testing.assert_close(run_block(blk, x), blk(x), **TOL)
    gx = torch.autograd.grad(run_block(blk, x).square().sum(), x)[0]
    rx = torch.autograd.grad(blk(x).square().sum(), x)[0]
    torch.testing.assert_close(gx, rx, **TOL)


def test_run_block_runs_other_blocks_as_they_are():
    class Other(nn.Module):
        def forward(self, x):
            return 2 * x + 1

    x = torch.randn(2, 5, 8)
    assert torch.equal(run_block(Other(), x), 2 * x + 1)


@pytest.mark.parametrize("batch_first", [True, False])
def test_value_path_is_the_hand_computed_value_projection(batch_first):
    blk = _block(batch_first, seed=2).eval()
    d = 64
    x = torch.randn(2, 11, d)  # value_path always takes batch-first tokens
    with torch.no_grad():
        out = value_path(blk, x)
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        ln = (x - mu) / torch.sqrt(var + blk.ln_1.eps) * blk.ln_1.weight + blk.ln_1.bias
        w_v = blk.attn.in_proj_weight[2 * d:]
        b_v = blk.attn.in_proj_bias[2 * d:]
        v = ln @ w_v.t() + b_v
        ref = v @ blk.attn.out_proj.weight.t() + blk.attn.out_proj.bias
    assert out.shape == (2, 11, d)
    torch.testing.assert_close(out, ref, **TOL)
    # no token mixing: changing token 3 leaves every other token's output unchanged
    y = x.clone()
    y[:, 3] += 5
    with torch.no_grad():
        moved = value_path(blk, y)
    torch.testing.assert_close(moved[:, [0, 1, 2, 4, 5]], out[:, [0, 1, 2, 4, 5]])
    assert not torch.allclose(moved[:, 3], out[:, 3])


def test_value_path_refuses_other_blocks():
    with pytest.raises(PartialViTError, match="standard open_clip attention block"):
        value_path(nn.Linear(4, 4), torch.randn(1, 2, 4))


def test_run_blocks_composes_and_matches_open_clip_blocks(fresh_clip):
    visual = fresh_clip.model.visual
    pv = PartialViT(visual)
    x = pv.tokens(torch.randn(2, 3, 40, 48)).detach().requires_grad_()  # (2, 1 + 5*6, 64), non-native grid
    ref = x
    for blk in visual.transformer.resblocks:
        ref = blk(ref)
    out = pv.run_blocks(x)
    torch.testing.assert_close(out, ref, **TOL)
    torch.testing.assert_close(pv.run_blocks(pv.run_blocks(x, 0, 1), 1), out, **TOL)
    assert pv.run_blocks(x, 1, 1) is x and pv.run_blocks(x, 2) is x
    pv.freeze()  # frozen weights still pass gradients to the input tokens
    g = torch.autograd.grad(pv.run_blocks(x).square().sum(), x)[0]
    r = torch.autograd.grad(ref.square().sum(), x)[0]
    torch.testing.assert_close(g, r, **TOL)
    # a seq-first open_clip (older releases): transformer and every block's attention are (N, B, C);
    # run_blocks still takes and returns batch-first tokens
    visual.transformer.batch_first = False
    for blk in visual.transformer.resblocks:
        blk.attn.batch_first = False
    try:
        torch.testing.assert_close(pv.run_blocks(x), out, **TOL)
        torch.testing.assert_close(pv.run_blocks(pv.run_blocks(x, 0, 1), 1), out, **TOL)
        torch.testing.assert_close(visual.transformer(x), out, **TOL)  # open_clip's own seq-first path
    finally:
        visual.transformer.batch_first = True
        for blk in visual.transformer.resblocks:
            blk.attn.batch_first = True


# ---------------------------------------------------------------- ClipTeacher

@pytest.fixture(scope="module")
def teacher(clip):
    return ClipTeacher(clip, entry_block=1)


def test_clip_input_resizes_and_normalises(teacher, clip):
    mean = torch.tensor(clip.preprocess_cfg["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(clip.preprocess_cfg["std"]).view(1, 3, 1, 1)
    rgb = _rgb(2, 3, 40, 48)
    x = teacher.clip_input(rgb)
    assert teacher.image_size == (32, 32) and x.shape == (2, 3, 32, 32)
    ref = (F.interpolate(rgb / 255, size=(32, 32), mode="bilinear", align_corners=False) - mean) / std
    torch.testing.assert_close(x, ref)
    flat = torch.full((1, 3, 32, 32), 0.0)
    flat[:, 0], flat[:, 1], flat[:, 2] = 255.0, 0.0, 127.5
    expected = (torch.tensor([1.0, 0.0, 0.5]).view(1, 3, 1, 1) - mean) / std
    torch.testing.assert_close(teacher.clip_input(flat), expected.expand(1, 3, 32, 32))
    # "input": the image's own size cut to whole patches
    assert teacher.clip_input(_rgb(1, 3, 50, 43), "input").shape == (1, 3, 48, 40)
    assert teacher.clip_input(_rgb(1, 3, 48, 40), "input").shape == (1, 3, 48, 40)
    assert teacher.clip_input(_rgb(1, 3, 5, 20), "input").shape == (1, 3, 8, 16)  # never below one patch
    with pytest.raises(ValueError, match="unknown teacher resolution 'huge'"):
        teacher.clip_input(rgb, "huge")


def test_encode_outputs_equal_the_partial_vit_references(teacher, clip):
    rgb = _rgb(2, 3, 40, 48, seed=1)
    vit = teacher.vit
    out = teacher.encode(rgb, OUTPUTS)
    assert set(out) == {*OUTPUTS, "grid"} and out["grid"] == (4, 4)
    with torch.no_grad():
        x = teacher.clip_input(rgb)
        tokens = vit.tokens(x)
        torch.testing.assert_close(out["cls"], vit.cls_embedding(x), **TOL)
        torch.testing.assert_close(out["cls"], clip.model.encode_image(x), **TOL)
        torch.testing.assert_close(out["entry"], vit.run_blocks(tokens, 0, 1), **TOL)
        torch.testing.assert_close(out["dense"], vit.dense_embeddings(x), **TOL)
        before_last = vit.run_blocks(tokens, 0, 1)
        value = vit.project(value_path(vit.blocks[1], before_last)[:, 1:])
        torch.testing.assert_close(out["value"], value.transpose(1, 2).reshape(2, 32, 4, 4), **TOL)
    assert out["entry"].shape == (2, 17, 64) and out["cls"].shape == (2, 32)
    assert out["dense"].shape == out["value"].shape == (2, 32, 4, 4)
    assert not torch.allclose(out["dense"], out["value"], atol=1e-3)
    # asking for outputs one at a time gives the same as all at once (the shared prefix is right)
    for name in OUTPUTS:
        torch.testing.assert_close(teacher.encode(rgb, (name,))[name], out[name], **TOL)
    torch.testing.assert_close(teacher(rgb)["entry"], out["entry"], **TOL)


def _count_block_calls(vit: PartialViT):
    """Hooks on every block's ln_1 (any use of the block) and mlp (a full block run); they fire whether
    a block is run by ``blk(x)`` or by ``run_block``'s own attention."""
    calls = {"ln_1": [0] * vit.num_blocks, "mlp": [0] * vit.num_blocks}
    hooks = []
    for k, blk in enumerate(vit.blocks):
        for part in calls:
            hooks.append(getattr(blk, part).register_forward_hook(
                lambda m, i, o, k=k, part=part: calls[part].__setitem__(k, calls[part][k] + 1)))
    return calls, hooks


@pytest.mark.parametrize("entry_block", [0, 1])
def test_encode_runs_only_the_blocks_its_outputs_need(clip, entry_block):
    teacher = ClipTeacher(clip, entry_block=entry_block)
    rgb = _rgb(1, 3, 32, 32, seed=2)
    calls, hooks = _count_block_calls(teacher.vit)
    try:
        teacher.encode(rgb, ("entry",))
        ran = [k for k in range(2) if calls["ln_1"][k] or calls["mlp"][k]]
        assert ran == list(range(entry_block)), calls
        for c in calls.values():
            c[:] = [0, 0]
        teacher.encode(rgb, ("value",))  # the last block's value path, not the whole last block
        assert calls == {"ln_1": [1, 1], "mlp": [1, 0]}
        for c in calls.values():
            c[:] = [0, 0]
        teacher.encode(rgb, ("cls", "dense", "entry", "value"))  # every block exactly once
        assert calls == {"ln_1": [1, 2], "mlp": [1, 1]}
    finally:
        for h in hooks:
            h.remove()


def test_encode_at_input_resolution(teacher):
    rgb = _rgb(2, 3, 48, 40, seed=3)
    out = teacher.encode(rgb, ("value", "dense", "entry"), resolution="input")
    assert out["grid"] == (6, 5)
    assert out["value"].shape == out["dense"].shape == (2, 32, 6, 5)
    assert out["entry"].shape == (2, 1 + 30, 64)
    with torch.no_grad():
        x = teacher.clip_input(rgb, "input")
        torch.testing.assert_close(out["dense"], teacher.vit.dense_embeddings(x), **TOL)
    odd = teacher.encode(_rgb(1, 3, 50, 43), ("value",), resolution="input")
    assert odd["grid"] == (6, 5) and odd["value"].shape == (1, 32, 6, 5)


def test_encode_rejects_unknown_outputs_and_entry_blocks(clip, teacher):
    with pytest.raises(ValueError, match=r"unknown teacher output\(s\) \['logits'\]"):
        teacher.encode(_rgb(1, 3, 32, 32), ("cls", "logits"))
    with pytest.raises(ValueError, match="entry block 2 outside 0..1"):
        ClipTeacher(clip, entry_block=2)
    rgb = _rgb(1, 3, 32, 32).requires_grad_()
    assert not teacher.encode(rgb, ("cls",))["cls"].requires_grad  # a teacher keeps no graph


# ---------------------------------------------------------------- text classifiers

def test_text_classifier_dense_and_query_layouts_agree(clip):
    from zss_bench.clip import class_text_embeddings

    text = TextClassifier(clip, TEMPLATES, NAMES)
    emb = F.normalize(class_text_embeddings(clip, NAMES, TEMPLATES), dim=-1)
    torch.testing.assert_close(text.embeddings, emb)
    z = torch.randn(2, 32, 3, 5)
    dense = text(z)
    assert dense.shape == (2, 3, 3, 5)
    q = z.flatten(2).transpose(1, 2)  # (B, 15, D)
    queries = text(q)
    assert queries.shape == (2, 15, 3)
    torch.testing.assert_close(queries, dense.flatten(2).transpose(1, 2), **TOL)
    ref = F.cosine_similarity(z[:, None], emb[None, :, :, None, None], dim=2)
    torch.testing.assert_close(dense, ref, **TOL)
    text.set_classes(NAMES[:2])
    assert text(z).shape == (2, 2, 3, 5) and text.class_names == NAMES[:2]


def test_no_object_classifier_scores_a_learnable_last_class(clip):
    text = NoObjectTextClassifier(clip, TEMPLATES, NAMES)
    assert [n for n, _ in text.named_parameters()] == ["no_object"]
    z = torch.randn(2, 32, 3, 3, requires_grad=True)
    scores = text(z)
    assert scores.shape == (2, 4, 3, 3)
    plain = TextClassifier(clip, TEMPLATES, NAMES)
    torch.testing.assert_close(scores[:, :3], plain(z), **TOL)
    ref = F.cosine_similarity(z, text.no_object.view(1, -1, 1, 1), dim=1)
    torch.testing.assert_close(scores[:, 3], ref, **TOL)
    q = text(torch.randn(2, 5, 32))
    assert q.shape == (2, 5, 4)
    (scores[:, 3].sum() + q[..., 3].sum()).backward()
    assert text.no_object.grad is not None and text.no_object.grad.abs().sum() > 0
    assert not text.embeddings.requires_grad
    text.set_classes(NAMES + ["yellow star"])  # phase 2: every class, still one no-object last
    assert text(z).shape == (2, 5, 3, 3)


# ---------------------------------------------------------------- calibration

def test_calibrate_seen_lowers_only_seen_ids_and_copies():
    scores = torch.randn(2, 5, 3, 3)
    original = scores.clone()
    out = calibrate_seen(scores, [0, 2, 3], 0.1)
    assert torch.equal(scores, original)  # no in-place change
    torch.testing.assert_close(out[:, [0, 2, 3]], original[:, [0, 2, 3]] - 0.1)
    assert torch.equal(out[:, [1, 4]], original[:, [1, 4]])
    assert torch.equal(calibrate_seen(scores, [0, 2, 3], 0.0), original)
    q = torch.randn(2, 7, 5)  # (B, Q, C): classes last
    outq = calibrate_seen(q, (1, 4), 0.25, dim=-1)
    torch.testing.assert_close(outq[..., [1, 4]], q[..., [1, 4]] - 0.25)
    assert torch.equal(outq[..., [0, 2, 3]], q[..., [0, 2, 3]])


def test_image_prior_formula():
    logits, cos = torch.randn(2, 4, 3, 3), torch.rand(2, 4) * 2 - 1
    out = image_prior(logits, cos, 50.0, 0.7)
    ref = torch.log_softmax(logits, 1) + 0.7 * torch.log_softmax(50.0 * cos, 1)[:, :, None, None]
    torch.testing.assert_close(out, ref)
    assert torch.equal(image_prior(logits, cos, 50.0, 0.0), logits)


# ---------------------------------------------------------------- regions

def test_mask_boxes_on_constructed_masks():
    m = torch.zeros(2, 3, 10, 12)
    m[0, 0, 2:6, 3:9] = 1  # a rectangle
    m[0, 2, 7, 11] = 1  # one pixel in the corner
    m[1, 0] = 0.4  # soft: below the threshold everywhere but a 2x2 block
    m[1, 0, 1:3, 0:2] = 0.6
    m[1, 1] = 1
    m[1, 2, 0, 0] = m[1, 2, 9, 11] = 1  # two far-apart pixels: the box spans both
    boxes = mask_boxes(m)
    assert boxes.shape == (2, 3, 4) and boxes.dtype == m.dtype
    expected = torch.tensor([[[3, 2, 9, 6], [0, 0, 12, 10], [11, 7, 12, 8]],
                             [[0, 1, 2, 3], [0, 0, 12, 10], [0, 0, 12, 10]]], dtype=m.dtype)
    assert torch.equal(boxes, expected)
    assert torch.equal(mask_boxes(m, threshold=0.3)[1, 0], torch.tensor([0.0, 0, 12, 10]))


def _scene():
    """A 2-image scene: image 0 holds colour A inside rows 4..11, cols 2..13 (B elsewhere), with a hole
    of colour C at rows 6..9, cols 6..9 that the mask leaves out; image 1's mask is its full rectangle."""
    a, b, c = 200.0, 10.0, 90.0
    img = torch.full((2, 3, 16, 16), b)
    img[:, :, 4:12, 2:14] = a
    img[0, :, 6:10, 6:10] = c
    masks = torch.zeros(2, 1, 16, 16)
    masks[:, 0, 4:12, 2:14] = 1
    masks[0, 0, 6:10, 6:10] = 0
    return img, masks, (a, b, c)


def test_masked_region_crops_cut_the_box_and_fill_outside_the_mask():
    img, masks, (a, b, c) = _scene()
    fill = torch.tensor([-1.0, -2.0, -3.0])
    crops = masked_region_crops(img, masks, (24, 24), fill=fill)  # box 12 wide, 8 tall: x2, x3
    assert crops.shape == (2, 3, 24, 24)
    # the hole (crop rows 6..17, cols 8..15), away from its interpolated border, is the fill colour
    hole = crops[0, :, 8:16, 10:14]
    assert torch.equal(hole, fill.view(3, 1, 1).expand_as(hole))
    # the mask's inside, away from the edges, is exactly the inside colour
    inside = torch.zeros(24, 24, dtype=torch.bool)
    inside[2:22, 2:22] = True
    inside[4:20, 6:18] = False
    assert torch.all(crops[0][:, inside] == a)
    # image 1: the mask is its own box: colour A all over but for the bilinear border (the corners only
    # are below the mask threshold)
    assert torch.all(crops[1, :, 2:22, 2:22] == a)
    filled = crops[:, 0] == fill[0]
    assert torch.equal(filled, crops[:, 2] == fill[2])  # fill is per channel and all-or-nothing
    assert filled[1].sum() == 4 and filled[1, [0, 0, -1, -1], [0, -1, 0, -1]].all()
    # elsewhere only A, or blends of A with B/C at the borders: never a colour outside that range
    kept = crops.permute(1, 0, 2, 3)[:, ~filled]
    assert torch.all(kept >= b) and torch.all(kept <= a)
    # a scalar fill and masks given at another resolution than the image
    low = F.interpolate(masks, size=(8, 8), mode="nearest")
    crops_low = masked_region_crops(img, low, (24, 24), fill=0.0)
    assert crops_low.shape == (2, 3, 24, 24) and torch.all(crops_low[1, :, 2:22, 2:22] == a)


@pytest.mark.parametrize("size", [(21, 27), (17, 23), (32, 32)])
def test_masked_region_crops_are_flip_equivariant(size):
    """The crop of a mirrored image and mask is the mirrored crop: no half-pixel shift of the boxes.
    (Sizes whose samples land exactly on the mask threshold at the hole's corners are avoided: ties.)"""
    img, masks, _ = _scene()
    img[:, :, 4:12, 2:8] += 20.0  # make the scene itself asymmetric
    crops = masked_region_crops(img, masks, size, fill=-1.0)
    mirrored = masked_region_crops(img.flip(-1), masks.flip(-1), size, fill=-1.0)
    torch.testing.assert_close(mirrored, crops.flip(-1), rtol=1e-5, atol=1e-3)
    flipped_v = masked_region_crops(img.flip(-2), masks.flip(-2), size, fill=-1.0)
    torch.testing.assert_close(flipped_v, crops.flip(-2), rtol=1e-5, atol=1e-3)


def test_masked_region_crops_are_image_major():
    img = torch.stack([torch.full((3, 8, 8), float(v)) for v in (50, 150)])
    masks = torch.zeros(2, 3, 8, 8)
    masks[:, 0, :4, :4] = 1
    masks[:, 1, 4:, 4:] = 1
    masks[:, 2, 2:6, 2:6] = 1
    crops = masked_region_crops(img, masks, (4, 4))
    assert crops.shape == (6, 3, 4, 4)
    assert torch.all(crops[:3] == 50) and torch.all(crops[3:] == 150)


def test_classify_regions_equals_one_crop_at_a_time(teacher, clip):
    text = TextClassifier(clip, TEMPLATES, NAMES)
    rgb = _rgb(2, 3, 24, 20, seed=4)
    masks = torch.zeros(2, 3, 24, 20)
    masks[:, 0, 2:10, 3:15] = 1
    masks[0, 1, 12:, :] = 1
    masks[1, 1, :, 10:] = 0.9
    masks[:, 2, 5:7, 5:7] = 1
    scores = classify_regions(teacher, text, rgb, masks, chunk=64)
    assert scores.shape == (2, 3, 3)
    one = classify_regions(teacher, text, rgb, masks, chunk=1)
    torch.testing.assert_close(one, scores, **TOL)
    fill = teacher.mean.reshape(-1) * 255
    crops = masked_region_crops(rgb, masks, (32, 32), fill=fill)
    with torch.no_grad():
        for i in range(6):
            cls = clip.model.encode_image(teacher.clip_input(crops[i:i + 1]))
            ref = F.normalize(cls, dim=-1) @ text.embeddings.t()
            torch.testing.assert_close(scores[i // 3, i % 3], ref[0], **TOL)
    assert not torch.allclose(scores[0, 0], scores[0, 1])


# ---------------------------------------------------------------- inference layouts

@pytest.mark.parametrize("h, w, crop, stride", [
    (20, 25, 32, 21),  # smaller than the crop
    (32, 32, 32, 21),  # equal to it
    (45, 70, 32, 21),  # not a multiple of it
    (64, 96, 32, 32),  # an exact multiple, no overlap
    (33, 100, 32, 7),  # one pixel over, many overlapping windows
])
def test_slide_windows_cover_every_pixel(h, w, crop, stride):
    corners = slide_windows(h, w, crop, stride)
    assert len(set(corners)) == len(corners)
    covered = np.zeros((h, w), bool)
    for y0, x0 in corners:
        assert 0 <= y0 and 0 <= x0 and y0 + min(crop, h) <= h and x0 + min(crop, w) <= w
        covered[y0:y0 + crop, x0:x0 + crop] = True
    assert covered.all()
    if h <= crop and w <= crop:
        assert corners == [(0, 0)]
    assert max(y for y, _ in corners) == max(h - crop, 0) and max(x for _, x in corners) == max(w - crop, 0)


@pytest.mark.parametrize("hw", [(45, 70), (20, 25), (32, 64)])
def test_slide_inference_equals_whole_for_a_per_pixel_score(hw):
    images = torch.randn(2, 3, *hw)

    def score(x):  # a per-pixel function of the input, at the input's resolution
        return torch.cat([x, x[:, :1] * x[:, 1:2], torch.sigmoid(x[:, 2:])], dim=1)

    whole = whole_inference(score, images)
    assert whole.shape == (2, 5, *hw)
    torch.testing.assert_close(whole, score(images))
    slid = slide_inference(score, images, crop=32, stride=21)
    torch.testing.assert_close(slid, whole)
    torch.testing.assert_close(infer(score, images, "slide", crop=32, stride=21), whole)
    torch.testing.assert_close(infer(score, images, "whole"), whole)


def test_slide_inference_averages_overlapping_windows():
    """A score that is the window's own mean colour: overlapping pixels get the average of their windows."""
    images = torch.arange(48, dtype=torch.float32).view(1, 1, 1, 48).expand(1, 1, 8, 48).contiguous()

    def score(x):
        return x.mean(dim=(2, 3), keepdim=True).expand(-1, -1, 2, 2)

    out = slide_inference(score, images, crop=32, stride=16)  # windows at x = 0, 16
    first, second = images[..., :32].mean(), images[..., 16:].mean()
    assert torch.allclose(out[..., :16], first) and torch.allclose(out[..., 32:], second)
    assert torch.allclose(out[..., 16:32], (first + second) / 2)
    with pytest.raises(ValueError, match="unknown ZSS.EVAL.MODE 'tiles'"):
        infer(score, images, "tiles")


# ---------------------------------------------------------------- training mappers

@pytest.fixture(scope="module")
def synth_world(tmp_path_factory):
    from zss_bench.data.synth import generate_world

    root = tmp_path_factory.mktemp("toolkit-world")
    generate_world(root, seed=3, size=32, n_train=6, n_val=2, progress=False)
    return root


def _mapper_cfg(synth_world):
    from detectron2.config import get_cfg

    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.data.prepare import prepare_dataset
    from zss_bench.protocol import load_protocol

    protocol = load_protocol("synth-15-5")
    prepare_dataset("synth", synth_world, protocol, progress=False)
    names = register_protocol(protocol, synth_world)
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (names["train"],)
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.INPUT.CROP.ENABLED = True
    cfg.INPUT.CROP.TYPE = "absolute"
    cfg.INPUT.CROP.SIZE = (24, 24)
    return cfg, protocol, names["train"]


def test_per_class_mask_mapper_masks_agree_with_sem_seg(synth_world):
    from detectron2.data import DatasetCatalog

    from zss_bench.engine.data import PerClassMaskMapper, build_train_mapper

    cfg, protocol, train = _mapper_cfg(synth_world)
    mapper = build_train_mapper(cfg, "per-class-masks")
    assert type(mapper) is PerClassMaskMapper and mapper.num_seen == len(protocol.seen_ids)
    dicts = DatasetCatalog.get(train)
    n_classes, saw_ignored = 0, False
    for i, d in enumerate(dicts):
        out = mapper(d, np.random.default_rng([0, i]))
        target, masks, classes = out["sem_seg"], out["masks"], out["classes"]
        assert masks.dtype == torch.bool and masks.shape == (len(classes), *target.shape)
        assert out["image"].shape[-2:] == target.shape
        assert classes.tolist() == sorted(set(np.unique(target.numpy()).tolist()) - {255})
        assert all(0 <= c < mapper.num_seen for c in classes.tolist())
        for m, c in zip(masks, classes):
            assert torch.equal(m, target == c) and m.any()
        union = masks.any(0) if len(classes) else torch.zeros_like(target, dtype=torch.bool)
        assert torch.equal(union, target != 255)  # ignored pixels belong to no mask
        if len(classes) > 1:
            assert not (masks.sum(0) > 1).any()  # masks are disjoint
        n_classes += len(classes)
        saw_ignored |= bool((target == 255).any())
    assert mapper.targets_checked == len(dicts) and n_classes > len(dicts) and saw_ignored
    again = [mapper(dicts[0], np.random.default_rng([0, 0])) for _ in range(2)]  # a function of (dict, rng)
    assert torch.equal(again[0]["masks"], again[1]["masks"]) and torch.equal(again[0]["classes"], again[1]["classes"])


def test_per_class_mask_mapper_guards_before_anything_else(synth_world, tmp_path):
    from detectron2.data import DatasetCatalog

    from zss_bench.data.inductive import LeakageError
    from zss_bench.engine.data import build_train_mapper

    cfg, protocol, train = _mapper_cfg(synth_world)
    mapper = build_train_mapper(cfg, "per-class-masks")
    d = dict(DatasetCatalog.get(train)[0])
    leak = np.zeros((20, 20), np.uint8)  # also the wrong size: the guard must fire first
    leak[5:9, 5:9] = mapper.num_seen  # the first id past the seen classes
    Image.fromarray(leak).save(tmp_path / "leak.png")
    with pytest.raises(LeakageError, match=rf"ids \[{mapper.num_seen}\] outside the {mapper.num_seen} seen classes"):
        mapper({**d, "sem_seg_file_name": str(tmp_path / "leak.png")}, np.random.default_rng(0))
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(tmp_path / "small.png")
    with pytest.raises(ValueError, match="target size"):  # the seen-only wrong-size target passes the guard
        mapper({**d, "sem_seg_file_name": str(tmp_path / "small.png")}, np.random.default_rng(0))
    assert mapper.targets_checked == 1


def test_build_train_mapper_unknown_kind(synth_world):
    from zss_bench.engine.data import InductiveTrainMapper, build_train_mapper
    from zss_bench.registry import UnknownNameError

    cfg, _, _ = _mapper_cfg(synth_world)
    assert type(build_train_mapper(cfg)) is InductiveTrainMapper
    with pytest.raises(UnknownNameError, match="unknown training mapper 'per-class-mask'; did you mean 'per-class-masks'"):
        build_train_mapper(cfg, "per-class-mask")
    with pytest.raises(UnknownNameError, match="unknown training mapper 'nope'.*known: per-class-masks, semantic"):
        build_train_mapper(cfg, "nope")


# ---------------------------------------------------------------- CLIP Semantic Head with pooling

def test_pooled_csh_with_detail_starts_as_the_upsampled_pooled_head(fresh_clip):
    from zss_bench.methods.chimera.csh import CLIPSemanticHead

    vit = PartialViT(fresh_clip.model.visual).freeze()
    torch.manual_seed(0)
    head = CLIPSemanticHead(16, vit, num_blocks=1, pool=2, detail=True).eval()
    plain = CLIPSemanticHead(16, vit, num_blocks=1, pool=2, detail=False).eval()
    single = CLIPSemanticHead(16, vit, num_blocks=1, pool=1).eval()
    assert plain.detail is None and single.detail is None
    entry = vit.run_blocks(vit.tokens(torch.randn(2, 3, 32, 32)), 0, 1)
    head.update_stats(entry)
    missing, unexpected = plain.load_state_dict(head.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["detail.bias", "detail.weight"]
    single.load_state_dict(plain.state_dict())

    feats = torch.randn(2, 16, 7, 5)
    z, tokens, grid = head(feats, entry)
    assert grid == (4, 3) and tokens.shape == (2, 12, 64)  # ceil(7/2) x ceil(5/2)
    assert z.shape == (2, 32, 7, 5)  # the body's grid
    with torch.no_grad():
        z_plain, _, grid_plain = plain(feats, entry)
        pooled = F.avg_pool2d(feats, 2, ceil_mode=True)
        z_single, _, grid_single = single(pooled, entry)
    assert grid_plain == grid_single == (4, 3) and z_single.shape == (2, 32, 4, 3)
    torch.testing.assert_close(z, z_plain, **TOL)
    torch.testing.assert_close(z_plain, F.interpolate(z_single, size=(7, 5), mode="bilinear", align_corners=False), **TOL)
    # the detail projection trains (gradients reach it) and, once non-zero, adds its 1x1 projection of the body
    z.square().sum().backward()
    assert head.detail.weight.grad is not None and head.detail.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in head.blocks.parameters())
    with torch.no_grad():
        head.detail.weight.normal_()
        head.detail.bias.fill_(0.5)
        z2, _, _ = head(feats, entry)
        torch.testing.assert_close(z2 - z_plain, head.detail(feats), **TOL)


def test_csh_pool_must_be_positive(clip):
    from zss_bench.methods.chimera.csh import CLIPSemanticHead

    vit = PartialViT(clip.model.visual)
    with pytest.raises(ValueError, match="pooling factor must be >= 1, got 0"):
        CLIPSemanticHead(16, vit, num_blocks=1, pool=0)
    assert CLIPSemanticHead(16, vit, num_blocks=1, pool=3, detail=False).detail is None


def test_slide_stride_larger_than_the_crop_is_an_error():
    from zss_bench.modeling.inference import slide_windows

    with pytest.raises(ValueError, match="SLIDE_STRIDE 40 must be in 1..SLIDE_CROP"):
        slide_windows(100, 100, 30, 40)
