"""Generated math word problems with exact answers: seeded templates, per-family scores,
difficulty by operations and size of numbers, and a final-answer reader that refuses to guess."""

from bench.packs.reasonmath.extract import Extraction, extract_answer
from bench.packs.reasonmath.pack import ReasonMathPack

__all__ = ["Extraction", "ReasonMathPack", "extract_answer"]
