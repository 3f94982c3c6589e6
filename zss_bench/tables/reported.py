"""Published numbers beside the harness's: the "Reported (published; not run here)" table of a protocol,
and the reproduced − reported table where the harness has rows of a method that also reported one.

The reported table prints each registry entry exactly as its source did (:class:`~zss_bench.reported.Printed`
text, never re-rounded) with the source named, and never joins a mean: published rows differ from the
harness's in body, schedule, seeds and often in the evaluator. ``--check``'s findings are shown on the
rows they concern.

Reproduced − reported pairs a harness row (method, config, weights origin, CLIP, test set) with every
inductive entry of the same method whose ``variant`` is the row's config label (no variant: the
``default`` config). Its cells are the harness's mean over seeds minus the printed value, with a 95 %
interval: the bootstrap interval of that mean over the test images (``bootstrap_ci_seeds``) minus the
printed number. The printed number's own rounding (half its last digit) is not in the interval. A run
scored on fewer images than the protocol's test split is a smoke run, and the row says so.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd
from tabulate import tabulate

from zss_bench.reported import Finding, ReportedEntry

FORMATS = ("md", "latex", "csv", "json", "html")
REPORTED_TITLE = "Reported (published; not run here)"
_SETTING_ORDER = {"inductive": 0, "transductive": 1}
_HEADERS = ["method", "paper", "setting", "backbone", "CLIP", "crop", "schedule", "S", "U", "h", "source", "notes",
            "check"]


_NOTES_CUT = 200
_URL = re.compile(r"https?://[^\s,;)'\"]+")


def _printed(x) -> str:
    return "–" if x is None else x.text


def _short_url(url: str) -> str:
    """A link's text: ``owner/repo@abc1234`` for a GitHub file at a commit, ``arXiv 2112.01071v3``, else the host."""
    gh = re.match(r"https?://github\.com/([^/]+/[^/]+)/blob/([0-9a-f]{7})[0-9a-f]*/(.+)", url)
    if gh:
        return f"{gh.group(1)}@{gh.group(2)}/{gh.group(3)}"
    arxiv = re.match(r"https?://(?:www\.)?(?:arxiv\.org|ar5iv\.labs\.arxiv\.org)/(?:abs|html|pdf)/([^\s#?]+)", url)
    if arxiv:
        return f"arXiv {arxiv.group(1)}"
    return re.sub(r"^https?://(www\.)?", "", url).split("/")[0]


def _source_cell(source: str | None, fmt: str) -> str:
    """The source with each URL as a short link (md) or its short name (html, latex: the URL is in csv/json)."""
    if not source:
        return "(none)"
    if fmt == "md":
        return _URL.sub(lambda m: f"[{_short_url(m.group(0))}]({m.group(0)})", source).replace("|", "\\|")
    return _URL.sub(lambda m: _short_url(m.group(0)), source)


def _notes_cell(notes: str | None) -> str:
    if not notes or len(notes) <= _NOTES_CUT:
        return (notes or "").replace("|", "\\|")
    return notes[:_NOTES_CUT].rsplit(" ", 1)[0].replace("|", "\\|") + " …"


def _ordered(entries: list[ReportedEntry]) -> list[ReportedEntry]:
    return sorted(entries, key=lambda e: (_SETTING_ORDER.get(e.setting, 2), e.year, e.method.casefold(),
                                          e.variant or "", e.file, e.index))


def entry_dict(e: ReportedEntry, flags: list[str]) -> dict:
    """An entry as plain data (numbers as floats, and as printed), with its findings."""
    printed = {k: getattr(e, k).text for k in ("S", "U", "h", "pAcc") if getattr(e, k) is not None}
    return {"protocol": e.protocol, "method": e.method, "variant": e.variant, "paper": e.paper, "venue": e.venue,
            "year": e.year, "setting": e.setting, "backbone": e.backbone, "clip": e.clip, "crop": e.crop,
            "schedule": e.schedule, **{k: None if getattr(e, k) is None else float(getattr(e, k))
                                       for k in ("S", "U", "h", "pAcc")},
            "unit": e.unit, "printed": printed, "source": e.source, "notes": e.notes,
            "acknowledged": e.acknowledged, "file": e.file, "entry": e.index, "flags": flags}


def render_reported(entries: list[ReportedEntry], findings: list[Finding], fmt: str = "md",
                    title: str | None = None) -> str:
    """The entries of one protocol as a table (flagged rows marked ⚠ and their findings listed below it).
    ``csv`` and ``json`` carry every field; ``title`` heads the md/html/latex table."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    entries = _ordered(entries)
    flags: dict[tuple, list[str]] = {}
    for f in findings:
        if f.entry is not None:
            text = f.message + (f" (acknowledged: {f.entry.acknowledged})" if f.acknowledged else "")
            flags.setdefault((f.entry.file, f.entry.index), []).append(text)
    flags_of = [flags.get((e.file, e.index), []) for e in entries]
    if fmt == "json":
        return json.dumps([entry_dict(e, fl) for e, fl in zip(entries, flags_of)], indent=2, ensure_ascii=False) + "\n"
    if fmt == "csv":
        frame = pd.DataFrame([{**entry_dict(e, fl), "printed": None, "flags": " | ".join(fl)}
                              for e, fl in zip(entries, flags_of)]).drop(columns="printed")
        for k in ("S", "U", "h", "pAcc"):  # as printed: 40.20 stays 40.20
            frame[k] = [_printed(getattr(e, k)).replace("–", "") for e in entries]
        return frame.to_csv(index=False)
    rows, listed = [], []
    for e, fl in zip(entries, flags_of):
        mark = "ok"
        if fl:
            listed += [f"⚠{len(listed) + 1 + i} {e.where}: {m}" for i, m in enumerate(fl)]
            mark = "⚠" + ",".join(str(len(listed) - len(fl) + 1 + i) for i in range(len(fl)))
        frac = "†" if e.unit == "fraction" else ""
        rows.append([e.label, f"{e.paper} ({e.venue} {e.year})", e.setting, e.backbone or "–", e.clip or "–",
                     e.crop or "–", e.schedule or "–", _printed(e.S) + frac, _printed(e.U) + frac, _printed(e.h) + frac,
                     _source_cell(e.source, fmt), _notes_cell(e.notes), mark])
    notes = ["Numbers exactly as printed in the source named on each row (– : the source prints none); never "
             "averaged with the harness's rows. `check`: zss-bench reported --check (h against S and U up to "
             "their printed rounding, sources, names, duplicates)."]
    if any(e.unit == "fraction" for e in entries):
        notes.append("† printed as a fraction of 1, the source's own unit (0.7840 = 78.40 %).")
    if any(e.notes and len(e.notes) > _NOTES_CUT for e in entries):
        notes.append(f"Notes longer than {_NOTES_CUT} characters are cut (…); the registry file has them whole "
                     "(and zss-bench reported --format json).")
    if any(e.setting == "transductive" for e in entries):
        notes.append("Transductive rows saw the unseen class names (and unlabelled unseen pixels) in training: "
                     "not comparable with inductive rows.")
    notes += listed
    if not entries:
        rows = []
    return _render(rows, _HEADERS, fmt, title, notes)


def _render(rows: list[list], headers: list[str], fmt: str, title: str | None, notes: list[str]) -> str:
    if fmt == "md":
        body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) if rows else "(no entries)"
        head = f"### {title}\n\n" if title else ""
        return f"{head}{body}\n" + "".join(f"\n{n}\n" for n in notes)
    if fmt == "html":
        body = tabulate(rows, headers=headers, tablefmt="html", disable_numparse=True) if rows else "<p>(no entries)</p>"
        head = f"<h4>{html.escape(title)}</h4>\n" if title else ""
        return head + body + "\n" + "".join(f'<p class="note">{html.escape(n)}</p>\n' for n in notes)
    body = tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
    body = body.replace("±", r"$\pm$").replace("⚠", r"(!)").replace("–", "--")
    return (f"% {title}\n" if title else "") + body + "\n" + "".join(f"% {n}\n" for n in notes)


# --------------------------------------------------------------------------- reproduced − reported


def _matches(row, entries: list[ReportedEntry]) -> list[ReportedEntry]:
    return [e for e in _ordered(entries) if e.setting == "inductive" and e.method == row["method"]
            and (e.variant or "default") == row["config"]]


def _protocol_facts(name: str):
    """(seen ids, unseen ids, the test split's image count or None, content hash), or None if not installed."""
    from zss_bench.protocol import load_protocol

    try:
        proto = load_protocol(name)
    except Exception:  # a user's own protocol: nothing to score against
        return None
    count = (proto.image_sets.get(proto.eval_split) or {}).get("count")
    return proto.seen_ids, proto.unseen_ids, count, proto.content_hash


def reproduced_vs_reported(table: pd.DataFrame, runs: pd.DataFrame, entries: list[ReportedEntry],
                           n_boot: int = 1000, seed: int = 0,
                           on_note: Callable[[str], None] | None = None) -> list[dict]:
    """One dict per (harness row of ``table``, matching reported entry): the harness mean and its 95 %
    interval of S, U, h (in %), the printed values, and the number of test images against the protocol's."""
    from zss_bench.metrics import ConfusionMatrix, bootstrap_ci_seeds

    note = on_note or (lambda m: None)
    out = []
    for _, row in table.iterrows():
        matched = _matches(row, entries)
        if not matched:
            continue
        facts = _protocol_facts(f"{row['protocol']}@{row['protocol_version']}")
        if facts is None or not facts[3].startswith(str(row["protocol_hash"])):
            note(f"reproduced − reported of {row['method']} [{row['config']}] left out: its runs were made with "
                 f"another definition of {row['protocol']} (hash {row['protocol_hash']}) than the installed one")
            continue
        seen, unseen, count, _ = facts
        mine = runs[(runs["method"] == row["method"]) & (runs["config"] == row["config"])
                    & (runs["protocol_hash"] == row["protocol_hash"]) & (runs["clip"] == row["clip"])]
        for col in ("test_set", "origin"):
            if col in runs and col in row:
                mine = mine[mine[col] == row[col]]
        try:
            stats = []
            for path in mine["path"]:
                cm = ConfusionMatrix.load(Path(path) / "confusion.npz")
                if cm.image_stats is None or len(cm.image_stats.ids) == 0:
                    raise ValueError(f"{Path(path) / 'confusion.npz'}: no per-image statistics")
                stats.append(cm.image_stats)
            ci = bootstrap_ci_seeds(stats, list(seen), list(unseen), convention=str(mine["convention"].iloc[0]),
                                    n_boot=n_boot, seed=seed)
        except (OSError, ValueError) as exc:
            note(f"reproduced − reported of {row['method']} [{row['config']}] left out: {exc}")
            continue
        for e in matched:
            cells = {}
            for key, metric in (("S", "mIoU_seen"), ("U", "mIoU_unseen"), ("h", "hIoU")):
                printed = getattr(e, key)
                block = ci[metric]
                cells[key] = None if printed is None else {
                    "ours": 100 * block["estimate"], "printed": printed.text,
                    "delta": 100 * block["estimate"] - e.percent(key), "low": 100 * block["low"] - e.percent(key),
                    "high": 100 * block["high"] - e.percent(key)}
            out.append({"protocol": row["protocol"], "method": row["method"], "config": row["config"],
                        "origin": row.get("origin", "trained here"), "runs": int(len(stats)),
                        "n_images": ci["n_images"], "expected_images": count, "entry": e, "cells": cells})
    return out


def _cell(c: dict | None) -> str:
    if c is None:
        return "– (not printed)"
    return f"{c['delta']:+.1f} [{c['low']:+.1f}, {c['high']:+.1f}]"


def render_reproduced(pairs: list[dict], fmt: str = "md", title: str | None = None, n_boot: int = 1000) -> str:
    """The reproduced − reported table of :func:`reproduced_vs_reported`'s pairs ('' when there are none)."""
    if not pairs:
        return ""
    if fmt == "csv":
        return pd.DataFrame([{"protocol": p["protocol"], "method": p["method"], "config": p["config"],
                              "weights": p["origin"], "runs": p["runs"], "test_images": p["n_images"],
                              "protocol_test_images": p["expected_images"], "source": p["entry"].source,
                              **{f"{k}_{f}": (c or {}).get(f) for k, c in p["cells"].items()
                                 for f in ("ours", "printed", "delta", "low", "high")}}
                             for p in pairs]).to_csv(index=False, float_format="%.4f")
    headers = ["method", "config", "weights", "runs", "test images", "reported row", "ΔS [95% CI]", "ΔU [95% CI]",
               "Δh [95% CI]"]
    rows, smoke = [], False
    for p in pairs:
        e = p["entry"]
        images = str(p["n_images"])
        if p["expected_images"] and p["n_images"] < p["expected_images"]:
            images += f" of {p['expected_images']:,} ⚠"
            smoke = True
        kind = "README" if e.source and "github.com" in e.source else "paper"
        rows.append([p["method"], p["config"], p["origin"], p["runs"], images,
                     f"{e.paper.split(':')[0]} ({e.venue} {e.year}, {kind}; {e.backbone or '?'}): "
                     f"S {_printed(e.S)} / U {_printed(e.U)} / h {_printed(e.h)}",
                     _cell(p["cells"]["S"]), _cell(p["cells"]["U"]), _cell(p["cells"]["h"])])
    notes = ["Reproduced − reported: the harness's mean over its runs minus the printed number, in points; the "
             f"interval is the 95 % bootstrap interval of that mean over the test images ({n_boot:,} resamples, "
             "images drawn jointly for every seed) minus the printed number. The printed number's rounding and "
             "the paper's own seed spread are not in it; different bodies, schedules or evaluators are not "
             "either: read the reported row's setting before reading a gap as a failure to reproduce."]
    if smoke:
        notes.append("⚠ scored on fewer images than the protocol's test split: a smoke run, not a reproduction.")
    return _render(rows, headers, fmt, title, notes)


# --------------------------------------------------------------------------- beside the leaderboard


def registry_for_tables(directory: str | None):
    """(registry, findings) for the leaderboard and the report, or None: ``none`` leaves the reported tables
    out; no folder given uses the project's registry when this checkout has one; a folder given must exist."""
    from zss_bench.reported import check_registry, default_registry_dir, load_registry

    if directory is not None and str(directory).lower() == "none":
        return None
    if directory is None and not default_registry_dir().is_dir():
        return None  # an installed package without the project's results/: nothing to show
    registry = load_registry(directory)
    return registry, check_registry(registry)


def reported_sections(protocol: str, reported, table: pd.DataFrame, runs: pd.DataFrame, fmt: str = "md",
                      n_boot: int = 1000, on_note: Callable[[str], None] | None = None) -> str:
    """The reported table of ``protocol`` and, where the harness has matching rows in ``table`` (``aggregate``'s
    output of that protocol), the reproduced − reported table; '' when the registry has no entry for it."""
    if reported is None:
        return ""
    registry, findings = reported
    entries = registry.for_protocol(protocol)
    if not entries:
        return ""
    parts = [render_reported(entries, findings, fmt, title=f"{protocol}: {REPORTED_TITLE}")]
    if not table.empty:
        pairs = reproduced_vs_reported(table, runs, entries, n_boot=n_boot, on_note=on_note)
        parts.append(render_reproduced(pairs, fmt, title=f"{protocol}: reproduced − reported", n_boot=n_boot))
    return "\n".join(p for p in parts if p)
