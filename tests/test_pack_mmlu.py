"""MMLU pack: data loading, every reference/wrong answer, extraction rules, stratified limits."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.pack import Item, Score
from bench.packs.mmlu import CATEGORIES, CATEGORY_OF, MMLUPack, extract_letter, quick_selection, stratified
from bench.packs.mmlu.pack import QUICK_IDS
from bench.records import ItemRecord
from bench.run.aggregate import build_results
from bench.testing import record_for
from bench.transcript import Exchange, Request, Response, Transcript

DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR") or Path(__file__).parents[1].parent / "shared" / "data")


@pytest.fixture(scope="module")
def pack() -> MMLUPack:
    if not (DATA_DIR / "mmlu" / "mmlu_all_test.parquet").is_file():
        pytest.skip(f"MMLU parquet not found under {DATA_DIR}; set BENCH_DATA_DIR")
    return MMLUPack(data_dir=DATA_DIR)


def reply(content: str | None, finish_reason: str = "stop", reasoning: str | None = None) -> Transcript:
    response = Response(content=content, reasoning=reasoning, finish_reason=finish_reason)
    return Transcript(exchanges=[Exchange(request=Request(messages=[]), response=response)])


def test_full_tier_is_the_whole_test_split(pack: MMLUPack) -> None:
    items = pack.items("full")
    assert len(items) == 14042
    subjects = Counter(item.data["subject"] for item in items)
    assert set(subjects) == set(CATEGORY_OF)
    assert len(subjects) == 57
    assert len({item.id for item in items}) == len(items)
    assert Counter(CATEGORY_OF.values()) == {"stem": 18, "humanities": 13, "social_sciences": 12, "other": 14}
    assert pack.item_by_id("abstract_algebra/0") is items[0]


def test_every_reference_scores_right_and_every_wrong_scores_wrong(pack: MMLUPack) -> None:
    for item in pack.items("full"):
        assert item.reference is not None
        good = pack.score(item, reply(item.reference["content"]))
        assert good.passed and good.value == 1.0, item.id
        assert good.subscores == {item.data["category"]: 1.0}
        for wrong in item.wrong:
            bad = pack.score(item, reply(wrong["content"]))
            assert not bad.passed and bad.value == 0.0 and bad.extraction is not None, item.id


def test_quick_tier_is_pinned_and_balanced(pack: MMLUPack) -> None:
    quick = pack.items("quick")
    assert [item.id for item in quick] == list(QUICK_IDS)
    assert [item.id for item in quick_selection(pack.items("full"))] == list(QUICK_IDS)
    assert Counter(item.data["category"] for item in quick) == {category: 4 for category in CATEGORIES}
    assert len({item.data["subject"] for item in quick}) == len(quick)
    assert all("quick" in item.tiers for item in quick)


def test_limit_200_covers_every_subject_and_is_stable_under_the_seed(pack: MMLUPack) -> None:
    items = pack.items("full")
    first = pack.limit(items, 200, seed=7)
    assert len(first) == 200
    assert {item.data["subject"] for item in first} == set(CATEGORY_OF)
    assert [item.id for item in pack.limit(items, 200, seed=7)] == [item.id for item in first]
    assert [item.id for item in pack.limit(items, 200, seed=8)] != [item.id for item in first]
    per_subject = Counter(item.data["subject"] for item in first)
    assert max(per_subject.values()) - min(per_subject.values()) <= 1
    positions = {item.id: index for index, item in enumerate(items)}
    assert [positions[item.id] for item in first] == sorted(positions[item.id] for item in first)


def test_stratified_edge_cases(pack: MMLUPack) -> None:
    items = pack.items("full")
    assert stratified(items, 0, seed=1) == []
    assert len({item.data["subject"] for item in stratified(items, 10, seed=1)}) == 10
    small = items[:150]  # abstract_algebra (100) + anatomy (50 of 135)
    picked = stratified(small, 120, seed=3)
    # anatomy has only 50 here: its unused quota moves to the other stratum
    assert Counter(item.data["subject"] for item in picked) == {"abstract_algebra": 70, "anatomy": 50}
    assert stratified(small, 500, seed=3) == small


@pytest.mark.parametrize(
    ("text", "letter", "rule"),
    [
        ("Answer: C", "C", "answer_statement"),
        ("**Answer:** D", "D", "answer_statement"),
        ("The answer is C.", "C", "answer_statement"),
        ("The answer is (B)", "B", "answer_statement"),
        ("Not A, not D... the answer is B. Final answer: C", "C", "answer_statement"),
        ("The correct option is: (D)", "D", "answer_statement"),
        ("Option C is correct because Berlin is the capital.", "C", "answer_statement"),
        ("Reasoning first.\nanswer: c", "C", "answer_statement"),
        ("(C)", "C", "bare_letter"),
        ("C.", "C", "bare_letter"),
        ("C", "C", "bare_letter"),
        ("**B**", "B", "bare_letter"),
        ("I pick (C) since the others are wrong.", "C", "parenthesized"),
        ("C. Berlin", "C", "letter_dot"),
        ("C) Berlin, obviously", "C", "letter_dot"),
        ("Berlin", "C", "option_text"),
        ("It has to be London.", "B", "option_text"),
        ("<think>maybe A</think>Answer: B", "B", "answer_statement"),
    ],
)
def test_extraction_rules(text: str, letter: str, rule: str) -> None:
    found = extract_letter(text, ["Paris", "London", "Berlin", "Rome"])
    assert found is not None
    assert (found.letter, found.rule) == (letter, rule)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "I do not know.",
        "The answer is a hard one to give.",
        "A. Paris\nB. London\nC. Berlin\nD. Rome",  # the options echoed, nothing chosen
        "Either (A) or (B).",
        "Paris or Berlin, hard to say.",
    ],
)
def test_unparseable_replies_find_nothing(text: str) -> None:
    assert extract_letter(text, ["Paris", "London", "Berlin", "Rome"]) is None


@pytest.mark.parametrize(
    ("text", "letter", "rule"),
    [
        ("\\boxed{C}", "C", "boxed"),
        ("Weighing it all, the final answer is $\\boxed{\\text{B}}$.", "B", "boxed"),
        ("\\boxed{(d)}", "D", "boxed"),
        ("<think>\\boxed{A}</think>\n\\boxed{B}", "B", "boxed"),
        ("(a)", "A", "bare_letter"),
        ("[b]", "B", "bare_letter"),
        ("The answer is (c).", "C", "answer_statement"),
        ("Answer: (b) London", "B", "answer_statement"),
        ("**Answer: D**", "D", "answer_statement"),
        ("Answer: (C) Paris", "C", "answer_statement"),  # the letter decides, not the text after it
        ("The answer is not B. It is A.", "A", "answer_statement"),
        ("It isn't (B), so it's D.", "D", "answer_statement"),
        ("It isn\u2019t (B), so it\u2019s D.", "D", "answer_statement"),  # typographic apostrophes
        ("The answer is B... no, wait. It must be C.", "C", "answer_statement"),
        ("Not (B); I pick (D).", "D", "parenthesized"),
    ],
)
def test_more_reply_styles(text: str, letter: str, rule: str) -> None:
    found = extract_letter(text, ["Paris", "London", "Berlin", "Rome"])
    assert found is not None
    assert (found.letter, found.rule) == (letter, rule)


@pytest.mark.parametrize(
    "text",
    [
        "The answer is not B.",  # a letter ruled out is not an answer
        "It is not (C).",
        "\\boxed{A} or maybe \\boxed{B}",  # two different final answers: refused, not guessed
        "It is A good question, and hard.",  # the article "A", not an option
        "(a) the capital is old; (b) it is large.",  # lower-case enumeration, nothing chosen
    ],
)
def test_negated_and_conflicting_letters_are_not_picked(text: str) -> None:
    assert extract_letter(text, ["Paris", "London", "Berlin", "Rome"]) is None


def test_option_text_prefers_the_longest_matching_option() -> None:
    found = extract_letter("True, True", ["True, True", "False, False", "True, False", "False, True"])
    assert found is not None and found.letter == "A"


def test_unparseable_is_scored_zero_and_flagged(pack: MMLUPack) -> None:
    item = pack.items("full")[0]
    score = pack.score(item, reply("I would rather not say."))
    assert score.status == "scored" and score.extraction is None and not score.passed
    assert score.details["unparseable"] is True


def test_unjudgeable_replies_keep_their_status(pack: MMLUPack) -> None:
    item = pack.items("full")[0]
    truncated = pack.score(item, reply("Let me think about each opt", finish_reason="length"))
    assert truncated.status == "truncated" and truncated.details["subject"] == item.data["subject"]
    empty = pack.score(item, reply("", reasoning="thinking only"))
    assert empty.status == "empty"


def _record(pack: MMLUPack, item: Item, score: Score) -> ItemRecord:
    return record_for(pack, item, reply("stored"), score=score)


def test_aggregate_reports_subjects_categories_unparseable_and_dead_categories(pack: MMLUPack) -> None:
    chosen = pack.limit(pack.items("full"), 114, seed=0)  # two per subject
    records = []
    for item in chosen:
        if item.data["category"] == "humanities":
            content = "no idea"  # unparseable: counted, and the category is dead
        elif item.data["category"] == "stem":
            content = item.wrong[0]["content"]
        else:
            content = item.reference["content"] if item.reference else ""
        records.append(_record(pack, item, pack.score(item, reply(content))))
    packed = build_results("r", {"mmlu": pack}, records, {"mmlu": 114}).packs["mmlu"]
    subjects, categories = packed.breakdowns["subject"], packed.breakdowns["category"]
    assert len(subjects) == 57 and all(entry.score.n == 2 for entry in subjects.values())
    assert subjects["sociology"].score.mean == 1.0 and subjects["sociology"].score.low is not None
    assert categories["humanities"].score.n == 26 and categories["humanities"].score.mean == 0.0
    assert categories["social_sciences"].score.mean == 1.0
    assert packed.score.mean == pytest.approx((24 + 28) / 114)
    result = pack.aggregate(records)
    assert result["unparseable"] == 26
    assert sorted(result["dead_categories"]) == ["humanities", "stem"]
    assert "subjects" not in result and "categories" not in result


def test_few_shot_prepends_same_subject_dev_examples() -> None:
    if not (DATA_DIR / "mmlu" / "mmlu_all_dev.parquet").is_file():
        pytest.skip("MMLU dev parquet not found")
    pack = MMLUPack.from_options({"shots": "3"})
    assert pack.shots == 3 and pack.version == "1-3shot" and MMLUPack().version == "1"
    shots = MMLUPack(shots=3, data_dir=DATA_DIR)
    item = shots.items("full")[200]
    messages = shots.messages(item)
    assert [m["role"] for m in messages] == ["user", "assistant"] * 3 + ["user"]
    assert all(item.data["subject"].replace("_", " ") in m["content"] for m in messages if m["role"] == "user")
    assert all(m["content"].startswith("Answer: ") for m in messages if m["role"] == "assistant")
    assert messages[-1] == MMLUPack(data_dir=DATA_DIR).messages(item)[0]
    assert any(path.name == "mmlu_all_dev.parquet" for path in shots.data_files())


def test_bad_options_and_paths_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="shots"):
        MMLUPack(shots=9)
    with pytest.raises(UserError, match=r"pack 'mmlu' has no option 'shot'; its options: shots \(int, default 0\)"):
        MMLUPack.from_options({"shot": "2"})
    with pytest.raises(UserError, match="option shots='five': input should be a valid integer"):
        MMLUPack.from_options({"shots": "five"})
    with pytest.raises(UserError, match="shots='9': input should be less than or equal to 5"):
        MMLUPack.from_options({"shots": "9"})
    with pytest.raises(UserError, match="mmlu_all_test.parquet"):
        MMLUPack(data_dir=tmp_path).items()
    (tmp_path / "mmlu").mkdir()
    (tmp_path / "mmlu" / "mmlu_all_test.parquet").write_text("not parquet")
    with pytest.raises(UserError, match="cannot read MMLU parquet"):
        MMLUPack(data_dir=tmp_path).items()


def test_registered_under_the_entry_point() -> None:
    from bench import registry

    assert "mmlu" in registry.available()
    assert type(registry.load("mmlu")).__name__ == "MMLUPack"
