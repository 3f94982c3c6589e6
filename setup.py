"""Packages are found, not listed: ``zss_bench`` and its subpackages, plus the top-level ``protocols/`` (data)
and ``methods/`` (plugins) folders installed under the ``zss_bench.`` namespace, so that no bare top-level
``protocols``/``methods`` module lands in site-packages. Everything else is in pyproject.toml."""
from setuptools import find_packages, setup

PACKAGE_DIR = {"zss_bench": "zss_bench", "zss_bench.protocols": "protocols", "zss_bench.methods": "methods"}
PACKAGES = (find_packages(include=["zss_bench", "zss_bench.*"]) + ["zss_bench.protocols", "zss_bench.methods"]
            + [f"zss_bench.methods.{name}" for name in find_packages("methods")])

setup(package_dir=PACKAGE_DIR, packages=PACKAGES)
