"""Test-time cost per image of Chimera-Seg and the ZegFormer-style baseline, side by side in one run.

ZegFormer pays one CLIP image-encoder forward per query region at test time; Chimera-Seg one partial
CLIP pass per window (issue #13's goal: Chimera-Seg at least 3x faster per image). Both methods are
measured by ``benchmarks/real_config.py --mode eval`` in their own processes, one after the other, at
the same image size and CLIP: on synth-15-5's configuration (64 px, the shipped toy CLIP) and on the
real one (R-101, ``ViT-B-16:random``, one 512 window). The ratio is reported whichever way it falls
(``extra_info`` and the terminal); nothing here asserts a speed.

    make bench PYTEST_ARGS="-k method_speed -s"
"""
from __future__ import annotations

import pytest

from test_bench_real_config import SIZE, _positive, _run_script

SETTINGS = {"synth-15-5": ("--protocol", "synth-15-5"), "voc-15-5": ("--protocol", "voc-15-5", "--size", str(SIZE))}


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_chimera_vs_zegformer_test_time_per_image(setting, benchmark, capsys):
    extra = SETTINGS[setting]

    def both():
        return {m: _run_script(m, "eval", *extra) for m in ("chimera", "zegformer")}

    res = benchmark.pedantic(both, rounds=1, iterations=1)
    seconds = {m: r["seconds_per_window"] * r.get("windows_per_image", 1) for m, r in res.items()}
    assert all(_positive(v) for v in seconds.values()), seconds
    assert res["chimera"]["size"] == res["zegformer"]["size"] and res["chimera"]["clip"] == res["zegformer"]["clip"]
    ratio = seconds["zegformer"] / seconds["chimera"]
    benchmark.group = "test time per image: chimera vs zegformer"
    benchmark.extra_info.update({f"{m}_s_per_image": round(v, 4) for m, v in seconds.items()})
    benchmark.extra_info.update({"zegformer_over_chimera": round(ratio, 2), "setting": setting,
                                 "peak_rss_mb": {m: r["peak_rss_mb"] for m, r in res.items()}})
    with capsys.disabled():
        print(f"\n[{setting}] chimera {seconds['chimera']:.4f} s/image, zegformer {seconds['zegformer']:.4f} s/image: "
              f"Chimera-Seg is {ratio:.2f}x {'faster' if ratio >= 1 else 'slower'} per image")
