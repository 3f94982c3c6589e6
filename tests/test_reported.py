"""The registry of published results (results/reported/): strict loading, ``reported --check``, and the
reported and reproduced − reported tables beside the harness's own rows."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from zss_bench.cli import main
from zss_bench.metrics import bootstrap_ci, bootstrap_ci_seeds
from zss_bench.protocol import load_protocol
from zss_bench.records import write_run
from zss_bench.reported import Printed, RegistryError, check_registry, load_registry, load_registry_file
from zss_bench.reported.check import h_consistent
from zss_bench.tables import aggregate, collect_runs
from zss_bench.tables.reported import reproduced_vs_reported

from record_fixtures import confusion, predictions, record, world

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "https://github.com/example/method/blob/0123456789abcdef0123456789abcdef01234567/README.md, table 1"


def _entry(**over) -> dict:
    base = {"method": "zegclip", "paper": "ZegCLIP: a paper", "venue": "CVPR", "year": 2023, "source": SOURCE,
            "setting": "inductive", "backbone": "ViT-B/16", "clip": "ViT-B/16", "crop": 512,
            "schedule": "20k x 16", "S": 91.9, "U": 77.8, "h": 84.3, "notes": None}
    base.update(over)
    return base


def _yaml_value(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, str) and not re.fullmatch(r"[0-9.]+", v):
        return json.dumps(v)
    return str(v)


def _write(folder: Path, protocol: str, entries: list[dict], name: str | None = None, raw: str = "") -> Path:
    """A registry file written as YAML text (numbers as given, so 40.20 stays 40.20)."""
    lines = [f"protocol: {protocol}", "entries:"]
    for e in entries:
        first = True
        for k, v in e.items():
            lines.append(f"  {'- ' if first else '  '}{k}: {_yaml_value(v)}")
            first = False
    path = folder / f"{name or protocol}.yaml"
    path.write_text("\n".join(lines) + "\n" + raw)
    return path


# --------------------------------------------------------------------------- loading


def test_numbers_keep_their_printed_text(tmp_path):
    path = _write(tmp_path, "voc-15-5", [_entry(S="40.20", U="41.1", h=40.6, crop="512x512")])
    (protocol, (e,)) = load_registry_file(path)
    assert protocol == "voc-15-5"
    assert isinstance(e.S, Printed) and e.S.text == "40.20" and e.S.decimals == 2 and e.S == pytest.approx(40.2)
    assert e.crop == "512x512" and e.year == 2023 and e.where.endswith("entry 1 (zegclip)")


@pytest.mark.parametrize("entry, expected", [
    (_entry(backbon="R-101"), r"entry 1 \(zegclip\): unknown key 'backbon' \(did you mean 'backbone'\?\)"),
    ({k: v for k, v in _entry().items() if k != "clip"}, r"entry 1 \(zegclip\): missing key 'clip'"),
    (_entry(S="92.5±1.0"), r"entry 1 \(zegclip\): key 'S': expected a number exactly as printed.*± spread goes in notes"),
    (_entry(U=120.5), r"key 'U': 120.5 is not a percent in \[0, 100\]"),
    (_entry(U=0.5, unit="fractions"), r"key 'unit': expected one of percent, fraction"),
    (_entry(year=23), r"key 'year': expected a year"),
    (_entry(method=None), r"entry 1: key 'method': expected text"),
])
def test_schema_errors_name_file_entry_and_key(tmp_path, entry, expected):
    path = _write(tmp_path, "voc-15-5", [entry])
    with pytest.raises(RegistryError, match=expected) as err:
        load_registry_file(path)
    assert "voc-15-5.yaml" in str(err.value)


def test_duplicate_yaml_keys_and_top_level_typos_are_refused(tmp_path):
    path = tmp_path / "voc-15-5.yaml"
    path.write_text("protocol: voc-15-5\nprotocol: voc-15-5\nentries: []\n")
    with pytest.raises(RegistryError, match="duplicate key 'protocol'"):
        load_registry_file(path)
    path.write_text("protocol: voc-15-5\nentry: []\n")
    with pytest.raises(RegistryError, match="unknown top-level key 'entry' \\(did you mean 'entries'\\?\\)"):
        load_registry_file(path)


def test_missing_registry_folder_is_one_line(tmp_path, capsys):
    assert main(["reported", "--dir", str(tmp_path / "nope")]) == 2
    assert "reported-results folder" in capsys.readouterr().err


# --------------------------------------------------------------------------- --check


@pytest.mark.parametrize("s, u, h, ok", [
    ("91.9", "77.8", "84.3", True),
    ("91.9", "77.8", "84.2", True),   # the true h can be 84.214..., which prints as 84.2
    ("91.9", "77.8", "84.1", False),
    ("92.8", "84.4", "88.4", True),
    ("40.9", "41.6", "41.2", True),
    ("40.9", "41.6", "41.5", False),
    ("40", "41", "40", True),          # integers: each stands for +-0.5
    ("36.6", "33.2", "34.8", True),
])
def test_h_against_s_and_u_allows_for_printed_rounding(s, u, h, ok):
    assert h_consistent(Printed(s), Printed(u), Printed(h))[0] is ok


def test_check_passes_a_clean_registry_and_flags_each_problem(tmp_path, capsys):
    clean = tmp_path / "clean"
    clean.mkdir()
    _write(clean, "voc-15-5", [_entry(), _entry(source="https://arxiv.org/abs/2212.03588v3, Table 1", h=None)])
    assert main(["reported", "--dir", str(clean), "--check"]) == 0
    assert "0 finding(s)" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    _write(bad, "voc-15-5", [
        _entry(),
        _entry(h=85.3, source="https://arxiv.org/abs/1, Table 2"),        # 2: h contradicts S and U
        _entry(source=None),                                                # 3: no source
        _entry(),                                                           # 4: duplicate of 1
        _entry(setting="inductve", source="https://arxiv.org/abs/2, Table 1"),  # 5: unknown setting
        _entry(source="https://github.com/x/y README", S=10, U=10, h=10),   # 6: README without commit
        _entry(method="ZegCLIP", source="https://arxiv.org/abs/3, Table 1"),  # 7: plugin name mis-spelt
    ])
    _write(bad, "voc-1-5", [_entry()])                                      # unknown protocol
    _write(bad, "coco-stuff-156-15", [_entry()], name="coco")               # file name disagrees
    assert main(["reported", "--dir", str(bad), "--check"]) == 1
    out = capsys.readouterr()
    flagged = [line for line in out.err.splitlines() if line.startswith("flagged: ")]
    text = "\n".join(flagged)
    assert re.search(r"entry 2 \(zegclip\): printed h 85.3 contradicts printed S 91.9 and U 77.8", text)
    assert re.search(r"entry 3 \(zegclip\): no source", text)
    assert re.search(r"entry 4 \(zegclip\): duplicate of .*entry 1", text)
    assert re.search(r"entry 5 \(zegclip\): unknown setting 'inductve' \(did you mean 'inductive'\?\)", text)
    assert re.search(r"entry 6 \(zegclip\): source is a GitHub page without the 40-hex commit", text)
    assert re.search(r"entry 7 \(ZegCLIP\): method 'ZegCLIP' is the harness plugin 'zegclip'", text)
    assert re.search(r"voc-1-5.yaml: unknown protocol 'voc-1-5' \(did you mean 'voc-15-5'\?\)", text)
    assert re.search(r"coco.yaml: declares protocol 'coco-stuff-156-15' but is named coco.yaml", text)
    assert len(flagged) == 8  # one line per finding, nothing else flagged (entry 1 is clean)
    assert "85.3" in out.out and "⚠" in out.out  # the table shows the printed number, flagged, never fixed


def test_formats_keep_printed_numbers(tmp_path, capsys):
    _write(tmp_path, "voc-15-5", [_entry(S="40.20", U=41.1, h=40.6)])
    assert main(["reported", "--dir", str(tmp_path), "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["printed"]["S"] == "40.20" and row["S"] == pytest.approx(40.2) and row["flags"] == []
    assert main(["reported", "--dir", str(tmp_path), "--format", "csv"]) == 0
    assert ",40.20,41.1,40.6," in capsys.readouterr().out
    assert main(["reported", "--dir", str(tmp_path), "--format", "latex"]) == 0
    assert "\\toprule" in capsys.readouterr().out


# --------------------------------------------------------------------------- the project's registry


def test_the_project_registry_is_clean_and_covers_voc_and_coco():
    registry = load_registry(ROOT / "results" / "reported")
    assert [str(f) for f in check_registry(registry) if not f.acknowledged] == []
    for protocol in ("voc-15-5", "coco-stuff-156-15"):
        entries = registry.for_protocol(protocol)
        assert len(entries) >= 3, protocol
        assert all(e.source and "http" in e.source for e in entries)


def test_readme_reported_tables_are_generated_from_the_registry():
    """The README's reported tables are the registry rendered by scripts/readme_reported.py, never hand-edited."""
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "readme_reported.py"), "--check"],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --------------------------------------------------------------------------- beside the harness's rows


def test_bootstrap_ci_seeds_is_bootstrap_ci_for_one_run_and_the_mean_for_several():
    voc = load_protocol("voc-15-5")
    gts = world()
    a = confusion(gts, predictions(gts, 0.3, 1)).image_stats
    b = confusion(gts, predictions(gts, 0.5, 2)).image_stats
    one = bootstrap_ci(a, voc.seen_ids, voc.unseen_ids, n_boot=200)
    same = bootstrap_ci_seeds([a], voc.seen_ids, voc.unseen_ids, n_boot=200)
    assert {k: one[k] for k in ("hIoU", "mIoU_seen")} == {k: same[k] for k in ("hIoU", "mIoU_seen")}
    both = bootstrap_ci_seeds([a, b], voc.seen_ids, voc.unseen_ids, n_boot=200)
    single_b = bootstrap_ci(b, voc.seen_ids, voc.unseen_ids, n_boot=200)
    assert both["hIoU"]["estimate"] == pytest.approx((one["hIoU"]["estimate"] + single_b["hIoU"]["estimate"]) / 2)
    assert both["hIoU"]["low"] <= both["hIoU"]["estimate"] <= both["hIoU"]["high"] and both["seeds"] == 2


@pytest.fixture()
def fake_voc_results(tmp_path):
    """Two seeds of a fake voc-15-5 run of zegclip (12 tiny images, not VOC) and a registry with a
    matching inductive entry, a transductive one and a flagged one."""
    voc = load_protocol("voc-15-5")
    gts = world()
    results = tmp_path / "results"
    for seed in (0, 1):
        cm = confusion(gts, predictions(gts, 0.3, 7 + seed))
        write_run(results, record(f"20261204-00000{seed}-bbbbbb", "zegclip", seed, cm, protocol=voc), cm)
    reg = tmp_path / "reported"
    reg.mkdir()
    _write(reg, "voc-15-5", [
        _entry(),
        _entry(method="MaskCLIP+", setting="transductive", source="https://arxiv.org/abs/2112.01071v3, Table 4",
               S=None, U=86.1, h=87.4),
        _entry(method="CaGNet", h=70.0, source="https://arxiv.org/abs/2008.06893v1, Table 1"),
    ])
    return results, reg


def test_leaderboard_shows_reported_apart_with_reproduced_minus_reported(fake_voc_results, capsys):
    results, reg = fake_voc_results
    assert main(["leaderboard", "--results", str(results), "--protocol", "voc-15-5", "--reported", str(reg),
                 "--vs", "none"]) == 0
    out = capsys.readouterr().out
    harness = out.index("### voc-15-5 (v")
    reported = out.index("### voc-15-5: Reported (published; not run here)")
    reproduced = out.index("### voc-15-5: reproduced − reported")
    assert harness < reported < reproduced
    reported_table = out[reported:reproduced]
    assert "MaskCLIP+" in reported_table and "transductive" in reported_table
    assert re.search(r"\| CaGNet .*\| 70\.0 .*⚠1", reported_table)  # flagged, shown as printed
    assert "printed h 70.0 contradicts" in reported_table
    # the harness rows never average with the published ones: its table holds only zegclip
    harness_table = out[harness:reported]
    assert "CaGNet" not in harness_table and "MaskCLIP" not in harness_table

    runs = collect_runs(results, protocol="voc-15-5")
    registry = load_registry(reg)
    (pair,) = reproduced_vs_reported(aggregate(runs), runs, registry.for_protocol("voc-15-5"))
    assert pair["runs"] == 2 and pair["n_images"] == 12 and pair["expected_images"] == 1449
    mean_h = runs["hIoU"].mean()
    assert pair["cells"]["h"]["delta"] == pytest.approx(mean_h - 84.3, abs=1e-6)
    assert pair["cells"]["h"]["low"] <= pair["cells"]["h"]["delta"] <= pair["cells"]["h"]["high"]
    row = next(line for line in out[reproduced:].splitlines() if line.startswith("| zegclip"))
    assert f"{pair['cells']['h']['delta']:+.1f} [" in row
    assert "12 of 1,449 ⚠" in row  # a fake run on 12 images is named a smoke run, not a reproduction


def test_leaderboard_for_a_protocol_without_runs_still_shows_what_was_published(fake_voc_results, tmp_path, capsys):
    _, reg = fake_voc_results
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["leaderboard", "--results", str(empty), "--protocol", "voc-15-5", "--reported", str(reg)]) == 0
    out = capsys.readouterr().out
    assert "voc-15-5: no harness runs" in out and "Reported (published; not run here)" in out
    assert "reproduced − reported" not in out
    assert main(["leaderboard", "--results", str(empty), "--protocol", "voc-15-5", "--reported", "none"]) == 0
    assert "Reported" not in capsys.readouterr().out


def test_report_shows_reported_table_and_reproduced_column(fake_voc_results, tmp_path):
    results, reg = fake_voc_results
    assert main(["report", "--results", str(results), "--out", str(tmp_path / "site"), "--reported", str(reg),
                 "--vs", "none"]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert "voc-15-5: Reported (published; not run here)" in page
    assert "voc-15-5: reproduced − reported" in page
    assert page.index("<h3>Leaderboard</h3>") < page.index("Reported (published")
    assert "printed h 70.0 contradicts" in page
