"""Code pack: HumanEval+ through a chat prompt, graded by evalplus inside the sandbox."""

from bench.packs.code.extract import build_solution
from bench.packs.code.pack import KNOWN_DEFECTS, QUICK_IDS, CodePack
from bench.packs.code.scoring import Sample, Verdict, check

__all__ = ["KNOWN_DEFECTS", "QUICK_IDS", "CodePack", "Sample", "Verdict", "build_solution", "check"]
