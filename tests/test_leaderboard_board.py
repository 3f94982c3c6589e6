"""The full leaderboard (issue #15): efficiency columns, the paired "vs reference" column over seeds, and
rows with imported weights kept apart; built from fixture records, plus where a run's weights come from."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from zss_bench.evaluation import score
from zss_bench.metrics import ConfusionMatrix, paired_bootstrap, paired_bootstrap_seeds
from zss_bench.protocol import load_protocol
from zss_bench.records import write_run
from zss_bench.tables import add_paired_column, aggregate, collect_runs, render_leaderboard, weights_origin

PROTOCOL = load_protocol("synth-15-5")
N_IMAGES, SIZE = 24, 16


def _world(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 20, (SIZE, SIZE)) for _ in range(N_IMAGES)]


def _cm(gts, p_wrong: float, seed: int) -> ConfusionMatrix:
    """Predictions = ground truth with a fraction of pixels replaced by random classes."""
    rng = np.random.default_rng(seed)
    cm = ConfusionMatrix(20)
    for i, gt in enumerate(gts):
        pred = np.where(rng.random(gt.shape) < p_wrong, rng.integers(0, 20, gt.shape), gt)
        cm.update(pred, gt, image_ids=[f"img{i:03d}"])
    return cm


def _record(run_id: str, method: str, seed: int, cm: ConfusionMatrix, origin: str, machine: str, params: int) -> dict:
    return {"run_id": run_id, "kind": "run",
            "protocol": {"name": PROTOCOL.name, "version": PROTOCOL.version, "hash": PROTOCOL.content_hash},
            "method": {"name": method, "label": "default"}, "provenance": {"seed": seed},
            "clip": {"weights_hash": "0bbd62d0" + "0" * 56},
            "training": {"performed": origin == "trained here", "weights": {"origin": origin}},
            "metrics": score(cm, PROTOCOL, n_boot=0),
            "efficiency": {"params_total": params, "params_trainable": params // 2, "test_images_per_s": 10.0 + seed,
                           "peak_memory_mb": 1000.0, "train_step_s": 0.5, "machine": machine}}


@pytest.fixture
def results(tmp_path):
    gts = _world()
    n = 0
    for method, p_wrong in (("chimera", 0.2), ("other", 0.5)):
        for seed in (0, 1):
            n += 1
            write_run(tmp_path, _record(f"20261202-00000{n}-aaaaaa", method, seed, _cm(gts, p_wrong, 10 * seed + n),
                                        "trained here", "cpu (test CPU), 2 cores", 2_000_000), _cm(gts, p_wrong, 10 * seed + n))
    # a released checkpoint of "other", scored here: better than the retrained one, and never averaged with it
    cm = _cm(gts, 0.1, 99)
    write_run(tmp_path, _record("20261202-000009-bbbbbb", "other", 0, cm, "imported", "cpu (test CPU), 2 cores",
                                2_000_000), cm)
    return tmp_path


def test_the_table_keeps_imported_rows_apart_with_efficiency_and_the_paired_column(results):
    runs = collect_runs(results, protocol="synth-15-5", on_skip=lambda m: None)
    table = add_paired_column(aggregate(runs), runs, "chimera", n_boot=200)
    rows = {(r.method, r.origin): r for r in table.itertuples()}
    assert set(rows) == {("chimera", "trained here"), ("other", "trained here"), ("other", "imported")}
    trained, imported = rows[("other", "trained here")], rows[("other", "imported")]
    assert int(trained.runs) == 2 and int(imported.runs) == 1  # the imported run is not averaged in
    assert rows[("chimera", "trained here")].vs_config == "ref"
    # the paired column: worse predictions, a clearly negative delta whose interval excludes 0
    assert trained.vs_seeds == (0, 1) and trained.vs_delta < 0 and trained.vs_high < 0
    assert trained.vs_delta == pytest.approx(trained.hIoU_mean - rows[("chimera", "trained here")].hIoU_mean, abs=1e-6)
    assert imported.vs_seeds == (0,) and imported.vs_delta > 0
    assert trained.params_total == 2_000_000 and trained.test_images_per_s == pytest.approx(10.5)
    text = render_leaderboard(table, reference="chimera")
    main, rest = text.split("imported weights or predictions (trained elsewhere")
    assert "| other " in main and "| imported " not in main and "| imported " in rest
    assert "ΔhIoU vs chimera [95% CI]" in main and "params M (trainable)" in main and "2.00 (1.00)" in main
    assert "measured on: cpu (test CPU), 2 cores." in main
    assert f"{trained.vs_delta:+.1f} [{trained.vs_low:+.1f}, {trained.vs_high:+.1f}]" in main
    latex = render_leaderboard(table, "latex", reference="chimera")
    assert r"$\Delta$hIoU" in latex and "% " in latex


def test_seeds_bootstrap_averages_the_per_seed_deltas():
    gts = _world(1)
    cms = [_cm(gts, p, s) for p, s in ((0.2, 1), (0.4, 2), (0.1, 3), (0.5, 4))]
    seen, unseen = list(PROTOCOL.seen_ids), list(PROTOCOL.unseen_ids)
    h = [cm.summary(seen, unseen, convention="mmseg").hIoU for cm in cms]  # independent of the bootstrap code
    pairs = [(cms[0].image_stats, cms[1].image_stats), (cms[2].image_stats, cms[3].image_stats)]
    res = paired_bootstrap_seeds(pairs, seen, unseen, n_boot=300, seed=3)["hIoU"]
    assert res["delta"] == pytest.approx(((h[1] - h[0]) + (h[3] - h[2])) / 2)
    assert res["a"] == pytest.approx((h[0] + h[2]) / 2) and res["low"] < res["delta"] < res["high"] < 0
    one = paired_bootstrap(*pairs[0], seen, unseen, n_boot=300, seed=3)["hIoU"]
    assert one["delta"] == pytest.approx(h[1] - h[0]) and "seeds" not in paired_bootstrap(*pairs[0], seen, unseen, n_boot=10)
    swapped = paired_bootstrap_seeds([pairs[0], pairs[0][::-1]], seen, unseen, n_boot=300, seed=3)
    assert swapped["hIoU"]["delta"] == pytest.approx(0.0, abs=1e-12) and swapped["seeds"] == 2
    with pytest.raises(ValueError, match="at least one"):
        paired_bootstrap_seeds([], seen, unseen)


def test_weights_origin_of_records_old_and_new():
    assert weights_origin({"training": {"performed": True}}) == "trained here"  # records before the field
    assert weights_origin({"training": {"eval_only": True}}) == "trained here"  # grid re-scorings of those
    assert weights_origin({"training": {"training_free": True}}) == "training-free"
    assert weights_origin({"training": {"weights": {"origin": "imported"}}}) == "imported"
    assert weights_origin({"training": {"weights": {"origin": "untrained"}}}) == "imported"


def test_eval_only_of_a_checkpoint_from_elsewhere_is_recorded_as_imported(tmp_path):
    from run_helpers import synth_world, tiny
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.records import load_run

    root = synth_world(tmp_path / "world", seed=4, n_train=4, n_val=2)
    common = dict(method="seen-only", protocol="synth-15-5", data_root=str(root), results_root=str(tmp_path / "res"))
    trained = load_run(run_method(RunRequest(**common, work_root=str(tmp_path / "w1"), opts=tiny(1)))).record
    assert trained["training"]["weights"]["origin"] == "trained here"
    final = next((tmp_path / "w1").rglob("model_final.pth"))
    assert "zss_bench" in torch.load(final, map_location="cpu", weights_only=False)["trainer"]
    # the same file evaluated by another run: trained here (its trainer marker, its record pointer)
    again = load_run(run_method(RunRequest(**common, work_root=str(tmp_path / "w2"), eval_only=True,
                                           opts=tiny(1, 1000, "MODEL.WEIGHTS", str(final))))).record
    assert again["training"]["weights"]["origin"] == "trained here"
    # a released checkpoint: the weights alone, somewhere else
    released = tmp_path / "released" / "model.pth"
    released.parent.mkdir()
    ckpt = torch.load(final, map_location="cpu", weights_only=False)
    torch.save({"model": ckpt["model"]}, released)
    imported = load_run(run_method(RunRequest(**common, work_root=str(tmp_path / "w3"), eval_only=True,
                                              opts=tiny(1, 1000, "MODEL.WEIGHTS", str(released))))).record
    w = imported["training"]["weights"]
    assert w["origin"] == "imported" and len(w["sha256"]) == 64
    assert weights_origin(imported) == "imported"
