"""Helpers shared by the verb modules: argparse types, short error lines, config hashes."""
from __future__ import annotations

import argparse
import sys



def _skip_printer(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)



def _at_least(minimum: int):
    """argparse type: a whole number >= ``minimum`` (a clear usage error, not a traceback, otherwise)."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected a whole number >= {minimum}, got {text!r}")
        return value

    return whole


def _unseen_names(rec: dict) -> list[str]:
    try:
        from zss_bench.protocol import load_protocol, protocol_ref

        return list(load_protocol(protocol_ref(rec["protocol"])).unseen_names)
    except Exception:  # noqa: BLE001 - only decorates the printout
        return []



def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


