"""``zss-bench reproduce RUN``: re-run the exact cell of a record and say whether it came back.

"Retrained model is N points below the paper" is the most common complaint in ZSS issue
trackers, and it is unanswerable without a faithful re-run and a test of the difference. A
record holds everything a re-run needs (method, resolved config, seed, protocol hash, CLIP
hash); this module turns it back into a ``zss-bench run`` into a scratch folder (never the
committed ``results/``) and compares the two runs image by image:

* *identical*: the same confusion matrix (bit-for-bit the same predictions' counts), from two runs that
  were both deterministic on the same device type (:func:`repeatable`): CPU runs always count as
  deterministic (torch's CPU kernels repeat bit for bit on one CPU type: the committed CPU records
  reproduce identically), CUDA runs only with ``ZSS.DETERMINISTIC True`` and no op that torch reported
  as having no deterministic kernel. A CPU record re-run on CUDA, or a CUDA run without deterministic
  mode, is at best *within noise*, even when its matrix happens to match;
* *within noise*: the paired-bootstrap 95% CI of new - recorded covers 0 for every headline
  metric (runs on another CPU type land here: CPU training is deterministic on one CPU type only);
* *not reproduced*: some CI excludes 0, or the record's metrics do not match its own
  confusion matrix (an edited or corrupt record).

It refuses, before training anything, when a re-run could not be faithful: the protocol has
changed (other hash), the CLIP the record used now loads other weights, the method no longer
has a config key the record set, the record re-scored a checkpoint that is not here, or it ran on
more GPUs than are visible here. The re-run uses the record's device type (a CUDA record on a
machine without CUDA runs on the CPU, with a note).
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from zss_bench.protocol import Protocol, ProtocolError, load_protocol, protocol_ref
from zss_bench.records.paths import expand_path, expand_spec
from zss_bench.records.store import LoadedRun, RecordError, load_run

VERDICTS = ("identical", "within noise", "not reproduced")
METRICS = (("mIoU_seen", "mIoU(S)"), ("mIoU_unseen", "mIoU(U)"), ("hIoU", "hIoU"), ("mIoU", "mIoU"), ("pAcc", "pAcc"))
# Keys a re-run sets itself (from the protocol, the seed and its scratch folder), or that only
# steer logging: they are not carried over from the record.
_NOT_CARRIED = {"OUTPUT_DIR", "SEED", "ZSS.DATA_ROOT", "ZSS.PROTOCOL", "ZSS.PROTOCOL_HASH", "ZSS.PROTOCOL_FILE", "ZSS.CONFIG_FILE", "ZSS.METHOD",
                "ZSS.LABEL", "ZSS.PROGRESS", "DATASETS.TRAIN", "DATASETS.TEST",
                "MODEL.DEVICE"}  # the device: Plan.device, from the record's device type
_PATH_KEYS = {"MODEL.WEIGHTS"}
_TOLERANCE = 1e-6  # percent points: records store metrics rounded to 1e-6


class ReproduceError(ValueError):
    """The record cannot be re-run faithfully here; the message says why."""


@dataclass
class Plan:
    """What a faithful re-run of ``run`` needs, resolved on this machine."""

    run: LoadedRun
    protocol: Protocol
    method: str
    seed: int
    opts: list[str]
    data_root: str | None
    eval_only: bool
    num_gpus: int
    notes: list[str] = field(default_factory=list)
    device: str = "cpu"  # the re-run's device type: the record's, where this machine has it


def _flatten(node, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, dotted + "."))
        else:
            out[dotted] = value
    return out


def _encode(value) -> str:
    """A config value as a detectron2 KEY VALUE override (``merge_from_list`` literal-evals it)."""
    return value if isinstance(value, str) else repr(value)


def _dataset_root(protocol: Protocol, recorded: str, override: str | None) -> str | None:
    """Where to find the record's dataset here. ``None`` = the default synth world (generated
    byte-identically for its seed wherever the cache is)."""
    if override:
        return override
    from zss_bench.engine.run import default_synth_world_dir

    path = Path(expand_path(recorded)) if recorded else None
    if protocol.dataset == "synth" and path is not None and path.name == default_synth_world_dir(protocol).name:
        return None
    if path is not None and path.is_dir():
        return str(path)
    raise ReproduceError(f"the record's dataset root {recorded!r} is not on this machine; pass --data-root DIR "
                         "(the same dataset, prepared for this protocol)")


def _check_clip(run: LoadedRun, protocol: Protocol, spec: str) -> list[str]:
    block = run.record.get("clip")
    if not block:
        return []
    from zss_bench.modeling.clip_support import load_run_clip

    want = block.get("weights_hash")
    try:
        clip = load_run_clip(spec, protocol, "cpu")
    except ValueError as exc:
        raise ReproduceError(f"the record's CLIP ({block.get('spec')}) cannot be loaded here: {exc}") from None
    if clip.weights_hash != want:
        raise ReproduceError(
            f"the record used CLIP weights {str(want)[:12]}... ({block.get('spec')}), but that spec loads "
            f"{clip.weights_hash[:12]}... ({clip.spec}) here; a re-run with other weights is not a reproduction "
            "(pass the record's checkpoint with --clip-override NAME:/path)")
    return [f"CLIP {clip.spec}: weights {want[:12]}... as recorded"]


def plan(run: LoadedRun, *, data_root: str | None = None, clip_override: str | None = None) -> Plan:
    """Check that ``run`` can be re-run faithfully here and resolve how; ReproduceError if not."""
    from zss_bench.engine.config import build_run_config, config_dict
    from zss_bench.plugins import get_method

    rec = run.record
    where = run.path / "record.json"
    if rec.get("kind") != "run":
        raise ReproduceError(f"{where}: only records of `zss-bench run` can be re-run (this one is "
                             f"kind {rec.get('kind')!r}: scored from a prediction folder, no model to re-run)")
    for key in ("config", "config_hash"):
        if key not in rec["method"]:
            raise ReproduceError(f"{where}: the method block has no resolved '{key}'; cannot re-run it")
    pinfo = rec["protocol"]
    try:
        protocol = load_protocol(protocol_ref(pinfo))
    except (ProtocolError, KeyError) as exc:
        raise ReproduceError(f"{where}: its protocol cannot be loaded here ({exc})") from None
    if protocol.content_hash != pinfo["hash"]:
        raise ReproduceError(
            f"{where}: protocol {pinfo['name']} has changed since the record (record hash {pinfo['hash'][:12]}..., "
            f"now {protocol.content_hash[:12]}...); a re-run would answer a different question")
    try:
        plugin = get_method(rec["method"]["name"])
    except KeyError as exc:  # UnknownNameError: its message carries the suggestions
        raise ReproduceError(f"{where}: {exc}") from None
    seed = rec.get("provenance", {}).get("seed")
    if not isinstance(seed, int):
        raise ReproduceError(f"{where}: provenance.seed is missing")
    recorded = _flatten(rec["method"]["config"])
    root = _dataset_root(protocol, rec.get("dataset", {}).get("root", ""), data_root)
    current = _flatten(config_dict(build_run_config(plugin, protocol, seed=seed, output_dir="", data_root=root or "")))
    gone = sorted(k for k in recorded if k not in current and k not in _NOT_CARRIED)
    if gone:
        raise ReproduceError(
            f"{where}: method {plugin.name} no longer has the config key(s) {', '.join(gone)} that the record set "
            f"(recorded by zss-bench git {str(rec.get('provenance', {}).get('git', {}).get('sha'))[:10]}); "
            "check out that version to reproduce it")
    notes = []
    added = sorted(k for k in current if k not in recorded and k not in _NOT_CARRIED)
    if added:
        notes.append(f"config keys added since the record, at their defaults: {', '.join(added)}")
    opts = []
    for key in sorted(recorded):
        if key in _NOT_CARRIED:
            continue
        value = recorded[key]
        if key in _PATH_KEYS and value:
            value = expand_path(value)
            if not Path(value).is_file():
                raise ReproduceError(
                    f"{where}: the record evaluated the checkpoint {recorded[key]}, which is not here; reproduce "
                    "the record that trained it first, or restore its work dir")
        if key == "ZSS.CLIP":
            value = clip_override or expand_spec(value)
        if _norm(value) != _norm(current[key]):
            opts += [key, _encode(value)]
    opts += ["ZSS.LABEL", str(rec["method"].get("label") or recorded.get("ZSS.LABEL") or "default")]
    clip_spec = clip_override or expand_spec(recorded.get("ZSS.CLIP", ""))
    notes += _check_clip(run, protocol, clip_spec)
    cfg = build_run_config(plugin, protocol, seed=seed, output_dir="", data_root=root or "", opts=opts)
    resolved = _flatten(config_dict(cfg))
    differ = [k for k in recorded if k not in _NOT_CARRIED and k not in _PATH_KEYS and k != "ZSS.CLIP"
              and _norm(resolved.get(k)) != _norm(recorded[k])]
    if differ:
        raise ReproduceError(f"{where}: cannot rebuild the recorded config here; these keys still differ: "
                             f"{', '.join(differ[:8])}")
    training = rec.get("training", {})
    num_gpus = int(training.get("world_size") or 1)
    device = _rerun_device(rec, where, num_gpus, notes)
    return Plan(run=run, protocol=protocol, method=plugin.name, seed=seed, opts=opts, data_root=root,
                eval_only=bool(training.get("eval_only")), num_gpus=num_gpus, notes=notes, device=device)


def _rerun_device(rec: dict, where: Path, num_gpus: int, notes: list[str]) -> str:
    """The record's device type, where this machine has it (a CUDA record without CUDA here: the CPU,
    with a note); a CUDA record of more processes than the GPUs visible here is refused."""
    from zss_bench.engine.launch import visible_gpus
    from zss_bench.records.provenance import record_device_type

    kind = record_device_type(rec) or "cpu"
    if kind == "cpu":
        return "cpu"
    visible = visible_gpus()
    if not visible:
        notes.append("the record ran on CUDA and no CUDA device is visible here: the re-run uses the CPU, "
                     "so the verdict can be 'within noise' at best")
        return "cpu"
    if num_gpus > visible:
        raise ReproduceError(f"{where}: the record ran {num_gpus} processes on {num_gpus} GPUs, but only {visible} "
                             f"CUDA device{'s' if visible != 1 else ''} visible here; a re-run on fewer is not the same run")
    return "cuda"


def _norm(value):
    """Compare config values as JSON does (tuples == lists)."""
    return json.loads(json.dumps(value, default=list))


# --------------------------------------------------------------------------- comparison


def _recorded_matches_confusion(run: LoadedRun, protocol: Protocol) -> list[str]:
    """Headline metrics that ``record.json`` states differently from what its own
    ``confusion.npz`` gives (an edited or corrupt record), as readable lines."""
    from zss_bench.evaluation import score
    from zss_bench.metrics import ConfusionMatrix

    cm = ConfusionMatrix.load(run.confusion_path)
    again = score(cm, protocol, n_boot=0)
    bad = []
    for key, label in METRICS:
        a, b = run.record["metrics"].get(key), again.get(key)
        if (a is None) != (b is None) or (a is not None and abs(float(a) - float(b)) > _TOLERANCE):
            bad.append(f"{label}: record.json says {_f(a)}, its {run.confusion_path.name} gives {_f(b)}")
    return bad


def compare(old: LoadedRun, new: LoadedRun, protocol: Protocol, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """Verdict and per-metric (recorded, new, delta, CI of the difference) for a re-run."""
    from zss_bench.metrics import ConfusionMatrix
    from zss_bench.tables.compare import compare_runs

    if not old.confusion_path.is_file():
        raise RecordError(f"{old.path}: no {old.confusion_path.name}; cannot compare image by image")
    inconsistent = _recorded_matches_confusion(old, protocol)
    same = np.array_equal(ConfusionMatrix.load(old.confusion_path).matrix, ConfusionMatrix.load(new.confusion_path).matrix)
    paired = compare_runs(old, new, n_boot=n_boot, seed=seed, seen_ids=protocol.seen_ids,
                          unseen_ids=protocol.unseen_ids)
    rows = {}
    for key, label in METRICS:
        m = paired["metrics"][key]
        recorded, now = old.record["metrics"].get(key), new.record["metrics"].get(key)
        delta = None if recorded is None or now is None else float(now) - float(recorded)
        covers = m["low"] is not None and m["high"] is not None and m["low"] <= 0.0 <= m["high"]
        rows[key] = {"label": label, "recorded": recorded, "new": now, "delta": delta,
                     "low": m["low"], "high": m["high"], "ci_covers_0": bool(covers or same)}
    determinism = {"recorded": _determinism(old.record), "new": _determinism(new.record)}
    if inconsistent:
        verdict = "not reproduced"
    elif same and repeatable(old.record, new.record):
        verdict = "identical"
    elif all(r["ci_covers_0"] for r in rows.values()):
        verdict = "within noise"
    else:
        verdict = "not reproduced"
    return {"verdict": verdict, "identical_confusion": bool(same), "inconsistent_record": inconsistent,
            "determinism": determinism, "metrics": rows, "n_boot": n_boot, "bootstrap_seed": seed, "recorded_run": str(old.path),
            "new_run": str(new.path)}


def _determinism(rec: dict) -> dict:
    from zss_bench.records.provenance import record_device_type, record_repeatable

    block = (rec.get("provenance") or {}).get("deterministic")
    return {"device": record_device_type(rec), "repeatable": record_repeatable(rec),
            "requested": block.get("requested") if isinstance(block, dict) else None,
            "nondeterministic_ops": block.get("nondeterministic_ops") if isinstance(block, dict) else None}


def repeatable(old: dict, new: dict) -> bool:
    """The rule for *identical*: both runs deterministic (:func:`~zss_bench.records.provenance.record_repeatable`:
    CPU runs always, CUDA runs in deterministic mode with no non-deterministic op) on the same device type.
    Two other runs that give the same matrix agree by chance, not by construction: *within noise*."""
    a, b = _determinism(old), _determinism(new)
    return a["repeatable"] and b["repeatable"] and a["device"] is not None and a["device"] == b["device"]


def _not_repeatable_why(result: dict) -> str:
    """Why two equal matrices are not called identical, in words."""
    d = result.get("determinism") or {}
    a, b = d.get("recorded") or {}, d.get("new") or {}
    if a.get("device") != b.get("device"):
        return f"recorded on {a.get('device') or 'an unknown device'}, re-run on {b.get('device') or 'an unknown device'}"
    which = [name for name, x in (("recorded", a), ("re-run", b)) if not x.get("repeatable")]
    ops = sorted({op for x in (a, b) for op in (x.get("nondeterministic_ops") or [])})
    return (f"the {' and the '.join(which)} run{'s were' if len(which) > 1 else ' was'} not deterministic on "
            f"{a.get('device') or 'an unknown device'}" + (f" (ops without a deterministic kernel: {', '.join(ops)})" if ops
                                    else " (CUDA needs ZSS.DETERMINISTIC True)"))


def _f(x, signed: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{float(x):+.2f}" if signed else f"{float(x):.2f}"


def render(result: dict, old: LoadedRun, new: LoadedRun) -> str:
    from tabulate import tabulate

    from zss_bench.records.provenance import machine_summary

    rows = [[r["label"], _f(r["recorded"]), _f(r["new"]), _f(r["delta"], True),
             f"[{_f(r['low'], True)}, {_f(r['high'], True)}]", "yes" if r["ci_covers_0"] else "NO"]
            for r in result["metrics"].values()]
    head = (f"recorded: {old.path}\n  machine: {machine_summary(_device(old))}\n"
            f"re-run:   {new.path}\n  machine: {machine_summary(_device(new))}\n"
            f"paired bootstrap over images ({result['n_boot']} resamples, seed {result['bootstrap_seed']}); "
            "delta = new - recorded, in %\n")
    table = tabulate(rows, headers=["metric", "recorded", "new", "delta", "95% CI of delta", "covers 0"],
                     tablefmt="github", disable_numparse=True,
                     colalign=("left", "right", "right", "right", "right", "right"))
    lines = [head + table]
    for problem in result["inconsistent_record"]:
        lines.append(f"record inconsistent: {problem}")
    why = {"identical": "the same confusion matrix, both runs deterministic on "
                        f"{(result.get('determinism') or {}).get('recorded', {}).get('device')}",
           "within noise": ("the same confusion matrix, but 'identical' needs two runs deterministic on one device "
                            f"type: {_not_repeatable_why(result)}" if result.get("identical_confusion")
                            else "every 95% CI of the difference covers 0"),
           "not reproduced": ("the record's metrics do not match its own confusion matrix"
                              if result["inconsistent_record"] else "a 95% CI of the difference excludes 0")}
    lines.append(f"verdict: {result['verdict']} ({why[result['verdict']]})")
    return "\n".join(lines) + "\n"


def _device(run: LoadedRun) -> dict | None:
    dev = run.record.get("provenance", {}).get("device")
    return dev if isinstance(dev, dict) else {"device_name": f"{dev} (machine not recorded)"} if dev else None


# --------------------------------------------------------------------------- entry point


def scratch_dir(run: LoadedRun) -> Path:
    from zss_bench.cache import cache_path

    return cache_path("reproduce", f"{run.record.get('run_id', run.path.name)}-{time.strftime('%Y%m%d-%H%M%S')}")


def _inside(child: Path, parent: Path) -> bool:
    child, parent = child.resolve(), parent.resolve()
    return child == parent or parent in child.parents


def reproduce(spec: str, *, results: str | None = None, out: str | None = None, data_root: str | None = None,
              clip_override: str | None = None, n_boot: int = 1000, dry_run: bool = False) -> tuple[dict, str]:
    """Re-run the record ``spec`` (run dir, record.json or run id under ``results``) into ``out``
    (default: a fresh folder under ``$ZSS_BENCH_CACHE/reproduce/``); return (result, report text)."""
    from zss_bench.engine.run import RunRequest, run_method
    from zss_bench.records.store import atomic_write_text, resolve_run

    from zss_bench.records.store import default_results_root

    results = results or default_results_root()
    run = resolve_run(spec, results)
    target = Path(out) if out else scratch_dir(run)
    results_root = run.path.parents[3]  # <results>/runs/<protocol>/<method>/<run-id>
    if _inside(target, results_root) or _inside(target, Path(results)):
        raise ReproduceError(f"--out {target} lies inside the results root {results_root}; a reproduction "
                             "goes to a scratch folder, never next to the records it checks")
    p = plan(run, data_root=data_root, clip_override=clip_override)
    summary = (f"re-running {p.method} [{run.record['method'].get('label')}] seed {p.seed} on {p.protocol.name} "
               f"({'evaluation only' if p.eval_only else 'train + evaluate'}, on {p.device}) into {target}")
    if dry_run:
        return {"verdict": None, "plan": {"opts": p.opts, "notes": p.notes}}, \
            summary + "\n  overrides: " + " ".join(p.opts) + "".join(f"\n  note: {n}" for n in p.notes) + "\n"
    if target.exists() and any(target.iterdir()):
        raise ReproduceError(f"--out {target} is not empty; give a new folder")
    print(summary + "".join(f"\n  note: {n}" for n in p.notes), flush=True)
    req = RunRequest(method=p.method, protocol=p.protocol.name, data_root=p.data_root, seed=p.seed,
                     output_dir=str(target / "work"), eval_only=p.eval_only, num_gpus=p.num_gpus, opts=p.opts,
                     results_root=str(target / "results"), device=p.device)
    new = load_run(run_method(req))
    result = compare(run, new, p.protocol, n_boot=n_boot)
    atomic_write_text(target / "reproduction.json", json.dumps(result, indent=2) + "\n")
    return result, render(result, run, new)
