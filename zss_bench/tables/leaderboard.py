"""Leaderboards: one row per (protocol, method, config), mean ± std over seeds.

Built only from run records, so a table can always be regenerated and never hand-edited.
Rows show how many runs they average: a single lucky seed is visible as ``n = 1``. Runs made
with different CLIP weights never share a row (the last column names the weights by hash), so
a row's mean never mixes two teachers, e.g. toy CLIPs pretrained on different machines. Likewise runs
scored on different test sets (``zss_bench.records.fingerprint``) never share a row, a de-duplication or a
pairing, and no number reaches a table before it is checked against its record's confusion matrix
(``zss_bench.tables.trust``).
"""
from __future__ import annotations

import html
import warnings
from typing import Callable

import pandas as pd
from tabulate import tabulate

from zss_bench.records.fingerprint import GroundTruthKey, ground_truth_key
from zss_bench.records.provenance import record_device_type
from zss_bench.records.store import RECORD_FILE, LoadedRun, RecordWarning, iter_runs
from zss_bench.tables.trust import RecordChecker, UntrustedRecord, number

FORMATS = ("md", "latex", "csv", "html")
EFFICIENCY = ("params_total", "params_trainable", "test_images_per_s", "peak_memory_mb", "train_step_s")
TRAINED_HERE, IMPORTED = "trained here", "imported"
METRICS = ("mIoU_seen", "mIoU_unseen", "hIoU", "pAcc", "mIoU")
_HEADERS = {"mIoU_seen": "mIoU(S)", "mIoU_unseen": "mIoU(U)", "hIoU": "hIoU", "pAcc": "pAcc", "mIoU": "mIoU"}
_GROUP = ["protocol", "protocol_version", "protocol_hash", "test_set", "method", "config", "clip"]
NO_CLIP = "-"


def _text(value, where: str, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise UntrustedRecord(f"{where} is {value!r}, expected {'a name or null' if optional else 'a name'}")
    return value


def _seed(value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise UntrustedRecord(f"provenance.seed is {value!r}, expected a whole number or null")
    return value


def _row(run: LoadedRun, conv: str, block: dict) -> dict:
    """One table row of a checked record; UntrustedRecord names a field the table needs that does not parse."""
    rec = run.record
    method, clip = rec["method"], rec.get("clip")
    provenance, eff = rec.get("provenance") or {}, rec.get("efficiency") or {}
    for key, value in (("clip", clip), ("provenance", provenance), ("efficiency", eff)):
        if value is not None and not isinstance(value, dict):
            raise UntrustedRecord(f"'{key}' is {type(value).__name__}, expected an object or null")
    label = _text(method.get("label"), "method.label")
    key = ground_truth_key(rec)
    row = {
        "protocol": _text(rec["protocol"]["name"], "protocol.name", optional=False),
        "protocol_version": rec["protocol"]["version"],
        "protocol_hash": str(rec["protocol"]["hash"])[:12],
        "test_set": key.label,
        "method": _text(method["name"], "method.name", optional=False),
        "config": label or str(method.get("config_hash", "default"))[:8],
        "clip": str(_text((clip or {}).get("weights_hash"), "clip.weights_hash") or NO_CLIP)[:8],
        "seed": _seed(provenance.get("seed")),
        "convention": conv,
        "run_id": _text(rec.get("run_id"), "run_id"),
        "path": str(run.path),
        "origin": weights_origin(rec),
        "machine": _text(eff.get("machine"), "efficiency.machine"),
        "device": record_device_type(rec),
        "test_set_basis": key.basis,
        "_key": key,
    }
    for k in EFFICIENCY:
        value = number(eff.get(k), f"efficiency.{k}")
        row[k] = float("nan") if value is None else value
    for k in METRICS:
        value = number(block.get(k), f"metrics.conventions.{conv}.{k}")
        row[k] = float("nan") if value is None else value
    return row


def collect_runs(results_root, protocol: str | None = None, convention: str | None = None,
                 on_skip: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One row per valid run record (skipped files are reported through ``on_skip``).

    Each record's numbers are checked against its own ``confusion.npz`` first (:mod:`zss_bench.tables.trust`):
    one that does not parse or disagrees is skipped with a message naming it and what is wrong. The
    ``test_set`` column says which ground truth the run was scored on (:mod:`zss_bench.records.fingerprint`);
    rows are grouped, de-duplicated and paired only within one test set."""
    report = on_skip or (lambda m: warnings.warn(m, RecordWarning, stacklevel=2))
    rows = [row for _, row in checked_runs(results_root, protocol, convention, report)]
    columns = _GROUP + ["seed", "convention", "run_id", "path", "origin", "machine", "device", "test_set_basis",
                        *METRICS, *EFFICIENCY]
    return _one_run_per_seed(pd.DataFrame(rows, columns=columns), report)


def protocol_matches(info: dict, wanted: str) -> bool:
    """Whether a record's ``protocol`` block is ``wanted``: a name (every version) or ``name@version``."""
    name, _, version = wanted.partition("@")
    return info.get("name") == name and (not version or str(info.get("version")) == version)


def newest_first_key(version) -> int:
    """Sort key of a protocol version, newest first (a record without a version sorts as the oldest)."""
    try:
        return -int(version)
    except (TypeError, ValueError):
        return 0


def checked_runs(results_root, protocol: str | None = None, convention: str | None = None,
                 on_skip: Callable[[str], None] | None = None) -> list[tuple[LoadedRun, dict]]:
    """Every run under ``results_root`` (of ``protocol``) whose record parses and agrees with its confusion
    matrix, with its table row (``test_set`` resolved); the others are reported through ``on_skip``. Shared by
    the leaderboard, the report and the sweep pivots, so no table shows a number the others would refuse."""
    report = on_skip or (lambda m: warnings.warn(m, RecordWarning, stacklevel=2))
    checker = RecordChecker()
    out = []
    for run in iter_runs(results_root, on_skip=report):
        rec = run.record
        if protocol is not None and not protocol_matches(rec["protocol"], protocol):
            continue
        try:
            conv, block = checker.check(run, convention)
            out.append((run, _row(run, conv, block)))
        except UntrustedRecord as exc:
            report(f"skipping {run.path / RECORD_FILE}: {exc}")
        except (TypeError, ValueError, KeyError, AttributeError) as exc:  # a shape nobody anticipated
            report(f"skipping {run.path / RECORD_FILE}: it does not parse ({type(exc).__name__}: {exc})")
    _place_legacy_records([row for _, row in out])
    return out


def _place_legacy_records(rows: list[dict]) -> None:
    """Records made before test-set fingerprints (legacy) join the fingerprinted records of their protocol
    whose dataset root (or ground-truth folder) they share, when those all have one fingerprint; otherwise
    they form their own group, named by that root. In place; drops the helper key."""
    fingerprints: dict[tuple, set] = {}
    for r in rows:
        key = r["_key"]
        if key.basis == "fingerprint" and key.legacy:
            fingerprints.setdefault((r["protocol_hash"], key.legacy), set()).add((key.value, key.n_images))
    for r in rows:
        key = r.pop("_key")
        if key.basis in ("fingerprint", "unknown"):
            continue
        found = fingerprints.get((r["protocol_hash"], f"{key.basis}\t{key.value}"), set())
        if len(found) == 1:
            fp, n = next(iter(found))
            r["test_set"] = GroundTruthKey("fingerprint", fp, n).label
            r["test_set_basis"] = f"placed by its {key.basis} {key.value}"


def weights_origin(record: dict) -> str:
    """Where a run's weights come from: ``trained here`` (this harness trained them: a training run, or an
    evaluation of a checkpoint the harness wrote), ``imported`` (scored with weights trained elsewhere,
    e.g. a released checkpoint through ``--eval-only MODEL.WEIGHTS``, or predictions scored by
    ``zss-bench evaluate``) or ``training-free``. Run records made before the field existed are harness
    training runs or grid re-scorings of their checkpoints."""
    if record.get("kind") == "evaluate":
        return IMPORTED
    training = record.get("training") or {}
    origin = (training.get("weights") or {}).get("origin")
    if origin in (TRAINED_HERE, IMPORTED, "training-free"):
        return origin
    if training.get("training_free"):
        return "training-free"
    return IMPORTED if origin == "untrained" else TRAINED_HERE


def _one_run_per_seed(runs: pd.DataFrame, report: Callable[[str], None]) -> pd.DataFrame:
    """Two records of one (method, config, CLIP weights, seed) are one seed run twice, not two
    runs: keep the newest (run ids start with their UTC time) and say which were left out."""
    if runs.empty:
        return runs
    runs = runs.sort_values("run_id", kind="stable")
    key = _GROUP + (["origin"] if "origin" in runs else []) + ["seed"]  # an imported seed never replaces a trained one
    dup = runs.duplicated(key, keep="last")
    for row in runs[dup].itertuples():
        kept = runs[~dup & (runs[key] == pd.Series(row._asdict())[key]).all(axis=1)]
        report(f"duplicate run of {row.method} [{row.config}] seed {row.seed}: counting the newest "
               f"({kept.run_id.iloc[0] if len(kept) else '?'}), not {row.path}")
    return runs[~dup].reset_index(drop=True)


def aggregate(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one run) and count per group, sorted by mean hIoU; the efficiency
    figures' medians (NaN where no record has them), the weights' origin and the machines. A median is
    never taken across device types: a row whose measured runs ran on both CPU and CUDA gets NaN
    efficiency figures and names both in ``devices``."""
    if runs.empty:
        return pd.DataFrame(columns=_GROUP + ["origin", "runs", "seeds", "machines", "devices"]
                            + [f"{m}_{s}" for m in METRICS for s in ("mean", "std")] + list(EFFICIENCY))
    group = _GROUP + ["origin"] if "origin" in runs else _GROUP
    if "device" in runs:  # the device types of the runs that carry efficiency figures
        measured = runs[[k for k in EFFICIENCY if k in runs]].notna().any(axis=1)
        runs = runs.assign(_eff_device=runs["device"].where(measured))
    grouped = runs.groupby(group, dropna=False, sort=False)
    out = grouped[list(METRICS)].agg(["mean", "std"])
    out.columns = [f"{m}_{s}" for m, s in out.columns]
    out.insert(0, "runs", grouped.size())
    out.insert(1, "seeds", grouped["seed"].agg(lambda x: tuple(sorted(int(v) for v in x if pd.notna(v)))))
    if "test_set_basis" in runs:
        out.insert(1, "test_set_basis", grouped["test_set_basis"].agg(lambda x: tuple(sorted({str(v) for v in x}))))
    if "machine" in runs:
        out.insert(2, "machines", grouped["machine"].agg(lambda x: tuple(sorted({str(v) for v in x if pd.notna(v) and v}))))
    if "_eff_device" in runs:
        out.insert(3, "devices", grouped["_eff_device"].agg(lambda x: tuple(sorted({str(v) for v in x if pd.notna(v) and v}))))
    for key in EFFICIENCY:  # medians: one run slowed by a neighbouring job must not move the row
        if key in runs:
            out[key] = grouped[key].median()
            if "devices" in out:  # ... and a CPU run and a GPU run are not two samples of one figure
                out.loc[out["devices"].map(len) > 1, key] = float("nan")
    out = out.reset_index()
    return out.sort_values(["protocol", "hIoU_mean"], ascending=[True, False], na_position="last").reset_index(drop=True)


def _pm(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.1f}" if n < 2 or pd.isna(std) else f"{mean:.1f} ± {std:.1f}"


def _num(x, digits: int = 1, scale: float = 1.0) -> str:
    return "n/a" if x is None or pd.isna(x) else f"{x * scale:.{digits}f}"


def _vs(row) -> str:
    delta = getattr(row, "vs_delta", None)
    if delta is None or pd.isna(delta):
        return "ref" if getattr(row, "vs_config", None) == "ref" else "n/a"
    return f"{delta:+.1f} [{row.vs_low:+.1f}, {row.vs_high:+.1f}]"


def _has(sub: pd.DataFrame, col: str) -> bool:
    return col in sub and sub[col].notna().any()


def render_leaderboard(table: pd.DataFrame, fmt: str = "md", convention: str | None = None,
                       reference: str | None = None, n_boot: int = 1000) -> str:
    """Render ``aggregate``'s output (optionally with ``add_paired_column``'s) as Markdown, LaTeX (booktabs),
    CSV or HTML (escaped ``<table>``s under ``<h4>`` titles, for the report). Rows with imported weights get
    their own table under the harness-trained ones; efficiency columns appear when records carry them, with
    the machines they were measured on named below."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if fmt == "csv":
        return table.to_csv(index=False, float_format="%.4f")
    if table.empty:
        return "<p>(no runs found)</p>\n" if fmt == "html" else "(no runs found)\n"
    parts = []
    groups = table.groupby(["protocol", "protocol_version", "protocol_hash"], sort=True)
    # a protocol's newest version first (the current definition leads; older ones stay listed below it)
    for (proto, version, phash), psub in sorted(groups, key=lambda g: (g[0][0], newest_first_key(g[0][1]))):
        test_sets = sorted(set(psub["test_set"])) if "test_set" in psub else []
        for test_set in test_sets or [None]:
            sub = psub if test_set is None else psub[psub["test_set"] == test_set]
            parts += _render_tables(sub, fmt, proto, version, phash, convention, reference, n_boot,
                                    test_set if len(test_sets) > 1 else None, test_sets)
    return "\n".join(parts)


def _render_tables(sub: pd.DataFrame, fmt: str, proto, version, phash, convention, reference, n_boot,
                   test_set: str | None, test_sets: list[str]) -> list[str]:
    """The tables of one protocol definition and test set: harness-trained rows, then imported ones.
    ``test_set`` is named in the title when the protocol's rows come from several test sets."""
    parts = []
    origin = sub["origin"] if "origin" in sub else pd.Series(TRAINED_HERE, index=sub.index)
    conv = f", {convention} convention" if convention else ", headline convention"
    for kind, part in (("", sub[origin != IMPORTED]), (IMPORTED, sub[origin == IMPORTED])):
        if part.empty:
            continue
        vs = reference is not None and _has(part, "vs_delta")
        mixed = _mixed_devices(part)
        eff = any(_has(part, k) for k in EFFICIENCY) or bool(mixed)
        headers = ["method", "config", "weights", "runs", *(_HEADERS[m] for m in METRICS)]
        if vs:
            headers.append(f"ΔhIoU vs {reference} [95% CI]")
        if eff:
            headers += ["params M (trainable)", "test img/s", "eval peak MB", "train s/step"]
        headers.append("CLIP weights")
        rows = []
        for r in part.itertuples():
            row = [r.method, r.config, getattr(r, "origin", TRAINED_HERE), int(r.runs),
                   *(_pm(getattr(r, f"{m}_mean"), getattr(r, f"{m}_std"), r.runs) for m in METRICS)]
            if vs:
                row.append(_vs(r))
            if eff:
                total, trainable = getattr(r, "params_total", None), getattr(r, "params_trainable", None)
                row += ["n/a" if total is None or pd.isna(total) else f"{_num(total, 2, 1e-6)} ({_num(trainable, 2, 1e-6)})",
                        _num(getattr(r, "test_images_per_s", None)), _num(getattr(r, "peak_memory_mb", None), 0),
                        _num(getattr(r, "train_step_s", None), 2)]
            rows.append(row + [r.clip])
        what = "imported weights or predictions (trained elsewhere: not comparable with the harness-trained rows)" if kind \
            else "mean ± std over runs, %"
        title = f"{proto} (v{version}, {phash}{conv}; {what})" + (f" on {test_set}" if test_set else "")
        notes = _notes(part, reference if vs else None, eff, n_boot, mixed) + _test_set_notes(part, proto, test_set,
                                                                                             test_sets)
        if fmt == "md":
            body = tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
            parts.append(f"### {title}\n\n{body}\n" + "".join(f"\n{n}" for n in notes) + ("\n" if notes else ""))
        elif fmt == "html":
            body = tabulate(rows, headers=headers, tablefmt="html", disable_numparse=True)  # escapes cells
            parts.append(f"<h4>{html.escape(title)}</h4>\n{body}\n"
                         + "".join(f'<p class="note">{html.escape(n)}</p>\n' for n in notes))
        else:
            body = tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
            body = body.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")
            parts.append(f"% {title}\n{body}\n" + "".join(f"% {n}\n" for n in notes))
    return parts


def _test_set_notes(part: pd.DataFrame, proto: str, test_set: str | None, test_sets: list[str]) -> list[str]:
    """Say when a protocol's rows come from several test sets, and where legacy records were placed by
    their dataset root: a table never averages, de-duplicates or pairs across test sets silently."""
    notes = []
    if test_set:
        notes.append(f"{proto} rows come from {len(test_sets)} different test sets ({'; '.join(test_sets)}): each "
                     "has its own table; rows are never averaged, de-duplicated or paired across test sets. Test "
                     "sets are told apart by the fingerprint of the ground truth a run was scored on (record "
                     "dataset.test_set); records made before fingerprints by their dataset root (a folder in the "
                     "zss-bench cache by its path there) or, for evaluate records, their ground-truth folder.")
    placed = sorted({b for bases in part.get("test_set_basis", ()) for b in (bases or ()) if b.startswith("placed by")})
    if placed:
        notes.append("Records made before test-set fingerprints counted with the fingerprinted runs of the same "
                     f"data ({'; '.join(p.removeprefix('placed by its ') for p in placed)}).")
    return notes


def _mixed_devices(part: pd.DataFrame) -> list[str]:
    """``method [config]`` of the rows whose efficiency runs span device types (figures shown as n/a)."""
    if "devices" not in part:
        return []
    return [f"{r.method} [{r.config}] ({' and '.join(r.devices)})" for r in part.itertuples()
            if isinstance(r.devices, tuple) and len(r.devices) > 1]


def _notes(part: pd.DataFrame, reference: str | None, eff: bool, n_boot: int, mixed_rows=()) -> list[str]:
    notes = []
    if reference:
        notes.append(f"ΔhIoU vs {reference}: paired bootstrap over the test images, per seed, averaged over the "
                     f"seeds both rows have ({n_boot:,} resamples; basic+jackknife 95 % interval, README: Confidence intervals); paired with {reference}'s row of the same config "
                     f"when it has one, else its default row ({reference}'s own other rows: against its default); "
                     "n/a where no seed pairs.")
    if eff and "machines" in part:
        machines = sorted({m for ms in part["machines"] for m in (ms or ())})
        if machines:
            mixed = " (several machines: compare efficiency only between rows of one machine)" \
                if len(machines) > 1 else ""
            notes.append("Efficiency (medians over runs; n/a: records made before the harness measured it) "
                         f"measured on: {'; '.join(machines)}{mixed}.")
    if eff and mixed_rows:
        notes.append(f"Efficiency n/a for {'; '.join(mixed_rows)}: their runs were measured on more than one device "
                     "type, and a median is never taken across CPU and CUDA (each record keeps its own figures).")
    return notes


def render_failed(notes: list[dict], fmt: str = "md") -> str:
    """The failed cells (notes under ``<results>/failed/``): listed, never averaged into a row."""
    if not notes:
        return ""
    rows = [[n.get("protocol", "?"), n.get("method", "?"), n.get("label", "?"), n.get("seed", "?"), n.get("exit"),
             n.get("when", ""), n.get("log", "")] for n in notes]
    headers = ["protocol", "method", "config", "seed", "exit", "when", "log"]
    if fmt == "md":
        return ("\n### Failed cells (no record; not in any mean; `--retry-failed` runs them again)\n\n"
                + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True) + "\n")
    if fmt == "html":
        return ("<h4>Failed cells (no record; not in any mean; <code>--retry-failed</code> runs them again)</h4>\n"
                + tabulate(rows, headers=headers, tablefmt="html", disable_numparse=True) + "\n")  # escapes cells
    return "\n% Failed cells (no record; not in any mean)\n" + tabulate(rows, headers=headers, tablefmt="latex_booktabs",
                                                                         disable_numparse=True) + "\n"
