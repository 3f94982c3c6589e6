"""Name registries with "did you mean ...?" errors.

Methods, protocols and other named things are picked by strings on the command line
and in configs; a typo should produce a message that names the likely intended
choice instead of a bare ``KeyError``.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from typing import Any

__all__ = ["suggest", "UnknownNameError", "Registry"]

_MAX_KNOWN = 20  # longer "known:" lists (e.g. 171 class names) are cut short


def suggest(name: str, choices: Iterable[str], n: int = 3, cutoff: float = 0.6) -> list[str]:
    """Up to ``n`` entries of ``choices`` close to ``name``, best first (case-insensitive).

    Returns the choices in their original spelling.
    """
    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(str(choice).casefold(), str(choice))
    matches = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=n, cutoff=cutoff)
    return [by_folded[m] for m in matches]


def _quoted_list(items: list[str], last_sep: str) -> str:
    quoted = [f"'{s}'" for s in items]
    if len(quoted) <= 1:
        return "".join(quoted)
    return ", ".join(quoted[:-1]) + f" {last_sep} " + quoted[-1]


class UnknownNameError(KeyError):
    """Lookup of an unregistered name; the message carries suggestions.

    Subclasses ``KeyError`` so ``except KeyError`` still works, but ``str()`` gives the
    plain message (``KeyError`` would otherwise wrap it in quotes).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str | None = None,
        name: str | None = None,
        suggestions: Iterable[str] = (),
        known: Iterable[str] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.name = name
        self.suggestions = tuple(suggestions)
        self.known = tuple(known)

    def __str__(self) -> str:
        return self.message

    @classmethod
    def for_name(cls, kind: str, name: str, choices: Iterable[str], n: int = 3) -> "UnknownNameError":
        """Build the standard message: "unknown KIND 'x'; did you mean 'y'? known: ..."."""
        known = sorted(str(c) for c in choices)
        hints = suggest(name, known, n=n)
        msg = f"unknown {kind} '{name}';"
        if hints:
            msg += f" did you mean {_quoted_list(hints, 'or')}?"
        if known:
            shown = ", ".join(known[:_MAX_KNOWN])
            if len(known) > _MAX_KNOWN:
                shown += f", ... ({len(known)} in total)"
            msg += f" known: {shown}"
        else:
            msg += f" no {kind}s are registered"
        return cls(msg, kind=kind, name=name, suggestions=hints, known=known)


class Registry:
    """A name -> object mapping whose misses raise :class:`UnknownNameError`.

    ``kind`` ("method", "protocol", ...) is only used in error messages.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}

    def register(self, name: str, obj: Any = None) -> Any:
        """Register ``obj`` under ``name``; without ``obj`` return a decorator.

        Registering a name twice is an error (silent replacement hides plugin clashes).
        """
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if obj is None:
            def decorator(target: Any) -> Any:
                self.register(name, target)
                return target
            return decorator
        if name in self._items:
            raise ValueError(f"{self.kind} '{name}' is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> Any:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise UnknownNameError.for_name(self.kind, str(name), self._items) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, names={self.names()!r})"

