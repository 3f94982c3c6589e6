"""CLIP access for zss-bench: loading by spec, cached class text embeddings, partial ViT access
and a toy CLIP pretrained offline on the synthetic world.

Importing this package registers zss-bench's open_clip model configs (``zss-toy-vit``,
``zss-micro-vit``) so they resolve like any open_clip model name.
"""
from __future__ import annotations

from zss_bench.extras import require

require("train", "torch", "open_clip", what="zss_bench.clip")

from zss_bench.clip.loading import (
    ClipLoadError,
    LoadedClip,
    load_clip,
    register_model_configs,
)
from zss_bench.clip.partial import PartialViT
from zss_bench.clip.text_embeddings import TextEncoderAudit, class_text_embeddings, text_encoder_audit

register_model_configs()

__all__ = [
    "ClipLoadError",
    "LoadedClip",
    "PartialViT",
    "TextEncoderAudit",
    "class_text_embeddings",
    "load_clip",
    "register_model_configs",
    "text_encoder_audit",
]
