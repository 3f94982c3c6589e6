"""``make demo`` / ``zss-bench demo``: the main job, end to end, on the embedded synthetic protocol.

protocol -> synthetic world (generate + prepare, like a VOC folder) -> the shipped toy CLIP
teacher (``zss-toy-vit:synth-v1``, sha256-pinned weights inside the package: no training, the
same teacher as every committed record) -> ``zss-bench run --method chimera`` -> run record ->
leaderboard. The Chimera-Seg run uses a shortened schedule (``DEMO_ITERS``), labelled with the
schedule, so that the demo fits 5 minutes on 2 cores after ``make setup`` (measured times: README).
The committed full-length table (``results/synth-15-5.md``, 3 seeds + baseline + ablations) is
printed afterwards for reference.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

from zss_bench.cli import main as cli_main

PROTOCOL = "synth-15-5"
WORLD_SEED, N_TRAIN, N_VAL = 0, 2000, 300  # the same world the committed synth-15-5 runs use
DEMO_ITERS = 300
QUICK_CLIP = "zss-micro-vit:random"  # tests: an untrained micro CLIP, so no pretraining
REFERENCE_TABLE = Path(__file__).resolve().parents[1] / "results" / f"{PROTOCOL}.md"
MARKER = ".zss-bench-demo"  # written first into a demo folder: only a folder holding it is ever cleared


class DemoFolderError(ValueError):
    """``--out`` names a folder the demo did not write: it is never cleared."""


def prepare_out(out: Path) -> None:
    """Clear ``out`` for a new demo only if an earlier demo wrote it (its marker file); an empty or
    missing folder is used as is; anything else is refused, so ``--out ~/thesis`` deletes nothing."""
    if out.exists() and not out.is_dir():
        raise DemoFolderError(f"--out {out} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise DemoFolderError(f"--out {out} is not empty and was not written by `zss-bench demo` (no {MARKER} "
                                  "in it); refusing to clear it: pass a new or empty folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / MARKER).write_text(json.dumps({"written_by": "zss-bench demo", "started": time.time()}) + "\n")


def _say(*argv: str) -> int:
    print("\n$ zss-bench " + " ".join(argv), flush=True)
    return cli_main(list(argv))


def _schedule(quick: bool) -> tuple[str, ...]:
    if quick:
        return ("SOLVER.MAX_ITER", "4", "SOLVER.IMS_PER_BATCH", "4", "SOLVER.CHECKPOINT_PERIOD", "1000",
                "ZSS.N_BOOT", "50", "ZSS.LABEL", "demo-4it")
    return ("SOLVER.MAX_ITER", str(DEMO_ITERS), "SOLVER.CHECKPOINT_PERIOD", "1000",
            "ZSS.LABEL", f"demo-{DEMO_ITERS}it")


def run_demo(out: Path, quick: bool = False) -> int:
    """``quick`` (tests): a tiny world, an untrained micro CLIP and a 4-iteration run."""
    start = time.time()
    print(f"zss-bench demo: Chimera-Seg on {PROTOCOL}, end to end on CPU.\n"
          "  protocol -> synthetic world -> toy CLIP -> zss-bench run -> record -> leaderboard\n"
          f"  The Chimera-Seg run is shortened to {4 if quick else DEMO_ITERS} iterations (the committed table uses the\n"
          "  full schedule); the teacher is the shipped toy CLIP zss-toy-vit:synth-v1 (no pretraining).")
    if quick:
        print(f"  QUICK MODE (tests): tiny world and an untrained CLIP ({QUICK_CLIP}); numbers mean nothing.")
    try:
        prepare_out(out)
    except (DemoFolderError, OSError) as exc:
        print(f"zss-bench demo: error: {exc}", file=sys.stderr)
        return 2
    world, results = out / "synth-world", out / "results"
    n_train, n_val = (16, 8) if quick else (N_TRAIN, N_VAL)
    steps = [("protocols",),
             ("synth", "generate", "--out", str(world), "--seed", str(WORLD_SEED),
              "--train", str(n_train), "--val", str(n_val)),
             ("prepare", "synth", "--root", str(world))]
    if not quick:
        steps.append(("toy-clip", "eval"))  # the shipped teacher: loads and verifies its hash, trains nothing
    clip = ("--clip", QUICK_CLIP) if quick else ()
    steps.append(("run", "--method", "chimera", "--protocol", PROTOCOL, "--data-root", str(world), *clip,
                  "--results", str(results), "--work-dir", str(out / "work"), *_schedule(quick)))
    steps.append(("leaderboard", "--results", str(results)))
    for argv in steps:
        if _say(*argv):
            print(f"\ndemo stopped: `zss-bench {' '.join(argv)}` failed")
            return 1
    if REFERENCE_TABLE.exists():
        print(f"\nFor reference, the committed full-length table ({REFERENCE_TABLE.relative_to(REFERENCE_TABLE.parents[1])}):\n")
        print(REFERENCE_TABLE.read_text(encoding="utf-8"))
    print(f"demo finished in {time.time() - start:.0f} s; records under {results}")
    return 0
