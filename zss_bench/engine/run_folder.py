"""Who owns a run's output folder, and which run it holds.

Why: a training folder is state. Two runs writing into it at once interleave ``metrics.json`` and
overwrite each other's checkpoints, and a ``--resume`` or ``--eval-only`` of a folder that holds
*another* run (seed, config, CLIP, data) would file that run's weights under this request. So a run

* holds a **lock** on its folder (``run.lock``: pid, host, start time; created atomically). A lock
  left by a killed process on this host is taken over with a message; one of a live process, or of
  another host (whose processes cannot be checked from here), refuses the run in one line.
* writes its **identity** (``run_identity.json``: method, protocol hash, seed, CLIP spec and weights
  hash, data root and prepared-index fingerprint, resolved config hash) when it starts; a run that
  continues or re-scores the folder must have the same identity, and the first difference is named.
  Folders from before this file existed are compared on their ``config.yaml`` as far as it allows.
* leaves **no stub folder** when it is refused or fails before it has trained anything.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import sys
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

LOCK_FILE = "run.lock"
IDENTITY_FILE = "run_identity.json"
IDENTITY_SCHEMA = 1
# what a run leaves behind once it has trained or recorded something (the rest is set-up: config.yaml,
# run_identity.json, log.txt, model.txt, event files, and the metrics.json the trainer opens empty)
_PRODUCTS = ("model_*.pth", "last_checkpoint", "record_dir.txt")


class RunFolderError(ValueError):
    """The run cannot use its output folder as asked (it holds an earlier or another run, or is in use)."""


class RunFolderLocked(RunFolderError):
    """Another run holds the folder's lock."""


class RunIdentityMismatch(RunFolderError):
    """``--resume`` / ``--eval-only`` of a folder that holds a different run."""


# --------------------------------------------------------------------------- identity


def sha256_file(path) -> str | None:
    """sha256 of a file's bytes (the project's one hasher, ``clip.shipped.sha256_of``); None where it cannot
    be read (a URL or catalog name detectron2 resolves itself)."""
    from zss_bench.clip.shipped import sha256_of

    try:
        return sha256_of(Path(path))
    except OSError:
        return None


def clip_identity(spec: str) -> dict:
    """``{"spec", "sha256"}`` of a CLIP spec without building the model: the sha256 of the weights file
    where it is known cheaply (a shipped tag's pinned hash, a checkpoint file or folder, a tag already in
    the local cache; ``None`` for seeded random weights, which the spec determines, and uncached tags)."""
    from zss_bench.clip import loading

    loading.register_model_configs()
    parsed = loading._parse(spec)  # a bad spec fails here, before any folder is touched
    sha = None
    if parsed.kind == "shipped":
        from zss_bench.clip.shipped import tag_table

        sha = tag_table()[parsed.name][parsed.target]["sha256"]
    elif parsed.kind == "file":
        path = Path(parsed.target).expanduser()
        sha = loading.file_sha256(path) if path.is_file() else None
    elif parsed.kind == "dir":
        import open_clip

        weights = open_clip.factory._find_checkpoint_in_dir(Path(parsed.target).expanduser())
        sha = loading.file_sha256(weights) if weights else None
    elif parsed.kind == "tag":
        import open_clip

        cached = loading._cached_tag_file(open_clip.get_pretrained_cfg(parsed.name, parsed.target))
        sha = loading.file_sha256(cached) if cached else None
    return {"spec": spec.strip(), "sha256": sha}


def run_identity(cfg, plugin, protocol, root) -> dict:
    """What makes a run *this* run: a folder continued or re-scored must hold the same."""
    from zss_bench import __version__
    from zss_bench.data.prepare import index_dir
    from zss_bench.engine.config import config_hash

    clip = None
    if plugin.uses_clip:
        from zss_bench.modeling.clip_support import resolve_clip_spec

        clip = clip_identity(resolve_clip_spec(cfg.ZSS.CLIP, protocol))
    root = Path(root).resolve()
    return {"schema": IDENTITY_SCHEMA, "method": plugin.name,
            "protocol": {"name": protocol.name, "hash": protocol.content_hash},
            "seed": int(cfg.SEED), "clip": clip,
            "data": {"root": str(root), "index_sha256": sha256_file(index_dir(protocol, root) / "index.json")},
            "config_hash": config_hash(cfg), "zss_bench": __version__,
            "written": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_identity(out: Path, identity: dict) -> None:
    from zss_bench.records.store import atomic_write_text

    atomic_write_text(Path(out) / IDENTITY_FILE, json.dumps(identity, indent=2, sort_keys=True) + "\n")


def _flatten(doc, prefix: str = "") -> dict:
    out = {}
    for key, value in (doc or {}).items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value
    return out


def _hashed_keys(flat: dict) -> dict:
    from zss_bench.engine.labels import NOT_HASHED

    return {k: v for k, v in flat.items() if k not in NOT_HASHED}


def _folder_config(out: Path) -> dict | None:
    """The folder's ``config.yaml`` (the resolved config its run dumped), flattened; None if absent."""
    import yaml

    path = Path(out) / "config.yaml"
    if not path.is_file():
        return None
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return None
    return _flatten(doc) if isinstance(doc, dict) else None


def _first_config_difference(theirs: dict | None, cfg) -> tuple[str, object, object] | None:
    """(key, folder's value, this run's value) of the first hashed config key that differs."""
    from zss_bench.engine.config import config_dict

    if theirs is None:
        return None
    ours, theirs = _hashed_keys(_flatten(config_dict(cfg))), _hashed_keys(theirs)
    for key, value in ours.items():
        if key in theirs and theirs[key] != value:
            return key, theirs[key], value
    return None


def _short(value) -> str:
    text = str(value)
    return text[:12] + "…" if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else repr(value)


def identity_difference(out: Path, identity: dict, cfg) -> str | None:
    """The first way the run held by ``out`` differs from ``identity`` ("seed is 0 there, 7 here"), or
    None when it is the same run or the folder says nothing about its run. Folders without
    ``run_identity.json`` are compared on their ``config.yaml`` (method, protocol, seed, data root and
    every hashed config key both know)."""
    out = Path(out)
    config = _folder_config(out)
    path = out / IDENTITY_FILE
    if path.is_file():
        try:
            theirs = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            return f"its {IDENTITY_FILE} is unreadable ({exc})"
        pairs = [("method", theirs.get("method"), identity["method"]),
                 ("protocol hash", (theirs.get("protocol") or {}).get("hash"), identity["protocol"]["hash"]),
                 ("seed", theirs.get("seed"), identity["seed"]),
                 ("CLIP spec", (theirs.get("clip") or {}).get("spec"), (identity["clip"] or {}).get("spec")),
                 ("data root", (theirs.get("data") or {}).get("root"), identity["data"]["root"])]
        clip_t, clip_o = theirs.get("clip") or {}, identity["clip"] or {}
        if clip_t.get("sha256") and clip_o.get("sha256"):
            pairs.append(("CLIP weights sha256", clip_t["sha256"], clip_o["sha256"]))
        data_t, data_o = (theirs.get("data") or {}).get("index_sha256"), identity["data"]["index_sha256"]
        if data_t and data_o:
            pairs.append(("prepared dataset index sha256", data_t, data_o))
        for what, there, here in pairs:
            if there != here:
                return f"{what} is {_short(there)} there, {_short(here)} here"
        if theirs.get("config_hash") != identity["config_hash"]:
            diff = _first_config_difference(config, cfg)
            if diff:
                return f"config {diff[0]} is {diff[1]!r} there, {diff[2]!r} here"
            return (f"config hash is {_short(theirs.get('config_hash'))} there, {_short(identity['config_hash'])} "
                    "here (its config.yaml names no differing key: another zss-bench version?)")
        return None
    if config is None:
        return None
    legacy = [("method", config.get("ZSS.METHOD"), identity["method"]),
              ("protocol hash", config.get("ZSS.PROTOCOL_HASH"), identity["protocol"]["hash"]),
              ("seed", config.get("SEED"), identity["seed"])]
    root = config.get("ZSS.DATA_ROOT")
    if root:
        legacy.append(("data root", str(Path(root).resolve()), identity["data"]["root"]))
    for what, there, here in legacy:
        if there is not None and there != here:
            return f"{what} is {_short(there)} there, {_short(here)} here (its config.yaml)"
    diff = _first_config_difference(config, cfg)
    if diff:
        return f"config {diff[0]} is {diff[1]!r} there, {diff[2]!r} here (its config.yaml)"
    return None


def check_identity(out: Path, identity: dict, cfg, flag: str) -> None:
    """Raise RunIdentityMismatch when ``out`` holds another run than ``identity`` (``flag``: the option
    that asked to use the folder's run, ``--resume`` or ``--eval-only``)."""
    diff = identity_difference(out, identity, cfg)
    if diff is None:
        return
    weights = Path(out) / "model_final.pth"
    hint = (f"to score its weights under this request, pass MODEL.WEIGHTS {weights} with another --output-dir"
            if flag == "--eval-only" else
            "continue it with its own arguments, train this one elsewhere (--output-dir DIR), or start over "
            "without --resume (--overwrite deletes its checkpoints)")
    raise RunIdentityMismatch(f"{flag}: {out} holds another run ({diff}; {Path(out) / IDENTITY_FILE}); {hint}")


# --------------------------------------------------------------------------- lock


def _process_start(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux ``/proc``), so that a reused pid is not taken for the
    process that wrote a lock; None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 and fields[0] not in ("Z", "X") else None


def _alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OverflowError, ValueError):
        return False
    if Path(f"/proc/{pid}").is_dir():  # Linux: a zombie or a reused pid is not the lock's process
        now = _process_start(pid)
        return now is not None and (start is None or now == start)
    return True


def _describe(doc: dict) -> str:
    command = doc.get("command")
    return (f"pid {doc.get('pid')} on host {doc.get('host')} since {doc.get('started')}"
            + (f" ({command})" if command else ""))


class FolderLock:
    """An exclusive lock on a run folder: ``run.lock`` holding pid, host, start time and a token."""

    def __init__(self, path: Path, text: str):
        self.path, self._text = path, text

    @classmethod
    def acquire(cls, folder: Path, announce=None, command: str | None = None) -> "FolderLock":
        """Create ``folder/run.lock`` atomically (O_EXCL) or raise RunFolderLocked naming its holder; a
        lock of a dead process on this host is taken over and ``announce`` (default: stderr) says so.
        ``command``: what holds the folder, for the message another run gets (default: this command line)."""
        announce = announce or (lambda msg: print(msg, file=sys.stderr, flush=True))
        path = Path(folder) / LOCK_FILE
        pid = os.getpid()
        doc = {"pid": pid, "host": socket.gethostname(), "pid_start": _process_start(pid),
               "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "command": command if command is not None else " ".join(sys.argv),
               "token": secrets.token_hex(8)}
        text = json.dumps(doc) + "\n"
        for _ in range(5):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held, held_text = cls._read(path)
                if held_text is None:
                    continue  # removed meanwhile: try again
                if held is None:
                    raise RunFolderLocked(f"{folder} is locked ({path} is not a zss-bench lock or was left half "
                                          f"written); if no run is using the folder, delete {path}") from None
                if held.get("host") != doc["host"]:
                    raise RunFolderLocked(
                        f"{folder} is in use by {_describe(held)}; that host's processes cannot be checked from "
                        f"here: if that run is no longer running, delete {path}") from None
                if _alive(int(held.get("pid", -1)), held.get("pid_start")):
                    raise RunFolderLocked(f"{folder} is in use by another run: {_describe(held)}; wait for it to "
                                          "finish, or give this run another --output-dir") from None
                if cls._remove_stale(path, held_text):
                    announce(f"zss-bench run: taking over the stale lock {path} of {_describe(held)}, "
                             "which is no longer running")
                continue
            try:
                os.write(fd, text.encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            return cls(path, text)
        raise RunFolderLocked(f"{folder}: could not take the lock {path} (other runs keep taking it)")

    @staticmethod
    def _read(path: Path) -> tuple[dict | None, str | None]:
        """(parsed lock, its text); text None: the file is gone. A just-created lock may be empty for a
        moment: read again briefly before calling it broken."""
        for _ in range(20):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                return None, None
            try:
                doc = json.loads(text)
                if isinstance(doc, dict) and "pid" in doc:
                    return doc, text
            except ValueError:
                pass
            time.sleep(0.05)
        return None, text

    @staticmethod
    def _remove_stale(path: Path, seen: str) -> bool:
        """Move the stale lock aside and delete it, unless a live run replaced it since it was read."""
        grave = path.with_name(f".{LOCK_FILE}.stale-{secrets.token_hex(4)}")
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return False
        if grave.read_text(encoding="utf-8") != seen:  # raced with another taker: put the live lock back
            try:
                os.link(grave, path)
            except FileExistsError:
                pass
            grave.unlink()
            return False
        grave.unlink()
        return True

    def release(self) -> None:
        """Delete the lock if it is still this run's."""
        try:
            if self.path.read_text(encoding="utf-8") == self._text:
                self.path.unlink()
        except FileNotFoundError:
            pass


# --------------------------------------------------------------------------- the folder of one run


def _trained_anything(out: Path) -> bool:
    metrics = out / "metrics.json"
    return (any(next(iter(out.glob(pattern)), None) is not None for pattern in _PRODUCTS)
            or (metrics.is_file() and metrics.stat().st_size > 0))


@contextmanager
def claim(out: Path, *, lock: bool = True, announce=None, command: str | None = None):
    """Create ``out`` if needed and hold its lock for the body. If the body fails before the folder
    holds any training product (a refusal, a failed model build...), what this run added is removed,
    and so are the folders it created: no stub folder is left. A folder's earlier contents are kept."""
    out = Path(out)
    created = []
    probe = out.absolute()
    while not probe.exists():
        created.append(probe)
        probe = probe.parent
    out.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(out))
    held = None
    try:
        if lock:
            held = FolderLock.acquire(out, announce, command)
        yield out
    except BaseException:
        if held is not None and not _trained_anything(out):
            for name in set(os.listdir(out)) - before - {LOCK_FILE}:
                target = out / name
                shutil.rmtree(target, ignore_errors=True) if target.is_dir() else target.unlink(missing_ok=True)
        raise
    finally:
        if held is not None:
            held.release()
        for folder in created:  # innermost first; only if nothing else is in them
            try:
                folder.rmdir()
            except OSError:
                break
