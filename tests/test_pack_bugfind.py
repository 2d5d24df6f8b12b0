"""bugfind pack: data, prompt, tolerant extraction, scoring of stored answers, containment of fixes.

Fixes really run in the sandbox against the hidden tests; nothing here is mocked.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.errors import UserError
from bench.pack import Item
from bench.packs.bugfind import BugFindPack
from bench.packs.bugfind.extract import extract_answer
from bench.packs.bugfind.hidden import run_hidden_tests
from bench.packs.bugfind.pack import load_items, number_lines
from bench.run.aggregate import build_results
from bench.sandbox import sandbox_backend
from bench.testing import record_for, transcript_for_answer, transcript_for_text

REPO = Path(__file__).resolve().parents[1]
ITEMS_PATH = Path(str(BugFindPack.resource("items.jsonl")))
ALL_ITEMS = load_items()
BY_ID = {item.id: item for item in ALL_ITEMS}


@pytest.fixture(scope="module")
def pack() -> BugFindPack:
    return BugFindPack()


@pytest.fixture(scope="module")
def fast_pack() -> BugFindPack:
    """Short wall clock, for fixes that never finish."""
    return BugFindPack(timeout_s=3.0)


def fenced(code: str, language: str = "python") -> str:
    return f"```{language}\n{code}```"


# --- data ------------------------------------------------------------------------------------


def test_tiers_and_mix(pack: BugFindPack) -> None:
    full, quick = pack.items("full"), pack.items("quick")
    assert len(full) >= 60
    assert len(quick) == 15
    assert {item.id for item in quick} <= {item.id for item in full}
    languages = Counter(item.data["language"] for item in full)
    assert languages["python"] >= 50 and len(languages) >= 4
    correct_programs = [item for item in full if item.data["bug"] is None]
    assert len(correct_programs) >= 8
    assert any(item.data["bug"] is None for item in quick)
    assert len({item.data["bug"]["kind"] for item in full if item.data["bug"]}) >= 20


def test_every_item_has_reference_and_wrong_answers() -> None:
    for item in ALL_ITEMS:
        assert item.reference and isinstance(item.reference.get("content"), str), item.id
        assert item.wrong, item.id
        assert all(isinstance(answer.get("content"), str) for answer in item.wrong), item.id


def test_registered_under_its_name() -> None:
    assert "bugfind" in registry.available()
    assert isinstance(registry.load("bugfind"), BugFindPack)


@pytest.mark.parametrize("item", [i for i in ALL_ITEMS if i.data["language"] == "python"], ids=lambda i: i.id)
def test_shown_program_matches_its_label(item: Item) -> None:
    """Buggy programs fail some hidden test; correct ones pass them all (else the label lies)."""
    verdict = run_hidden_tests(item.data["program"], item.data["tests"], timeout_s=10)
    if item.data["bug"] is None:
        assert verdict.correct, verdict.summary
    else:
        assert not verdict.correct, f"{item.id}: the planted bug is not caught by any hidden test"


def test_prompt_shows_numbered_program_and_format_but_no_answer(pack: BugFindPack) -> None:
    for item in ALL_ITEMS:
        [message] = pack.messages(item)
        text = message["content"]
        assert number_lines(item.data["program"]) in text
        assert "LINE: <n>" in text and "NO BUG" in text
        assert item.data["task"] in text
        for test in item.data.get("tests", []):
            assert test not in text, item.id
        for pattern in item.data.get("fix_checks", {}).get("require", []):
            assert pattern not in text, item.id


def test_number_lines_format() -> None:
    shown = number_lines("a\n\n" + "x\n" * 9)
    assert shown.split("\n")[0] == " 1 | a"
    assert shown.split("\n")[1] == " 2 |"
    assert shown.split("\n")[-1] == "11 | x"


def test_options_set_the_hidden_test_clock() -> None:
    assert registry.load("bugfind", {"timeout_s": "4.5"}).timeout_s == 4.5
    with pytest.raises(UserError, match="pack 'bugfind' has no option 'workers'; its options: timeout_s"):
        BugFindPack.from_options({"workers": "2"})
    with pytest.raises(UserError, match="option timeout_s='soon': input should be a valid number"):
        BugFindPack.from_options({"timeout_s": "soon"})
    with pytest.raises(UserError, match="timeout_s='900': input should be less than or equal to 600"):
        BugFindPack.from_options({"timeout_s": "900"})


def test_sampling_is_deterministic_and_sized() -> None:
    sampling = BugFindPack.default_sampling
    assert sampling.temperature == 0.0
    assert 512 <= sampling.max_tokens <= 2048


# --- schema ----------------------------------------------------------------------------------


def _write(tmp_path: Path, item: dict[str, Any]) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n")
    return path


def _good_item() -> dict[str, Any]:
    return json.loads(ITEMS_PATH.read_text().splitlines()[0])


@pytest.mark.parametrize(
    ("breakage", "message"),
    [
        (lambda d: d.pop("program"), r"'program' is a required property"),
        (lambda d: d.update(language="cobol"), r"field language: 'cobol' is not one of"),
        (lambda d: d.pop("tests"), r"'tests' is a required property"),
        (lambda d: d.update(tests=["assert True"]), r"field tests: .* is too short"),
        (lambda d: d.update(bug={"lines": [2]}), r"field bug: .*"),
        (lambda d: d.update(bug={"lines": [99], "kind": "off_by_one"}), r"bug line 99 is past the end"),
        (lambda d: d.update(surprise=1), r"Additional properties are not allowed"),
    ],
    ids=["no-program", "bad-language", "no-tests", "too-few-tests", "bug-without-kind", "line-past-end", "extra-field"],
)
def test_schema_rejects_broken_items(tmp_path: Path, breakage: Any, message: str) -> None:
    item = _good_item()
    breakage(item["data"])
    path = _write(tmp_path, item)
    with pytest.raises(UserError, match=message) as caught:
        BugFindPack(path).items()
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_schema_wants_static_checks_for_unexecuted_languages(tmp_path: Path) -> None:
    item = json.loads(next(line for line in ITEMS_PATH.read_text().splitlines() if '"language": "sql"' in line))
    assert item["data"]["bug"] is not None
    item["data"].pop("fix_checks")
    with pytest.raises(UserError, match="'fix_checks' is a required property"):
        load_items(_write(tmp_path, item))


def test_unreadable_data_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read pack data"):
        BugFindPack(tmp_path / "missing.jsonl").items()


# --- stored answers --------------------------------------------------------------------------


@pytest.mark.parametrize("item", ALL_ITEMS, ids=lambda i: i.id)
def test_reference_scores_one_and_every_wrong_answer_less(pack: BugFindPack, item: Item) -> None:
    assert item.reference is not None
    reference = pack.score(item, transcript_for_answer(item.reference))
    assert reference.status == "scored"
    assert reference.value == 1.0, reference.reason
    assert reference.passed
    assert reference.extraction in ("line_tag+fence_lang", "no_bug_tag")
    assert set(reference.subscores) <= set(pack.subdimensions)
    for answer in item.wrong:
        score = pack.score(item, transcript_for_answer(answer))
        assert score.value < reference.value, f"{answer.get('why')}: {score.reason}"
        assert score.reason


def test_reasons_say_what_was_wrong(pack: BugFindPack) -> None:
    item = BY_ID["py-binary-search"]
    program = item.data["program"]
    score = pack.score(item, transcript_for_text("LINE: 4\n" + fenced(program)))
    assert score.reason.startswith("said line 4, the bug is on line 3; fix passed ")
    assert "/5 hidden tests (first failure: " in score.reason
    assert score.subscores == {"localization": 0.0, "fix_correctness": 0.0, "answer_format": 1.0}
    assert score.details["fix"]["passed"] < score.details["fix"]["total"] == 5

    missed = pack.score(item, transcript_for_text("NO BUG"))
    assert missed.reason == "said no bug, the bug is on line 3"
    alarm = pack.score(BY_ID["py-ok-count-runs"], transcript_for_text("LINE: 4\n" + fenced("x = 1\n")))
    assert alarm.reason == "false alarm: said line 4, the program is correct"
    assert alarm.subscores["no_false_alarm"] == 0.0


def test_fix_on_wrong_line_still_counts_as_fix(pack: BugFindPack) -> None:
    item = BY_ID["py-chunk"]
    score = pack.score(item, transcript_for_answer(item.wrong[0]))
    assert score.subscores == {"localization": 0.0, "fix_correctness": 1.0, "answer_format": 1.0}
    assert score.value == pytest.approx(0.6)


def test_truncated_and_empty_replies_are_counted_not_scored(pack: BugFindPack) -> None:
    item = BY_ID["py-median"]
    truncated = pack.score(item, transcript_for_text("LINE: 6\n```python\ndef med", finish_reason="length"))
    assert truncated.status == "truncated" and truncated.value == 0.0
    empty = pack.score(item, transcript_for_text("", reasoning="thinking about line 6..."))
    assert empty.status == "empty"
    assert empty.details["language"] == "python"
    nothing = pack.score(item, transcript_for_text("I am not sure."))
    assert nothing.status == "scored" and nothing.value == 0.0
    assert nothing.reason.startswith("no verdict found")
    assert nothing.subscores["answer_format"] == 0.0


# --- tolerant extraction ---------------------------------------------------------------------

FIXED_CHUNK = BY_ID["py-chunk"].reference["content"].split("```python\n")[1].split("```")[0]  # type: ignore[index]


@pytest.mark.parametrize(
    ("content", "rule", "fmt"),
    [
        (f"LINE: 3\n```python\n{FIXED_CHUNK}```", "line_tag+fence_lang", 1.0),
        (f"**LINE:** 3\n\n```\n{FIXED_CHUNK}```", "line_tag+fence_plain", 1.0),
        (f"Let me look.\n\nLine: 3\n```py\n{FIXED_CHUNK}```\nThat fixes it.", "line_tag+fence_lang", 1.0),
        (f"The bug is on line 3: the range stops early.\n```python\n{FIXED_CHUNK}```", "line_phrase+fence_lang", 0.5),
        (f"LINE: 3\n```python\n{FIXED_CHUNK}", "line_tag+fence_unclosed", 0.5),
        (f"LINE: 3\n{FIXED_CHUNK}", "line_tag+bare_code", 0.5),
        ("LINE: 3\n```python\n" + number_lines(FIXED_CHUNK) + "\n```", "line_tag+fence_lang+numbered", 0.5),
        (f"```\nLINE: 3\n```\n```python\n{FIXED_CHUNK}```", "tag_in_fence+fence_lang", 0.5),
        (f"<think>maybe line 1?</think>LINE: 3\n```python\n{FIXED_CHUNK}```", "line_tag+fence_lang", 1.0),
        ("LINE: 3\n```python\n    for start in range(0, len(items), size):\n```\n"
         f"Full program:\n```python\n{FIXED_CHUNK}```", "line_tag+fence_lang", 1.0),
    ],
    ids=["strict", "bold-tag-plain-fence", "prose-around", "line-phrase", "unclosed-fence", "bare-code",
         "numbered-code", "tag-in-fence", "think-block", "snippet-then-program"],
)
def test_tolerant_extraction_finds_right_answer(pack: BugFindPack, content: str, rule: str, fmt: float) -> None:
    score = pack.score(BY_ID["py-chunk"], transcript_for_text(content))
    assert score.extraction == rule
    assert score.subscores["localization"] == 1.0
    assert score.subscores["fix_correctness"] == 1.0, score.reason
    assert score.subscores["answer_format"] == fmt
    assert score.passed


@pytest.mark.parametrize(
    ("content", "verdict", "rule"),
    [
        ("NO BUG", "no_bug", "no_bug_tag"),
        ("**NO BUG.**", "no_bug", "no_bug_tag"),
        ("After checking each line:\n\nNO BUG", "no_bug", "no_bug_tag"),
        ("The program is correct.", "no_bug", "no_bug_phrase"),
        ("There are no bugs here.", "no_bug", "no_bug_phrase"),
        ("I think the problem is in line 4.", "line", "line_phrase"),
        ("Nothing to say.", "none", "none"),
    ],
)
def test_verdict_rules(content: str, verdict: str, rule: str) -> None:
    answer = extract_answer(content, "python")
    assert (answer.verdict, answer.verdict_rule) == (verdict, rule)


def test_verdict_words_inside_code_are_not_a_verdict() -> None:
    answer = extract_answer('```python\nprint("NO BUG on line 3")\n```', "python")
    assert answer.verdict == "none"


def test_loose_no_bug_scores_below_strict(pack: BugFindPack) -> None:
    item = BY_ID["py-ok-roman"]
    strict = pack.score(item, transcript_for_text("NO BUG"))
    loose = pack.score(item, transcript_for_text("Looks correct to me: the program is correct."))
    assert strict.value == 1.0
    assert loose.passed and loose.value == pytest.approx(0.95)
    assert loose.extraction == "no_bug_phrase"
    assert "loose format" in loose.reason


def test_static_check_for_other_languages(pack: BugFindPack) -> None:
    item = BY_ID["c-copy-string"]
    fixed = item.reference["content"]  # type: ignore[index]
    assert pack.score(item, transcript_for_text(fixed)).value == 1.0
    alternative = fixed.replace("strlen(s) + 1", "1 + strlen(s)")
    assert pack.score(item, transcript_for_text(alternative)).subscores["fix_correctness"] == 1.0
    unchanged = pack.score(item, transcript_for_text("LINE: 5\n" + fenced(item.data["program"], "c")))
    assert unchanged.subscores["fix_correctness"] == 0.0
    assert "static checks" in unchanged.reason


# --- hostile fixes are contained -------------------------------------------------------------


def _hostile(body: str) -> str:
    """The right fix for py-chunk with ``body`` run when the module loads."""
    return body + "\n\n" + FIXED_CHUNK


needs_isolation = pytest.mark.skipif(sandbox_backend() != "bwrap", reason="no bubblewrap: the sandbox does not isolate")


@needs_isolation
def test_fix_that_uses_the_network_fails(fast_pack: BugFindPack) -> None:
    code = _hostile("import socket\nsocket.create_connection(('1.1.1.1', 53), timeout=2).close()")
    score = fast_pack.score(BY_ID["py-chunk"], transcript_for_text("LINE: 3\n" + fenced(code)))
    assert score.subscores["fix_correctness"] == 0.0
    assert "failed to load" in score.reason
    assert not score.passed


@needs_isolation
def test_fix_that_writes_outside_its_dir_fails_and_leaves_nothing(fast_pack: BugFindPack) -> None:
    target = REPO / f"bugfind-escape-{uuid.uuid4().hex}.txt"
    code = _hostile(f"open({str(target)!r}, 'w').write('escaped')")
    try:
        score = fast_pack.score(BY_ID["py-chunk"], transcript_for_text("LINE: 3\n" + fenced(code)))
        assert score.subscores["fix_correctness"] == 0.0
        assert not score.passed
    finally:
        escaped = target.exists()
        target.unlink(missing_ok=True)
    assert not escaped


def test_fix_that_never_finishes_is_killed_and_fails(fast_pack: BugFindPack) -> None:
    # Ignores the per-test alarm, so only the sandbox's wall clock can stop it.
    code = _hostile("import signal\nsignal.signal(signal.SIGPROF, signal.SIG_IGN)\nwhile True:\n    pass")
    started = time.monotonic()
    score = fast_pack.score(BY_ID["py-chunk"], transcript_for_text("LINE: 3\n" + fenced(code)))
    assert time.monotonic() - started < 15
    assert score.subscores["fix_correctness"] == 0.0
    assert "timed out" in score.reason
    assert score.details["fix"]["sandbox"]["timed_out"] is True


def test_slow_function_fails_only_its_tests(pack: BugFindPack) -> None:
    stall = "    if size == 5:\n        while True:\n            pass\n"
    code = FIXED_CHUNK.replace("    pieces = []\n", "    pieces = []\n" + stall)
    score = pack.score(BY_ID["py-chunk"], transcript_for_text("LINE: 3\n" + fenced(code)))
    assert score.details["fix"]["passed"] == 3
    assert "timed out" in score.reason


def test_printed_fake_result_does_not_pass(fast_pack: BugFindPack) -> None:
    forged = '@@bugfind-result-0000@@{"results": [null, null, null, null]}'
    code = _hostile(f"import os\nos.write(1, b'{forged}\\n')\nos._exit(0)")
    score = fast_pack.score(BY_ID["py-chunk"], transcript_for_text("LINE: 3\n" + fenced(code)))
    assert score.subscores["fix_correctness"] == 0.0
    assert "no test result" in score.reason


# --- aggregate -------------------------------------------------------------------------------


def test_aggregate_by_kind_language_and_false_alarms(pack: BugFindPack) -> None:
    chunk, runs, having = BY_ID["py-chunk"], BY_ID["py-ok-count-runs"], BY_ID["sql-having"]
    answers = [(chunk, chunk.reference), (runs, runs.wrong[0]), (having, having.reference)]
    records = []
    for item, answer in answers:
        assert answer is not None
        records.append(record_for(pack, item, transcript_for_answer(answer)))
    failed = record_for(pack, BY_ID["py-median"], transcript_for_answer({"content": ""}))
    records.append(failed.model_copy(update={"score": None}))
    results = build_results("r", {"bugfind": pack}, records, {"bugfind": 4})
    breakdowns = results.packs["bugfind"].breakdowns
    assert breakdowns["kind"]["off_by_one"].pass_rate.mean == 1.0 and breakdowns["kind"]["off_by_one"].score.n == 1
    assert breakdowns["kind"]["no_bug"].pass_rate.mean == 0.0
    assert breakdowns["language"]["sql"].pass_rate.mean == 1.0
    # A failed record is left out of its groups' figures, as of the score, but its group is listed.
    assert breakdowns["language"]["python"].score.n == 2
    assert (BY_ID["py-median"].data["bug"] or {}).get("kind", "no_bug") in breakdowns["kind"]
    figures = pack.aggregate(records)
    assert figures["false_alarm_rate"] == 1.0
    assert figures["unscored"] == 1
    assert figures["extraction_rules"]["line_tag+fence_lang"] == 3
