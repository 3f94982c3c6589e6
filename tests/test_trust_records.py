"""Issue #24 item 5: tables check every record's numbers against its own confusion matrix; a record that does
not parse or disagrees is skipped with a warning naming it and what is wrong, and the rest of the table stands.
Plus the table verbs' small items (--vs without runs, convention 'None', compare --json p-values, --help)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_cli, run_cli_json
from record_fixtures import write_fixture_results
from zss_bench.tables import collect_runs


@pytest.fixture
def results(tmp_path):
    runs = write_fixture_results(tmp_path / "results", tmp_path / "scratch")
    return tmp_path / "results", runs


def _edit(run_dir: Path, change) -> Path:
    path = run_dir / "record.json"
    rec = json.loads(path.read_text())
    change(rec)
    path.write_text(json.dumps(rec))
    return path


def _rows(out: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines()
            if line.startswith("| ") and not line.startswith("| method")]


def test_a_record_whose_hiou_does_not_parse_is_skipped_not_the_whole_table(results, capsys):
    root, runs = results

    def abc(rec):
        rec["metrics"]["hIoU"] = "abc"
        rec["metrics"]["conventions"]["mmseg"]["hIoU"] = "abc"

    bad = _edit(runs["seen-only-1"], abc)
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--n-boot", "50")
    assert rc == 0, err
    assert f"skipping {bad}: metrics.conventions.mmseg.hIoU is 'abc', expected a number or null" in err
    rows = {(r[0], r[3]) for r in _rows(out)}
    assert rows == {("chimera", "2"), ("seen-only", "1")}  # the rest of the table stands


def test_an_edited_hiou_that_disagrees_with_the_confusion_matrix_is_skipped(results, capsys):
    root, runs = results

    def inflate(rec):
        for block in (rec["metrics"], rec["metrics"]["conventions"]["mmseg"]):
            block.update(mIoU_seen=1.1, mIoU_unseen=1.1, hIoU=99.0)

    bad = _edit(runs["chimera-1"], inflate)
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--vs", "none")
    assert rc == 0, err
    line = next(l for l in err.splitlines() if str(bad) in l)
    assert "disagree with its own confusion matrix" in line and "metrics.conventions.mmseg.hIoU is 99" in line
    assert "99.0" not in out
    assert {(r[0], r[3]) for r in _rows(out)} == {("chimera", "1"), ("seen-only", "2")}


def test_only_a_top_level_copy_edited_is_caught_too(results):
    """Sweep pivots and the report's record list read the top-level headline copy."""
    root, runs = results
    bad = _edit(runs["chimera-0"], lambda rec: rec["metrics"].update(hIoU=77.0))
    said = []
    runs_table = collect_runs(root, on_skip=said.append)
    assert str(bad.parent) not in set(runs_table["path"])
    assert any(str(bad) in m and "metrics.hIoU is 77" in m for m in said)


def test_per_class_iou_is_checked(results):
    root, runs = results

    def edit(rec):
        rec["metrics"]["conventions"]["mmseg"]["per_class"]["red star"] = 100.0

    bad = _edit(runs["chimera-0"], edit)
    said = []
    collect_runs(root, on_skip=said.append)
    assert any(str(bad) in m and "per_class['red star'] is 100" in m for m in said)


def test_a_record_without_its_confusion_matrix_cannot_be_checked_and_is_skipped(results):
    root, runs = results
    (runs["seen-only-0"] / "confusion.npz").unlink()
    said = []
    table = collect_runs(root, on_skip=said.append)
    assert str(runs["seen-only-0"]) not in set(table["path"]) and len(table) == 3
    assert any(str(runs["seen-only-0"]) in m and "no confusion.npz" in m for m in said)


def test_a_torn_confusion_matrix_and_bad_field_types_are_named(results):
    root, runs = results
    (runs["seen-only-0"] / "confusion.npz").write_bytes(b"PK\x03\x04 torn")
    _edit(runs["seen-only-1"], lambda rec: rec["provenance"].update(seed="abc"))
    _edit(runs["chimera-1"], lambda rec: rec.update(efficiency={"test_images_per_s": "fast"}))
    said = []
    table = collect_runs(root, on_skip=said.append)
    assert list(table["path"]) == [str(runs["chimera-0"])]
    text = "\n".join(said)
    assert "confusion.npz is unreadable" in text
    assert "provenance.seed is 'abc', expected a whole number or null" in text
    assert "efficiency.test_images_per_s is 'fast', expected a number or null" in text


def test_a_record_of_an_edited_protocol_definition_still_gets_the_checks_that_need_no_split(results):
    """An unknown protocol hash: S and U cannot be recomputed here, but mIoU, pAcc and hIoU = 2SU/(S+U) can."""
    root, runs = results

    def other_definition(rec, h=None):
        rec["protocol"]["hash"] = "f" * 64
        if h is not None:
            rec["metrics"]["conventions"]["mmseg"]["hIoU"] = h

    _edit(runs["chimera-0"], other_definition)
    bad = _edit(runs["chimera-1"], lambda rec: other_definition(rec, 99.0))
    said = []
    table = collect_runs(root, on_skip=said.append)
    assert str(runs["chimera-0"]) in set(table["path"])
    assert any(str(bad) in m and "2·S·U/(S+U)" in m for m in said)


def test_no_committed_record_is_skipped():
    """The committed tables stay reproducible: every record under results/ agrees with its confusion matrix."""
    said = []
    table = collect_runs(REPO / "results", on_skip=said.append)
    assert not [m for m in said if "duplicate run" not in m]
    assert len(table) > 50
    test_sets = table.groupby("protocol_version")["test_set"].agg(set).to_dict()
    assert test_sets.pop(1) == {"dataset root $ZSS_BENCH_CACHE/synth-world/v1-seed0-64px-2000-300 (legacy records)"}
    assert all(len(sets) == 1 for sets in test_sets.values()), test_sets  # each later version: one test set


def test_vs_a_method_without_runs_says_so(results, capsys):
    root, _ = results
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--vs", "nosuchmethod")
    assert rc == 0
    assert "no runs of 'nosuchmethod' to pair with: the ΔhIoU vs nosuchmethod column is left out" in err
    assert "methods here: chimera, seen-only" in err


def test_a_reference_run_without_per_image_statistics_is_named(results, capsys):
    root, runs = results
    path = runs["chimera-0"] / "confusion.npz"
    with np.load(path) as z:
        kept = {k: z[k] for k in ("format_version", "matrix", "missed", "num_classes", "ignore_index", "num_images")}
    np.savez(path, track_images=np.bool_(False), **kept)  # the same counts, no per-image statistics
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--n-boot", "50")
    assert rc == 0, err
    assert "ΔhIoU of seen-only [default] left n/a" in err and "no per-image statistics" in err


def test_no_convention_names_what_is_missing_instead_of_none(results, capsys):
    root, runs = results
    bad = _edit(runs["seen-only-1"], lambda rec: rec["metrics"].pop("convention"))
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--vs", "none")
    assert rc == 0
    assert "'None'" not in err
    assert f"skipping {bad}: its metrics name no headline convention ('metrics.convention' is None)" in err
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(root), "--vs", "none", "--convention", "detectron2")
    assert rc == 0 and str(bad) not in err  # with a convention named, the record is usable


def test_compare_json_reports_a_p_value_bound_as_the_table_does(results, capsys):
    root, runs = results
    n_boot = 200
    out = run_cli_json(capsys, "compare", str(runs["seen-only-0"]), str(runs["chimera-0"]), "--json",
                       "--n-boot", str(n_boot))
    acc = out["metrics"]["pAcc"]
    assert acc["delta"] > 20  # chimera's fixture predictions are far better: no resample crosses zero
    assert acc["p_value"] == pytest.approx(1 / n_boot) and acc["p_value_is_bound"] is True
    rc, text, err = run_cli(capsys, "compare", str(runs["seen-only-0"]), str(runs["chimera-0"]), "--n-boot",
                            str(n_boot))
    assert "< 5e-03" in next(l for l in text.splitlines() if l.startswith("| pAcc"))


def test_leaderboard_help_does_not_claim_a_default_config_filter(capsys):
    with pytest.raises(SystemExit):
        run_cli(capsys, "leaderboard", "--help")
    text = " ".join(capsys.readouterr().out.split())
    assert "(shell-style: default 'long-1800it*')" not in text  # read as if that filter were the default
    assert "(without --config: every row)" in text
