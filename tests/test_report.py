"""`zss-bench report` (issue #16): one self-contained HTML page built only from records: leaderboard
tables, per-class bars, overlays, provenance on a click, sweep pivots; nothing loaded from elsewhere."""
from __future__ import annotations

import base64
import io
import sys
import types
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from conftest import REPO, run_cli
from record_fixtures import PROTOCOL, write_fixture_results


class Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser sees them."""

    def __init__(self, text: str):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.stack: list[str] = []
        self.text: dict[str, list[str]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self.stack.append(tag)

    def handle_endtag(self, tag):
        while self.stack and self.stack.pop() != tag:
            pass

    def handle_data(self, data):
        for tag in set(self.stack):
            self.text.setdefault(tag, []).append(data)

    def count(self, tag: str) -> int:
        return sum(t == tag for t, _ in self.tags)

    def attrs(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    def inside(self, tag: str) -> str:
        return "".join(self.text.get(tag, []))


@pytest.fixture
def results(tmp_path):
    write_fixture_results(tmp_path / "results", tmp_path / "scratch")
    return tmp_path / "results"


def _report(capsys, results: Path, out: Path, *extra: str) -> Page:
    rc, stdout, err = run_cli(capsys, "report", "--results", str(results), "--out", str(out), "--n-boot", "100", *extra)
    assert rc == 0, err
    assert stdout.strip() == f"wrote {out / 'index.html'}"
    return Page((out / "index.html").read_text(encoding="utf-8"))


def test_report_has_the_leaderboard_pictures_and_provenance(results, tmp_path, capsys):
    page = _report(capsys, results, tmp_path / "site")
    assert page.count("table") == 1  # one protocol, no imported rows: one leaderboard table
    cells = page.inside("table")
    assert "chimera" in cells and "seen-only" in cells and "ΔhIoU vs chimera [95% CI]" in cells
    assert " ± " in cells and "ref" in cells and "0bbd62d0" in cells
    assert "paired bootstrap over the test images" in page.inside("p")  # the column's note, as the leaderboard has it
    # provenance: one <details> per record, its blocks as JSON
    assert page.count("details") == 4 and page.count("summary") == 4
    summaries = page.inside("summary")
    assert "20261202-000001-aaaaaa · chimera [default] seed 0 · hIoU" in summaries
    pre = page.inside("pre")
    assert '"provenance": {' in pre and '"seed": 0' in pre and '"weights_hash": "0bbd62d0' in pre
    assert f'"hash": "{PROTOCOL.content_hash}"' in pre and '"training": {' in pre and '"clip": {' in pre
    # pictures: per-class bars and the one record's overlays, embedded
    imgs = page.attrs("img")
    assert len(imgs) == 2
    for img in imgs:
        assert img["src"].startswith("data:image/png;base64,")
        with Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1]))) as im:
            assert im.format == "PNG" and im.width > 300
    assert "seen-only [default] seed 1" in imgs[0]["alt"]  # the best seen-only run is seed 1
    assert "chimera [default] seed 0 (20261202-000001-aaaaaa)" in page.inside("figcaption")


def test_report_is_self_contained(results, tmp_path, capsys):
    page = _report(capsys, results, tmp_path / "site")
    text = (tmp_path / "site" / "index.html").read_text(encoding="utf-8")
    assert page.count("script") == 0 and page.count("link") == 0 and page.count("iframe") == 0
    for tag, attrs in page.tags:
        for key in ("src", "href", "srcset", "action", "data"):
            value = attrs.get(key)
            assert value is None or value.startswith(("data:", "#")), (tag, key, value[:60])
    assert "http://" not in text and "https://" not in text and "url(" not in text
    csp = [a for a in page.attrs("meta") if a.get("http-equiv") == "Content-Security-Policy"]
    assert csp and "default-src 'none'" in csp[0]["content"]
    assert [p.name for p in (tmp_path / "site").iterdir()] == ["index.html"]  # written atomically, nothing else


def _fake_pivot_module(calls: list):
    class FakePivot:
        def __init__(self, title, keys):
            self.title, self.keys = title, keys
            self.frame = pd.DataFrame({"b=1": ["40.0 ± 1.0 (n=2)"], "b=2": ["<41.5>"]}, index=pd.Index(["a=x"], name="a"))

        def to_html(self):
            return self.frame.to_html(escape=True)

        def heatmap_png(self, path):
            if len(self.keys) != 2:
                return None
            Image.new("RGB", (40, 30), (200, 30, 30)).save(path)
            return Path(path)

    def sweep_pivots(grid_file, results_root, protocol=None, on_skip=None):
        calls.append((grid_file, results_root, protocol))
        return [FakePivot("synth-15-5: a x b", ["a", "b"]), FakePivot("synth-15-5: c", ["c"])]

    return types.SimpleNamespace(sweep_pivots=sweep_pivots)


def test_report_shows_sweep_pivots_and_heat_maps(results, tmp_path, capsys, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "zss_bench.tables.pivot", _fake_pivot_module(calls))
    grid = tmp_path / "sweep.yaml"
    grid.write_text("protocol: synth-15-5\n")
    page = _report(capsys, results, tmp_path / "site", "--grid", str(grid), "--protocol", "synth-15-5")
    assert calls == [(str(grid), str(results), "synth-15-5")]
    assert "Sweep: sweep.yaml" in page.inside("h3")
    assert "synth-15-5: a x b" in page.inside("h4") and "synth-15-5: c" in page.inside("h4")
    assert page.count("table") == 3 and "&lt;41.5&gt;" in (tmp_path / "site" / "index.html").read_text()
    assert len(page.attrs("img")) == 3  # + the two-key sweep's heat-map, embedded
    assert "heat-map over a × b" in page.inside("figcaption")


def test_report_without_pivots_says_so(results, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "zss_bench.tables.pivot", None)  # import fails as in a zss-bench without it
    grid = tmp_path / "sweep.yaml"
    grid.write_text("protocol: synth-15-5\n")
    page = _report(capsys, results, tmp_path / "site", "--grid", str(grid))
    assert f"Sweep tables for {grid} are not available" in page.inside("p")
    assert page.count("table") == 1


def test_report_with_the_real_sweep_pivots(results, tmp_path, capsys):
    pytest.importorskip("zss_bench.tables.pivot")
    page = _report(capsys, results, tmp_path / "site", "--grid", str(REPO / "grids" / "chimera-ablation.yaml"))
    assert "Sweep: chimera-ablation.yaml" in page.inside("h3")
    assert "SAM weight" in page.inside("h4") and page.count("table") >= 3


def test_report_errors_name_the_option_or_folder(results, tmp_path, capsys):
    rc, _, err = run_cli(capsys, "report", "--results", str(tmp_path / "nothing"), "--out", str(tmp_path / "s"))
    assert rc == 2 and "results folder" in err and "does not exist" in err
    rc, _, err = run_cli(capsys, "report", "--results", str(results), "--out", str(tmp_path / "s"),
                         "--grid", str(tmp_path / "missing.yaml"))
    assert rc == 2 and f"--grid {tmp_path / 'missing.yaml'}: no such file" in err
    rc, _, err = run_cli(capsys, "report", "--results", str(results), "--out", str(tmp_path / "s"),
                         "--protocol", "synth-15-6")
    assert rc == 2 and "synth-15-5" in err  # did you mean
    assert not (tmp_path / "s").exists()
    page = _report(capsys, results, tmp_path / "v", "--protocol", "voc-15-5", "--reported", "none")
    assert "No run records under" in page.inside("p") and page.count("table") == 0
    page = _report(capsys, results, tmp_path / "w", "--protocol", "voc-15-5")  # asked for: what was published
    assert "No harness runs" in page.inside("p") and "voc-15-5: Reported (published; not run here)" in page.inside("h4")


def test_report_lists_failed_cells_apart_from_the_means(results, tmp_path, capsys):
    from zss_bench.records.failed import note_path, write_note

    log = tmp_path / "cell.log"
    log.write_text("step 1\nRuntimeError: <out of memory>\n")
    identity = {"protocol": "synth-15-5", "method": "chimera", "label": "SAM.WEIGHT=4.0", "seed": 2}
    write_note(note_path(results, "synth-15-5", "chimera", "SAM.WEIGHT=4.0", 2), identity, -9, log, ["zss-bench", "run"])
    page = _report(capsys, results, tmp_path / "site")
    assert "Failed cells" in page.inside("h4")
    assert page.count("table") == 2  # the leaderboard, then the failed cells: never a row of it
    failed_table = (tmp_path / "site" / "index.html").read_text(encoding="utf-8").split("Failed cells", 1)[1]
    assert "SAM.WEIGHT=4.0" in failed_table and "-9" in failed_table and str(log) in failed_table
    assert "SAM.WEIGHT=4.0" not in page.inside("summary")  # no record of it: no provenance entry
