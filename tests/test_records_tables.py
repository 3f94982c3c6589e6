"""Run records (atomic, schema-versioned), leaderboard aggregation and paired comparison."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import corrupt_prediction, run_cli, run_cli_json, save_gray_png
from zss_bench.records import RecordError, collect_provenance, iter_runs, load_run, write_run
from zss_bench.tables import aggregate, collect_runs, render_leaderboard


def _evaluate_to(capsys, folders, results: Path, method: str, seed: int, pred_dir=None) -> Path:
    out = run_cli_json(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(pred_dir or folders["pred_dir"]),
                       "--gt-dir", str(folders["gt_dir"]), "--method", method, "--seed", str(seed),
                       "--out", str(results), "--json", "--n-boot", "100")
    return Path(out["run_dir"])


def _noisier_preds(folders, tmp_path: Path, name: str, p_noise: float, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    out = tmp_path / name
    for stem, native in zip(folders["stems"], folders["natives"]):
        save_gray_png(out / f"{stem}.png", corrupt_prediction(rng, native, p_noise=p_noise))
    return out


def test_record_contents_and_layout(voc_folders, tmp_path, capsys):
    run_dir = _evaluate_to(capsys, voc_folders, tmp_path / "results", "mymethod", seed=3)
    assert run_dir.parent == tmp_path / "results" / "runs" / "voc-15-5" / "mymethod"
    rec = json.loads((run_dir / "record.json").read_text())
    assert rec["schema"] == "zss-bench/run-record" and rec["schema_version"] == 1
    from zss_bench.protocol import load_protocol

    assert rec["protocol"] == {"name": "voc-15-5", "version": load_protocol("voc-15-5").version,
                               "hash": load_protocol("voc-15-5").content_hash}
    assert set(rec["metrics"]["conventions"]) == {"mmseg", "detectron2"}
    assert rec["metrics"]["convention"] == "mmseg"
    assert len(rec["metrics"]["per_class"]) == 20
    prov = rec["provenance"]
    assert prov["seed"] == 3
    assert {"numpy", "zss-bench", "python"} <= set(prov["versions"])
    assert "sha" in prov["git"] and prov["versions"]["python"]
    from zss_bench.metrics import ConfusionMatrix

    cm = ConfusionMatrix.load(run_dir / "confusion.npz")
    assert cm.matrix.shape == (20, 20) and cm.image_stats.ids == voc_folders["stems"]


def test_write_run_never_overwrites_and_cleans_up_on_failure(tmp_path):
    record = {"run_id": "r1", "protocol": {"name": "voc-15-5", "version": 1, "hash": "x"},
              "method": {"name": "m"}, "metrics": {}}
    path = write_run(tmp_path, record)
    before = (path / "record.json").read_text()
    with pytest.raises(RecordError, match="already exists"):
        write_run(tmp_path, record)
    assert (path / "record.json").read_text() == before

    class Exploding:
        def save(self, p):
            Path(p).write_bytes(b"partial")
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_run(tmp_path, {**record, "run_id": "r2"}, cm=Exploding())
    leftovers = sorted(p.name for p in path.parent.iterdir())
    assert leftovers == ["r1"]  # no r2, no temporary directory


def test_leaderboard_mean_std_and_skips_bad_files(voc_folders, tmp_path, capsys):
    results = tmp_path / "results"
    his = []
    for seed in range(3):
        preds = _noisier_preds(voc_folders, tmp_path, f"a{seed}", 0.1 + 0.1 * seed, seed)
        run = _evaluate_to(capsys, voc_folders, results, "method-a", seed, pred_dir=preds)
        his.append(json.loads((run / "record.json").read_text())["metrics"]["hIoU"])
    _evaluate_to(capsys, voc_folders, results, "method-b", 0)
    # damage: a torn record, a foreign file, an unfinished write
    torn = results / "runs" / "voc-15-5" / "method-b" / "torn-run"
    torn.mkdir()
    (torn / "record.json").write_text('{"schema": "zss-bench/run-rec')
    (results / "runs" / "notes.txt").write_text("hello")
    (results / "runs" / "voc-15-5" / "method-a" / ".x.tmp-1234").mkdir()

    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results))
    assert rc == 0
    assert "torn-run/record.json: torn or corrupt" in err
    assert "notes.txt: foreign file" in err
    assert ".x.tmp-1234: unfinished run directory" in err
    row = next(line for line in out.splitlines() if line.startswith("| method-a"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[2] == "imported" and cells[3] == "3"  # predictions scored by `evaluate`: not trained here
    assert cells[6] == f"{np.mean(his):.1f} ± {np.std(his, ddof=1):.1f}"

    runs = collect_runs(results, on_skip=lambda m: None)
    table = aggregate(runs)
    a = table[table.method == "method-a"].iloc[0]
    assert a.runs == 3 and a.hIoU_mean == pytest.approx(np.mean(his)) and a.hIoU_std == pytest.approx(np.std(his, ddof=1))

    csv_file = tmp_path / "lb.csv"
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--format", "csv", "--out", str(csv_file))
    assert rc == 0 and csv_file.read_text().startswith("protocol,protocol_version")
    latex = render_leaderboard(table, fmt="latex")
    assert r"\toprule" in latex and r"$\pm$" in latex


def test_leaderboard_other_convention_and_protocol_filter(voc_folders, tmp_path, capsys):
    results = tmp_path / "results"
    _evaluate_to(capsys, voc_folders, results, "m", 0)
    runs = collect_runs(results, convention="detectron2")
    assert list(runs.convention) == ["detectron2"]
    assert collect_runs(results, protocol="coco-stuff-156-15").empty
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--protocol", "voc-15-6")
    assert rc == 2 and "voc-15-5" in err


def test_compare_paired_bootstrap(voc_folders, tmp_path, capsys):
    results = tmp_path / "results"
    good = _evaluate_to(capsys, voc_folders, results, "good", 0,
                        pred_dir=_noisier_preds(voc_folders, tmp_path, "good", 0.02, 1))
    bad = _evaluate_to(capsys, voc_folders, results, "bad", 0,
                       pred_dir=_noisier_preds(voc_folders, tmp_path, "bad", 0.6, 2))
    rc, _, err = run_cli(capsys, "compare", str(good), good.name, "--results", str(results))
    assert rc == 2 and "are the same run" in err  # a run against itself is refused, not a delta of 0
    diff = run_cli_json(capsys, "compare", str(bad), good.name, "--results", str(results), "--json", "--n-boot", "300")
    h = diff["metrics"]["hIoU"]
    assert h["delta"] > 0 and h["low"] > 0 and h["p_value"] < 0.05
    rc, text, err = run_cli(capsys, "compare", str(bad), str(good), "--n-boot", "100")
    assert rc == 0 and "hIoU" in text and "95% CI" in text


def test_compare_refuses_different_protocols(tmp_path, capsys):
    a = write_run(tmp_path, {"run_id": "a", "protocol": {"name": "voc-15-5", "version": 1, "hash": "h1"},
                             "method": {"name": "m"}, "metrics": {}})
    b = write_run(tmp_path, {"run_id": "b", "protocol": {"name": "voc-15-5", "version": 2, "hash": "h2"},
                             "method": {"name": "m"}, "metrics": {}})
    rc, out, err = run_cli(capsys, "compare", str(a), str(b))
    assert rc == 2 and "different protocol definitions" in err
    rc, out, err = run_cli(capsys, "compare", "nope", str(b), "--results", str(tmp_path))
    assert rc == 2 and "no run 'nope'" in err


def test_leaderboard_of_a_missing_folder_is_an_error(tmp_path, capsys):
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(tmp_path / "nonexistent"))
    assert rc == 2 and f"results folder {tmp_path / 'nonexistent'} does not exist" in err and out == ""


def test_newer_schema_is_skipped_with_reason(tmp_path):
    path = write_run(tmp_path, {"run_id": "a", "schema_version": 99,
                                "protocol": {"name": "p", "version": 1, "hash": "h"},
                                "method": {"name": "m"}, "metrics": {}})
    skipped = []
    assert list(iter_runs(tmp_path, on_skip=skipped.append)) == []
    assert "schema 99" in skipped[0] and str(path) in skipped[0]
    with pytest.raises(RecordError):
        load_run(path)


def test_provenance_has_versions_and_git():
    prov = collect_provenance(seed=5, batch_size=2)
    assert prov["seed"] == 5 and prov["batch_size"] == 2
    assert prov["versions"]["numpy"] and prov["device"]["cpu_count"]


def _scored(run_id: str, seed: int, clip_hash, p_wrong: float, label: str = "default", method: str = "m"):
    """A synth-15-5 run record whose metrics come from a real confusion matrix (tables check them against it)."""
    from zss_bench.evaluation import score
    from zss_bench.metrics import ConfusionMatrix
    from zss_bench.protocol import load_protocol

    proto = load_protocol("synth-15-5")
    rng = np.random.default_rng(int(p_wrong * 1000) + seed)
    cm = ConfusionMatrix(20)
    for i in range(6):
        gt = np.random.default_rng(i).integers(0, 20, (12, 12))
        cm.update(np.where(rng.random(gt.shape) < p_wrong, rng.integers(0, 20, gt.shape), gt), gt,
                  image_ids=[f"img{i}"])
    rec = {"run_id": run_id, "kind": "run",
           "protocol": {"name": proto.name, "version": proto.version, "hash": proto.content_hash},
           "method": {"name": method, "label": label}, "provenance": {"seed": seed},
           "clip": None if clip_hash is None else {"weights_hash": clip_hash},
           "metrics": score(cm, proto, n_boot=0)}
    return rec, cm


def test_leaderboard_never_averages_runs_with_different_clip_weights(tmp_path):
    his = {}
    for i, (clip_hash, p) in enumerate([("aaaa1111ffff", 0.2), ("aaaa1111ffff", 0.3), ("bbbb2222ffff", 0.4),
                                        (None, 0.9)]):
        rec, cm = _scored(f"r{i}", i, clip_hash, p)
        his.setdefault(str(clip_hash or "-")[:8], []).append(rec["metrics"]["hIoU"])
        write_run(tmp_path, rec, cm)
    table = aggregate(collect_runs(tmp_path, on_skip=lambda m: None))
    rows = {r.clip: (int(r.runs), r.hIoU_mean) for r in table.itertuples()}
    assert rows == {k: (len(v), pytest.approx(np.mean(v))) for k, v in his.items()}
    assert set(rows) == {"aaaa1111", "bbbb2222", "-"}
    text = render_leaderboard(table)
    assert "CLIP weights" in text and "aaaa1111" in text and "bbbb2222" in text


def test_leaderboard_counts_one_run_per_seed_and_warns_about_duplicates(tmp_path):
    runs = [("20261201-000000-aaaaaa", 0, 0.5), ("20261202-000000-bbbbbb", 0, 0.2),  # seed 0 again, newer
            ("20261201-000000-cccccc", 1, 0.3)]
    h = {}
    for run_id, seed, p in runs:
        rec, cm = _scored(run_id, seed, None, p)
        h[run_id] = rec["metrics"]["hIoU"]
        write_run(tmp_path, rec, cm)
    said = []
    table = aggregate(collect_runs(tmp_path, on_skip=said.append))
    row = table.iloc[0]
    assert int(row.runs) == 2  # the newest seed 0 and seed 1
    assert row.hIoU_mean == pytest.approx((h["20261202-000000-bbbbbb"] + h["20261201-000000-cccccc"]) / 2)
    assert len(said) == 1 and "duplicate run of m [default] seed 0" in said[0]
    assert "20261202-000000-bbbbbb" in said[0] and "20261201-000000-aaaaaa" in said[0]


def test_compare_names_both_sides_and_warns_about_different_teachers(voc_folders, tmp_path, capsys):
    results = tmp_path / "results"
    a = _evaluate_to(capsys, voc_folders, results, "ma", 0)
    b = _evaluate_to(capsys, voc_folders, results, "mb", 1, pred_dir=_noisier_preds(voc_folders, tmp_path, "b", 0.3, 2))
    for run, clip_hash in ((a, "aaaa" * 16), (b, "bbbb" * 16)):
        rec = json.loads((run / "record.json").read_text())
        rec["clip"] = {"weights_hash": clip_hash}
        (run / "record.json").write_text(json.dumps(rec))
    rc, out, err = run_cli(capsys, "compare", str(a), str(b), "--n-boot", "50")
    assert rc == 0, err
    assert "A = ma [predictions] seed 0, CLIP aaaaaaaa" in out and "B = mb [predictions] seed 1, CLIP bbbbbbbb" in out
    assert "warning: the two runs used different CLIP teachers" in out
