"""Pictures of records (issue #16): extra files kept atomically with a record, saved predictions read
back, `zss-bench plot` per-class bars / training curves / overlays, and clear errors for bad input."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli
from record_fixtures import (PROTOCOL, confusion, curves_file, kept_predictions, predictions, record, world,
                             write_fixture_results)
from zss_bench.plots import PlotInputError
from zss_bench.records import load_run, write_run
from zss_bench.records.predictions import load_predictions, prediction_files
from zss_bench.records.store import RecordError


@pytest.fixture
def runs(tmp_path):
    return write_fixture_results(tmp_path / "results", tmp_path / "scratch")


def test_write_run_keeps_extra_files_inside_the_atomic_directory(tmp_path):
    gts = world()
    cm = confusion(gts, predictions(gts, 0.3, 0))
    src = curves_file(tmp_path / "metrics.json")
    run_dir = write_run(tmp_path / "results", record("r1", "chimera", 0, cm), cm,
                        extra_files={"metrics.json": src, "predictions/x.bin": b"\x00\x01"})
    rec = load_run(run_dir).record
    assert rec["files"] == {"confusion": "confusion.npz", "extra": ["metrics.json", "predictions/x.bin"]}
    assert (run_dir / "metrics.json").read_bytes() == src.read_bytes()
    assert (run_dir / "predictions" / "x.bin").read_bytes() == b"\x00\x01"
    # without extra files the record is as before
    plain = load_run(write_run(tmp_path / "results", record("r2", "chimera", 1, cm), cm)).record
    assert plain["files"] == {"confusion": "confusion.npz"}


@pytest.mark.parametrize("name, source, message", [
    ("../escape.txt", b"x", "'../escape.txt': must be a relative path inside the run directory"),
    ("/abs.txt", b"x", "'/abs.txt': must be a relative path"),
    ("record.json", b"x", "'record.json': must be a relative path inside the run directory, not"),
    ("metrics.json", "/nonexistent/metrics.json", "extra file 'metrics.json': source '/nonexistent/metrics.json'"),
])
def test_bad_extra_files_are_refused_before_anything_is_written(tmp_path, name, source, message):
    gts = world()
    cm = confusion(gts, predictions(gts, 0.3, 0))
    with pytest.raises(RecordError, match=re.escape(message)):
        write_run(tmp_path / "results", record("r1", "chimera", 0, cm), cm, extra_files={name: source})
    assert not (tmp_path / "results").exists()  # checked before the run directory is even made


def test_saved_predictions_round_trip_and_the_image_copy_is_small(tmp_path):
    gts = world()
    preds = predictions(gts, 0.3, 0)
    kept = kept_predictions(tmp_path, gts, preds, 2, image_size=(900, 400))
    files, block = prediction_files(kept)
    assert block["n"] == 2 and block["items"][0] == {
        "id": "img000", "image": "predictions/000-img000-image.jpg", "gt": "predictions/000-img000-gt.png",
        "pred": "predictions/000-img000-pred.png"}
    cm = confusion(gts, preds)
    rec = {**record("r1", "chimera", 0, cm), "predictions": block}
    run = load_run(write_run(tmp_path / "results", rec, cm, extra_files=files))
    back = load_predictions(run)
    assert [p.image_id for p in back] == ["img000", "img001"]
    np.testing.assert_array_equal(back[0].gt, gts[0])  # 255 = ignore survives
    np.testing.assert_array_equal(back[1].pred, preds[1])
    assert back[0].image.shape == (228, 512, 3)  # longer side <= 512, aspect kept
    with Image.open(run.path / block["items"][0]["pred"]) as im:
        assert im.mode == "L"
    (run.path / block["items"][1]["gt"]).unlink()
    with pytest.raises(RecordError, match=r"001-img001-gt\.png \(predictions\.items\[1\]\.gt\): cannot read it"):
        load_predictions(run)


def test_plot_all_kinds_writes_pngs_and_notes_what_a_record_lacks(runs, tmp_path, capsys):
    rc, out, err = run_cli(capsys, "plot", *(str(p) for p in runs.values()), "--out", str(tmp_path / "pics"))
    assert rc == 0, err
    paths = out.split()
    names = sorted(p.split("/")[-1] for p in paths)
    assert names == ["curves-chimera-20261202-000001-aaaaaa.png", "curves-chimera-20261202-000002-aaaaaa.png",
                     "curves-seen-only-20261202-000003-aaaaaa.png", "overlays-chimera-20261202-000001-aaaaaa.png",
                     "per-class-synth-15-5.png"]
    for p in paths:
        with Image.open(p) as im:
            assert im.format == "PNG" and len(np.unique(np.asarray(im.convert("RGB")).reshape(-1, 3), axis=0)) > 20
    assert "no training curves (metrics.json) in this record" in err  # seen-only seed 1 has none: a note
    assert "saved no predictions" in err and "--save-predictions N" in err
    assert not list((tmp_path / "pics").glob(".*"))  # atomic writes leave no temporaries


def test_plot_by_run_id_one_kind_and_nothing_drawn_is_exit_1(runs, tmp_path, capsys):
    results = str(runs["chimera-0"].parents[3])
    rc, out, err = run_cli(capsys, "plot", "20261202-000001-aaaaaa", "--results", results, "--kind", "overlays",
                           "--n", "2", "--out", str(tmp_path / "o"))
    assert rc == 0 and out.strip().endswith("overlays-chimera-20261202-000001-aaaaaa.png")
    rc, out, err = run_cli(capsys, "plot", str(runs["seen-only-1"]), "--kind", "curves", "--out", str(tmp_path / "c"))
    assert rc == 1 and out == "" and "no training curves" in err and "Traceback" not in err
    rc, out, err = run_cli(capsys, "plot", "nope", "--results", results, "--out", str(tmp_path / "x"))
    assert rc == 2 and "no run 'nope'" in err


def test_per_class_bars_colour_unseen_apart(runs):
    from matplotlib.colors import to_hex

    from zss_bench.plots.common import SEEN_COLOUR, UNSEEN_COLOUR
    from zss_bench.plots.per_class import per_class_figure

    fig = per_class_figure([load_run(runs["chimera-0"])])
    bars = [p for p in fig.axes[0].patches if p.get_width() < 1]  # the bars, not the unseen bands
    assert len(bars) == PROTOCOL.num_classes
    colours = [to_hex(b.get_facecolor()) for b in bars]
    assert {colours[i] for i in PROTOCOL.unseen_ids} == {UNSEEN_COLOUR}
    assert {colours[i] for i in PROTOCOL.seen_ids} == {SEEN_COLOUR}
    ticks = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert ticks[PROTOCOL.class_index("red star")] == "red star*" and ticks[0] == "red circle"
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend == ["seen", "unseen"] and fig.axes[0].get_title().endswith("\nchimera [default] seed 0")
    group = per_class_figure([load_run(p) for p in runs.values()])
    legend = [t.get_text() for t in group.legends[0].get_texts()]
    assert legend[:2] == ["chimera [default] seed 0", "chimera [default] seed 1"] and legend[-1] == "unseen class"


def test_bad_record_contents_give_errors_naming_the_file(runs, tmp_path):
    from zss_bench.plots.curves import curves_figure
    from zss_bench.plots.overlays import overlays_figure
    from zss_bench.plots.per_class import per_class_figure

    run = load_run(runs["chimera-0"])
    (run.path / "metrics.json").write_text('{"iteration": 0, "total_loss": 1.0}\nnot json\n')
    with pytest.raises(PlotInputError, match=r"metrics\.json:2: not a JSON line"):
        curves_figure(run)
    pred = run.path / run.record["predictions"]["items"][0]["pred"]
    Image.fromarray(np.full((32, 32), 42, np.uint8), mode="L").save(pred)
    with pytest.raises(PlotInputError, match=r"predictions\.items\[0\]\.pred holds ids \[42\]"):
        overlays_figure(run)
    rec = json.loads((run.path / "record.json").read_text())
    rec["metrics"]["per_class"]["purple hexagon"] = 12.0
    (run.path / "record.json").write_text(json.dumps(rec))
    with pytest.raises(PlotInputError, match=r"record\.json: metrics\.per_class names \['purple hexagon'\]"):
        per_class_figure([load_run(run.path)])
    other = dict(rec, protocol={**rec["protocol"], "name": "voc-15-5"}, run_id="r-voc")
    voc = load_run(write_run(tmp_path / "r2", other))
    with pytest.raises(PlotInputError, match=r"compare runs of one protocol; these are of \['synth-15-5', 'voc-15-5'\]"):
        per_class_figure([load_run(runs["chimera-1"]), voc])
