"""PartialViT: pieces of the frozen ViT reproduce the whole, at any size, and stay frozen."""
from __future__ import annotations

import pytest
import torch
from open_clip.transformer import VisionTransformer
from torch import nn

from zss_bench.clip import PartialViT, load_clip
from zss_bench.clip.partial import PartialViTError, interpolate_pos_embed


@pytest.fixture
def clip():
    return load_clip("zss-micro-vit:random")


@pytest.fixture
def images():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def test_cls_embedding_equals_encode_image(clip, images):
    pv = PartialViT(clip.model.visual)
    with torch.no_grad():
        torch.testing.assert_close(pv.cls_embedding(images), clip.model.encode_image(images))
    assert pv.grid_size(images) == (4, 4) == pv.native_grid
    assert pv.tokens(images).shape == (2, 17, pv.width)


def test_blocks_k_to_end_reproduce_the_encoder(clip, images):
    """Feed the encoder's own block k-1 output (captured by hooks) to blocks k..end."""
    visual = clip.model.visual
    pv = PartialViT(visual)
    captured = {}
    hooks = [visual.ln_pre.register_forward_hook(lambda m, i, o: captured.__setitem__(0, o))]
    for k, blk in enumerate(visual.transformer.resblocks):
        hooks.append(blk.register_forward_hook(lambda m, i, o, k=k: captured.__setitem__(k + 1, o)))
    with torch.no_grad():
        reference = clip.model.encode_image(images)
        for h in hooks:
            h.remove()
        torch.testing.assert_close(pv.tokens(images), captured[0])
        assert pv.num_blocks == 2
        for k in range(pv.num_blocks + 1):
            out = pv.run_blocks(captured[k], k)
            torch.testing.assert_close(pv.project(out[:, 0]), reference)
            torch.testing.assert_close(out, captured[pv.num_blocks])


def test_dense_embeddings_match_open_clip_tokens(clip, images):
    visual = clip.model.visual
    pv = PartialViT(visual)
    visual.output_tokens = True
    try:
        with torch.no_grad():
            _, tokens = visual(images)  # ln_post applied, not projected
    finally:
        visual.output_tokens = False
    dense = pv.dense_embeddings(images)
    assert dense.shape == (2, pv.embed_dim, 4, 4)
    ref = (tokens @ visual.proj).transpose(1, 2).reshape(2, -1, 4, 4)
    torch.testing.assert_close(dense, ref)


def test_pos_embed_native_is_the_original(clip):
    pv = PartialViT(clip.model.visual)
    pos = clip.model.visual.positional_embedding
    assert torch.equal(pv.pos_embed(pv.native_grid), pos)
    bigger = pv.pos_embed((6, 10))
    assert bigger.shape == (61, pos.shape[1])
    assert torch.equal(bigger[0], pos[0])  # the class position is kept
    back = interpolate_pos_embed(pos, (4, 4), (4, 4))
    assert back is pos


def test_interpolation_preserves_a_smooth_field():
    """Bicubic resizing of a linear ramp stays (nearly) a ramp."""
    h = w = 4
    ramp = torch.arange(h * w, dtype=torch.float32).reshape(h, w)
    pos = torch.cat([torch.full((1, 3), -1.0), ramp.reshape(-1, 1).repeat(1, 3)])
    out = interpolate_pos_embed(pos, (h, w), (8, 8))
    grid = out[1:, 0].reshape(8, 8)
    assert torch.all(grid[:, 1:] >= grid[:, :-1] - 1e-4) and torch.all(grid[1:] >= grid[:-1] - 1e-4)


@pytest.mark.parametrize("hw, grid", [((48, 80), (6, 10)), ((50, 83), (6, 10)), ((24, 40), (3, 5))])
def test_other_input_sizes(clip, hw, grid):
    pv = PartialViT(clip.model.visual)
    x = torch.randn(1, 3, *hw)
    with torch.no_grad():
        assert pv.grid_size(x) == grid
        assert pv.tokens(x).shape == (1, 1 + grid[0] * grid[1], pv.width)
        dense = pv.dense_embeddings(x)
        assert dense.shape == (1, pv.embed_dim, *grid) and torch.isfinite(dense).all()
        assert pv.cls_embedding(x).shape == (1, pv.embed_dim)


def test_seq_first_transformer_convention(clip, images):
    """run_blocks follows the installed transformer's batch_first flag like open_clip does."""
    visual = clip.model.visual
    pv = PartialViT(visual)
    visual.transformer.batch_first = False
    try:
        with torch.no_grad():
            torch.testing.assert_close(pv.cls_embedding(images), clip.model.encode_image(images))
    finally:
        visual.transformer.batch_first = True


class _Head(nn.Module):
    def __init__(self, pv: PartialViT) -> None:
        super().__init__()
        self.backbone = pv
        self.head = nn.Linear(pv.embed_dim, 3)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        return self.head(self.drop(self.backbone.cls_embedding(x)))


def test_freeze_survives_parent_train_and_blocks_grads(images):
    clip = load_clip("zss-micro-vit:random")
    for p in clip.model.visual.parameters():  # as if someone unfroze it
        p.requires_grad_(True)
    pv = PartialViT(clip.model.visual).freeze()
    parent = _Head(pv)
    parent.train()
    assert parent.training and parent.head.training and parent.drop.training
    assert pv.frozen and not pv.training
    assert not any(m.training for m in pv.modules())
    loss = parent(images).pow(2).sum()
    loss.backward()
    assert parent.head.weight.grad is not None
    assert all(p.grad is None and not p.requires_grad for p in pv.parameters())
    parent.eval()
    parent.train(True)
    assert not pv.training


def test_unfrozen_follows_train(clip):
    pv = PartialViT(clip.model.visual)
    pv.train()
    assert pv.training and pv.visual.training
    pv.eval()
    assert not pv.visual.training


def test_unsupported_encoders():
    with pytest.raises(PartialViTError, match="not an open_clip VisionTransformer"):
        PartialViT(nn.Linear(3, 3))
    avg = VisionTransformer(image_size=32, patch_size=8, width=64, layers=1, heads=2, mlp_ratio=4.0,
                            output_dim=16, pool_type="avg")
    with pytest.raises(PartialViTError, match="pool_type 'avg'"):
        PartialViT(avg)
    attn = VisionTransformer(image_size=32, patch_size=8, width=64, layers=1, heads=2, mlp_ratio=4.0,
                             output_dim=16, attentional_pool=True, attn_pooler_heads=2,
                             attn_pooler_queries=4)
    with pytest.raises(PartialViTError, match="attentional pooler"):
        PartialViT(attn)
