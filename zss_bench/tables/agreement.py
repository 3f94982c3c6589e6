"""Rank agreement of the harness with a published benchmark: Kendall τ-b and Spearman ρ between the harness's
rows of one protocol (e.g. synth-15-5) and the published rows of a reference protocol (e.g. voc-15-5), over
the systems both have, with the pairs they order differently.

Why: a cheap protocol is worth running only if it orders methods as the real one does; this puts a number on
that, from committed records and the registry of published results only, and says so when there are too few
systems in common for a number to mean anything.

A system is (method plugin name, config label): a registry entry's ``variant`` is the harness's config label,
no variant is the ``default`` config. Published values are inductive entries only (fractions in percent, h =
2SU/(S+U) where only S and U are printed, several entries of one system averaged); harness values are the
leaderboard's means over seeds (harness-trained and training-free rows; imported weights are not the harness's
ranking). The statistics are scipy's, never re-implemented here.
"""
from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from itertools import combinations

import pandas as pd
from scipy.stats import kendalltau, rankdata, spearmanr
from tabulate import tabulate

from zss_bench.reported import RegistryError, ReportedEntry

METRICS = {"h": ("hIoU", "hIoU_mean"), "S": ("mIoU(S)", "mIoU_seen_mean"), "U": ("mIoU(U)", "mIoU_unseen_mean")}
FORMATS = ("md", "html", "latex", "text")
MIN_SYSTEMS = 3


class AgreementError(RegistryError):
    """A reference the registry cannot serve (unknown protocol, no file for it, no registry): one line."""


@dataclass(frozen=True, order=True)
class System:
    method: str
    label: str = "default"

    def __str__(self) -> str:
        return self.method if self.label == "default" else f"{self.method} [{self.label}]"


@dataclass
class Agreement:
    """The systems in common (harness value, published value, how the latter was derived, ranks: 1 = best),
    τ-b and ρ with their two-sided p (None below :data:`MIN_SYSTEMS`), and the discordant pairs."""

    protocol: str
    reference: str
    metric: str
    rows: list[dict] = field(default_factory=list)
    tau: float | None = None
    tau_p: float | None = None
    rho: float | None = None
    rho_p: float | None = None
    discordant: list[tuple[System, System]] = field(default_factory=list)
    harness_only: list[System] = field(default_factory=list)
    published_only: list[System] = field(default_factory=list)
    left_out: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.rows)


def check_reference(reported, reference: str) -> list[ReportedEntry]:
    """The registry entries of ``reference``; AgreementError if there is no registry (``reported`` is
    ``registry_for_tables``' answer), the name is no protocol, or the registry has no file for it."""
    from zss_bench.protocol import list_protocols
    from zss_bench.registry import UnknownNameError

    if reported is None:
        raise AgreementError(f"--agreement {reference} compares with the registry of published results, which is "
                             "left out (--reported none, or no results/reported in this installation); pass "
                             "--reported DIR")
    registry = reported[0]
    filed = set(registry.files.values())
    if reference not in filed and reference not in list_protocols():
        known = set(list_protocols()) | filed
        raise AgreementError(f"--agreement: {UnknownNameError.for_name('protocol', reference, known)}")
    if reference not in filed:
        raise AgreementError(f"--agreement {reference}: the registry of published results has no file for "
                             f"{reference} (it has {', '.join(sorted(filed)) or 'none'}); nothing to compare with")
    return registry.for_protocol(reference)


def _published(e: ReportedEntry, metric: str) -> tuple[float, str] | None:
    value = e.percent(metric)
    basis = "fraction ×100" if e.unit == "fraction" else "printed"
    if value is None and metric == "h":
        s, u = e.percent("S"), e.percent("U")
        if s is None or u is None:
            return None
        value, basis = (0.0 if s + u == 0 else 2 * s * u / (s + u)), "2SU/(S+U)"
    return None if value is None else (value, basis)


def published_values(entries: list[ReportedEntry], metric: str = "h") -> dict[System, tuple[float, str]]:
    """(value in %, how it was derived) per system, from the inductive entries that print ``metric``."""
    found: dict[System, list[tuple[float, str]]] = {}
    for e in entries:
        got = _published(e, metric) if e.setting == "inductive" else None
        if got is not None:
            found.setdefault(System(e.method, e.variant or "default"), []).append(got)
    return {s: (sum(v for v, _ in vs) / len(vs), vs[0][1] if len(vs) == 1 else f"mean of {len(vs)} entries")
            for s, vs in found.items()}


def harness_values(table: pd.DataFrame, metric: str = "h") -> tuple[dict[System, float], list[str]]:
    """Mean over seeds per system from ``aggregate``'s rows of one protocol, and why systems were left out."""
    column = METRICS[metric][1]
    if "origin" in table:
        table = table[table["origin"] != "imported"]
    values, notes = {}, []
    for (method, config), rows in table.groupby(["method", "config"], sort=True):
        system = System(str(method), str(config))
        if len(rows) > 1:
            notes.append(f"{system} left out: {len(rows)} rows (other CLIP weights, test sets or protocol "
                         "definitions), no single harness value")
        elif pd.isna(rows[column].iloc[0]):
            notes.append(f"{system} left out: no {METRICS[metric][0]} in its records")
        else:
            values[system] = float(rows[column].iloc[0])
    return values, notes


def _stat(x) -> float | None:
    return None if x is None or math.isnan(float(x)) else float(x)


def agreement(table: pd.DataFrame, entries: list[ReportedEntry], protocol: str, reference: str,
              metric: str = "h") -> Agreement:
    """τ-b and ρ of ``table`` (``aggregate``'s rows of ``protocol``) against ``entries`` (the registry's rows
    of ``reference``) on ``metric`` (h, S or U)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; choose one of {', '.join(METRICS)}")
    ours, left_out = harness_values(table, metric)
    theirs = published_values(entries, metric)
    common = sorted(set(ours) & set(theirs))
    result = Agreement(protocol, reference, metric, left_out=left_out,
                       harness_only=sorted(set(ours) - set(theirs)), published_only=sorted(set(theirs) - set(ours)))
    h = [ours[s] for s in common]
    p = [theirs[s][0] for s in common]
    h_rank, p_rank = rankdata([-v for v in h]), rankdata([-v for v in p])
    result.rows = [{"system": s, "harness": h[i], "harness_rank": float(h_rank[i]), "published": p[i],
                    "published_rank": float(p_rank[i]), "basis": theirs[s][1]} for i, s in enumerate(common)]
    result.rows.sort(key=lambda r: (r["published_rank"], r["harness_rank"], r["system"]))
    for a, b in combinations(result.rows, 2):
        if (a["harness"] - b["harness"]) * (a["published"] - b["published"]) < 0:
            first, second = (a, b) if a["harness"] > b["harness"] else (b, a)
            result.discordant.append((first["system"], second["system"]))
    if len(common) >= MIN_SYSTEMS:
        tau, rho = kendalltau(h, p, variant="b"), spearmanr(h, p)
        result.tau, result.tau_p = _stat(tau.statistic), _stat(tau.pvalue)
        result.rho, result.rho_p = _stat(rho.statistic), _stat(rho.pvalue)
    return result


def agreement_sections(table: pd.DataFrame, entries: list[ReportedEntry], protocol: str, reference: str,
                       metric: str = "h", fmt: str = "md") -> str:
    """The rendered agreement of ``protocol``'s rows, one section per protocol definition (version, hash) with
    rows: two versions' rows are never ranked together (a system in both would count as a duplicate)."""
    from zss_bench.tables.leaderboard import newest_first_key

    groups = sorted(table.groupby(["protocol_version", "protocol_hash"], sort=True),
                    key=lambda g: newest_first_key(g[0][0]))  # the newest definition first, as the leaderboard
    sections = []
    for (version, phash), rows in groups:
        title = protocol if len(groups) == 1 else f"{protocol} v{version} ({phash})"
        sections.append(render_agreement(agreement(rows, entries, title, reference, metric=metric), fmt))
    return "\n".join(sections)


# --------------------------------------------------------------------------- rendering


def _num(x: float | None, digits: int = 2) -> str:
    return "undefined (a side is all ties)" if x is None else f"{x:.{digits}f}"


def _rank(r: float) -> str:
    return f"{r:g}"


def summary_line(a: Agreement) -> str:
    """The one line that says it all: n, τ-b and ρ with p, or why they are not computed."""
    head = f"Agreement with {a.reference} (published, inductive; metric {METRICS[a.metric][0]}): "
    if a.n < MIN_SYSTEMS:
        names = f": {', '.join(str(s) for s in sorted((r['system'] for r in a.rows), key=str))}" if a.rows else ""
        return head + f"fewer than {MIN_SYSTEMS} methods in common (n={a.n}{names}); τ and ρ not computed"
    p = (lambda x: "" if x is None else f" (p={x:.3g})")
    return (head + f"n={a.n} methods in common, Kendall τ-b = {_num(a.tau)}{p(a.tau_p)}, "
            f"Spearman ρ = {_num(a.rho)}{p(a.rho_p)}")


def _pairs(a: Agreement) -> list[str]:
    values = {r["system"]: r for r in a.rows}
    return [f"{x} vs {y}: harness {x} > {y} ({values[x]['harness']:.1f} vs {values[y]['harness']:.1f}), "
            f"published {x} < {y} ({values[x]['published']:.2f} vs {values[y]['published']:.2f})"
            for x, y in a.discordant]


def _notes(a: Agreement) -> list[str]:
    notes = [f"Harness: {a.protocol}'s leaderboard means over seeds (imported weights left out); published: the "
             f"inductive entries of the registry's {a.reference} file; a config label matches an entry's variant "
             "(default: no variant). τ-b and ρ: scipy.stats.kendalltau and spearmanr, two-sided p."]
    if a.published_only:
        notes.append(f"Published only ({len(a.published_only)}): {', '.join(map(str, a.published_only))}.")
    if a.harness_only:
        notes.append(f"Harness only: {len(a.harness_only)} systems.")
    return notes + a.left_out


def render_agreement(a: Agreement, fmt: str = "md") -> str:
    """The section after a leaderboard: the summary line, then (n >= 3) the systems in common and the
    disagreeing pairs, then where the numbers come from. ``fmt``: md, html, latex or text (plain, for stderr)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    title = f"{a.protocol}: rank agreement with published {a.reference}"
    computed = a.n >= MIN_SYSTEMS
    headers = ["system", "harness", "harness rank", "published", "published rank", "published from"]
    rows = [[str(r["system"]), f"{r['harness']:.1f}", _rank(r["harness_rank"]), f"{r['published']:.2f}",
             _rank(r["published_rank"]), r["basis"]] for r in a.rows]
    pairs, notes = _pairs(a), _notes(a)
    said = "Disagreeing pairs:" if pairs else "Disagreeing pairs: none"
    if fmt == "html":
        esc = html.escape
        out = f"<h4>{esc(title)}</h4>\n<p>{esc(summary_line(a))}</p>\n"
        if computed:
            out += tabulate(rows, headers=headers, tablefmt="html", disable_numparse=True) + "\n"
            out += f"<p>{esc(said)}</p>\n" + ("<ul>" + "".join(f"<li>{esc(p)}</li>" for p in pairs) + "</ul>\n"
                                                if pairs else "")
        return out + "".join(f'<p class="note">{esc(n)}</p>\n' for n in notes)
    if fmt == "latex":
        out = f"% {title}\n% {summary_line(a)}\n"
        if computed:
            out += tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True) + "\n"
            out += "".join(f"% {line}\n" for line in [said, *pairs])
        return out + "".join(f"% {n}\n" for n in notes)
    if fmt == "text":
        out = f"{title}\n{summary_line(a)}\n"
        if computed:
            out += tabulate(rows, headers=headers, tablefmt="simple", disable_numparse=True) + "\n"
            out += "".join(f"{line}\n" for line in [said, *("  " + p for p in pairs)])
        return out + "".join(f"{n}\n" for n in notes)
    out = f"### {title}\n\n{summary_line(a)}\n"
    if computed:
        out += "\n" + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n"
        out += f"\n{said}\n" + ("\n" + "".join(f"- {p}\n" for p in pairs) if pairs else "")
    return out + "".join(f"\n{n}\n" for n in notes)
