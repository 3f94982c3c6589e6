"""The run record of predictions made elsewhere (kind ``evaluate``, origin: imported): one builder for
``zss-bench evaluate --out`` and the framework metrics (mmengine's ``ZSSIoUMetric``), so a record reads the
same in the tables whichever door the predictions came in by."""
from __future__ import annotations

import hashlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path


def config_hash(config: dict) -> str:
    """sha256 of a JSON-normalised config dict (keys sorted)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def imported_record(protocol, *, method: str, label: str, source: str, inputs: dict, dataset: dict, metrics: dict,
                    seed: int | None, n_boot: int, started: float) -> dict:
    """A kind-``evaluate`` record of ``metrics`` on ``protocol``; ``source`` says which door (prediction PNGs,
    an mmengine metric), ``started`` is the ``time.time()`` when scoring began."""
    from zss_bench.protocol import protocols_dir
    from zss_bench.records import collect_provenance
    from zss_bench.records.paths import portable_path

    config = {"source": source, "label": label}
    block = {"name": protocol.name, "version": protocol.version, "hash": protocol.content_hash}
    path = getattr(protocol, "path", None)
    if path is not None and Path(path).parent.resolve() != protocols_dir().resolve():
        block["file"] = portable_path(str(path))  # a user's YAML: the checker finds the definition by it
    return {
        "kind": "evaluate",
        "protocol": block,
        "method": {"name": method, "label": label, "config": config, "config_hash": config_hash(config)},
        "inputs": inputs,
        "dataset": dataset,
        "metrics": metrics,
        "provenance": collect_provenance(
            seed=seed, bootstrap={"n_boot": n_boot, "seed": 0 if seed is None else seed},
            started=datetime.fromtimestamp(started, timezone.utc).isoformat(timespec="seconds"),
            duration_s=round(time.time() - started, 3)),
    }
