"""``reported``: the registry of published results (``results/reported/``) as tables, and its audit."""
from __future__ import annotations

import sys


def cmd_reported(args) -> int:
    from zss_bench.reported import check_registry, load_registry
    from zss_bench.tables.reported import render_reported

    registry = load_registry(args.dir)
    if args.protocol:
        from zss_bench.protocol import list_protocols, load_protocol

        if args.protocol not in registry.protocols or args.protocol in list_protocols():
            load_protocol(args.protocol)  # an unknown name -> did-you-mean error
    findings = check_registry(registry)
    protocols = [args.protocol] if args.protocol else registry.protocols
    if args.format in ("json", "csv"):  # one flat list; every entry names its protocol
        print(render_reported([e for p in protocols for e in registry.for_protocol(p)], findings, args.format), end="")
    else:
        for p in protocols:
            print(render_reported(registry.for_protocol(p), findings, args.format, title=f"{p}: reported results"))
    if not args.check:
        return 0
    scope = [f for f in findings if f.entry is None or f.entry.protocol in protocols]
    for f in scope:
        print(f"{'acknowledged' if f.acknowledged else 'flagged'}: {f}", file=sys.stderr)
    failing = [f for f in scope if not f.acknowledged]
    n = len(registry.entries if not args.protocol else registry.for_protocol(args.protocol))
    print(f"reported --check: {n} entries, {len(failing)} finding(s)"
          + (f", {len(scope) - len(failing)} acknowledged (the source's own inconsistency, shown on every table)"
             if len(scope) > len(failing) else ""), file=sys.stderr)
    return 1 if failing else 0


def add_reported(sub) -> None:
    """The ``reported`` verb."""
    p = sub.add_parser("reported", help="published results per protocol, exactly as printed, with sources "
                                        "(results/reported/); --check audits them")
    p.add_argument("--protocol", help="only this protocol")
    p.add_argument("--dir", default=None, metavar="DIR",
                   help="folder of <protocol>.yaml registry files (default: the project's results/reported)")
    p.add_argument("--check", action="store_true",
                   help="flag every entry whose printed h contradicts its printed S and U (up to their rounding), "
                        "entries without a source, duplicates, unknown protocols and settings; exit 1 if any")
    p.add_argument("--format", choices=["md", "latex", "csv", "json"], default="md")
    p.set_defaults(func=cmd_reported)
