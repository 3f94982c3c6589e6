"""Published results, checked: the registry of what each method reported under each protocol
(``results/reported/``), loaded strictly (:mod:`.registry`) and audited (:mod:`.check`)."""

from zss_bench.reported.check import Finding, check_registry, h_range
from zss_bench.reported.registry import (Printed, Registry, RegistryError, ReportedEntry, default_registry_dir,
                                         load_registry, load_registry_file)

__all__ = ["Finding", "Printed", "Registry", "RegistryError", "ReportedEntry", "check_registry",
           "default_registry_dir", "h_range", "load_registry", "load_registry_file"]
