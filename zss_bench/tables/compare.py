"""Paired comparison of two runs on the same images: delta, 95% CI and p-value.

Two methods evaluated on the same test set are paired data; comparing them with unpaired
statistics (lm-eval issue #3831) overstates uncertainty. We resample images jointly.
"""
from __future__ import annotations

from tabulate import tabulate

from zss_bench.metrics import ConfusionMatrix, paired_bootstrap
from zss_bench.records.fingerprint import describe, ground_truth_key
from zss_bench.records.store import LoadedRun, RecordError
from zss_bench.tables.paired import same_images

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
        from zss_bench.protocol import load_protocol, protocol_ref

        proto = load_protocol(protocol_ref(pa))
        if proto.content_hash != pa["hash"]:
            raise RecordError(
                f"protocol {pa['name']} changed since these runs (record hash {str(pa['hash'])[:12]}, "
                f"now {proto.short_hash}); cannot recover its seen/unseen split"
            )
        seen_ids, unseen_ids = proto.seen_ids, proto.unseen_ids
    ka, kb = ground_truth_key(a.record), ground_truth_key(b.record)
    if ka.basis == kb.basis == "fingerprint" and ka.value != kb.value:
        raise RecordError(f"the runs were scored on different test sets: {a.path} on {describe(ka)}, {b.path} on "
                          f"{describe(kb)}; a paired comparison needs the same images with the same ground truth")
    conv = convention or a.record["metrics"].get("convention") or "mmseg"
    sa, sb = _stats(a), _stats(b)
    why = same_images(sa, sb)  # records without a fingerprint (legacy): their per-image ground truth decides
    if why:
        raise RecordError(f"{a.path} ({describe(ka)}) and {b.path} ({describe(kb)}) cannot be paired: {why}")
    result = paired_bootstrap(sa, sb, list(seen_ids), list(unseen_ids), convention=conv, n_boot=n_boot, seed=seed)
    ca, cb = _clip_hash(a), _clip_hash(b)
    warnings = []
    if not _named_alike(ka, kb):
        warnings.append(f"the records name their test sets differently ({describe(ka)}; {describe(kb)}), but hold "
                        "the same image ids with the same ground-truth pixel counts: compared as one test set")
    if ca and cb and ca != cb:
        warnings.append(f"the two runs used different CLIP teachers ({ca[:8]} vs {cb[:8]}): the difference "
                        "mixes the method with the teacher")
    return {"a": str(a.path), "b": str(b.path), "method_a": a.record["method"]["name"],
            "method_b": b.record["method"]["name"], "side_a": _side(a), "side_b": _side(b), "warnings": warnings,
            "protocol": pa["name"], "convention": conv,
            "test_set": next((describe(k) for k in (ka, kb) if k.basis != "unknown"), None),
            "n_boot": n_boot, "seed": seed, "metrics": {k: _percent(result[k], n_boot) for k, _ in _ROWS}}


def _named_alike(ka, kb) -> bool:
    """Whether two records name one test set: the same fingerprint; the same legacy data root or ground-truth
    folder; a legacy record naming a fingerprinted one's own root; or nothing to disagree with (unknown)."""
    if "unknown" in (ka.basis, kb.basis) or (ka.basis == kb.basis and ka.value == kb.value):
        return True
    if ka.basis != kb.basis and "fingerprint" in (ka.basis, kb.basis):
        fp, other = (ka, kb) if ka.basis == "fingerprint" else (kb, ka)
        return fp.legacy == f"{other.basis}\t{other.value}"
    return False


def _clip_hash(run: LoadedRun) -> str | None:
    return (run.record.get("clip") or {}).get("weights_hash")


def _side(run: LoadedRun) -> str:
    """'chimera [default] seed 0, CLIP 0bbd62d0': what a reader needs to know which run is which."""
    rec = run.record
    clip = _clip_hash(run)
    return (f"{rec['method']['name']} [{rec['method'].get('label', '?')}] seed {rec.get('provenance', {}).get('seed')}"
            f", CLIP {clip[:8] if clip else '-'}")


def _percent(block: dict, n_boot: int) -> dict:
    """Values in %; a p-value below the bootstrap's resolution (no resample crossed zero) is reported as
    that bound with ``p_value_is_bound`` (the table prints ``< 1/n_boot``), never as an exact 0."""
    out = {}
    for key, value in block.items():
        out[key] = value if key == "p_value" or value is None else round(100.0 * float(value), 4)
    p = out.get("p_value")
    bound = p is not None and p == p and n_boot > 0 and p < 1 / n_boot
    if "p_value" in out:
        out["p_value"] = 1 / n_boot if bound else p
        out["p_value_is_bound"] = bool(bound)
    return out


def render_comparison(result: dict) -> str:
    rows = []
    for key, label in _ROWS:
        m = result["metrics"][key]
        rows.append([label, _f(m["a"]), _f(m["b"]), _f(m["delta"], signed=True),
                     f"[{_f(m['low'], signed=True)}, {_f(m['high'], signed=True)}]",
                     _p(m["p_value"], result["n_boot"], m.get("p_value_is_bound", False))])
    head = (f"A = {result.get('side_a', result['method_a'])} ({result['a']})\n"
            f"B = {result.get('side_b', result['method_b'])} ({result['b']})\n"
            + "".join(f"warning: {w}\n" for w in result.get("warnings", []))
            + f"protocol {result['protocol']}"
            + (f", {result['test_set']}" if result.get("test_set") else "")
            + f", {result['convention']} convention, paired bootstrap over images "
            f"({result['n_boot']} resamples, seed {result['seed']}); delta = B - A, in %\n")
    table = tabulate(rows, headers=["metric", "A", "B", "delta", "95% CI", "p"], tablefmt="github",
                     disable_numparse=True, colalign=("left", "right", "right", "right", "right", "right"))
    return head + table + "\n"


def _p(p, n_boot: int, bound: bool = False) -> str:
    """A bootstrap p-value cannot resolve below 1/n_boot; say so instead of printing 0."""
    if p is None or p != p:
        return "n/a"
    return f"< {1 / n_boot:.0e}" if bound or p < 1 / n_boot else f"{p:.3f}"


def _f(x, signed: bool = False) -> str:
    if x is None or x != x:
        return "n/a"
    return f"{x:+.2f}" if signed else f"{x:.2f}"
