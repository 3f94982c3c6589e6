"""Pivot tables of a sweep: swept keys on the axes, hIoU mean ± std and finished runs in the cells.

Built only from run records and failed-cell notes, found by the same identity the sweep runner
uses (config hash, seed, protocol hash, CLIP weights), so a table always shows what the runner
would skip or re-run. A cell with failed seeds says so (``1 failed``): a failure is never a zero
in the mean. Two-key sweeps also get a heat-map (matplotlib).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
from tabulate import tabulate

PIVOT_FORMATS = ("md", "latex", "csv")


@dataclass
class Pivot:
    """One sweep's table: ``frame`` holds display strings, ``cells`` one numeric row per swept point."""

    title: str
    keys: list[str]
    metric: str
    frame: pd.DataFrame
    cells: pd.DataFrame  # one row per point: the keys' values, mean, std, runs, failed, seeds

    def render(self, fmt: str = "md") -> str:
        if fmt not in PIVOT_FORMATS:
            raise ValueError(f"unknown format '{fmt}'; choose one of {', '.join(PIVOT_FORMATS)}")
        if fmt == "csv":
            return self.cells.to_csv(index=False, float_format="%.4f")
        headers = [self.frame.index.name or "", *self.frame.columns]
        rows = [[idx, *row] for idx, row in zip(self.frame.index, self.frame.itertuples(index=False))]
        if fmt == "md":
            return (f"### {self.title}\n\n" + tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)
                    + f"\n\n{self.metric} mean ± std over seeds, % (n = finished runs; failed seeds are listed, "
                      "never averaged).\n")
        body = tabulate(rows, headers=headers, tablefmt="latex_booktabs", disable_numparse=True)
        return f"% {self.title}\n" + body.replace("±", r"$\pm$") + "\n"

    def to_html(self) -> str:
        return self.frame.to_html(classes="pivot", border=0, escape=True)

    def heatmap_png(self, path: str | Path) -> Path | None:
        """A heat-map of the means (annotated mean ± std, n) for a two-key sweep; None otherwise."""
        if len(self.keys) != 2:
            return None
        from zss_bench.plots.common import new_figure, save_png, wrap

        rows, cols = _ordered(self.cells, self.keys[0]), _ordered(self.cells, self.keys[1])
        grid = self.cells.set_index(self.keys)
        values = [[grid["mean"].get((r, c), math.nan) for c in cols] for r in rows]
        fig = new_figure(1.6 + 1.5 * len(cols), 1.2 + 0.9 * len(rows))
        ax = fig.add_subplot()
        im = ax.imshow(values, cmap="viridis", aspect="auto")
        for i, r in enumerate(rows):
            for j, c in enumerate(cols):
                mean = values[i][j]
                n = int(grid["runs"].get((r, c), 0))
                failed = int(grid["failed"].get((r, c), 0))
                std = grid["std"].get((r, c), math.nan)
                spread = "" if math.isnan(std) else f"±{std:.1f} "  # one run has no spread
                text = "no runs" if math.isnan(mean) else f"{mean:.1f}\n{spread}(n={n})"
                if failed:
                    text += f"\n{failed} failed"
                bright = not math.isnan(mean) and mean > (im.norm.vmin + im.norm.vmax) / 2
                ax.text(j, i, text, ha="center", va="center", fontsize=8, color="black" if bright else "white")
        ax.set_xticks(range(len(cols)), cols)
        ax.set_yticks(range(len(rows)), rows)
        ax.set_xlabel(self.keys[1])
        ax.set_ylabel(self.keys[0])
        # ~11 characters of 9-pt text per inch, so a long sweep name wraps instead of running off the figure
        ax.set_title(wrap(f"{self.title} — {self.metric}", max(20, int(fig.get_figwidth() * 11))), fontsize=9)
        fig.colorbar(im, ax=ax, label=f"{self.metric} (%)")
        return save_png(fig, path)  # atomic: a reader never sees half a PNG


def _ordered(cells: pd.DataFrame, key: str) -> list[str]:
    """A key's values in declared order (``cells`` is in sweep order)."""
    return list(dict.fromkeys(cells[key]))


def sweep_pivots(grid_file: str | Path, results_root: str | Path, protocol: str | None = None,
                 metric: str = "hIoU", check_clip: bool = True,
                 on_skip: Callable[[str], None] | None = None) -> list[Pivot]:
    """One :class:`Pivot` per sweep declared in ``grid_file`` (none: an empty list). ``check_clip``: count only
    records made with the CLIP weights the cells would load now, as the runner does. Only records whose
    numbers agree with their confusion matrix count (the others are reported through ``on_skip``), and a
    cell never mixes test sets: when a sweep's runs come from several, each gets its own pivot, named."""
    from zss_bench.engine.grid import ClipWeights, load_sweeps, resolve_config_hashes, sweep_cells
    from zss_bench.protocol import load_protocol
    from zss_bench.tables.leaderboard import checked_runs

    name, sweeps = load_sweeps(grid_file)
    if protocol is not None and load_protocol(protocol).name != name:
        return []
    proto = load_protocol(name)
    clip_weights = ClipWeights(proto)
    checked = [(run.record, row["test_set"]) for run, row in checked_runs(results_root, name, on_skip=on_skip)]
    test_sets = sorted({ts for rec, ts in checked if rec["protocol"].get("hash") == proto.content_hash})
    pivots = []
    for sweep in sweeps:
        cells = sweep_cells(sweep)
        resolve_config_hashes(proto, cells)
        found = []
        for ts in test_sets:
            table = _cells_table(sweep, cells, [rec for rec, t in checked if t == ts], results_root, name, proto,
                                 clip_weights, check_clip, metric)
            if table["runs"].sum() > 0:
                found.append((ts, table))
        if not found:  # nothing finished yet: one table of empty cells (and failed counts)
            empty = _cells_table(sweep, cells, [], results_root, name, proto, clip_weights, check_clip, metric)
            found = [(None, empty)]
        for ts, table in found:
            title = f"{name}: {sweep.title}" + (f" on {ts}" if len(found) > 1 else "")
            pivots.append(Pivot(title, list(sweep.keys), metric, _display(table, list(sweep.keys)), table))
    return pivots


def _cells_table(sweep, cells, records: list[dict], results_root, name: str, proto, clip_weights,
                 check_clip: bool, metric: str) -> pd.DataFrame:
    """One numeric row per swept point from ``records`` (of one test set): mean, std, runs, failed, seeds."""
    from zss_bench.engine.grid import _clip_spec, _find
    from zss_bench.records.failed import note_path

    rows: dict[tuple, dict] = {}
    for cell in cells:
        spec = _clip_spec(cell.opts)
        clip_hash = (lambda spec=spec: clip_weights(spec)) if check_clip else None
        row = rows.setdefault(tuple(cell.swept[k] for k in sweep.keys),
                              {**cell.swept, "values": [], "seeds": [], "failed": 0, "label": cell.label})
        rec = _find(records, name, proto.content_hash, cell.method, cell.label, cell.seed, clip_hash,
                    cell.config_hash)
        if rec is not None:
            value = rec["metrics"].get(metric)
            if value is not None:
                row["values"].append(float(value))
                row["seeds"].append(cell.seed)
        elif note_path(results_root, name, cell.method, cell.label, cell.seed).is_file():
            row["failed"] += 1
    return pd.DataFrame([{**{k: r[k] for k in sweep.keys}, "label": r["label"],
                          "mean": pd.Series(r["values"], dtype=float).mean(),
                          "std": pd.Series(r["values"], dtype=float).std(), "runs": len(r["values"]),
                          "failed": r["failed"], "seeds": " ".join(map(str, r["seeds"]))} for r in rows.values()])


def _text(row) -> str:
    if row["runs"] == 0:
        text = "—"
    elif row["runs"] == 1 or math.isnan(row["std"]):
        text = f"{row['mean']:.1f} (n=1)"
    else:
        text = f"{row['mean']:.1f} ± {row['std']:.1f} (n={row['runs']})"
    return text + (f", {row['failed']} failed" if row["failed"] else "")


def _display(table: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """Rows = all keys but the last (joined), columns = the last key; one key: a single column."""
    table = table.assign(text=[_text(r) for _, r in table.iterrows()])
    from zss_bench.engine.sweep import short_key

    leaf = [short_key(k) for k in keys]
    if len(keys) == 1:
        frame = pd.DataFrame({"result": list(table["text"])}, index=pd.Index(list(table[keys[0]]), name=leaf[0]))
        return frame
    row_keys = keys[:-1]
    table = table.assign(_row=[", ".join(str(r[k]) for k in row_keys) for _, r in table.iterrows()])
    frame = table.pivot(index="_row", columns=keys[-1], values="text")
    frame = frame.reindex(index=list(dict.fromkeys(table["_row"])), columns=_ordered(table, keys[-1]))
    frame.index.name = " \\ ".join([", ".join(leaf[:-1]), leaf[-1]])
    frame.columns = [f"{leaf[-1]}={c}" for c in frame.columns]
    return frame.fillna("—")
