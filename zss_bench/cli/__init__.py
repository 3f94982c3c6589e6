"""The ``zss-bench`` command: a thin argparse front over the library, one module per verb family
(``datasets``, ``evaluation``, ``tables``, ``reported``, ``runs``, ``plugins``, ``speed``); each adds its subparsers."""
from __future__ import annotations

import argparse
import sys

from zss_bench import __version__
from zss_bench.cli.datasets import add_datasets, add_protocols
from zss_bench.cli.evaluation import add_evaluate
from zss_bench.cli.plugins import add_methods_demo, add_toy_clip
from zss_bench.cli.reported import add_reported
from zss_bench.cli.runs import add_run, add_sweeps
from zss_bench.cli.speed import add_speed
from zss_bench.cli.tables import add_tables
from zss_bench.extras import require, verb_needs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zss-bench",
        description="Protocols, metrics and runners for inductive zero-shot semantic segmentation.")
    parser.add_argument("--version", action="version", version=f"zss-bench {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_protocols(sub)
    add_evaluate(sub)
    add_tables(sub)
    add_reported(sub)
    add_datasets(sub)
    add_run(sub)
    add_toy_clip(sub)
    add_sweeps(sub)
    add_methods_demo(sub)
    add_speed(sub)
    return parser


# (module, class) of every error that is the user's to fix: printed as one line, exit 2. Looked up only in
# modules already imported (an error class whose module never loaded cannot have been raised), so a
# usage error never pays for importing torch or detectron2.
USER_ERRORS = (
    ("zss_bench.data.inductive", "LeakageError"), ("zss_bench.data.layouts", "DatasetLayoutError"),
    ("zss_bench.data.masks", "LabelFileError"), ("zss_bench.data.prepare", "PrepareError"),
    ("zss_bench.data.synth", "SynthWorldError"), ("zss_bench.clip.loading", "ClipLoadError"),
    ("zss_bench.engine.grid", "GridError"), ("zss_bench.engine.sweep", "SweepError"),
    ("zss_bench.engine.reproduce", "ReproduceError"), ("zss_bench.engine.config", "ConfigOverrideError"),
    ("zss_bench.engine.preflight", "UsageError"), ("zss_bench.engine.run", "RunFolderError"),
    ("zss_bench.engine.run", "RunRequestError"),
    ("zss_bench.engine.trainer", "TrainingDiverged"), ("zss_bench.evaluation.pred_dir", "EvaluationInputError"),
    ("zss_bench.protocol", "ProtocolError"), ("zss_bench.records.store", "RecordError"),
    ("zss_bench.registry", "UnknownNameError"), ("zss_bench.report", "ReportError"),
    ("zss_bench.plugins", "PluginError"), ("zss_bench.plugins", "MethodConfigError"),
    ("zss_bench.plugins", "MetaArchitectureError"),
    ("zss_bench.engine.launch", "WorkerError"), ("zss_bench.reported.registry", "RegistryError"),
    ("zss_bench.clip.shipped", "ShippedWeightsError"),
)


def _user_errors() -> tuple[type[BaseException], ...]:
    return tuple(getattr(sys.modules[module], name) for module, name in USER_ERRORS
                 if module in sys.modules and hasattr(sys.modules[module], name))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "results", "") is None:
        from zss_bench.records.store import default_results_root

        args.results = default_results_root()
    try:
        for extra, modules in verb_needs(args):
            require(extra, *modules, what=f"zss-bench {args.command}")
        return args.func(args)
    except _user_errors() as exc:
        print(f"zss-bench {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:  # a module of an extra this install lacks (or MissingExtraError): one line
        from zss_bench.extras import install_hint

        hint = install_hint(f"zss-bench {args.command}", exc)
        if hint is None:
            raise
        print(hint, file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"zss-bench {args.command}: {exc or 'interrupted'}", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
