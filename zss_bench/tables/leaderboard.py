"""Leaderboards: one row per (protocol, method, config), mean ± std over seeds.

Built only from run records, so a table can always be regenerated and never hand-edited.
Rows show how many runs they average: a single lucky seed is visible as ``n = 1``. Runs made
with different CLIP weights never share a row (the last column names the weights by hash), so
a row's mean never mixes two teachers, e.g. toy CLIPs pretrained on different machines.
"""
from __future__ import annotations

import warnings
from typing import Callable

import pandas as pd
from tabulate import tabulate

from zss_bench.records.store import RecordWarning, iter_runs

FORMATS = ("md", "latex", "csv")
METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")
_HEADERS = {"mIoU_seen": "mIoU(S)", "mIoU_unseen": "mIoU(U)", "hIoU": "hIoU", "pAcc": "pAcc", "mIoU": "mIoU"}
_GROUP = ["protocol", "protocol_version", "protocol_hash", "method", "config", "clip"]
NO_CLIP = "-"


def _metrics_block(record: dict, convention: str | None) -> tuple[str, dict]:
    metrics = record["metrics"]
    conv = convention or metrics.get("convention")
    block = metrics.get("conventions", {}).get(conv)
    if block is None:
        raise KeyError(conv)
    return conv, block


def collect_runs(results_root, protocol: str | None = None, convention: str | None = None,
                 on_skip: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per valid run record (skipped files are reported through ``on_skip``)."""
    report = on_skip or (lambda m: warnings.warn(m, RecordWarning, stacklevel=2))
    rows = []
    for run in iter_runs(results_root, on_skip=report):
        rec = run.record
        if protocol is not None and rec["protocol"]["name"] != protocol:
            continue
        try:
            conv, block = _metrics_block(rec, convention)
        except KeyError:
            report(f"skipping {run.path}: no metrics under convention '{convention}'")
            continue
        method = rec["method"]
        row = {
            "protocol": rec["protocol"]["name"],
            "protocol_version": rec["protocol"]["version"],
            "protocol_hash": str(rec["protocol"]["hash"])[:12],
            "method": method["name"],
            "config": method.get("label") or str(method.get("config_hash", "default"))[:8],
            "clip": str((rec.get("clip") or {}).get("weights_hash") or NO_CLIP)[:8],
            "seed": rec.get("provenance", {}).get("seed"),
            "convention": conv,
            "run_id": rec.get("run_id"),
            "path": str(run.path),
        }
        for key in METRICS:
            value = block.get(key)
            row[key] = float("nan") if value is None else float(value)
        rows.append(row)
    columns = _GROUP + ["seed", "convention", "run_id", "path", *METRICS]
    return _one_run_per_seed(pd.DataFrame(rows, columns=columns), report)


def _one_run_per_seed(runs: pd.DataFrame, report: Callable[[str], None]) -> pd.DataFrame:
    """Two records of one (method, config, CLIP weights, seed) are one seed run twice, not two
    runs: keep the newest (run ids start with their UTC time) and say which were left out."""
    if runs.empty:
        return runs
    runs = runs.sort_values("run_id", kind="stable")
    dup = runs.duplicated(_GROUP + ["seed"], keep="last")
    for row in runs[dup].itertuples():
        kept = runs[~dup & (runs[_GROUP + ["seed"]] == pd.Series(row._asdict())[_GROUP + ["seed"]]).all(axis=1)]
        report(f"duplicate run of {row.method} [{row.config}] seed {row.seed}: counting the newest "
               f"({kept.run_id.iloc[0] if len(kept) else '?'}), not {row.path}")
    return runs[~dup].reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run) and count per group, sorted by mean hIoU."""
    if runs.empty:
        return pd.DataFrame(columns=_GROUP + ["runs"] + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")])
    grouped = runs.groupby(_GROUP, dropna=False, sort=False)
    out = grouped[list(METRICS)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out.insert(0, "runs", grouped.size())
    out = out.reset_index()
    return out.sort_values(["protocol", "hIoU_mean"], ascending=[True, False], na_position="last").reset_index(drop=True)


def _pm(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.1f}" if n < 2 or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def render_leaderboard(table: pd.DataFrame, fmt: str = "md", convention: str | None = None) -> str:
    """Render ``aggregate``'s output as Markdown, LaTeX (booktabs) or CSV."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if table.empty:
        return "(no runs found)\n"
    parts = []
    for (proto, version, phash), sub in table.groupby(["protocol", "protocol_version", "protocol_hash"], sort=True):
        rows = [[r.method, r.config, int(r.runs), *(_pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"), r.runs) for m in METRICS),
                 r.clip] for r in sub.itertuples()]
        headers = ["method", "config", "runs", *(_HEADERS[m] for m in METRICS), "CLIP weights"]
        conv = f", {convention} convention" if convention else ", headline convention"
        title = f"{proto} (v{version}, {phash}{conv}; mean ± std over runs, %)"
        if fmt == "md":
            parts.append(f"### {title}\n\n" + tabulate(rows, headers=headers, tablefmt="github") + "\n")
        else:
            body = tabulate(rows, headers=headers, tablefmt="latex_booktabs").replace("±", r"$\pm$")
            parts.append(f"% {title}\n{body}\n")
    return "\n".join(parts)
