"""Class text embeddings: cold (cache empty, text tower runs) vs warm (served from disk).

Run: ``PYTHONPATH=. .venv/bin/python -m pytest benchmarks/test_bench_text_cache.py --benchmark-only``

Workload: the synth-15-5 class names (20) x a 10-template ensemble = 200 prompts through the
``zss-toy-vit`` text tower (seeded random weights: the cost does not depend on their values).
"""
from __future__ import annotations

import shutil

import pytest

from zss_bench.cache import cache_path
from zss_bench.clip import class_text_embeddings, load_clip
from zss_bench.protocol import load_protocol

TEMPLATES = [
    "a photo of a {}.",
    "a {} shape.",
    "a drawing of a {}.",
    "a rendering of a {}.",
    "a simple {} on a plain background.",
    "a picture of a {}.",
    "an image of a {}.",
    "a small {}.",
    "a large {}.",
    "there is a {} in the scene.",
]


@pytest.fixture(scope="module")
def workload():
    clip = load_clip("zss-toy-vit:random")
    names = list(load_protocol("synth-15-5").classes)
    assert len(names) == 20 and len(TEMPLATES) == 10
    return clip, names


def _clear():
    shutil.rmtree(cache_path("text-embeddings"), ignore_errors=True)


def test_cold(benchmark, workload):
    clip, names = workload
    benchmark.group = "text embeddings 20 classes x 10 templates"
    benchmark.pedantic(class_text_embeddings, args=(clip, names, TEMPLATES), setup=_clear,
                       rounds=10, iterations=1, warmup_rounds=1)


def test_warm(benchmark, workload):
    clip, names = workload
    benchmark.group = "text embeddings 20 classes x 10 templates"
    _clear()
    class_text_embeddings(clip, names, TEMPLATES)  # fill the cache once
    benchmark(class_text_embeddings, clip, names, TEMPLATES)
