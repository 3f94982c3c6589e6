"""``--agreement PROTOCOL``: Kendall τ-b and Spearman ρ of the harness's ranking against the published one
(registry, inductive only), the disagreeing pairs, the n < 3 message and the one-line errors."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest
from scipy.stats import kendalltau, spearmanr

from zss_bench.cli import main
from zss_bench.records import write_run
from zss_bench.reported import load_registry_file
from zss_bench.tables import aggregate, collect_runs
from zss_bench.tables.agreement import System, agreement, published_values, render_agreement, summary_line

from record_fixtures import confusion, predictions, record, world

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "https://github.com/example/method/blob/0123456789abcdef0123456789abcdef01234567/README.md, table 1"
# (method, config label, probability of a wrong pixel): hIoU falls in this order (about 59, 41, 26, 15)
SYSTEMS = (("chimera", "default", 0.1), ("spnet", "default", 0.3), ("zegclip", "cascade", 0.5),
           ("zegclip", "default", 0.7))


def _entry(method: str, h=None, S=None, U=None, **over) -> dict:
    """One registry entry with every key the strict loader asks for (schema of results/reported/voc-15-5.yaml)."""
    base = {"method": method, "variant": None, "paper": f"{method}: a paper", "venue": "CVPR", "year": 2023,
            "source": SOURCE, "setting": "inductive", "backbone": "ViT-B/16", "clip": "ViT-B/16", "crop": 512,
            "schedule": "20k x 16", "S": S, "U": U, "h": h, "notes": None}
    base.update(over)
    return base


def _yaml(v) -> str:
    if v is None:
        return "null"
    return str(v) if isinstance(v, (int, float)) or re.fullmatch(r"[0-9.]+", str(v)) else json.dumps(v)


def _registry(folder: Path, protocol: str, entries: list[dict]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"protocol: {protocol}", "entries:"]
    for e in entries:
        lines += [f"  {'- ' if i == 0 else '  '}{k}: {_yaml(v)}" for i, (k, v) in enumerate(e.items())]
    (folder / f"{protocol}.yaml").write_text("\n".join(lines) + "\n")
    return folder


def _entries(tmp_path: Path, entries: list[dict]):
    _, loaded = load_registry_file(_registry(tmp_path / "reg", "voc-15-5", entries) / "voc-15-5.yaml")
    return loaded


def _table(values: dict[tuple[str, str], float], origin: str = "trained here") -> pd.DataFrame:
    return pd.DataFrame([{"protocol": "synth-15-5", "method": m, "config": c, "origin": origin, "hIoU_mean": h,
                          "mIoU_seen_mean": h + 10, "mIoU_unseen_mean": h - 10} for (m, c), h in values.items()])


HARNESS = {("a", "default"): 50.0, ("b", "default"): 40.0, ("c", "default"): 30.0, ("d", "default"): 20.0}


# --------------------------------------------------------------------------- the statistics


def test_perfect_agreement_is_tau_one(tmp_path):
    entries = _entries(tmp_path, [_entry(m, h=h) for m, h in (("a", 80.1), ("b", 70.2), ("c", 60.3), ("d", 50.4))])
    result = agreement(_table(HARNESS), entries, "synth-15-5", "voc-15-5")
    assert result.n == 4 and result.tau == pytest.approx(1.0) and result.rho == pytest.approx(1.0)
    assert result.discordant == []
    assert [r["harness_rank"] for r in result.rows] == [1, 2, 3, 4] == [r["published_rank"] for r in result.rows]


def test_reversed_ranking_is_tau_minus_one_and_every_pair_disagrees(tmp_path):
    entries = _entries(tmp_path, [_entry(m, h=h) for m, h in (("a", 50.0), ("b", 60.0), ("c", 70.0), ("d", 80.0))])
    result = agreement(_table(HARNESS), entries, "synth-15-5", "voc-15-5")
    assert result.tau == pytest.approx(-1.0) and result.rho == pytest.approx(-1.0)
    assert len(result.discordant) == 6


def test_one_swapped_pair_is_listed_and_tau_is_scipys(tmp_path):
    published = {"a": 80.0, "b": 60.0, "c": 70.0, "d": 50.0}  # b and c swapped
    entries = _entries(tmp_path, [_entry(m, h=h) for m, h in published.items()])
    result = agreement(_table(HARNESS), entries, "synth-15-5", "voc-15-5")
    assert result.discordant == [(System("b"), System("c"))]
    ours = [50.0, 40.0, 30.0, 20.0]
    theirs = [published[m] for m in "abcd"]
    assert result.tau == kendalltau(ours, theirs).statistic == pytest.approx(4 / 6)  # (5 - 1) / 6 pairs
    assert result.tau_p == kendalltau(ours, theirs).pvalue
    assert result.rho == spearmanr(ours, theirs).statistic == pytest.approx(0.8)
    text = render_agreement(result, "md")
    assert "Disagreeing pairs:" in text
    assert "- b vs c: harness b > c (40.0 vs 30.0), published b < c (60.00 vs 70.00)" in text
    assert f"n=4 methods in common, Kendall τ-b = {result.tau:.2f} (p={result.tau_p:.3g})" in text


def test_variant_matches_config_label_and_no_variant_matches_default(tmp_path):
    entries = _entries(tmp_path, [_entry("zegclip", h=77.8), _entry("zegclip", h=80.0, variant="cascade"),
                                  _entry("spnet", h=26.1), _entry("spnet", h=30.0, variant="other")])
    table = _table({("zegclip", "default"): 15.0, ("zegclip", "cascade"): 26.0, ("spnet", "default"): 41.0,
                    ("spnet", "cascade"): 30.0, ("zegclip", "cascade:predictions"): 25.0})
    result = agreement(table, entries, "synth-15-5", "voc-15-5")
    assert {str(r["system"]): r["published"] for r in result.rows} == {
        "zegclip": pytest.approx(77.8), "zegclip [cascade]": pytest.approx(80.0), "spnet": pytest.approx(26.1)}
    assert [str(s) for s in result.published_only] == ["spnet [other]"]
    assert {str(s) for s in result.harness_only} == {"spnet [cascade]", "zegclip [cascade:predictions]"}


def test_h_from_s_and_u_fractions_in_percent_and_entries_averaged(tmp_path):
    entries = _entries(tmp_path, [
        _entry("a", S=60.0, U=40.0),  # no h printed: 2SU/(S+U) = 48
        _entry("b", S=0.7840, U=0.2659, h=0.3972, unit="fraction"),  # CaGNet's README prints fractions
        _entry("c", h=30.0), _entry("c", h=32.0),  # two printed rows of one system: their mean
        _entry("d", U=20.0),  # neither h nor S: no published h
    ])
    values = published_values(entries, "h")
    assert values[System("a")] == (pytest.approx(48.0), "2SU/(S+U)")
    assert values[System("b")] == (pytest.approx(39.72), "fraction ×100")
    assert values[System("c")] == (pytest.approx(31.0), "mean of 2 entries")
    assert System("d") not in values
    assert published_values(entries, "U")[System("d")] == (pytest.approx(20.0), "printed")
    assert published_values(entries, "S")[System("b")][0] == pytest.approx(78.40)


def test_transductive_entries_are_ignored(tmp_path):
    entries = _entries(tmp_path, [_entry("a", h=80.0), _entry("a", h=10.0, setting="transductive"),
                                  _entry("b", h=70.0, setting="transductive"), _entry("c", h=60.0)])
    values = published_values(entries, "h")
    assert values == {System("a"): (pytest.approx(80.0), "printed"), System("c"): (pytest.approx(60.0), "printed")}


def test_imported_rows_and_ambiguous_systems_are_left_out(tmp_path):
    entries = _entries(tmp_path, [_entry(m, h=h) for m, h in (("a", 80.0), ("b", 70.0), ("c", 60.0))])
    table = pd.concat([_table(HARNESS), _table({("a", "default"): 99.0}, origin="imported"),
                       _table({("c", "default"): 31.0}).assign(clip="other")], ignore_index=True)
    result = agreement(table, entries, "synth-15-5", "voc-15-5")
    assert [str(r["system"]) for r in result.rows] == ["a", "b"]  # imported a ignored; c has two rows
    assert any(n.startswith("c left out: 2 rows") for n in result.left_out)


def test_fewer_than_three_in_common_computes_nothing(tmp_path):
    entries = _entries(tmp_path, [_entry("zegclip", h=77.8), _entry("zegclip", h=80.0, variant="cascade"),
                                  _entry("CaGNet", h=39.7)])
    table = _table({("zegclip", "default"): 15.0, ("zegclip", "cascade"): 26.0, ("spnet", "default"): 41.0})
    result = agreement(table, entries, "synth-15-5", "voc-15-5")
    assert result.tau is None and result.rho is None
    assert summary_line(result) == ("Agreement with voc-15-5 (published, inductive; metric hIoU): fewer than 3 "
                                    "methods in common (n=2: zegclip, zegclip [cascade]); τ and ρ not computed")
    text = render_agreement(result, "md")
    assert "τ-b =" not in text and "Disagreeing pairs" not in text and "| zegclip" not in text


# --------------------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def synth_results(tmp_path_factory):
    """Two seeds of four systems of synth-15-5 (12 tiny images), hIoU in the order of SYSTEMS."""
    root = tmp_path_factory.mktemp("agreement") / "results"
    gts, n = world(), 0
    for method, label, p_wrong in SYSTEMS:
        for seed in (0, 1):
            n += 1
            cm = confusion(gts, predictions(gts, p_wrong, n))
            write_run(root, record(f"20261204-0000{n:02d}-cccccc", method, seed, cm, label=label), cm)
    return root


def _registry_swapped(folder: Path) -> Path:
    """voc-15-5: the harness's order with spnet and zegclip [cascade] swapped, plus noise that must not count."""
    return _registry(folder, "voc-15-5", [
        _entry("chimera", S=80.0, U=80.0, h=80.0), _entry("spnet", S=0.30, U=0.20, unit="fraction"),
        _entry("zegclip", h=50.0, variant="cascade"), _entry("zegclip", S=10.0, U=10.0, h=10.0),
        _entry("zegclip", h=99.0, setting="transductive"), _entry("CaGNet", h=39.72)])


def test_leaderboard_prints_the_section_end_to_end(synth_results, tmp_path, capsys):
    reg = _registry_swapped(tmp_path / "reg")
    assert main(["leaderboard", "--results", str(synth_results), "--protocol", "synth-15-5", "--vs", "none",
                 "--reported", str(reg), "--agreement", "voc-15-5"]) == 0
    out = capsys.readouterr().out
    assert out.index("### synth-15-5 (v") < out.index("### synth-15-5: rank agreement with published voc-15-5")
    table = aggregate(collect_runs(synth_results, protocol="synth-15-5"))
    ours = [float(table.loc[(table.method == m) & (table.config == c), "hIoU_mean"].iloc[0]) for m, c, _ in SYSTEMS]
    theirs = [80.0, 24.0, 50.0, 10.0]  # spnet: 2 * 30 * 20 / 50 = 24 % from the fractions
    tau, rho = kendalltau(ours, theirs), spearmanr(ours, theirs)
    assert tau.statistic == pytest.approx(4 / 6)
    assert (f"Agreement with voc-15-5 (published, inductive; metric hIoU): n=4 methods in common, Kendall τ-b = "
            f"{tau.statistic:.2f} (p={tau.pvalue:.3g}), Spearman ρ = {rho.statistic:.2f} (p={rho.pvalue:.3g})") in out
    assert "- spnet vs zegclip [cascade]: harness spnet > zegclip [cascade]" in out
    assert "published spnet < zegclip [cascade] (24.00 vs 50.00)" in out
    assert "Published only (1): CaGNet." in out

    assert main(["leaderboard", "--results", str(synth_results), "--protocol", "synth-15-5", "--vs", "none",
                 "--reported", str(reg), "--agreement", "voc-15-5", "--agreement-metric", "U"]) == 0
    assert "metric mIoU(U)): n=3 methods in common" in capsys.readouterr().out  # zegclip [cascade] prints no U


def test_csv_stays_one_table_and_the_section_goes_to_stderr(synth_results, tmp_path, capsys):
    reg = _registry_swapped(tmp_path / "reg")
    assert main(["leaderboard", "--results", str(synth_results), "--vs", "none", "--format", "csv",
                 "--reported", str(reg), "--agreement", "voc-15-5"]) == 0
    captured = capsys.readouterr()
    assert "agreement" not in captured.out and captured.out.startswith("protocol,")
    assert "synth-15-5: rank agreement with published voc-15-5" in captured.err
    assert "n=4 methods in common" in captured.err


def test_report_shows_the_section(synth_results, tmp_path):
    reg = _registry_swapped(tmp_path / "reg")
    assert main(["report", "--results", str(synth_results), "--out", str(tmp_path / "site"), "--vs", "none",
                 "--reported", str(reg), "--agreement", "voc-15-5"]) == 0
    page = (tmp_path / "site" / "index.html").read_text()
    assert "<h4>synth-15-5: rank agreement with published voc-15-5</h4>" in page
    assert "n=4 methods in common, Kendall τ-b = 0.67" in page
    assert "<li>spnet vs zegclip [cascade]: harness spnet &gt; zegclip [cascade]" in page
    assert page.index("<h3>Leaderboard</h3>") < page.index("rank agreement") < page.index("<h3>Per-class IoU</h3>")


@pytest.mark.parametrize("args, message", [
    (["--agreement", "voc-15"], r"--agreement: unknown protocol 'voc-15'; did you mean 'voc-15-5'"),
    (["--agreement", "coco-stuff-156-15"], r"--agreement coco-stuff-156-15: the registry of published results has "
                                           r"no file for coco-stuff-156-15 \(it has voc-15-5\)"),
    (["--agreement", "voc-15-5", "--reported", "none"], r"--agreement voc-15-5 compares with the registry.*--reported"),
])
@pytest.mark.parametrize("verb", ["leaderboard", "report"])
def test_user_errors_are_one_line_exit_2(synth_results, tmp_path, capsys, args, message, verb):
    reg = _registry_swapped(tmp_path / "reg")
    extra = ["--out", str(tmp_path / "site")] if verb == "report" else []
    argv = [verb, "--results", str(synth_results), "--reported", str(reg), *extra, *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not (tmp_path / "site" / "index.html").exists()


def test_committed_repo_has_two_systems_in_common_and_says_so(capsys):
    assert main(["leaderboard", "--results", str(ROOT / "results"), "--protocol", "synth-15-5", "--vs", "none",
                 "--agreement", "voc-15-5"]) == 0
    out = capsys.readouterr().out
    assert ("Agreement with voc-15-5 (published, inductive; metric hIoU): fewer than 3 methods in common "
            "(n=2: zegclip, zegclip [cascade]); τ and ρ not computed") in out


def test_two_definitions_of_a_protocol_get_a_section_each_never_mixed(synth_results, tmp_path, capsys):
    """Records of synth-15-5 v1 and of a later version (another hash) are ranked apart, each against the registry."""
    import shutil

    import yaml

    from zss_bench.protocol import load_protocol, protocols_dir

    doc = yaml.safe_load((protocols_dir() / "synth-15-5.yaml").read_text())
    doc.update(version=2, world={"surface": "textured", "teacher": "zss-toy-vit:synth-v1"})
    v2_file = tmp_path / "synth-15-5@2.yaml"
    v2_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    v2 = load_protocol(v2_file)
    root = tmp_path / "results"
    shutil.copytree(synth_results, root)
    gts, n = world(), 50
    for method, label, p_wrong in reversed(SYSTEMS):  # v2: the opposite order of quality
        n += 1
        cm = confusion(gts, predictions(gts, 0.9 - p_wrong, n))
        write_run(root, record(f"20261205-0000{n:02d}-dddddd", method, 0, cm, label=label, protocol=v2), cm)
    reg = _registry_swapped(tmp_path / "reg")
    assert main(["leaderboard", "--results", str(root), "--protocol", "synth-15-5", "--vs", "none",
                 "--reported", str(reg), "--agreement", "voc-15-5"]) == 0
    out = capsys.readouterr().out
    v1_head = f"### synth-15-5 v1 ({load_protocol('synth-15-5').short_hash}): rank agreement with published voc-15-5"
    v2_head = f"### synth-15-5 v2 ({v2.short_hash}): rank agreement with published voc-15-5"
    assert v1_head in out and v2_head in out
    assert out.index(v2_head) < out.index(v1_head)  # the newest definition first, as in the leaderboard
    v2_part, v1_part = out[out.index(v2_head):out.index(v1_head)], out[out.index(v1_head):]
    assert "n=4 methods in common" in v1_part and "n=4 methods in common" in v2_part  # nothing left out as duplicate
    assert "τ-b = 0.67" in v1_part and "τ-b = 0.67" not in v2_part
    capsys.readouterr()
    assert main(["leaderboard", "--results", str(root), "--vs", "none", "--reported", "none"]) == 0
    board = capsys.readouterr().out
    assert board.index("### synth-15-5 (v2,") < board.index("### synth-15-5 (v1,")  # newest definition leads
    assert main(["leaderboard", "--results", str(root), "--protocol", "synth-15-5@2", "--vs", "none",
                 "--reported", "none"]) == 0
    only_v2 = capsys.readouterr().out
    assert "### synth-15-5 (v2," in only_v2 and "(v1," not in only_v2
