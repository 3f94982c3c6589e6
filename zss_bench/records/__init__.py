"""Record stage: schema-versioned run records written atomically under ``results/``."""

from zss_bench.records.provenance import collect_provenance
from zss_bench.records.store import (
    RECORD_FILE,
    SCHEMA,
    SCHEMA_VERSION,
    LoadedRun,
    RecordError,
    atomic_write_text,
    iter_runs,
    load_run,
    resolve_run,
    write_run,
)

__all__ = [
    "RECORD_FILE",
    "SCHEMA",
    "SCHEMA_VERSION",
    "LoadedRun",
    "RecordError",
    "atomic_write_text",
    "collect_provenance",
    "iter_runs",
    "load_run",
    "resolve_run",
    "write_run",
]
