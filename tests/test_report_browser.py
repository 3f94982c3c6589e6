"""The report as a browser shows it (issue #16): headless Chromium renders the page from a file, offline;
the screenshot is a real picture (not blank) and the leaderboard tables are in the rendered DOM.
Needs Debian's chromium (`make browser`); skipped with that reason without it."""
from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
from PIL import Image

from record_fixtures import write_fixture_results
from zss_bench.report import build_report

TIMEOUT_S = 180  # a loaded 2-core machine; a healthy render takes a few seconds
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    path = shutil.which("chromium")
    if path is None:
        pytest.skip("chromium not installed: make browser")
    return path


@pytest.fixture
def page(tmp_path):
    results = tmp_path / "results"
    write_fixture_results(results, tmp_path / "scratch")
    return build_report(results, tmp_path / "site", n_boot=100)


def _chromium(binary: str, tmp_path, *args: str) -> subprocess.CompletedProcess:
    cmd = [binary, *FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}", *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pytest.fail(f"chromium did not finish within {TIMEOUT_S} s: {' '.join(cmd)}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_chromium_renders_the_report(chromium, page, tmp_path):
    shot = tmp_path / "shot.png"
    _chromium(chromium, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 2000)
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    colours = np.unique(pixels, axis=0)
    assert len(colours) > 200, f"screenshot has only {len(colours)} colours: blank or unstyled"
    non_white = np.mean(np.any(pixels < 240, axis=1))
    assert non_white > 0.05, f"only {non_white:.1%} of the screenshot is drawn on"

    dom = _chromium(chromium, tmp_path, "--dump-dom", page.as_uri()).stdout
    assert dom.count("<table") == 1 and "<td>chimera" in dom and "<td>seen-only" in dom
    assert "ΔhIoU vs chimera [95% CI]" in dom
    assert dom.count("<img") == 2 and dom.count("<details") == 4
