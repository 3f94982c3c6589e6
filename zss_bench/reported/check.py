"""``zss-bench reported --check``: what in a registry contradicts itself or cannot be traced to a source.

It never edits a printed number; it says which entry is suspect and why, one finding per line:

- **h against S and U.** A printed S of ``91.9`` stands for any value in [91.85, 91.95]. h = 2SU/(S+U)
  rises with S and with U, so the true h lies between its values at the two corners of that box, and a
  correctly rounded printed h lies within half its own last digit of that range. Outside it, the printed
  S, U and h cannot all be right (a typo, or an h computed from other S and U, or a different mean). When
  the source itself prints such a row, the entry keeps it as printed and says so in ``acknowledged``: the
  flag stays on every table, and ``--check`` no longer fails on it.
- **Sources**: an entry without one; one without a URL; a GitHub README without the commit it was read at.
- **Names**: a file whose protocol is unknown or disagrees with its file name; a setting other than
  inductive or transductive; a method spelled like a harness plugin but not as its name (``ZegCLIP`` for
  ``zegclip``), which would keep its row from ever being compared with the harness's runs.
- **Duplicates**: the same printed row entered twice (same method, setting and descriptors from one
  source, or the same numbers from one source).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from zss_bench.reported.registry import SETTINGS, Printed, Registry, ReportedEntry

__all__ = ["Finding", "check_registry", "h_range", "h_consistent"]

_URL = re.compile(r"https?://\S+")
_COMMIT = re.compile(r"\b[0-9a-f]{40}\b")


@dataclass(frozen=True)
class Finding:
    """One problem: where (file, entry) and what. ``acknowledged``: a printed h that contradicts its S and U
    in the source itself, entered as printed with the entry's ``acknowledged`` note saying so: still shown
    on every table, but not a registry error (``--check`` does not fail on it)."""

    where: str
    message: str
    entry: ReportedEntry | None = None
    acknowledged: bool = False

    def __str__(self) -> str:
        tail = f" (acknowledged: {self.entry.acknowledged})" if self.acknowledged and self.entry else ""
        return f"{self.where}: {self.message}{tail}"


def _h(s: float, u: float) -> float:
    return 0.0 if s + u <= 0 else 2 * s * u / (s + u)


def h_range(s: Printed, u: Printed) -> tuple[float, float]:
    """The range of h = 2SU/(S+U) over every S and U that round to the printed ones."""
    lo_s, hi_s = max(0.0, s - s.half_unit), min(100.0, s + s.half_unit)
    lo_u, hi_u = max(0.0, u - u.half_unit), min(100.0, u + u.half_unit)
    return _h(lo_s, lo_u), _h(hi_s, hi_u)


def h_consistent(s: Printed | None, u: Printed | None, h: Printed | None) -> tuple[bool, str]:
    """(whether the printed h can be 2SU/(S+U) of the printed S and U up to rounding, the range that allows);
    true when any of the three is not printed (nothing to check)."""
    if s is None or u is None or h is None:
        return True, ""
    lo, hi = h_range(s, u)
    allowed = (lo - h.half_unit - 1e-9, hi + h.half_unit + 1e-9)
    span = f"[{lo:.{h.decimals + 2}f}, {hi:.{h.decimals + 2}f}]"
    return allowed[0] <= h <= allowed[1], span


def _source_findings(e: ReportedEntry) -> list[str]:
    if not e.source:
        return ["no source: every number needs the paper or README it was printed in (URL and table)"]
    out = []
    urls = _URL.findall(e.source)
    if not urls:
        out.append(f"source '{e.source}' names no URL (the paper's or the official repository's)")
    elif any("github.com" in u for u in urls) and not _COMMIT.search(e.source):
        out.append("source is a GitHub page without the 40-hex commit it was read at (a README changes; "
                   "cite https://github.com/OWNER/REPO/blob/COMMIT/README.md)")
    return out


def _plugin_names() -> list[str]:
    from zss_bench.plugins import list_methods

    return list_methods()


def check_registry(registry: Registry, protocols: list[str] | None = None,
                   methods: list[str] | None = None) -> list[Finding]:
    """Every finding, in file and entry order. ``protocols`` / ``methods``: the known names (default: the
    installed protocols and method plugins)."""
    if protocols is None:
        from zss_bench.protocol import list_protocols

        protocols = list_protocols()
    methods = _plugin_names() if methods is None else methods
    by_folded = {m.casefold(): m for m in methods}
    findings: list[Finding] = []
    from zss_bench.registry import suggest

    for file, protocol in registry.files.items():
        if protocol not in protocols:
            hint = suggest(protocol, protocols, n=1)
            findings.append(Finding(file, f"unknown protocol '{protocol}'"
                                          + (f" (did you mean '{hint[0]}'?)" if hint else "")
                                          + f"; known: {', '.join(protocols)}"))
        elif Path(file).stem != protocol:
            findings.append(Finding(file, f"declares protocol '{protocol}' but is named {Path(file).name} "
                                          f"(expected {protocol}.yaml)"))
    seen_rows: dict[tuple, ReportedEntry] = {}
    seen_numbers: dict[tuple, ReportedEntry] = {}
    for e in registry.entries:
        messages = _source_findings(e)
        if e.setting not in SETTINGS:
            hint = suggest(e.setting, SETTINGS, n=1)
            messages.append(f"unknown setting '{e.setting}'" + (f" (did you mean '{hint[0]}'?)" if hint else "")
                            + f"; expected one of {', '.join(SETTINGS)}")
        if e.method not in methods and e.method.casefold() in by_folded:
            messages.append(f"method '{e.method}' is the harness plugin '{by_folded[e.method.casefold()]}': "
                            "use the plugin's name so the harness's runs are compared with this row")
        ok, span = h_consistent(e.S, e.U, e.h)
        h_message = None
        if not ok:
            h_message = (f"printed h {e.h.text} contradicts printed S {e.S.text} and U {e.U.text}: 2SU/(S+U) over "
                         f"the values that round to them lies in {span}, so a correctly rounded h is within "
                         f"±{e.h.half_unit:g} of that")
        elif e.acknowledged:
            messages.append("'acknowledged' is for a printed h that contradicts its S and U; this one does not")
        row = (e.protocol, e.method, e.variant, e.setting, e.backbone, e.clip, e.crop, e.schedule, e.source)
        numbers = (e.protocol, e.method, e.variant, e.source,
                   *(None if x is None else x.text for x in (e.S, e.U, e.h)))
        for key, seen, what in ((row, seen_rows, "the same method, setting and descriptors from the same source"),
                                (numbers, seen_numbers, "the same numbers from the same source")):
            if key in seen and e.source:
                first = seen[key]
                messages.append(f"duplicate of {first.where}: {what}")
                break
            seen.setdefault(key, e)
        findings += [Finding(e.where, m, e) for m in messages]
        if h_message:
            findings.append(Finding(e.where, h_message, e, acknowledged=bool(e.acknowledged)))
    return findings
