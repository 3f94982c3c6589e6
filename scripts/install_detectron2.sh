#!/usr/bin/env bash
# Install detectron2 into the given Python environment, the way these machines allow.
#
# detectron2 is not on PyPI. If a full detectron2 (with its compiled `detectron2._C`) is
# already importable, it is left untouched. Otherwise the only installable source is the
# `pb1-detectron2==0.6` sdist, which ships without the C++ sources: we install its Python
# package with `ext_modules` emptied. The missing `_C` ops (deformable conv, rotated boxes,
# COCO fast-eval) are never used by zss-bench; `zss_bench/detectron2_compat.py` stands in
# for `detectron2._C` with an error that names the op.
#
# Usage: scripts/install_detectron2.sh [PYTHON]   (default: .venv/bin/python)
set -euo pipefail
PY="${1:-.venv/bin/python}"
D2_VERSION="0.6"
CACHE="${ZSS_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zss-bench}/detectron2-src"

have_d2() {
    "$PY" - <<'PY'
import importlib.util, sys
spec = importlib.util.find_spec("detectron2")
if spec is None:
    sys.exit(1)
import detectron2
full = importlib.util.find_spec("detectron2._C") is not None
print(f"detectron2 {detectron2.__version__} already installed ({'full build' if full else 'pure-Python build'})")
PY
}

if have_d2; then
    exit 0
fi

# pip >= 26 refuses the sdist (a direct-URL extra in its metadata); 23-25 accept it.
pip_major=$("$PY" -c 'import pip; print(int(pip.__version__.split(".")[0]))')
if [ "$pip_major" -ge 26 ]; then
    echo "pip $pip_major refuses pb1-detectron2; installing pip<26 into this environment"
    "$PY" -m pip install --quiet 'pip>=23,<26'
fi

mkdir -p "$CACHE"
sdist="$CACHE/pb1-detectron2-$D2_VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
    echo "downloading the pb1-detectron2==$D2_VERSION sdist into $CACHE"
    "$PY" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: \
        "pb1-detectron2==$D2_VERSION" -d "$CACHE"
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar xzf "$sdist" -C "$work"
src="$work/pb1-detectron2-$D2_VERSION"
# Build no C++/CUDA extension: the sdist has no C++ sources to build from.
sed -i 's/ext_modules=get_extensions(),/ext_modules=[],/' "$src/setup.py"
grep -q 'ext_modules=\[\],' "$src/setup.py" || { echo "could not patch $src/setup.py" >&2; exit 1; }
echo "installing detectron2 $D2_VERSION (pure Python, no _C extension)"
# --no-build-isolation builds with this environment's setuptools: before 70.1 it needs the wheel package
"$PY" -c 'import setuptools, sys; sys.exit(int(setuptools.__version__.split(".")[0]) < 71)' 2>/dev/null \
    || "$PY" -c 'import wheel' 2>/dev/null || "$PY" -m pip install --quiet wheel
"$PY" -m pip install --quiet --no-build-isolation "$src"
have_d2
