"""Bug finding: name the one buggy line of a short program (or say there is none) and fix it."""

from bench.packs.bugfind.pack import BugFindPack

__all__ = ["BugFindPack"]
