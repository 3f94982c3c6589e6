"""Which CLIP a run uses: the ``--clip`` spec, or the protocol's default. The frozen teacher is in
``teacher.py``, the text classifiers in ``text.py``."""
from __future__ import annotations

from zss_bench.clip import LoadedClip, load_clip
from zss_bench.protocol import Protocol

REAL_DEFAULT = "ViT-B-16:openai"


def resolve_clip_spec(spec: str, protocol: Protocol) -> str:
    """'' -> the protocol's default CLIP: for synth its world's shipped teacher (``world.teacher``:
    ``zss-toy-vit:synth-v1`` for v1, the same weights on every machine), ViT-B/16 (OpenAI weights)
    otherwise."""
    if spec:
        return spec
    return protocol.world["teacher"] if protocol.dataset == "synth" else REAL_DEFAULT


def load_run_clip(spec: str, protocol: Protocol, device) -> LoadedClip:
    return load_clip(resolve_clip_spec(spec, protocol), device=str(device))
