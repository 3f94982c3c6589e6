"""Paired comparison of two runs on the same images: delta, 95% CI and p-value.

Two methods evaluated on the same test set are paired data; comparing them with unpaired
statistics (lm-eval issue #3831) overstates uncertainty. We resample images jointly.
"""
from __future__ import annotations

from tabulate import tabulate

from zss_bench.metrics import ConfusionMatrix, paired_bootstrap
from zss_bench.records.store import LoadedRun, RecordError

_ROWS = (("mIoU_seen", "mIoU(S)"), ("mIoU_unseen", "mIoU(U)"), ("hIoU", "hIoU"), ("mIoU", "mIoU"), ("pAcc", "pAcc"))


def _stats(run: LoadedRun):
    if not run.confusion_path.exists():
        raise RecordError(f"{run.path}: no {run.confusion_path.name}; cannot bootstrap without per-image statistics")
    cm = ConfusionMatrix.load(run.confusion_path)
    if cm.image_stats is None or len(cm.image_stats.ids) == 0:
        raise RecordError(f"{run.confusion_path}: holds no per-image statistics")
    return cm.image_stats


def compare_runs(a: LoadedRun, b: LoadedRun, *, convention: str | None = None, n_boot: int = 1000,
                 seed: int = 0, seen_ids=None, unseen_ids=None) -> dict:
    """Paired bootstrap of B - A. Both runs must use the same protocol definition (hash)."""
    pa, pb = a.record["protocol"], b.record["protocol"]
    if pa["hash"] != pb["hash"]:
        raise RecordError(
            f"runs use different protocol definitions: {a.path} has {pa['name']} v{pa['version']} "
            f"({str(pa['hash'])[:12]}), {b.path} has {pb['name']} v{pb['version']} ({str(pb['hash'])[:12]})"
        )
    if seen_ids is None or unseen_ids is None:
        from zss_bench.protocol import load_protocol

        proto = load_protocol(pa["name"])
        if proto.content_hash != pa["hash"]:
            raise RecordError(
                f"protocol {pa['name']} changed since these runs (record hash {str(pa['hash'])[:12]}, "
                f"now {proto.short_hash}); cannot recover its seen/unseen split"
            )
        seen_ids, unseen_ids = proto.seen_ids, proto.unseen_ids
    conv = convention or a.record["metrics"].get("convention", "mmseg")
    result = paired_bootstrap(_stats(a), _stats(b), list(seen_ids), list(unseen_ids),
                              convention=conv, n_boot=n_boot, seed=seed)
    ca, cb = _clip_hash(a), _clip_hash(b)
    warnings = []
    if ca and cb and ca != cb:
        warnings.append(f"the two runs used different CLIP teachers ({ca[:8]} vs {cb[:8]}): the difference "
                        "mixes the method with the teacher")
    return {"a": str(a.path), "b": str(b.path), "method_a": a.record["method"]["name"],
            "method_b": b.record["method"]["name"], "side_a": _side(a), "side_b": _side(b), "warnings": warnings,
            "protocol": pa["name"], "convention": conv,
            "n_boot": n_boot, "seed": seed, "metrics": {k: _percent(result[k]) for k, _ in _ROWS}}


def _clip_hash(run: LoadedRun) -> str | None:
    return (run.record.get("clip") or {}).get("weights_hash")


def _side(run: LoadedRun) -> str:
    """'chimera [default] seed 0, CLIP 0bbd62d0': what a reader needs to know which run is which."""
    rec = run.record
    clip = _clip_hash(run)
    return (f"{rec['method']['name']} [{rec['method'].get('label', '?')}] seed {rec.get('provenance', {}).get('seed')}"
            f", CLIP {clip[:8] if clip else '-'}")


def _percent(block: dict) -> dict:
    out = {}
    for key, value in block.items():
        out[key] = value if key == "p_value" or value is None else round(100.0 * float(value), 4)
    return out


def render_comparison(result: dict) -> str:
    rows = []
    for key, label in _ROWS:
        m = result["metrics"][key]
        rows.append([label, _f(m["a"]), _f(m["b"]), _f(m["delta"], signed=True),
                     f"[{_f(m['low'], signed=True)}, {_f(m['high'], signed=True)}]",
                     _p(m["p_value"], result["n_boot"])])
    head = (f"A = {result.get('side_a', result['method_a'])} ({result['a']})\n"
            f"B = {result.get('side_b', result['method_b'])} ({result['b']})\n"
            + "".join(f"warning: {w}\n" for w in result.get("warnings", []))
            + f"protocol {result['protocol']}, {result['convention']} convention, paired bootstrap over images "
            f"({result['n_boot']} resamples, seed {result['seed']}); delta = B - A, in %\n")
    table = tabulate(rows, headers=["metric", "A", "B", "delta", "95% CI", "p"], tablefmt="github",
                     disable_numparse=True, colalign=("left", "right", "right", "right", "right", "right"))
    return head + table + "\n"


def _p(p, n_boot: int) -> str:
    """A bootstrap p-value cannot resolve below 1/n_boot; say so instead of printing 0."""
    if p is None or p != p:
        return "n/a"
    return f"< {1 / n_boot:.0e}" if p < 1 / n_boot else f"{p:.3f}"


def _f(x, signed: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"
