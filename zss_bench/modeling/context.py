"""What a model may know about its run, read from the config alone (detectron2 builds models from
``cfg``): the protocol *object* (from the file the run loaded, so a user's own ``my.yaml`` works,
checked against the hash the run resolved) and the seen class names of the training view."""
from __future__ import annotations

from zss_bench.protocol import Protocol, load_protocol


def run_protocol(cfg) -> Protocol:
    """The run's protocol: ``ZSS.PROTOCOL_FILE`` (set by ``build_run_config``), else the shipped name."""
    protocol = load_protocol(cfg.ZSS.PROTOCOL_FILE or cfg.ZSS.PROTOCOL)
    if cfg.ZSS.PROTOCOL_HASH and protocol.content_hash != cfg.ZSS.PROTOCOL_HASH:
        raise ValueError(f"protocol file {cfg.ZSS.PROTOCOL_FILE or cfg.ZSS.PROTOCOL} changed during the run: hash "
                         f"{protocol.content_hash[:12]}, the run resolved {cfg.ZSS.PROTOCOL_HASH[:12]}")
    return protocol


def seen_class_names(cfg) -> list[str]:
    """Training sees only what the training dataset exposes: the seen class names, in label order."""
    from detectron2.data import MetadataCatalog

    return list(MetadataCatalog.get(cfg.DATASETS.TRAIN[0]).stuff_classes)
