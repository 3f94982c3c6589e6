"""Issue #24 item 6: every record carries a fingerprint of its test set; tables group by it, never pair or
de-duplicate across it, and say so; ``compare`` of runs on different test sets is a one-line error."""
from __future__ import annotations

import json
import re
from itertools import count
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, run_cli_json, save_gray_png, save_palette_png
from zss_bench.evaluation import score
from zss_bench.metrics import ConfusionMatrix
from zss_bench.protocol import load_protocol
from zss_bench.records import load_run, write_run
from zss_bench.records.fingerprint import fingerprint_block, gt_digest
from zss_bench.tables import collect_runs

PROTOCOL = load_protocol("synth-15-5")
CLIP = "0bbd62d0" + "0" * 56
_ids = count(1)


def _world(seed: int, stems: list[str], size: int = 16) -> dict[str, np.ndarray]:
    """Ground truth in contiguous ids, a 255 (ignored) border."""
    rng = np.random.default_rng(seed)
    out = {}
    for stem in stems:
        gt = rng.integers(0, 20, (size, size)).astype(np.uint8)
        gt[0, :] = 255
        out[stem] = gt
    return out


def _run(root: Path, world: dict, method: str, seed: int, p_wrong: float, data_root: str,
         fingerprint: bool = True, label: str = "default") -> Path:
    """A trained-here run record on ``world``, its metrics from a real confusion matrix."""
    rng = np.random.default_rng(1000 * seed + int(100 * p_wrong))
    cm = ConfusionMatrix(20)
    for stem, gt in sorted(world.items()):
        pred = np.where(rng.random(gt.shape) < p_wrong, rng.integers(0, 20, gt.shape), np.where(gt == 255, 0, gt))
        cm.update(pred.astype(np.uint8), gt, image_ids=[stem])
    dataset = {"root": data_root, "train_images": 10}
    if fingerprint:
        dataset["test_set"] = fingerprint_block({s: gt_digest(g) for s, g in world.items()})
    n = next(_ids)
    rec = {"run_id": f"20261205-{n:06d}-abcdef", "kind": "run",
           "protocol": {"name": PROTOCOL.name, "version": PROTOCOL.version, "hash": PROTOCOL.content_hash},
           "method": {"name": method, "label": label}, "provenance": {"seed": seed},
           "clip": {"weights_hash": CLIP}, "training": {"performed": True, "weights": {"origin": "trained here"}},
           "dataset": dataset, "metrics": score(cm, PROTOCOL, n_boot=0)}
    return write_run(root, rec, cm)


def _titles(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("### ")]


def test_default_leaderboard_keeps_runs_on_different_test_images_apart(tmp_path, capsys):
    """The issue's case: a run on a custom --data-root (other images) killed the default leaderboard."""
    results = tmp_path / "results"
    a = _world(0, [f"a{i}" for i in range(8)])
    b = _world(1, [f"b{i}" for i in range(8)])
    _run(results, a, "chimera", 0, 0.2, "$ZSS_BENCH_CACHE/synth-world/v1-seed0-16px")
    _run(results, a, "other", 0, 0.5, "$ZSS_BENCH_CACHE/synth-world/v1-seed0-16px")
    _run(results, b, "other", 0, 0.4, "/data/my-world")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--n-boot", "50")
    assert rc == 0, err
    fa, fb = (fingerprint_block({s: gt_digest(g) for s, g in w.items()})["fingerprint"][:12] for w in (a, b))
    titles = _titles(out)
    assert len(titles) == 2 and {fa, fb} == {re.search(r"on test set (\w+) \(8 images\)", t).group(1) for t in titles}
    assert "synth-15-5 rows come from 2 different test sets" in out and "never averaged, de-duplicated or paired" in out
    sections = {t: body for t, body in zip(re.findall(r"on test set (\w+)", out), out.split("### ")[1:])}
    assert "ΔhIoU vs chimera" not in sections[fb]  # no chimera run on those images: nothing to pair with
    other_a = next(line for line in sections[fa].splitlines() if line.startswith("| other"))
    assert re.search(r"\| -\d+\.\d \[", other_a)  # paired with chimera on its own images


def test_vs_none_does_not_count_a_run_on_other_images_as_a_duplicate(tmp_path, capsys):
    """Same stems, different ground truth (two generated worlds): two rows, not one 'duplicate'."""
    results = tmp_path / "results"
    stems = [f"{i:06d}" for i in range(8)]
    _run(results, _world(0, stems), "chimera", 0, 0.2, "$ZSS_BENCH_CACHE/synth-world/v1-seed0-16px")
    _run(results, _world(5, stems), "chimera", 0, 0.2, "$ZSS_BENCH_CACHE/synth-world/v1-seed5-16px")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--vs", "none")
    assert rc == 0, err
    assert "duplicate run" not in err
    assert len(_titles(out)) == 2 and sum(line.startswith("| chimera") for line in out.splitlines()) == 2


def test_compare_across_test_sets_is_a_one_line_error_naming_both(tmp_path, capsys):
    results = tmp_path / "results"
    a = _world(0, [f"a{i}" for i in range(6)])
    b = _world(1, [f"b{i}" for i in range(6)])
    ra = _run(results, a, "chimera", 0, 0.2, "/data/world-a")
    rb = _run(results, b, "other", 0, 0.2, "/data/world-b")
    rc, out, err = run_cli(capsys, "compare", str(ra), str(rb), "--n-boot", "50")
    assert rc == 2 and out == ""
    fa = load_run(ra).record["dataset"]["test_set"]["fingerprint"][:12]
    fb = load_run(rb).record["dataset"]["test_set"]["fingerprint"][:12]
    assert len(err.strip().splitlines()) == 1
    assert "scored on different test sets" in err and f"test set {fa} (6 images)" in err and f"test set {fb}" in err


def test_compare_of_legacy_records_with_the_same_stems_but_other_ground_truth_is_refused(tmp_path, capsys):
    """No fingerprint (records made before it), one data root re-generated in between: the per-image ground-truth
    counts in confusion.npz still tell the two test sets apart."""
    results = tmp_path / "results"
    stems = [f"{i:06d}" for i in range(6)]
    ra = _run(results, _world(0, stems), "chimera", 0, 0.2, "/data/world", fingerprint=False)
    rb = _run(results, _world(3, stems), "other", 0, 0.2, "/data/world", fingerprint=False)
    rc, out, err = run_cli(capsys, "compare", str(ra), str(rb), "--n-boot", "50")
    assert rc == 2 and "the same image ids hold different ground truth" in err and len(err.strip().splitlines()) == 1
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--n-boot", "50")
    assert rc == 0 and "ΔhIoU of other [default] left n/a" in err and "different ground truth" in err


def test_legacy_records_are_grouped_by_their_dataset_root_and_placed_with_fingerprinted_ones(tmp_path, capsys):
    results = tmp_path / "results"
    stems = [f"{i:06d}" for i in range(6)]
    world = _world(0, stems)
    # the same generated world named two ways by records made before fingerprints: one test set
    _run(results, world, "chimera", 0, 0.2, "/root/.cache/zss-bench/synth-world/v1-seed0-16px", fingerprint=False)
    _run(results, world, "chimera", 1, 0.3, "$ZSS_BENCH_CACHE/synth-world/v1-seed0-16px", fingerprint=False)
    said = []
    runs = collect_runs(results, on_skip=said.append)
    assert set(runs["test_set"]) == {"dataset root $ZSS_BENCH_CACHE/synth-world/v1-seed0-16px (legacy records)"}
    # a new record of that root carries a fingerprint: the legacy records join it, and the table says so
    _run(results, world, "other", 0, 0.4, "$ZSS_BENCH_CACHE/synth-world/v1-seed0-16px")
    runs = collect_runs(results, on_skip=said.append)
    assert len(set(runs["test_set"])) == 1 and set(runs["test_set"]).pop().startswith("test set ")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--n-boot", "50")
    assert rc == 0, err
    assert len(_titles(out)) == 1
    assert ("Records made before test-set fingerprints counted with the fingerprinted runs of the same data "
            "(dataset root $ZSS_BENCH_CACHE/synth-world/v1-seed0-16px)") in out
    # a legacy record of another root stays apart
    _run(results, _world(9, stems), "chimera", 2, 0.2, "/elsewhere/world", fingerprint=False)
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--n-boot", "50")
    assert rc == 0, err
    assert any("dataset root /elsewhere/world (legacy records)" in t for t in _titles(out))


def test_evaluate_records_carry_a_fingerprint_of_the_ground_truth_content(voc_folders, tmp_path, capsys):
    def evaluate(gt_dir, out=None):
        args = ["evaluate", "--protocol", "voc-15-5", "--pred-dir", str(voc_folders["pred_dir"]), "--gt-dir",
                str(gt_dir), "--json", "--n-boot", "0"] + (["--out", str(out)] if out else [])
        return run_cli_json(capsys, *args)

    res = evaluate(voc_folders["gt_dir"], tmp_path / "results")
    rec = json.loads((Path(res["run_dir"]) / "record.json").read_text())
    block = rec["dataset"]["test_set"]
    assert re.fullmatch(r"[0-9a-f]{64}", block["fingerprint"]) and block["n_images"] == 12
    assert rec["dataset"]["gt_dir"] and res["test_set"] == block
    # the same labels as grey PNGs (not palette): the same test set; one changed pixel: another one
    gray = tmp_path / "gray"
    for stem, native in zip(voc_folders["stems"], voc_folders["natives"]):
        save_gray_png(gray / f"{stem}.png", native)
    assert evaluate(gray)["test_set"] == block
    changed = voc_folders["natives"][3].copy()
    changed[5, 5] = 7 if changed[5, 5] != 7 else 8
    save_palette_png(gray / f"{voc_folders['stems'][3]}.png", changed)
    assert evaluate(gray)["test_set"]["fingerprint"] != block["fingerprint"]


def test_evaluate_and_run_fingerprint_one_test_set_alike(tmp_path, capsys):
    """``evaluate`` reads the native annotation PNGs, ``run`` the prepared evaluation view in the cache: the
    fingerprint hashes contiguous ids, so both name the same test set."""
    from run_helpers import synth_world
    from zss_bench.data.d2_datasets import register_protocol
    from zss_bench.records.fingerprint import fingerprint_dataset

    root = synth_world(tmp_path / "world", seed=3, n_train=2, n_val=5)
    names = register_protocol(PROTOCOL, root)
    val = next(n for split, n in names.items() if split != "train")
    from_view = fingerprint_dataset(val)
    stems = (root / "ImageSets" / "Segmentation" / "val.txt").read_text().split()
    preds = tmp_path / "preds"
    for stem in stems:
        save_gray_png(preds / f"{stem}.png", np.zeros((32, 32), np.uint8))
    out = run_cli_json(capsys, "evaluate", "--protocol", "synth-15-5", "--pred-dir", str(preds), "--gt-dir",
                       str(root / "SegmentationClass"), "--image-list",
                       str(root / "ImageSets" / "Segmentation" / "val.txt"), "--json", "--n-boot", "0")
    assert out["test_set"] == from_view and from_view["n_images"] == 5
    # a detectron2 project's ZSSEvaluator writes the same block into its records
    import torch
    from detectron2.data import DatasetCatalog
    from zss_bench.engine.evaluator import ZSSEvaluator

    evaluator = ZSSEvaluator(val, results_dir=str(tmp_path / "results"))
    evaluator.reset()
    for d in DatasetCatalog.get(val):
        evaluator.process([{"file_name": d["file_name"]}], [{"sem_seg": torch.zeros(20, d["height"], d["width"])}])
    rec = load_run(evaluator.evaluate()["sem_seg"]["record"]).record
    assert rec["dataset"]["test_set"] == from_view
    assert fingerprint_dataset(val, image_ids=stems[:2])["n_images"] == 2
    with pytest.raises(ValueError, match="not in the test set"):
        fingerprint_dataset(val, image_ids=["nope"])


def test_the_report_keeps_test_sets_apart(tmp_path, capsys):
    results = tmp_path / "results"
    a = _world(0, [f"a{i}" for i in range(6)])
    b = _world(1, [f"b{i}" for i in range(6)])
    _run(results, a, "chimera", 0, 0.2, "/data/world-a")
    _run(results, a, "other", 0, 0.4, "/data/world-a")
    _run(results, b, "other", 0, 0.3, "/data/world-b")
    rc, out, err = run_cli(capsys, "report", "--results", str(results), "--out", str(tmp_path / "site"),
                           "--n-boot", "50")
    assert rc == 0, err
    page = (tmp_path / "site" / "index.html").read_text()
    titles = re.findall(r"<h4>synth-15-5 \(v1, [0-9a-f]+, headline convention; mean ± std over runs, %\) on test set",
                        page)
    assert len(titles) == 2
    assert "rows come from 2 different test sets" in page
    assert page.count("<figure>") == 2  # per-class bars drawn per test set, never side by side


def test_compare_of_one_test_set_under_two_legacy_roots_goes_ahead_with_a_warning(tmp_path, capsys):
    """The same images under another path (a copy on another machine): the content decides, and it is said."""
    results = tmp_path / "results"
    world = _world(0, [f"{i:06d}" for i in range(6)])
    ra = _run(results, world, "chimera", 0, 0.2, "/data/voc", fingerprint=False)
    rb = _run(results, world, "other", 0, 0.4, "/mnt/copy-of-voc", fingerprint=False)
    rc, out, err = run_cli(capsys, "compare", str(ra), str(rb), "--n-boot", "50")
    assert rc == 0, err
    assert "warning: the records name their test sets differently" in out and "/mnt/copy-of-voc" in out
