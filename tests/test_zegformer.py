"""ZegFormer-style baseline: matcher, ensemble formula, semantic inference, query/target counts, guard."""
from __future__ import annotations

import math

import pytest
import torch

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.methods.zegformer.ensemble import geometric_ensemble
from zss_bench.methods.zegformer.matcher import hungarian_match, match_queries, pairwise_dice_cost, pairwise_mask_cost

MICRO = "zss-micro-vit:random"


def test_hungarian_match_on_a_hand_made_cost_matrix():
    cost = torch.tensor([[4.0, 1.0, 3.0],
                         [2.0, 0.0, 5.0],
                         [3.0, 2.0, 2.0]])
    q, k = hungarian_match(cost)
    assert sorted(zip(q.tolist(), k.tolist())) == [(0, 1), (1, 0), (2, 2)]  # total 1 + 2 + 2 = 5, the minimum
    q, k = hungarian_match(cost[:, :2])  # more queries than targets: every target matched once
    assert sorted(k.tolist()) == [0, 1] and len(set(q.tolist())) == 2 and cost[q, k].sum() == 3.0  # 1 + 2 or 0 + 3
    q, k = hungarian_match(cost[:1])  # fewer queries than targets: each query once, its cheapest
    assert q.tolist() == [0] and k.tolist() == [1]


def test_mask_costs_ignore_pixels_outside_valid():
    logits = torch.tensor([[10.0, -10.0, 10.0]])
    target = torch.tensor([[1.0, 0.0, 0.0]])
    valid = torch.tensor([True, True, False])  # the wrong third pixel is unlabelled: it must not count
    assert pairwise_mask_cost(logits, target, valid, "bce")[0, 0] < 1e-3
    assert pairwise_dice_cost(logits, target, valid)[0, 0] < 1e-3
    assert pairwise_mask_cost(logits, target, torch.ones(3, dtype=torch.bool), "bce")[0, 0] > 3.0
    manual = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.3, -1.0]), torch.tensor([1.0, 0.0]))
    got = pairwise_mask_cost(torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.0]]), torch.ones(2, dtype=torch.bool))
    assert math.isclose(float(got[0, 0]), float(manual), rel_tol=1e-6)


@pytest.mark.parametrize("queries", [2, 5])
def test_match_queries_pairs_each_target_with_its_mask(queries):
    h = w = 4
    masks = torch.zeros(2, h, w)
    masks[0, :2], masks[1, 2:] = 1, 1  # top half class 3, bottom half class 1
    classes = torch.tensor([3, 1])
    mask_logits = torch.full((queries, h, w), -8.0)
    mask_logits[queries - 1, 2:] = 8.0  # the last query predicts the bottom half
    mask_logits[0, :2] = 8.0  # the first the top half
    cls = torch.zeros(queries, 5)
    q, k = match_queries(cls, mask_logits, classes, masks, torch.ones(h, w, dtype=torch.bool), class_weight=1.0,
                         mask_weight=20.0, dice_weight=1.0, mask_loss="focal")
    assert dict(zip(k.tolist(), q.tolist())) == {0: 0, 1: queries - 1}
    q, k = match_queries(cls, mask_logits, classes[:0], masks[:0], torch.ones(h, w, dtype=torch.bool), class_weight=1.0,
                         mask_weight=20.0, dice_weight=1.0, mask_loss="bce")
    assert q.numel() == 0 and k.numel() == 0  # an image without seen labels matches nothing


def test_geometric_ensemble_against_a_worked_example():
    p_seg = torch.tensor([[0.6, 0.3, 0.1]])  # classes 0, 1 seen; 2 unseen
    p_clip = torch.tensor([[0.2, 0.4, 0.4]])
    lam = 2 / 3
    out = geometric_ensemble(p_seg, p_clip, [0, 1], lam, "mean")[0]
    seen_mean = 0.3  # ZegFormer: CLIP's seen scores replaced by their mean
    expected = [0.6 ** lam * seen_mean ** (1 - lam), 0.3 ** lam * seen_mean ** (1 - lam), 0.1 ** (1 - lam) * 0.4 ** lam]
    torch.testing.assert_close(out, torch.tensor(expected))
    keep = geometric_ensemble(p_seg, p_clip, [0, 1], 0.7, "keep")[0]  # zsseg: CLIP's seen scores as they are
    torch.testing.assert_close(keep, torch.tensor([0.6 ** 0.7 * 0.2 ** 0.3, 0.3 ** 0.7 * 0.4 ** 0.3,
                                                   0.1 ** 0.3 * 0.4 ** 0.7]))
    with pytest.raises(ValueError, match="LAMBDA must be in"):
        geometric_ensemble(p_seg, p_clip, [0, 1], 1.5)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from run_helpers import build_on_synth, tiny

    return build_on_synth(tmp_path_factory.mktemp("world"), tmp_path_factory.mktemp("o"), "zegformer",
                          tiny(1, 1000, "MODEL.ZEGFORMER.NUM_QUERIES", "4", "MODEL.ZEGFORMER.INFERENCE.SEEN_CALIBRATION", "0.1"))


def test_semantic_inference_is_the_sum_over_queries_of_class_times_mask_probabilities(model):
    net, protocol = model
    net.eval()
    net.set_eval_classes(list(protocol.classes), list(protocol.seen_ids))
    images = torch.randn(1, 3, 32, 32)
    cls_logits, mask_logits = net._predict(images)[-1]
    with torch.no_grad():
        scores = net.eval_scores(images)
    p = cls_logits.softmax(-1)[..., :-1]
    assert p.shape[-1] == protocol.num_classes  # scored over every class, the no-object dropped
    assert scores.shape == (1, protocol.num_classes, *mask_logits.shape[-2:])
    with torch.no_grad():
        from zss_bench.modeling.regions import classify_regions

        emb = net.text.embeddings
        cos = classify_regions(net.teacher, lambda e: torch.nn.functional.normalize(e, dim=-1) @ emb.t(),
                               net.rgb255(images), mask_logits.sigmoid())
        ens = geometric_ensemble(p, (cos / 0.01).softmax(-1), protocol.seen_ids, 0.6667, "mean")
        expected = torch.einsum("bqc,bqhw->bchw", ens, mask_logits.sigmoid())
        expected[:, list(protocol.seen_ids)] -= 0.1  # the seen calibration gamma, last
    torch.testing.assert_close(scores, expected, atol=1e-5, rtol=1e-5)


def test_losses_with_more_targets_than_queries_and_an_image_without_labels(model):
    net, protocol = model
    net.train()
    torch.manual_seed(1)
    h = w = 32
    targets = torch.randint(0, 15, (2, h, w))
    targets[1] = 255  # an image whose pixels are all unlabelled
    masks = [torch.stack([targets[0] == c for c in torch.unique(targets[0])]), torch.zeros(0, h, w, dtype=torch.bool)]
    classes = [torch.unique(targets[0]), torch.zeros(0, dtype=torch.long)]
    assert len(classes[0]) > net.cfg_z.NUM_QUERIES  # 15 target masks, 4 queries
    losses = net.train_losses(torch.randn(2, 3, h, w), targets, masks, classes)
    assert {"loss_ce", "loss_mask", "loss_dice"} <= set(losses) and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    assert net.decoder.query_pos.weight.grad is not None


def test_a_tiny_run_through_the_harness_passes_the_leakage_guard(tmp_path):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=8, n_val=4)
    run_dir = run_method(RunRequest(method="zegformer", protocol="synth-15-5", data_root=str(root), clip=MICRO,
                                    results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                    opts=tiny(2, 1000)))
    rec = load_run(run_dir).record
    leak = rec["leakage"]
    assert leak["unseen_names_before_eval"] == [] and leak["training_targets_checked"] == 2 * 4
    assert set(leak["text_encoder_names_before_eval"]) == set(load_protocol_seen())
    assert rec["method"]["declares"]["train_mapper"] == "per-class-masks" and rec["clip"]["name"] == "zss-micro-vit"
    assert rec["efficiency"]["params_trainable"] < rec["efficiency"]["params_total"]  # the CLIP teacher is frozen


def load_protocol_seen():
    from zss_bench.protocol import load_protocol

    return load_protocol("synth-15-5").seen_names
