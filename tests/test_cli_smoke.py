"""The installed console script and the demo, end to end (tiny, in the default suite)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED_UNSEEN = {
    "voc-15-5": {"potted plant", "sheep", "sofa", "train", "tvmonitor"},
    "coco-stuff-156-15": {"cow", "giraffe", "suitcase", "frisbee", "skateboard", "carrot", "scissors", "cardboard",
                          "clouds", "grass", "playingfield", "river", "road", "tree", "wall-concrete"},
    "context-59-zs3": {"cow", "motorbike", "sofa", "cat", "boat", "fence", "bird", "tvmonitor", "keyboard", "aeroplane"},
    "context-59-cascade": {"aeroplane", "bed", "bedclothes", "boat", "bottle", "car", "cloth", "cow", "keyboard",
                           "plate"},
}


def _console_script() -> list[str]:
    exe = Path(sys.executable).with_name("zss-bench")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "zss_bench.cli"]


def test_protocols_json_via_console_script():
    proc = subprocess.run([*_console_script(), "protocols", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = {p["name"]: p for p in json.loads(proc.stdout)}
    assert set(listed) == set(EXPECTED_UNSEEN) | {"synth-15-5"}
    for name, unseen in EXPECTED_UNSEEN.items():
        assert set(listed[name]["unseen"]) == unseen, name
    assert listed["coco-stuff-156-15"]["num_classes"] == 171 and listed["coco-stuff-156-15"]["num_seen"] == 156
    assert listed["voc-15-5"]["num_classes"] == 20
    assert all(listed[n]["num_classes"] == 59 for n in ("context-59-zs3", "context-59-cascade"))


def test_demo_end_to_end(tmp_path, capsys):
    """The demo's chain (world -> prepare -> chimera run -> record -> leaderboard) in quick mode."""
    from zss_bench.demo import run_demo

    assert run_demo(tmp_path / "demo", quick=True) == 0
    out = capsys.readouterr().out
    assert "QUICK MODE" in out  # the demo says what it is
    assert "$ zss-bench run --method chimera" in out
    board = out[out.index("$ zss-bench leaderboard"):]
    board = board.split("For reference, the committed full-length table")[0]  # the demo's own leaderboard only
    rows = [line for line in board.splitlines() if line.startswith("| chimera")]
    assert len(rows) == 1 and "demo-4it" in rows[0]
    runs = list((tmp_path / "demo" / "results" / "runs" / "synth-15-5").glob("*/*/record.json"))
    assert len(runs) == 1
    record = json.loads(runs[0].read_text())
    assert record["leakage"]["unseen_names_before_eval"] == []


def test_listing_methods_imports_neither_torch_nor_detectron2():
    import subprocess
    import sys

    code = ("import sys; from zss_bench.cli import main; rc = main(['methods']); "
            "heavy = [m for m in ('torch', 'detectron2', 'open_clip') if m in sys.modules]; "
            "assert rc == 0 and not heavy, heavy")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "chimera" in proc.stdout and "seen-only" in proc.stdout
