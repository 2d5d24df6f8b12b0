"""Shell tasks: one command (or a run_command tool) over shipped fixtures, judged in the sandbox."""

from bench.packs.cli.pack import CliPack

__all__ = ["CliPack"]
