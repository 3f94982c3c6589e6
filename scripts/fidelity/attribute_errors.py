"""Which half of a synth class name do a method's pixels get right? (protocols/synth/FIDELITY.md)

Usage: python scripts/fidelity/attribute_errors.py RESULTS_ROOT [PROTOCOL]   (PROTOCOL: a name, or name@version)
For every run under RESULTS_ROOT/runs/<name>/<method>/<run>/ of that protocol (and version) (its confusion.npz), grouped by method and
config label and averaged over runs: IoU of blue triangle (the compositional unseen class), mean IoU of the
four unseen stars, and the share of unseen / seen ground-truth pixels whose predicted class has the right
colour and the right shape. Chance for a uniform guess over the 20 classes: colour 25 % (5 classes share one), shape 20 % (4 share one).
"""
from __future__ import annotations

import glob
import json
import sys

import numpy as np

from zss_bench.protocol import load_protocol
from zss_bench.tables.leaderboard import protocol_matches


def attribute_row(matrix: np.ndarray, proto) -> list[float]:
    colours = np.array([c.split()[0] for c in proto.classes])
    shapes = np.array([c.split()[1] for c in proto.classes])
    inter = np.diag(matrix)
    iou = inter / np.maximum(matrix.sum(0) + matrix.sum(1) - inter, 1e-9)
    unseen, seen = list(proto.unseen_ids), list(proto.seen_ids)
    triangle = proto.classes.index("blue triangle")
    stars = [i for i in unseen if i != triangle]

    def share(ids, attr):
        return 100 * sum(matrix[i][attr == attr[i]].sum() for i in ids) / max(matrix[ids].sum(), 1e-9)

    return [100 * iou[triangle], 100 * float(np.mean(iou[stars])), share(unseen, colours), share(unseen, shapes),
            share(seen, colours), share(seen, shapes)]


def main(root: str, protocol: str = "synth-15-5") -> None:
    proto = load_protocol(protocol)
    rows: dict[tuple[str, str], list[list[float]]] = {}
    for path in sorted(glob.glob(f"{root}/runs/{proto.name}/*/*/confusion.npz")):
        record = json.load(open(path.replace("confusion.npz", "record.json"), encoding="utf-8"))
        if not protocol_matches(record["protocol"], protocol):
            continue
        key = (record["method"]["name"], record["method"].get("label") or "default")
        rows.setdefault(key, []).append(attribute_row(np.load(path)["matrix"].astype(float), proto))
    print("| method | config | runs | IoU blue triangle | IoU stars | unseen px: colour ok | unseen px: shape ok "
          "| seen px: colour ok | seen px: shape ok |")
    print("|---|---|---|---|---|---|---|---|---|")
    for (method, label), values in sorted(rows.items()):
        cells = " | ".join(f"{v:.1f}" for v in np.mean(values, axis=0))
        print(f"| {method} | {label} | {len(values)} | {cells} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
