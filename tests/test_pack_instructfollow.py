"""instructfollow pack: data, every checker kind, strict and loose scoring, aggregation."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.errors import UserError
from bench.packs.instructfollow import InstructFollowPack, checks, scoring, text
from bench.packs.instructfollow.pack import load_items
from bench.packs.instructfollow.schema import build_item_schema, load_item_schema
from bench.records import ItemRecord
from bench.testing import transcript_for_answer, transcript_for_text
from bench.transcript import Transcript

ITEMS_PATH = Path(str(InstructFollowPack.resource("items.jsonl")))


def reply(content: str | None, finish_reason: str = "stop", reasoning: str | None = None) -> Transcript:
    return transcript_for_text(content, reasoning=reasoning, finish_reason=finish_reason)


def instruction(kind: str, **args: Any) -> dict[str, Any]:
    return {"family": checks.KINDS[kind].family, "kind": kind, "args": args}


@pytest.fixture(scope="module")
def pack() -> InstructFollowPack:
    return InstructFollowPack()


# --- the data --------------------------------------------------------------------------------


def test_tiers_sizes_and_family_coverage(pack: InstructFollowPack) -> None:
    full, quick = pack.items("full"), pack.items("quick")
    assert len(full) >= 60
    assert len(quick) == 15
    families_in_quick = {i["family"] for item in quick for i in item.data["instructions"]}
    assert families_in_quick == set(checks.FAMILIES)
    kinds_in_full = Counter(i["kind"] for item in full for i in item.data["instructions"])
    assert set(kinds_in_full) == set(checks.KINDS), "every checker kind is used by some item"
    for item in full:
        assert 1 <= len(item.data["instructions"]) <= 3, item.id
        assert item.reference is not None and item.wrong, item.id


def test_every_reference_follows_everything(pack: InstructFollowPack) -> None:
    for item in pack.items("full"):
        assert item.reference is not None
        score = pack.score(item, transcript_for_answer(item.reference))
        assert score.passed and score.value == 1.0, f"{item.id}: {score.reason}"
        assert score.status == "scored"
        families = {i["family"] for i in item.data["instructions"]}
        assert score.subscores == {family: 1.0 for family in families}, item.id
        assert score.details["prompt_loose"] is True


def test_every_wrong_answer_scores_less(pack: InstructFollowPack) -> None:
    for item in pack.items("full"):
        for wrong in item.wrong:
            score = pack.score(item, transcript_for_answer(wrong))
            assert not score.passed and score.value < 1.0, f"{item.id}: {score.reason}"
            assert "failed (" in score.reason, item.id
            assert min(score.subscores.values()) < 1.0, item.id


def test_checked_in_schema_matches_the_kind_table() -> None:
    assert load_item_schema() == build_item_schema()


def test_readme_documents_every_kind() -> None:
    readme = (ITEMS_PATH.parent / "README.md").read_text(encoding="utf-8")
    for name, kind in checks.KINDS.items():
        assert f"| {kind.family} | `{name}` |" in readme, name


def _write_items(tmp_path: Path, instructions: list[dict[str, Any]], item_id: str = "probe") -> Path:
    line = {"id": item_id, "data": {"prompt": "Say something.", "instructions": instructions}}
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(line) + "\n", encoding="utf-8")
    return path


def test_unknown_kind_is_rejected_naming_the_item(tmp_path: Path) -> None:
    path = _write_items(tmp_path, [{"family": "length", "kind": "syllables", "args": {}}], item_id="odd-one")
    with pytest.raises(UserError) as caught:
        load_items(path)
    message = str(caught.value)
    assert "'odd-one'" in message and "'syllables'" in message and "instructions/0/kind" in message
    assert len(message.splitlines()) == 1


@pytest.mark.parametrize(
    ("bad_instruction", "expected_fragment"),
    [
        ({"family": "case", "kind": "no_commas", "args": {}}, "'punctuation' was expected"),
        ({"family": "length", "kind": "words", "args": {"relation": "about", "n": 3}}, "'about' is not one of"),
        ({"family": "length", "kind": "words", "args": {"n": 3}}, "'relation' is a required property"),
        ({"family": "keywords", "kind": "include", "args": {"keywords": []}}, "should be non-empty"),
        ({"family": "format", "kind": "json", "args": {"strict": True}}, "Additional properties"),
    ],
)
def test_bad_instruction_declarations_are_rejected(
    tmp_path: Path, bad_instruction: dict[str, Any], expected_fragment: str
) -> None:
    with pytest.raises(UserError, match="item 'probe'") as caught:
        load_items(_write_items(tmp_path, [bad_instruction]))
    assert expected_fragment in str(caught.value)


def test_too_many_instructions_are_rejected(tmp_path: Path) -> None:
    four = [instruction("no_commas")] * 4
    with pytest.raises(UserError, match="item 'probe' field instructions"):
        load_items(_write_items(tmp_path, four))


def test_pack_is_registered_and_asks_the_prompt(pack: InstructFollowPack) -> None:
    loaded = registry.load("instructfollow")
    assert isinstance(loaded, InstructFollowPack)
    item = pack.items("quick")[0]
    assert pack.messages(item) == [{"role": "user", "content": item.data["prompt"]}]
    assert pack.default_sampling.temperature == 0.0 and pack.default_sampling.max_tokens == 768
    assert set(pack.subdimensions) == set(checks.FAMILIES)
    assert pack.data_files() == [ITEMS_PATH]


# --- every checker kind, one pass and one fail ----------------------------------------------------

CHECKER_CASES: list[tuple[str, dict[str, Any], str, str]] = [
    ("words", {"relation": "at_most", "n": 5}, "Don't over-think this one.", "One two three four five six."),
    ("words", {"relation": "exactly", "n": 3}, "well-known fact, really", "two words"),
    ("sentences", {"relation": "exactly", "n": 2}, "Dr. Lee paid 3.50 for tea. It was fine!", "One. Two. Three."),
    ("paragraphs", {"relation": "at_least", "n": 2}, "First block.\n\n\nSecond block.", "One line.\nAnother line."),
    ("include", {"keywords": ["owl", "moon light"]}, "An OWL sat in the moon\nlight.", "An owlet sat in the moonlight."),
    ("forbid", {"keywords": ["cat"]}, "A category of catalogues.", "The Cat sat."),
    ("frequency", {"keyword": "tea", "relation": "exactly", "n": 2}, "Tea, then more tea; no teapot.", "tea"),
    ("letter_frequency", {"letter": "Q", "relation": "at_least", "n": 2}, "quick quiz", "a quiet day"),
    ("json", {}, '```json\n{"a": [1, 2]}\n```', "{'a': 1}"),
    ("bullets", {"relation": "exactly", "n": 2}, "* one\n  - nested\n**bold** line", "* one\n*not a bullet*"),
    ("sections", {"marker": "SECTION", "relation": "exactly", "n": 2},
     "SECTION 1\nA\n\nSECTION 2\nB", "SECTION 1\nA\n\nsection 2\nB"),
    ("title", {}, "<<Spring Notes>>\nText.", "<< >>\nNo real title."),
    ("highlights", {"relation": "at_least", "n": 2}, "* bullet with *this* and **that**", "* bullet and * loose * stars"),
    ("lowercase", {}, "all quiet here, 42 times.", "all quiet here, Bob."),
    ("uppercase", {}, "STOP! 3 TIMES.", "STOP! 3 times."),
    ("capital_words", {"relation": "at_least", "n": 2}, "I saw NASA and the ESA.", "I saw A plane."),
    ("start_with", {"phrase": "No"}, "  no, not today.", "Nobody knows."),
    ("end_with", {"phrase": "sleep well"}, "Goodnight, SLEEP WELL\n", "I hope you didn't oversleep well"),
    ("quoted", {}, "“Curly quotes count.”", "\"Only opening."),
    ("no_commas", {}, "Plain text. No pauses.", "Well，a full-width comma."),
    ("placeholders", {"relation": "exactly", "n": 2}, "Dear [name], see you at [place].", "Dear [name], see [ ] and []."),
    ("postscript", {"marker": "P.S."}, "Body.\n\np.s. bring snacks", "Body.\n\nP.S."),
]


def test_checker_cases_cover_every_kind() -> None:
    assert {case[0] for case in CHECKER_CASES} == set(checks.KINDS)


@pytest.mark.parametrize(("kind", "args", "passing", "failing"), CHECKER_CASES)
def test_checker_pass_and_fail(kind: str, args: dict[str, Any], passing: str, failing: str) -> None:
    good = checks.check(kind, passing, args)
    bad = checks.check(kind, failing, args)
    assert good.followed, f"{kind} should pass on {passing!r}: {good.observed}"
    assert not bad.followed, f"{kind} should fail on {failing!r}: {bad.observed}"
    assert bad.observed


def test_relations() -> None:
    assert checks.compare(5, "at_least", 5) and not checks.compare(4, "at_least", 5)
    assert checks.compare(5, "at_most", 5) and not checks.compare(6, "at_most", 5)
    assert checks.compare(5, "exactly", 5) and not checks.compare(6, "exactly", 5)


# --- the counting rules ----------------------------------------------------------------------


def test_word_rule_joins_apostrophes_and_hyphens() -> None:
    assert text.words("It's a well-known fact -- isn't it? (Yes: 100%.)") == [
        "It's", "a", "well-known", "fact", "isn't", "it", "Yes", "100",
    ]


def test_sentence_rule() -> None:
    sample = 'He said "stop." Then Mr. Hale left at 3.15, e.g. early... Why?!\n\nA heading\n\n- one\n- two\n\n...'
    assert text.sentences(sample) == [
        'He said "stop."',
        "Then Mr. Hale left at 3.15, e.g. early...",
        "Why?!",
        "A heading",
        "- one\n- two",  # a single line break does not end a sentence; a blank line does
    ]


def test_paragraph_rule() -> None:
    assert text.paragraphs("\n\nOne\nstill one\n \t\nTwo\n\n\n") == ["One\nstill one", "Two"]


def test_loose_variants_start_with_the_text_and_drop_empties() -> None:
    variants = text.loose_variants("Sure:\n## **Answer**\nbye")
    assert variants[0] == "Sure:\n## **Answer**\nbye"
    assert "Answer" in variants and "Sure:\nAnswer\nbye" in variants
    assert all(variant.strip() for variant in variants)
    assert text.loose_variants("one line") == ["one line"]


# --- strict and loose scoring -----------------------------------------------------------------


def _score(instructions: list[dict[str, Any]], content: str) -> Any:
    return scoring.score_results(scoring.judge(instructions, content))


def test_loose_forgives_chatter_and_markdown_but_strict_does_not() -> None:
    wanted = [instruction("start_with", phrase="Dear Ana"), instruction("end_with", phrase="See you soon!")]
    chatty = "Sure, here is the note:\nDear Ana, thanks for the plants.\nSee you soon!\nWant another version?"
    score = _score(wanted, chatty)
    assert score.value == 0.0 and not score.passed
    assert score.details["prompt_loose"] is True and score.details["loose_followed"] == 2
    assert "(loose: 2 of 2)" in score.reason

    sections = [instruction("sections", marker="SECTION", relation="exactly", n=2)]
    decorated = "## SECTION 1\nA\n\n**SECTION 2**\nB"
    assert not _score(sections, decorated).passed
    assert _score(sections, decorated).details["prompt_loose"] is True


def test_loose_does_not_forgive_a_wrong_body() -> None:
    score = _score([instruction("no_commas")], "Intro line\nthe body has a comma, here\nthanks")
    assert score.details["prompt_strict"] is False and score.details["prompt_loose"] is False


def test_reason_names_the_failed_instruction_and_what_was_seen() -> None:
    score = _score(
        [instruction("words", relation="at_most", n=10), instruction("no_commas")],
        "Short, but, with commas.",
    )
    assert score.reason == "1 of 2 instructions: 'no commas' failed (2 commas)"
    assert score.value == 0.5
    assert score.subscores == {"length": 1.0, "punctuation": 0.0}
    assert _score([instruction("no_commas")], "fine").reason == "1 of 1 instructions followed"


def test_subscores_are_per_family_fractions() -> None:
    score = _score(
        [instruction("include", keywords=["fox"]), instruction("forbid", keywords=["dog"]), instruction("lowercase")],
        "the fox met a dog",
    )
    assert score.subscores == {"keywords": 0.5, "case": 1.0}
    assert score.value == pytest.approx(2 / 3)


def test_empty_answer_follows_nothing(pack: InstructFollowPack) -> None:
    item = next(i for i in pack.items("full") if any(x["kind"] == "no_commas" for x in i.data["instructions"]))
    score = pack.score(item, reply(""))
    assert score.status == "scored" and score.value == 0.0 and not score.passed
    assert "empty response" in score.reason


def test_unjudgeable_replies_keep_their_status_and_instruction_count(pack: InstructFollowPack) -> None:
    item = pack.items("quick")[0]
    truncated = pack.score(item, reply("Bread goes stale because", finish_reason="length"))
    assert truncated.status == "truncated" and truncated.value == 0.0
    assert truncated.details["total"] == len(item.data["instructions"])
    empty = pack.score(item, reply(None, reasoning="Let me think about starch."))
    assert empty.status == "empty" and empty.details["strict_followed"] == 0


# --- aggregation over stored records ----------------------------------------------------------


def _record(pack: InstructFollowPack, item_id: str, content: str, finish_reason: str = "stop") -> ItemRecord:
    item = pack.item_by_id(item_id)
    assert item is not None
    transcript = reply(content, finish_reason=finish_reason)
    record = ItemRecord(
        pack=pack.name, pack_version=pack.version, item_id=item_id, transcript=transcript,
        score=pack.score(item, transcript), started_at="t0", finished_at="t1", elapsed_s=0.1,
    )
    return record


def test_aggregate_prompt_and_instruction_accuracy(pack: InstructFollowPack) -> None:
    bread = pack.item_by_id("stale-bread")
    letter = pack.item_by_id("thank-you-start-end")
    assert bread is not None and letter is not None and bread.reference is not None and letter.reference is not None
    records = [
        _record(pack, "stale-bread", bread.reference["content"]),  # 2 of 2 strict and loose
        _record(pack, "stale-bread", bread.wrong[0]["content"]),  # 0 of 2
        _record(pack, "thank-you-start-end", letter.wrong[0]["content"]),  # 1 of 2 strict, 2 of 2 loose
        _record(pack, "thank-you-start-end", "Dear Ana", finish_reason="length"),  # truncated: 0 of 2
    ]
    summary = pack.aggregate(records)
    assert summary["prompts"] == 4 and summary["instructions"] == 8 and summary["unscored"] == 0
    assert summary["prompt_strict"] == pytest.approx(1 / 4)
    assert summary["prompt_loose"] == pytest.approx(2 / 4)
    assert summary["instruction_strict"] == pytest.approx(3 / 8)
    assert summary["instruction_loose"] == pytest.approx(4 / 8)
    assert summary["by_family"]["startend"] == {"n": 4, "strict": 0.25, "loose": 0.5}
    assert summary["by_kind"]["no_commas"] == {"n": 2, "strict": 0.5, "loose": 0.5}


def test_aggregate_counts_records_without_a_score_as_unscored(pack: InstructFollowPack) -> None:
    record = _record(pack, "stale-bread", "text")
    record.score = None
    summary = pack.aggregate([record])
    assert summary["unscored"] == 1 and summary["prompt_strict"] == 0.0 and summary["instruction_strict"] is None
