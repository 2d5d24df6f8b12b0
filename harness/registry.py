"""Pack discovery through the ``bench.packs`` entry point group.

Listing names never imports a pack; a pack's module is imported only when it is asked for,
so a broken third-party pack cannot stop the others from running.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from functools import cache
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from bench.errors import UserError
from bench.pack import Pack

GROUP = "bench.packs"
HIDDEN = frozenset({"smoke"})  # the core's own test pack: runnable by name, not part of "all"


@cache
def _entry_points() -> dict[str, EntryPoint]:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def available() -> list[str]:
    """Every registered pack name, sorted."""
    return sorted(_entry_points())


def refresh() -> None:
    """Forget cached entry points (after installing a pack package in the same process)."""
    _entry_points.cache_clear()


def load(name: str, options: Mapping[str, Any] | None = None) -> Pack:
    """Instantiate the pack registered as ``name``; unknown names get a did-you-mean."""
    eps = _entry_points()
    if name not in eps:
        close = difflib.get_close_matches(name, list(eps), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UserError(f"pack {name!r} not found.{hint} Available: {', '.join(sorted(eps)) or 'none'}")
    try:
        cls = eps[name].load()
    except Exception as exc:
        raise UserError(f"pack {name!r} failed to import from {eps[name].value}: {exc}") from exc
    pack = cls.from_options(options) if options else cls()
    if not isinstance(pack, Pack):
        raise UserError(f"pack {name!r} ({eps[name].value}) does not implement bench.pack.Pack")
    return pack


def resolve(spec: str) -> list[str]:
    """Turn ``all`` or a comma list into pack names, checking each exists."""
    names = [part.strip() for part in spec.split(",") if part.strip()]
    if not names:
        raise UserError("--packs is empty: give 'all' or a comma list such as toolcall,mmlu")
    out: list[str] = []
    for name in names:
        if name == "all":
            out.extend(n for n in available() if n not in HIDDEN)
        else:
            load(name)  # fail early with did-you-mean
            out.append(name)
    return list(dict.fromkeys(out))
