"""The built wheel: everything under zss_bench., data files included, no bare top-level modules."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_maps_protocols_and_methods_under_zss_bench(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    wheel = next(tmp_path.glob("zss_bench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names}
    assert "protocols" not in tops and "methods" not in tops
    # packages are found, not listed: every subpackage of the tree is in the wheel
    found = {p.parent.relative_to(REPO).as_posix() for p in (REPO / "zss_bench").rglob("__init__.py")}
    found |= {"zss_bench/methods/" + p.parent.name for p in (REPO / "methods").glob("*/__init__.py")}
    missing = sorted(pkg for pkg in found if f"{pkg}/__init__.py" not in names)
    assert not missing, f"subpackages missing from the wheel: {missing}"
    assert {n for n in names if n.startswith("zss_bench/protocols/") and n.endswith(".yaml")} == {
        f"zss_bench/protocols/{p.name}" for p in (REPO / "protocols").glob("*.yaml")}
    assert "zss_bench/methods/__init__.py" in names
    assert "zss_bench/methods/_base/body-synth.yaml" in names
    assert "zss_bench/methods/seen_only/configs/synth.yaml" in names
    assert "zss_bench/methods/chimera/configs/synth.yaml" in names
    assert not [n for n in names if n.startswith("zss_bench/methods/") and n.endswith("configs/synth-15-5.yaml")]
    # the shipped synth-15-5 teacher travels with the wheel: no training, no download
    assert "zss_bench/clip/weights/tags.json" in names
    assert "zss_bench/clip/weights/zss-toy-vit-synth-v1.pt" in names
