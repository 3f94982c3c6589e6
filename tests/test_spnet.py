"""SPNet-style baseline: the projection classifier by hand, calibration, the leakage guard through the harness."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import zss_bench.detectron2_compat  # noqa: F401
from zss_bench.clip import load_clip
from zss_bench.modeling.projection import ProjectionClassifier
from zss_bench.modeling.text import TextClassifier

MICRO = "zss-micro-vit:random"
NAMES = ["red circle", "blue square", "green star"]


@pytest.fixture(scope="module")
def text():
    return TextClassifier(load_clip(MICRO), ("a photo of a {}.",), NAMES)


@pytest.mark.parametrize("score", ["cosine", "dot"])
def test_projection_classifier_is_the_hand_computed_projection_onto_the_text_embeddings(text, score):
    torch.manual_seed(0)
    clf = ProjectionClassifier(6, text, score, temperature=0.05)
    x = torch.randn(2, 6, 3, 4)
    t = text.embeddings  # (3, D) unit norm
    with torch.no_grad():
        out = clf(x)
        w, b = clf.proj.weight[:, :, 0, 0], clf.proj.bias  # (D, 6), (D,)
        expected = torch.empty(2, 3, 3, 4)
        for i in range(2):
            for y in range(3):
                for xx in range(4):
                    z = w @ x[i, :, y, xx] + b
                    for c in range(3):
                        s = float(z @ t[c])
                        expected[i, c, y, xx] = s / float(z.norm()) / 0.05 if score == "cosine" else s
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
    # SPNet's calibration: gamma off the seen classes' similarity, before the temperature
    with torch.no_grad():
        cal = clf(x, gamma=0.2, seen_ids=[0, 2])
    shift = 0.2 / 0.05 if score == "cosine" else 0.2
    torch.testing.assert_close(cal[:, [0, 2]], out[:, [0, 2]] - shift)
    torch.testing.assert_close(cal[:, 1], out[:, 1])


def test_projection_classifier_follows_the_text_classifier_classes(text):
    clf = ProjectionClassifier(6, text)
    x = torch.randn(1, 6, 2, 2)
    before = clf(x)
    text.set_classes(NAMES + ["yellow cross"])
    try:
        after = clf(x)
        assert after.shape[1] == 4
        torch.testing.assert_close(after[:, :3], before)  # the seen rows are unchanged
    finally:
        text.set_classes(NAMES)


def test_projection_classifier_rejects_bad_keys(text):
    with pytest.raises(ValueError, match="unknown MODEL.SPNET.SCORE 'l2'"):
        ProjectionClassifier(6, text, "l2", key="MODEL.SPNET.SCORE")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        ProjectionClassifier(6, text, "cosine", temperature=0.0)


def test_a_tiny_spnet_run_passes_the_leakage_guard_and_trains_only_the_projection_and_body(tmp_path):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.protocol import load_protocol
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=8, n_val=4)
    run_dir = run_method(RunRequest(method="spnet", protocol="synth-15-5", data_root=str(root), clip=MICRO,
                                    results_root=str(tmp_path / "results"), work_root=str(tmp_path / "work"),
                                    opts=tiny(2, 1000, "MODEL.SPNET.INFERENCE.SEEN_CALIBRATION", "0.1")))
    rec = load_run(run_dir).record
    leak = rec["leakage"]
    assert leak["unseen_names_before_eval"] == [] and leak["training_targets_checked"] == 2 * 4
    assert set(leak["text_encoder_names_before_eval"]) == set(load_protocol("synth-15-5").seen_names)
    assert rec["clip"]["name"] == "zss-micro-vit" and rec["method"]["declares"]["text_classifier"] == "fixed"
    assert rec["method"]["config"]["MODEL"]["SPNET"]["INFERENCE"]["SEEN_CALIBRATION"] == 0.1
    assert math.isfinite(rec["training"]["final_total_loss"]) and math.isfinite(rec["metrics"]["hIoU"])
