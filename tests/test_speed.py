"""``zss-bench speed`` on the CPU at a tiny size: a real configuration (R-101 DeepLab, ViT-B/16 with random
weights) trains and evaluates in fp32 and bf16 through the run's own step and inference path, and the table,
the JSON and the environment block say what was measured. No figure is asserted (benchmarks measure)."""
from __future__ import annotations

import json
import math

from conftest import run_cli


def test_speed_measures_a_real_configuration_in_both_precisions(tmp_path, capsys):
    out = tmp_path / "speed.json"
    rc, stdout, err = run_cli(capsys, "speed", "--method", "seen-only", "--device", "cpu", "--size", "64",
                              "--steps", "1", "--warmup", "0", "--eval-images", "1", "--out", str(out))
    assert rc == 0, err
    result = json.loads(out.read_text())
    env = result["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["cuda"] is None and "AVX" in str(env["cpu_capability"])
    rows = result["rows"]
    assert [(r["method"], r["precision"]) for r in rows] == [("seen-only", "fp32"), ("seen-only", "bf16")]
    for r in rows:
        assert "error" not in r, r
        assert r["batch"] == 2 and r["config_file"] == "default.yaml" and r["crop"] == 64
        assert r["schedule"] == "20000 x 16"  # the real config's schedule, whatever batch was measured
        for key in ("train_img_s", "eval_img_s", "train_peak_mb", "eval_peak_mb", "schedule_hours", "final_loss"):
            assert isinstance(r[key], (int, float)) and math.isfinite(r[key]) and r[key] > 0, (key, r[key])
        assert r["params_total"] == r["params_trainable"] > 40e6  # ResNet-101 DeepLab, nothing frozen
        assert r["eval_image"] == [64, 85] and r["windows_per_image"] >= 1
    assert "| seen-only | fp32" in stdout.replace("  ", " ") or "seen-only" in stdout
    assert "train img/s" in stdout and "torch " in stdout.splitlines()[0]


def test_speed_reports_a_failing_method_as_its_row(tmp_path, capsys):
    rc, stdout, err = run_cli(capsys, "speed", "--method", "seen-only", "--device", "cpu", "--size", "64",
                              "--steps", "1", "--warmup", "0", "--eval-images", "1", "--amp", "off", "--json",
                              "MODEL.RESNETS.DEPTH", "7")  # accepted by the config, refused by the model builder
    result = json.loads(stdout)
    assert rc == 1 and len(result["rows"]) == 1 and "error" in result["rows"][0]


def test_speed_unknown_method_is_one_line(capsys):
    rc, out, err = run_cli(capsys, "speed", "--method", "chimeraa", "--device", "cpu")
    assert rc == 2 and "chimera" in err and len(err.strip().splitlines()) == 1
