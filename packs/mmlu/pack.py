"""MMLU as a chat pack: four-option questions, one letter extracted per reply.

Zero-shot by default; ``shots=K`` prepends K solved examples of the same subject from the dev
split as earlier chat turns. Accuracy is reported per subject and per standard category; a
reply no extraction rule understands counts as wrong and is also counted as ``unparseable``,
so a model that stopped answering in letters is told apart from one that answers wrongly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from bench.errors import UserError
from bench.pack import Item, Pack, Sampling, Score, Tier
from bench.packs.mmlu.data import Rows, data_dir_from_env, load_rows
from bench.packs.mmlu.scoring import LETTERS, aggregate, judge
from bench.packs.mmlu.stratify import stratified
from bench.packs.mmlu.subjects import CATEGORIES, CATEGORY_OF, readable
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

MAX_SHOTS = 5  # the dev split holds five examples per subject
QUICK_SEED = 20250
# The quick tier: one question from each of 4 subjects per category (16 in all, every
# subdimension seen 4 times), drawn once by ``quick_selection`` and pinned here so that a change
# of code never silently changes what a quick baseline measured.
QUICK_IDS: tuple[str, ...] = (
    "business_ethics/79",
    "college_mathematics/98",
    "global_facts/89",
    "high_school_biology/110",
    "high_school_macroeconomics/381",
    "high_school_mathematics/163",
    "high_school_statistics/211",
    "human_sexuality/59",
    "international_law/14",
    "marketing/111",
    "moral_disputes/187",
    "philosophy/184",
    "professional_medicine/171",
    "professional_psychology/289",
    "sociology/99",
    "world_religions/96",
)


def _question_text(row: Mapping[str, Any]) -> str:
    options = "\n".join(f"{letter}. {choice}" for letter, choice in zip(LETTERS, row["choices"]))
    return (
        f"The following is a multiple choice question about {readable(row['subject'])}. "
        'Choose the single best option and end your reply with a line "Answer: X", '
        "where X is A, B, C or D.\n\n"
        f"{row['question']}\n{options}"
    )


def _item(row: Mapping[str, Any], item_id: str) -> Item:
    subject = str(row["subject"])
    if subject not in CATEGORY_OF:
        raise UserError(f"MMLU item {item_id}: unknown subject {subject!r}; expected one of the 57 MMLU subjects")
    choices = [str(choice) for choice in row["choices"]]
    answer = int(row["answer"])
    if len(choices) != len(LETTERS) or not 0 <= answer < len(LETTERS):
        raise UserError(f"MMLU item {item_id}: needs 4 choices and an answer index 0-3")
    letter = LETTERS[answer]
    other = LETTERS[(answer + 1) % len(LETTERS)]
    return Item(
        id=item_id,
        data={
            "subject": subject,
            "category": CATEGORY_OF[subject],
            "question": str(row["question"]),
            "choices": choices,
            "answer": letter,
        },
        reference={"content": f"Weighing the options, {letter} is the best one.\nAnswer: {letter}"},
        wrong=[{"content": f"Answer: {other}"}],
    )


@cache
def _items(data_dir: str | None) -> tuple[tuple[Item, ...], dict[str, Item]]:
    """Every test question as an Item, built once per data source and process."""
    rows = load_rows("test", Path(data_dir) if data_dir else None).rows
    seen: dict[str, int] = {}
    items: list[Item] = []
    for row in rows:
        subject = str(row["subject"])
        index = seen.get(subject, 0)
        seen[subject] = index + 1
        items.append(_item(row, f"{subject}/{index}"))
    by_id = {item.id: item for item in items}
    for item_id in QUICK_IDS:
        by_id[item_id].tiers = ["quick", "full"]
    return tuple(items), by_id


def quick_selection(items: Sequence[Item], seed: int = QUICK_SEED) -> list[Item]:
    """One question from each of 4 seeded subjects per category (16 items)."""
    one_per_subject = stratified(items, len(CATEGORY_OF), seed)
    return stratified(one_per_subject, 4 * len(CATEGORIES), seed, key=lambda item: str(item.data["category"]))


class MMLUOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shots: int = Field(0, ge=0, le=MAX_SHOTS)  # solved dev examples of the same subject before each question


class MMLUPack(Pack):
    name = "mmlu"
    version = "1"
    description = "MMLU (57 subjects, four-option questions), chat prompt, letter extraction."
    subdimensions = CATEGORIES
    breakdowns = ("subject", "category")
    Options = MMLUOptions
    # Short answers; the margin covers models that reason in content before the letter.
    default_sampling = Sampling(temperature=0.0, max_tokens=1024, thinking=False)

    def __init__(self, shots: int = 0, data_dir: Path | str | None = None) -> None:
        """
        Args:
            shots: solved dev examples of the same subject shown before each question (0-5).
            data_dir: folder holding ``mmlu/mmlu_all_{test,dev}.parquet``; default: env
                ``BENCH_DATA_DIR``, else the ``cais/mmlu`` hub dataset.
        """
        if not 0 <= shots <= MAX_SHOTS:
            raise UserError(f"mmlu shots={shots} is out of range; use 0 to {MAX_SHOTS}")
        self.shots = shots
        if shots:
            # Few-shot prompts are a different test: results must not compare with zero-shot ones.
            self.version = f"{type(self).version}-{shots}shot"
        resolved = Path(data_dir) if data_dir is not None else data_dir_from_env()
        self._data_dir = str(resolved) if resolved is not None else None

    # -- items ---------------------------------------------------------------------------------

    def items(self, tier: Tier = "full") -> list[Item]:
        items, by_id = _items(self._data_dir)
        if tier == "quick":
            return [by_id[item_id] for item_id in QUICK_IDS]
        return list(items)

    def item_by_id(self, item_id: str) -> Item | None:
        return _items(self._data_dir)[1].get(item_id)

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """A seeded subject-stratified ``n``: every subject appears once ``n >= 57``."""
        return stratified(items, n, seed)

    def data_files(self) -> list[Path]:
        files = list(self._rows("test").files)
        if self.shots:
            files += self._rows("dev").files
        return files

    def _rows(self, split: str) -> Rows:
        return load_rows("dev" if split == "dev" else "test", Path(self._data_dir) if self._data_dir else None)

    # -- asking --------------------------------------------------------------------------------

    def _examples(self, subject: str) -> list[dict[str, Any]]:
        return [row for row in self._rows("dev").rows if row["subject"] == subject][: self.shots]

    def messages(self, item: Item) -> list[dict[str, Any]]:
        turns: list[dict[str, Any]] = []
        if self.shots:
            for example in self._examples(item.data["subject"]):
                turns.append({"role": "user", "content": _question_text(example)})
                turns.append({"role": "assistant", "content": f"Answer: {LETTERS[int(example['answer'])]}"})
        turns.append({"role": "user", "content": _question_text(item.data)})
        return turns

    # -- scoring -------------------------------------------------------------------------------

    def score(self, item: Item, transcript: Transcript) -> Score:
        return judge(item.data, transcript)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """Shots, macro accuracy, unparseable replies and dead categories (per subject and
        category with intervals: the breakdowns)."""
        return {"shots": self.shots, **aggregate(records)}
