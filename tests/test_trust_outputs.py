"""Issue #24 item 8 (evaluate, leaderboard, report): every output location is checked before any work starts,
a bad one is a one-line error, not a traceback after the work; and what ``evaluate`` did not score is counted."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli, save_gray_png
from record_fixtures import write_fixture_results


@pytest.fixture
def blocked(tmp_path) -> Path:
    """A path that cannot become a folder or a file's folder (its parent is a file), even for root."""
    (tmp_path / "a-file").write_text("not a folder")
    return tmp_path / "a-file" / "out"


def _one_line_error(rc: int, err: str, what: str) -> None:
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err and what in lines[0] and "is not a folder" in lines[0]


def test_evaluate_checks_out_before_scoring(voc_folders, blocked, capsys):
    rc, out, err = run_cli(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(voc_folders["pred_dir"]),
                           "--gt-dir", str(voc_folders["gt_dir"]), "--out", str(blocked), "--n-boot", "0", "--quiet")
    _one_line_error(rc, err, "--out")
    assert "note: scored" not in err and out == ""  # refused before any image was scored


def test_leaderboard_checks_out_and_heatmap_first(tmp_path, blocked, capsys):
    results = tmp_path / "results"
    write_fixture_results(results, tmp_path / "scratch")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--out", str(blocked / "lb.md"))
    _one_line_error(rc, err, "--out")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--grid", str(tmp_path / "g.yaml"),
                           "--heatmap", str(blocked / "h.png"))
    _one_line_error(rc, err, "--heatmap")
    rc, out, err = run_cli(capsys, "leaderboard", "--results", str(results), "--out", str(tmp_path))
    assert rc == 2 and "is a folder; expected a file path" in err


def test_report_checks_out_before_building(tmp_path, blocked, capsys):
    results = tmp_path / "results"
    write_fixture_results(results, tmp_path / "scratch")
    rc, out, err = run_cli(capsys, "report", "--results", str(results), "--out", str(blocked))
    _one_line_error(rc, err, "--out")


def test_allow_missing_says_how_many_images_had_no_prediction(voc_folders, capsys):
    for stem in voc_folders["stems"][:3]:
        (voc_folders["pred_dir"] / f"{stem}.png").unlink()
    rc, out, err = run_cli(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(voc_folders["pred_dir"]),
                           "--gt-dir", str(voc_folders["gt_dir"]), "--allow-missing", "--json", "--n-boot", "0")
    assert rc == 0, err
    assert "3 of 12 ground-truth images had no prediction" in err and "scored as all-wrong" in err
    assert voc_folders["stems"][0] in err


def test_a_prediction_outside_the_image_list_is_not_called_one_without_ground_truth(voc_folders, tmp_path, capsys):
    listed = voc_folders["stems"][:8]
    image_list = tmp_path / "val.txt"
    image_list.write_text("\n".join(listed) + "\n")
    save_gray_png(voc_folders["pred_dir"] / "stray.png", np.zeros((40, 56), np.uint8))  # no ground truth at all
    rc, out, err = run_cli(capsys, "evaluate", "--protocol", "voc-15-5", "--pred-dir", str(voc_folders["pred_dir"]),
                           "--gt-dir", str(voc_folders["gt_dir"]), "--image-list", str(image_list), "--json",
                           "--n-boot", "0")
    assert rc == 0, err
    assert "4 prediction(s) are of images not in --image-list; not scored" in err
    assert "1 prediction(s) have no ground truth" in err and "stray" in err
    for stem in voc_folders["stems"][8:]:
        assert f"{stem}.png has no ground truth" not in err
