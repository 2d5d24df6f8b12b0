"""The 57 MMLU subjects and the four standard categories they are reported under.

The grouping follows the one the benchmark's authors published (STEM, humanities, social
sciences, other); keeping it standard is what makes per-category figures comparable with
numbers reported elsewhere.
"""

from __future__ import annotations

STEM = "stem"
HUMANITIES = "humanities"
SOCIAL_SCIENCES = "social_sciences"
OTHER = "other"

CATEGORIES: tuple[str, ...] = (STEM, HUMANITIES, SOCIAL_SCIENCES, OTHER)

CATEGORY_OF: dict[str, str] = {
    "abstract_algebra": STEM,
    "anatomy": OTHER,
    "astronomy": STEM,
    "business_ethics": OTHER,
    "clinical_knowledge": OTHER,
    "college_biology": STEM,
    "college_chemistry": STEM,
    "college_computer_science": STEM,
    "college_mathematics": STEM,
    "college_medicine": OTHER,
    "college_physics": STEM,
    "computer_security": STEM,
    "conceptual_physics": STEM,
    "econometrics": SOCIAL_SCIENCES,
    "electrical_engineering": STEM,
    "elementary_mathematics": STEM,
    "formal_logic": HUMANITIES,
    "global_facts": OTHER,
    "high_school_biology": STEM,
    "high_school_chemistry": STEM,
    "high_school_computer_science": STEM,
    "high_school_european_history": HUMANITIES,
    "high_school_geography": SOCIAL_SCIENCES,
    "high_school_government_and_politics": SOCIAL_SCIENCES,
    "high_school_macroeconomics": SOCIAL_SCIENCES,
    "high_school_mathematics": STEM,
    "high_school_microeconomics": SOCIAL_SCIENCES,
    "high_school_physics": STEM,
    "high_school_psychology": SOCIAL_SCIENCES,
    "high_school_statistics": STEM,
    "high_school_us_history": HUMANITIES,
    "high_school_world_history": HUMANITIES,
    "human_aging": OTHER,
    "human_sexuality": SOCIAL_SCIENCES,
    "international_law": HUMANITIES,
    "jurisprudence": HUMANITIES,
    "logical_fallacies": HUMANITIES,
    "machine_learning": STEM,
    "management": OTHER,
    "marketing": OTHER,
    "medical_genetics": OTHER,
    "miscellaneous": OTHER,
    "moral_disputes": HUMANITIES,
    "moral_scenarios": HUMANITIES,
    "nutrition": OTHER,
    "philosophy": HUMANITIES,
    "prehistory": HUMANITIES,
    "professional_accounting": OTHER,
    "professional_law": HUMANITIES,
    "professional_medicine": OTHER,
    "professional_psychology": SOCIAL_SCIENCES,
    "public_relations": SOCIAL_SCIENCES,
    "security_studies": SOCIAL_SCIENCES,
    "sociology": SOCIAL_SCIENCES,
    "us_foreign_policy": SOCIAL_SCIENCES,
    "virology": OTHER,
    "world_religions": HUMANITIES,
}


def readable(subject: str) -> str:
    """``high_school_us_history`` -> ``high school us history`` for the prompt."""
    return subject.replace("_", " ")
