"""The core's own small test pack: runnable by name (``--packs smoke``), never part of ``all``."""

from bench.packs.smoke.pack import SmokePack

__all__ = ["SmokePack"]
