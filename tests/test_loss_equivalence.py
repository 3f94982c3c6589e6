"""The sync-free / batched rewrites (issue #29) against straightforward references written here, the obvious
loops with boolean indexing and host reads the code used to run: the same losses (within 1e-5 relative, and bit for
bit where the CPU path promises it), the same Hungarian assignments, the same K-means seeds and regions, the same
sliding-window scores, and float32 sums where fp16 used to overflow."""
from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

import zss_bench.detectron2_compat  # noqa: F401  (before any detectron2 import)
from zss_bench.methods.clip_zss.glm import ClsMemoryBank
from zss_bench.methods.clip_zss.plm import kmeans_cosine, multiscale_regions, plm_bce, region_means
from zss_bench.methods.zegformer.ensemble import geometric_ensemble
from zss_bench.methods.zegformer.matcher import hungarian_match, hungarian_match_many, match_queries, matching_cost
from zss_bench.modeling.inference import slide_inference, slide_windows
from zss_bench.modeling.mask_losses import (classwise_dice_loss, classwise_mask_loss, matched_dice_loss,
                                            matched_mask_loss, pairwise_dice_cost, pairwise_mask_cost, valid_indices)

MICRO = "zss-micro-vit:random"
REL = dict(rtol=1e-5, atol=1e-6)


# --------------------------------------------------------------------------------- references

def ref_pair_mask_loss(x, t, v, kind, alpha=0.25, gamma=2.0):
    """One pair: (N,) logits, (N,) 0/1 target, (N,) bool valid -> mean per-pixel loss over the valid pixels."""
    x, t = x[v].double(), t[v].double()
    if x.numel() == 0:
        return torch.zeros((), dtype=torch.float64)
    pos, neg = F.softplus(-x), F.softplus(x)
    if kind == "focal":
        p = x.sigmoid()
        pos, neg = alpha * (1 - p) ** gamma * pos, (1 - alpha) * p ** gamma * neg
    return (t * pos + (1 - t) * neg).sum() / x.numel()


def ref_pair_dice(x, t, v):
    p, t = x[v].double().sigmoid(), t[v].double()
    return 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)


def ref_kmeans(x, k, iters):
    """The farthest-point K-means as it was: int() of each argmax / argmin (a host read per centroid)."""
    x = F.normalize(x.float(), dim=-1)
    k = max(1, min(int(k), x.shape[0]))
    first = int((x @ F.normalize(x.mean(0), dim=0)).argmax())
    picked = [first]
    closest = x @ x[first]
    for _ in range(1, k):
        nxt = int(closest.argmin())
        picked.append(nxt)
        closest = torch.maximum(closest, x @ x[nxt])
    centroids = x[picked]
    for _ in range(max(0, int(iters))):
        assign = (x @ centroids.t()).argmax(1)
        sums = torch.zeros_like(centroids).index_add_(0, assign, x)
        empty = sums.norm(dim=1) == 0
        centroids = torch.where(empty[:, None], centroids, F.normalize(sums, dim=-1))
    return (x @ centroids.t()).argmax(1), centroids, picked


def ref_multiscale(tokens, scales, iters, fuse_threshold):
    """Per cluster: any(), boolean indexing, float(max) (three host reads per cluster), as it was."""
    d, h, w = tokens.shape
    x = tokens.reshape(d, h * w).t()
    masks, cents = [], []
    for k in sorted(int(s) for s in scales):
        assign, centroids, _ = ref_kmeans(x, k, iters)
        for j in range(centroids.shape[0]):
            member = assign == j
            if not member.any():
                continue
            c = F.normalize(x[member].float().mean(0), dim=0)
            if cents and float((torch.stack(cents) @ c).max()) >= fuse_threshold:
                continue
            masks.append(member.view(h, w))
            cents.append(c)
    if not masks:
        return tokens.new_zeros((0, h, w), dtype=torch.bool), tokens.new_zeros((0, d))
    return torch.stack(masks), torch.stack(cents)


# --------------------------------------------------------------------------------- mask losses

@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_pairwise_costs_by_index_equal_boolean_indexing_and_the_reference(kind):
    g = torch.Generator().manual_seed(0)
    for q, k, n in [(7, 3, 50), (20, 12, 1024), (5, 1, 3)]:
        x = torch.randn(q, n, generator=g) * 3
        t = (torch.rand(k, n, generator=g) > 0.6).float()
        valid = torch.rand(2, n, generator=g) > 0.3
        valid[1] = False  # an image without labelled pixels
        idx = valid_indices(valid)
        assert [i.tolist() for i in idx] == [v.nonzero().flatten().tolist() for v in valid]
        for b in range(2):
            by_mask, by_index = pairwise_mask_cost(x, t, valid[b], kind), pairwise_mask_cost(x, t, idx[b], kind)
            assert torch.equal(by_mask, by_index)  # the same pixels in the same order: bit for bit
            assert torch.equal(pairwise_dice_cost(x, t, valid[b]), pairwise_dice_cost(x, t, idx[b]))
            ref = torch.tensor([[float(ref_pair_mask_loss(x[i], t[j], valid[b], kind)) for j in range(k)] for i in range(q)])
            torch.testing.assert_close(by_index, ref, **REL)
            ref = torch.tensor([[float(ref_pair_dice(x[i], t[j], valid[b])) for j in range(k)] for i in range(q)])
            torch.testing.assert_close(pairwise_dice_cost(x, t, idx[b]), ref, **REL)


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_matched_losses_equal_the_per_pair_loop(kind):
    g = torch.Generator().manual_seed(1)
    m, n = 37, 4096
    x = torch.randn(m, n, generator=g) * 4
    t = (torch.rand(m, n, generator=g) > 0.5).float()
    v = torch.rand(3, n, generator=g) > 0.2
    v[2] = False  # pairs of an image without labelled pixels cost 0
    v = v[torch.randint(0, 3, (m,), generator=g)]
    got_mask, got_dice = matched_mask_loss(x, t, v, kind), matched_dice_loss(x, t, v)
    ref_mask = torch.stack([ref_pair_mask_loss(x[i], t[i], v[i], kind) for i in range(m)]).float()
    ref_dice = torch.stack([ref_pair_dice(x[i], t[i], v[i]) for i in range(m)]).float()
    torch.testing.assert_close(got_mask, ref_mask, **REL)
    torch.testing.assert_close(got_dice, ref_dice, **REL)
    # the diagonal of the pairwise costs (the per-pair loop the ZegFormer loss ran)
    for i in range(0, m, 6):
        torch.testing.assert_close(got_mask[i], pairwise_mask_cost(x[i:i + 1], t[i:i + 1], v[i], kind)[0, 0], **REL)
        torch.testing.assert_close(got_dice[i], pairwise_dice_cost(x[i:i + 1], t[i:i + 1], v[i])[0, 0], **REL)
    # gradients too
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    (matched_mask_loss(xa, t, v, kind).mean() + matched_dice_loss(xa, t, v).mean()).backward()
    ref = torch.stack([pairwise_mask_cost(xb[i:i + 1], t[i:i + 1], v[i], kind)[0, 0] for i in range(m)]).mean() + \
        torch.stack([pairwise_dice_cost(xb[i:i + 1], t[i:i + 1], v[i])[0, 0] for i in range(m)]).mean()
    ref.backward()
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-9)


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_classwise_losses_with_a_bool_one_hot_are_those_of_the_int64_one_hot(kind):
    """ZegCLIP's targets: a bool one-hot by comparison (1 byte an entry), laid out as the permuted F.one_hot was:
    the same losses and gradients bit for bit, and the obvious per-class loop's values."""
    g = torch.Generator().manual_seed(2)
    b, c, h, w = 2, 6, 16, 12
    targets = torch.randint(0, c, (b, h, w), generator=g)
    targets[1, :5] = 255
    valid = (targets != 255).flatten(1)
    old = F.one_hot(targets.clamp(0, c - 1), c).permute(0, 3, 1, 2).flatten(2)
    new = (targets.clamp(0, c - 1).flatten(1)[:, :, None] == torch.arange(c)).transpose(1, 2)
    assert new.dtype == torch.bool and torch.equal(new, old.bool()) and new.stride() == old.stride()
    logits = torch.randn(b, c, h * w, generator=g) * 3
    grads = []
    for onehot in (old, new):
        x = logits.clone().requires_grad_()
        losses = classwise_mask_loss(x, onehot, valid, kind), classwise_dice_loss(x, onehot, valid)
        sum(losses).backward()
        grads.append((losses, x.grad))
    (m_old, d_old), g_old = grads[0]
    (m_new, d_new), g_new = grads[1]
    assert torch.equal(m_old, m_new) and torch.equal(d_old, d_new) and torch.equal(g_old, g_new)
    per = [ref_pair_mask_loss(logits[i, k], old[i, k].float(), valid[i], kind) * valid[i].sum()
           for i in range(b) for k in range(c)]
    torch.testing.assert_close(m_new.double(), sum(per) / (valid.sum() * c), **REL)
    dice = torch.stack([ref_pair_dice(logits[i, k], old[i, k].float(), valid[i]) for i in range(b) for k in range(c)])
    torch.testing.assert_close(d_new.double(), dice.mean(), **REL)


def test_pixel_sums_accumulate_in_float32_under_half_precision():
    """16k per-pixel losses of ~5 add up to ~80k: more than fp16's 65504 before the division by the count."""
    n = 128 * 128
    x = torch.full((2, n), -5.0)
    t = torch.ones(1, n)
    valid = torch.ones(n, dtype=torch.bool)
    want = pairwise_mask_cost(x, t, valid, "bce")
    for dtype in (torch.float16, torch.bfloat16):
        if dtype == torch.float16:  # the sum as it was formed, in fp16: overflows
            assert torch.isinf(F.softplus(-x.to(dtype)) @ t.to(dtype).t()).all()
        got = pairwise_mask_cost(x.to(dtype), t.to(dtype), valid, "bce")
        assert got.dtype == torch.float32 and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, rtol=1e-2, atol=0)
        got = matched_mask_loss(x.to(dtype)[:1], t.to(dtype), valid[None])
        torch.testing.assert_close(got, want[0], rtol=1e-2, atol=0)
        torch.testing.assert_close(pairwise_dice_cost(x.to(dtype), t.to(dtype), valid), pairwise_dice_cost(x, t, valid),
                                   rtol=1e-2, atol=1e-3)
        logits = x.to(dtype)[None]  # (1, 2, N) class-wise
        cw = classwise_mask_loss(logits, torch.ones(1, 2, n, dtype=torch.bool), valid[None], "bce")
        torch.testing.assert_close(cw, want.mean(), rtol=1e-2, atol=0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # a matmul under autocast would run in bf16
        got = pairwise_mask_cost(x, t, valid, "bce")
        means = region_means(torch.ones(3, 64, 64), torch.ones(1, 64, 64, dtype=torch.bool))
    assert got.dtype == torch.float32 and torch.equal(got, want)
    assert means.dtype == torch.float32 and torch.equal(means, torch.ones(1, 3))  # 4096 pixels, exact


# --------------------------------------------------------------------------------- Hungarian matching

def test_batched_hungarian_matching_equals_one_matrix_at_a_time():
    g = torch.Generator().manual_seed(3)
    costs = [torch.rand(q, k, generator=g) for q, k in [(20, 5), (20, 0), (3, 7), (20, 20), (1, 1)]]
    many = hungarian_match_many(costs)
    for cost, (q, k) in zip(costs, many):
        rq, rk = linear_sum_assignment(cost.numpy()) if cost.numel() else ([], [])
        assert q.tolist() == list(rq) and k.tolist() == list(rk)
        one_q, one_k = hungarian_match(cost)
        assert torch.equal(q, one_q) and torch.equal(k, one_k)


@pytest.mark.parametrize("kind", ["bce", "focal"])
def test_matching_costs_by_index_give_the_assignments_of_boolean_indexing(kind):
    g = torch.Generator().manual_seed(4)
    for trial in range(5):
        q_n, k_n, h, w = 20, 1 + trial * 3, 16, 16
        cls = torch.randn(q_n, 16, generator=g)
        masks = torch.randn(q_n, h, w, generator=g) * 2
        classes = torch.randperm(15, generator=g)[:k_n]
        tgt = (torch.rand(k_n, h, w, generator=g) > 0.7).float()
        valid = torch.rand(h, w, generator=g) > 0.25
        kw = dict(class_weight=2.0, mask_weight=5.0, dice_weight=5.0, mask_loss=kind)
        by_mask = matching_cost(cls, masks, classes, tgt, valid, **kw)
        by_index = matching_cost(cls, masks, classes, tgt, valid_indices(valid.flatten()[None])[0], **kw)
        assert torch.equal(by_mask, by_index)
        prob = cls.softmax(-1)
        ref = torch.tensor([[-2.0 * float(prob[i, classes[j]])
                             + 5.0 * float(ref_pair_mask_loss(masks[i].flatten(), tgt[j].flatten(), valid.flatten(), kind))
                             + 5.0 * float(ref_pair_dice(masks[i].flatten(), tgt[j].flatten(), valid.flatten()))
                             for j in range(k_n)] for i in range(q_n)])
        torch.testing.assert_close(by_index, ref, **REL)
        rq, rk = linear_sum_assignment(by_mask.numpy())
        q, k = match_queries(cls, masks, classes, tgt, valid, **kw)
        assert q.tolist() == list(rq) and k.tolist() == list(rk)


# --------------------------------------------------------------------------------- ZegFormer's step

@pytest.fixture(scope="module")
def zegformer(tmp_path_factory):
    from run_helpers import build_on_synth, tiny

    net, _ = build_on_synth(tmp_path_factory.mktemp("zw"), tmp_path_factory.mktemp("zo"), "zegformer",
                            tiny(1, 1000, "MODEL.ZEGFORMER.NUM_QUERIES", "20"))
    return net


def _zegformer_inputs(num_classes, seed):
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, num_classes, (2, 32, 32), generator=g)
    targets[1, :12] = 255
    targets[0, :, :3] = 255
    masks = [torch.stack([t == c for c in torch.unique(t[t != 255])]) for t in targets]
    classes = [torch.unique(t[t != 255]) for t in targets]
    return torch.randn(2, 3, 32, 32, generator=g), targets, masks, classes


def _reference_zegformer_losses(net, images, targets, masks, classes):
    """The loss as it was: per image and layer match_queries (boolean indexing, a host copy each), then a loop over
    the matched queries with boolean indexing per loss."""
    z = net.cfg_z
    outputs = net._predict(images)
    h, w = outputs[-1][1].shape[-2:]
    small = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    valid = small != net.ignore_value
    tgt_masks = [net._resize_masks(m, targets.shape[-2:], (h, w)) for m in masks]
    losses = {}
    layers = outputs if z.DEEP_SUPERVISION else outputs[-1:]
    for li, (cls_logits, mask_logits) in enumerate(layers):
        suffix = "" if li == len(layers) - 1 else f"_{li}"
        num_seen = cls_logits.shape[-1] - 1
        weight = torch.ones(num_seen + 1)
        weight[-1] = z.NO_OBJECT_WEIGHT
        cls_target = torch.full(cls_logits.shape[:2], num_seen, dtype=torch.long)
        pred_m, tgt_m, val_m = [], [], []
        for b in range(cls_logits.shape[0]):
            q, k = match_queries(cls_logits[b], mask_logits[b], classes[b], tgt_masks[b], valid[b],
                                 class_weight=z.CLASS_WEIGHT, mask_weight=z.MASK_WEIGHT, dice_weight=z.DICE_WEIGHT,
                                 mask_loss=z.MASK_LOSS)
            cls_target[b, q] = classes[b][k]
            pred_m.append(mask_logits[b, q])
            tgt_m.append(tgt_masks[b][k])
            val_m.append(valid[b].expand(len(q), -1, -1))
        loss_ce = F.cross_entropy(cls_logits.transpose(1, 2), cls_target, weight)
        x, t, v = torch.cat(pred_m).flatten(1), torch.cat(tgt_m).flatten(1), torch.cat(val_m).flatten(1)
        loss_mask = torch.stack([pairwise_mask_cost(x[i:i + 1], t[i:i + 1], v[i], z.MASK_LOSS)[0, 0]
                                 for i in range(len(x))]).mean()
        loss_dice = torch.stack([pairwise_dice_cost(x[i:i + 1], t[i:i + 1], v[i])[0, 0] for i in range(len(x))]).mean()
        losses.update({"loss_ce" + suffix: z.CLASS_WEIGHT * loss_ce, "loss_mask" + suffix: z.MASK_WEIGHT * loss_mask,
                       "loss_dice" + suffix: z.DICE_WEIGHT * loss_dice})
    return losses


@pytest.mark.parametrize("num_classes", [3, 12])
def test_zegformer_losses_equal_the_per_query_loop(zegformer, monkeypatch, num_classes):
    from zss_bench.methods.zegformer import meta_arch

    net = zegformer
    net.train()
    inputs = _zegformer_inputs(num_classes, seed=num_classes)
    torch.manual_seed(0)
    ref = _reference_zegformer_losses(net, *inputs)
    torch.manual_seed(0)
    cpu = net.train_losses(*inputs)  # the CPU path: pair by pair, bit for bit the loop
    assert set(cpu) == set(ref) and all(torch.equal(cpu[k], ref[k]) for k in ref), \
        {k: (float(cpu[k]), float(ref[k])) for k in ref}
    monkeypatch.setattr(meta_arch, "PAIR_BY_PAIR_DEVICES", ())  # an accelerator's path: all pairs in one call
    torch.manual_seed(0)
    vec = net.train_losses(*inputs)
    for k in ref:
        torch.testing.assert_close(vec[k], ref[k], **REL)
        if k.startswith("loss_ce"):  # the same assignments: the same class targets
            assert torch.equal(vec[k], ref[k])


# --------------------------------------------------------------------------------- CLIP-ZSS

def test_kmeans_seeds_and_regions_are_those_of_the_host_indexed_version():
    g = torch.Generator().manual_seed(5)
    for d, h, w in [(8, 6, 6), (64, 8, 8), (512, 14, 14), (12, 5, 7)]:
        for trial in range(3):
            tokens = torch.randn(d, h, w, generator=g)
            if trial == 2:  # a few tight clusters: near-ties
                tokens = torch.eye(d)[torch.randint(0, 4, (h, w), generator=g)].permute(2, 0, 1) \
                    + 0.01 * torch.randn(d, h, w, generator=g)
            for x in (tokens.reshape(d, -1).t(), tokens.reshape(d, -1).t().contiguous()):  # both memory layouts
                for k in (1, 3, 8):
                    ref_assign, ref_cents, picked = ref_kmeans(x, k, 10)
                    assign, cents = kmeans_cosine(x, k, 0)  # no Lloyd step: the seeds themselves
                    assert torch.equal(cents, F.normalize(x.float(), dim=-1)[picked])
                    assign, cents = kmeans_cosine(x, k, 10)
                    assert torch.equal(assign, ref_assign) and torch.equal(cents, ref_cents)
            for threshold in (0.5, 0.9, 1.01):
                masks, cents = multiscale_regions(tokens, (2, 4, 8), 10, threshold)
                ref_masks, ref_cents = ref_multiscale(tokens, (2, 4, 8), 10, threshold)
                assert torch.equal(masks, ref_masks) and torch.equal(cents, ref_cents)


def test_region_means_and_the_plm_one_hot():
    g = torch.Generator().manual_seed(6)
    feats, masks = torch.randn(5, 9, 7, generator=g), torch.rand(4, 9, 7, generator=g) > 0.5
    masks[3] = False
    ref = torch.stack([feats[:, m].mean(1) if m.any() else torch.zeros(5) for m in masks])
    torch.testing.assert_close(region_means(feats, masks), ref, **REL)
    protos, bank = torch.randn(3, 4, generator=g), F.normalize(torch.randn(6, 4, generator=g), dim=-1)
    targets = torch.tensor([0, 5, 2])
    logits = F.normalize(protos, dim=-1) @ bank.t() / 0.1
    want = F.binary_cross_entropy_with_logits(logits, F.one_hot(targets, 6).float())
    assert torch.equal(plm_bce(protos, targets, bank, 0.1), want)


def _reference_plm_loss(self, z, tokens, cls, targets):
    """ClipZSSSeg._plm_loss as it was: per image, unique() of the labels, multiscale regions with their host reads."""
    c = self.cfg_c.PLM
    h, w = z.shape[-2:]
    small = F.interpolate(targets[:, None].float(), size=(h, w), mode="nearest")[:, 0].long()
    clip_up = F.interpolate(tokens, size=(h, w), mode="bilinear", align_corners=False)
    num_seen = self.classifier.text.embeddings.shape[0]
    protos, seen_targets, pseudo_protos, pseudo_cents = [], [], [], []
    for b in range(z.shape[0]):
        unlabelled = small[b] == self.ignore_value
        labels = small[b][~unlabelled].unique()
        seen_masks = torch.stack([small[b] == k for k in labels]) if len(labels) else small.new_zeros((0, h, w)).bool()
        regions, _ = ref_multiscale(tokens[b], c.SCALES, c.ITERS, c.FUSE_THRESHOLD)
        regions = F.interpolate(regions[:, None].float(), size=(h, w), mode="nearest")[:, 0].bool() & unlabelled
        regions = regions[regions.flatten(1).sum(1) >= max(1.0, c.MIN_FRACTION * h * w)]
        masks = torch.cat([seen_masks, regions])
        if masks.shape[0] == 0:
            continue
        out = self.synthesizer(region_means(z[b], masks), F.normalize(cls[b], dim=-1))
        protos.append(out[: len(labels)])
        seen_targets.append(labels)
        pseudo_protos.append(out[len(labels):])
        pseudo_cents.append(F.normalize(region_means(clip_up[b], regions), dim=-1))
    if not protos:
        return z.sum() * 0.0
    seen_p, pseudo_p = torch.cat(protos), torch.cat(pseudo_protos)
    cents = torch.cat(pseudo_cents)
    bank = torch.cat([self.classifier.text.embeddings, cents])
    targets_all = torch.cat([torch.cat(seen_targets), num_seen + torch.arange(len(cents))])
    exclude = torch.zeros(len(targets_all), bank.shape[0], dtype=torch.bool)
    if len(cents):
        dup = (cents @ cents.t()) >= c.FUSE_THRESHOLD
        dup.fill_diagonal_(False)
        exclude[len(seen_p):, num_seen:] = dup
    return plm_bce(torch.cat([seen_p, pseudo_p]), targets_all, bank, c.BCE_TEMPERATURE, exclude)


@pytest.mark.parametrize("opts", [(), ("MODEL.CLIP_ZSS.PLM.MIN_FRACTION", "0.2", "MODEL.CLIP_ZSS.PLM.SCALES", "(3, 5)")])
def test_clip_zss_plm_loss_is_the_per_image_loop_bit_for_bit(tmp_path, opts):
    from run_helpers import build_on_synth, tiny

    net, _ = build_on_synth(tmp_path / "w", tmp_path / "o", "clip-zss", tiny(1, 1000, *opts))
    net.train()
    g = torch.Generator().manual_seed(7)
    for trial in range(2):
        images = torch.randn(3, 3, 32, 32, generator=g)
        targets = torch.randint(0, 15, (3, 32, 32), generator=g)
        targets[1, :16] = 255
        targets[2] = 255 if trial == 0 else targets[2]  # an image with no label at all
        z = net.classifier.embed(net.body(images))
        teacher = net.teacher.encode(net.rgb255(images), ("cls", net.cfg_c.PLM.FEATURES))
        args = (z, teacher[net.cfg_c.PLM.FEATURES].float(), teacher["cls"].float(), targets)
        got, want = net._plm_loss(*args), _reference_plm_loss(net, *args)
        assert torch.equal(got, want), (float(got), float(want))


def test_the_memory_bank_is_the_reference_fifo():
    g = torch.Generator().manual_seed(8)
    bank, fifo = ClsMemoryBank(5, 3), []
    for n in (2, 2, 3, 1, 7, 4):
        x = torch.randn(n, 3, generator=g)
        bank.push(x)
        fifo = (fifo + list(F.normalize(x, dim=-1)))[-5:]
        got = bank.negatives()
        assert got.shape == (len(fifo), 3) and int(bank.filled) == len(fifo)
        # the ring buffer's rows are the FIFO's entries (in ring order)
        assert sorted(map(tuple, got.tolist())) == sorted(tuple(r.tolist()) for r in fifo)
    state = bank.state_dict()
    again = ClsMemoryBank(5, 3)
    again.load_state_dict(state)
    assert torch.equal(again.negatives(), bank.negatives()) and int(again.pointer) == int(bank.pointer)


# --------------------------------------------------------------------------------- Chimera-Seg

def test_chimera_statistics_are_those_of_copy_then_lerp_and_resume_exactly():
    from zss_bench.clip import PartialViT, load_clip
    from zss_bench.methods.chimera.csh import CLIPSemanticHead

    vit = PartialViT(load_clip(MICRO).model.visual).freeze()
    head = CLIPSemanticHead(16, vit, num_blocks=1, stats_momentum=0.1)
    g = torch.Generator().manual_seed(9)
    entries = [torch.randn(2, 17, vit.width, generator=g) * (1 + i) for i in range(4)]
    mean, std = torch.zeros(vit.width), torch.ones(vit.width)
    for i, entry in enumerate(entries):
        head.update_stats(entry)
        tokens = entry[:, 1:].reshape(-1, vit.width).float()
        m, s = tokens.mean(0), tokens.std(0).clamp_min(1e-4)
        if i == 0:
            mean.copy_(m), std.copy_(s)
        else:
            mean.lerp_(m, 0.1), std.lerp_(s, 0.1)
        assert torch.equal(head.entry_mean, mean) and torch.equal(head.entry_std, std) and bool(head.stats_ready)
        if i == 1:  # a resumed run: a new head loads the checkpointed buffers and continues identically
            resumed = CLIPSemanticHead(16, vit, num_blocks=1, stats_momentum=0.1)
            resumed.load_state_dict(head.state_dict())
    for entry in entries[2:]:
        resumed.update_stats(entry)
    assert torch.equal(resumed.entry_mean, head.entry_mean) and torch.equal(resumed.entry_std, head.entry_std)


def test_chimera_sgd_stats_and_anchor_loss():
    from zss_bench.methods.chimera.meta_arch import ChimeraSeg
    from zss_bench.methods.chimera.sgd import selective_global_distillation

    g = torch.Generator().manual_seed(10)
    z, cls = torch.randn(2, 8, 5, 5, generator=g), torch.randn(2, 8, generator=g)
    valid = torch.zeros(2, 5, 5, dtype=torch.bool)
    valid[:, 1:4, 1:4] = True
    a, stats_a = selective_global_distillation(z, cls, 0.5, valid=valid)
    b, stats_b = selective_global_distillation(z, cls, 0.5, valid=valid, valid_count=9)
    assert torch.equal(a, b) and stats_a["sgd_k"] == stats_b["sgd_k"] == 4.0
    assert isinstance(stats_a["sgd_top_sim"], torch.Tensor) and not stats_a["sgd_top_sim"].requires_grad
    cos = torch.randn(2, 6, 7, 7, generator=g).tanh()
    targets = torch.randint(0, 6, (2, 7, 7), generator=g)
    targets[0, :3] = 255
    me = types.SimpleNamespace(ignore_value=255)
    own = cos.gather(1, targets.clamp(0, 5).unsqueeze(1)).squeeze(1)
    want = (1.0 - own[targets != 255]).mean()  # as it was: boolean indexing
    torch.testing.assert_close(ChimeraSeg._anchor_loss(me, cos, targets), want, **REL)
    assert ChimeraSeg._anchor_loss(me, cos, torch.full_like(targets, 255)).item() == 0.0


# --------------------------------------------------------------------------------- ZegFormer's ensemble

@pytest.mark.parametrize("seen_clip", ["mean", "keep"])
def test_geometric_ensemble_is_the_boolean_indexed_formula(seen_clip):
    g = torch.Generator().manual_seed(11)
    p_seg = torch.rand(2, 10, 7, generator=g).softmax(-1)
    p_clip = torch.rand(2, 10, 7, generator=g).softmax(-1)
    seen_ids, lam = [5, 0, 2, 3], 0.7
    seen = torch.zeros(7, dtype=torch.bool)
    seen[seen_ids] = True
    clip = torch.where(seen, p_clip[..., seen].mean(-1, keepdim=True), p_clip) if seen_clip == "mean" else p_clip
    w = torch.where(seen, torch.tensor(lam), torch.tensor(1 - lam))
    want = p_seg.clamp_min(1e-8) ** w * clip.clamp_min(1e-8) ** (1 - w)
    assert torch.equal(geometric_ensemble(p_seg, p_clip, seen_ids, lam, seen_clip), want)


# --------------------------------------------------------------------------------- sliding windows

def _reference_slide(score_fn, images, crop, stride):
    """One window at a time, as it was."""
    b, _, h, w = images.shape
    total, count = None, torch.zeros((1, 1, h, w))
    for y0, x0 in slide_windows(h, w, crop, stride):
        patch = images[:, :, y0:y0 + crop, x0:x0 + crop]
        s = F.interpolate(score_fn(patch), size=patch.shape[-2:], mode="bilinear", align_corners=False)
        if total is None:
            total = torch.zeros((b, s.shape[1], h, w))
        total[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += s
        count[:, :, y0:y0 + patch.shape[2], x0:x0 + patch.shape[3]] += 1
    return total / count


@pytest.mark.parametrize("hw", [(45, 70), (20, 25), (64, 96)])
def test_batched_windows_give_the_per_window_scores(hw):
    torch.manual_seed(12)
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3, stride=2))

    def score(x):  # per image, at a lower resolution than the input (scores are upsampled)
        with torch.no_grad():
            return conv(x) + x.mean((1, 2, 3))[:, None, None, None]

    images = torch.randn(2, 3, *hw)
    want = _reference_slide(score, images, 32, 21)
    assert torch.equal(slide_inference(score, images, 32, 21), want)  # CPU default: one window per call
    for window_batch in (1, 2, 3, 4, 50):
        got = slide_inference(score, images, 32, 21, window_batch=window_batch)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="window_batch must be >= 1"):
        slide_inference(score, images, 32, 21, window_batch=0)


def test_batched_windows_of_real_models(tmp_path):
    from run_helpers import build_on_synth, tiny

    for method in ("chimera", "zegformer"):
        net, protocol = build_on_synth(tmp_path / method / "w", tmp_path / method / "o", method, tiny(1))
        net.eval()
        net.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
        images = torch.randn(1, 3, 40, 56)  # 4 windows
        with torch.no_grad():
            want = _reference_slide(net.eval_scores, images, 32, 24)
            assert torch.equal(slide_inference(net.eval_scores, images, 32, 24), want)
            got = slide_inference(net.eval_scores, images, 32, 24, window_batch=4)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6 * float(want.abs().max()))
