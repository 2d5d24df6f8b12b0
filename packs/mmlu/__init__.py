"""MMLU pack: 57-subject multiple choice through a chat prompt, scored by letter extraction."""

from bench.packs.mmlu.pack import MMLUPack, quick_selection
from bench.packs.mmlu.scoring import Extraction, extract_letter
from bench.packs.mmlu.stratify import stratified
from bench.packs.mmlu.subjects import CATEGORIES, CATEGORY_OF

__all__ = ["CATEGORIES", "CATEGORY_OF", "Extraction", "MMLUPack", "extract_letter", "quick_selection", "stratified"]
