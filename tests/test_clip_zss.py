"""CLIP-ZSS: GLM pooling and InfoNCE with the memory bank by hand, K-means pseudo regions on a constructed
feature map, the PLM's BCE, and runs through the harness (full and each module alone) past the leakage guard."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.methods.clip_zss.glm import ClsMemoryBank, attention_pool, glm_infonce
from zss_bench.methods.clip_zss.plm import kmeans_cosine, multiscale_regions, plm_bce, region_means

MICRO = "zss-micro-vit:random"


def test_attention_pool_is_the_cls_weighted_sum_of_the_dense_features():
    torch.manual_seed(0)
    cls, dense = torch.randn(2, 5), torch.randn(2, 5, 2, 3)
    pooled, weight = attention_pool(cls, dense, temperature=0.5)
    for b in range(2):
        r = dense[b].reshape(5, 6)  # (D, N)
        sims = torch.tensor([float(F.cosine_similarity(cls[b], r[:, i], dim=0)) for i in range(6)])
        w = torch.exp(sims / 0.5) / torch.exp(sims / 0.5).sum()
        torch.testing.assert_close(weight[b], w)
        torch.testing.assert_close(pooled[b], (r * w).sum(1))
    # a position identical to the CLS direction dominates at a low temperature
    dense[0, :, 1, 2] = 10 * cls[0]
    pooled, weight = attention_pool(cls, dense, temperature=0.01)
    assert int(weight[0].argmax()) == 5 and float(weight[0, 5]) > 0.99


def test_glm_infonce_against_the_batch_and_the_memory_bank():
    torch.manual_seed(1)
    pooled, cls = torch.randn(2, 4), torch.randn(2, 4)
    bank = ClsMemoryBank(3, 4)
    assert bank.negatives().shape == (0, 4)
    loss = glm_infonce(pooled, cls, bank.negatives(), 0.1)
    p, k = F.normalize(pooled, dim=-1), F.normalize(cls, dim=-1)
    logits = p @ k.t() / 0.1
    manual = -0.5 * sum(float(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(2))
    assert math.isclose(float(loss), manual, rel_tol=1e-5)
    # FIFO: 2 pushed, then 2 more into a bank of 3 -> the oldest one is gone
    first, second = torch.randn(2, 4), torch.randn(2, 4)
    bank.push(first)
    assert int(bank.filled) == 2
    bank.push(second)
    kept = {tuple(row.tolist()) for row in bank.negatives()}
    want = {tuple(F.normalize(v, dim=0).tolist()) for v in (first[1], second[0], second[1])}
    assert int(bank.filled) == 3 and len(kept) == 3
    assert all(any(torch.allclose(torch.tensor(a), torch.tensor(b)) for b in kept) for a in want)
    # with negatives from the bank the loss adds their terms to each denominator
    neg = bank.negatives()
    loss = glm_infonce(pooled, cls, neg, 0.1)
    logits = p @ torch.cat([k, neg]).t() / 0.1
    manual = -0.5 * sum(float(logits[i, i] - torch.logsumexp(logits[i], 0)) for i in range(2))
    assert math.isclose(float(loss), manual, rel_tol=1e-5)
    with pytest.raises(ValueError, match="BANK_SIZE must be >= 0"):
        ClsMemoryBank(-1, 4)


def _three_region_map(noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(D=8, 6, 6) tokens: left half direction e0, top-right e1, bottom-right e2 (+ noise); the label map."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.zeros(6, 6, dtype=torch.long)
    labels[:3, 3:], labels[3:, 3:] = 1, 2
    tokens = torch.eye(8)[labels].permute(2, 0, 1) + noise * torch.randn(8, 6, 6, generator=g)
    return tokens, labels


def test_kmeans_pseudo_regions_recover_a_constructed_feature_map():
    tokens, labels = _three_region_map()
    assign, centroids = kmeans_cosine(tokens.reshape(8, -1).t(), 3, iters=10)
    # each cluster is exactly one constructed region (up to the order of the clusters)
    pairs = {(int(a), int(l)) for a, l in zip(assign.tolist(), labels.flatten().tolist())}
    assert len(pairs) == 3 and len({a for a, _ in pairs}) == 3
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3))
    # multi-scale: K = 3 and K = 6 over the same map; the finer clusters repeat the coarse semantics and are fused
    masks, cents = multiscale_regions(tokens, scales=(6, 3), iters=10, fuse_threshold=0.9)
    assert masks.shape == (3, 6, 6) and cents.shape == (3, 8)
    found = sorted(tuple(m.flatten().nonzero().flatten().tolist()) for m in masks)
    assert found == sorted(tuple((labels.flatten() == k).nonzero().flatten().tolist()) for k in range(3))
    # a fusion threshold above any cross-scale similarity keeps the finer duplicates as regions of their own
    more, _ = multiscale_regions(tokens, scales=(3, 6), iters=10, fuse_threshold=1.01)
    assert more.shape[0] > 3
    # region means are plain masked averages
    feats = torch.randn(4, 6, 6)
    torch.testing.assert_close(region_means(feats, masks[:1])[0], feats[:, masks[0]].mean(1))


def test_plm_bce_leaves_excluded_entries_out():
    protos = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    bank = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    targets = torch.tensor([0, 1])
    full = plm_bce(protos, targets, bank, 1.0)
    logits = protos @ bank.t()
    onehot = F.one_hot(targets, 3).float()
    torch.testing.assert_close(full, F.binary_cross_entropy_with_logits(logits, onehot))
    exclude = torch.zeros(2, 3, dtype=torch.bool)
    exclude[1, 2] = True  # prototype 1's near-duplicate is not its negative
    part = plm_bce(protos, targets, bank, 1.0, exclude)
    per = F.binary_cross_entropy_with_logits(logits, onehot, reduction="none")
    torch.testing.assert_close(part, (per.sum() - per[1, 2]) / 5)


@pytest.mark.parametrize("label,opts", [
    ("full", []),
    ("glm-only", ["MODEL.CLIP_ZSS.PLM.ENABLED", "False"]),
    ("plm-only", ["MODEL.CLIP_ZSS.GLM.ENABLED", "False"]),
])
def test_a_tiny_clip_zss_run_passes_the_leakage_guard(tmp_path, label, opts):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.protocol import load_protocol
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=8, n_val=4)
    run_dir = run_method(RunRequest(method="clip-zss", protocol="synth-15-5", data_root=str(root), clip=MICRO,
                                    results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                    opts=tiny(2, 1000, "MODEL.CLIP_ZSS.PLM.SCALES", "(2, 4)", *opts)))
    rec = load_run(run_dir).record
    leak = rec["leakage"]
    # K-means regions stay unnamed: only the seen names ever reached the text encoder before evaluation
    assert leak["unseen_names_before_eval"] == [] and leak["training_targets_checked"] == 2 * 4
    assert set(leak["text_encoder_names_before_eval"]) == set(load_protocol("synth-15-5").seen_names)
    assert math.isfinite(rec["training"]["final_total_loss"]) and math.isfinite(rec["metrics"]["hIoU"])
    ckpt = torch.load(next((tmp_path / "work").rglob("model_final.pth")), map_location="cpu", weights_only=False)
    keys = list(ckpt["model"])
    assert not any(k.startswith("teacher.") for k in keys)  # the frozen CLIP teacher is never saved
    assert any(k.startswith("synthesizer.") for k in keys) == (label != "glm-only")
    assert any(k.startswith("bank.") for k in keys) == (label != "plm-only")
