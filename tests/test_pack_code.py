"""Code pack: every reference passes and every wrong fails, under evalplus in the sandbox, and the
pack's verdicts equal what evalplus's own evaluator reports for the same programs."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.errors import UserError
from bench.pack import Item, Score
from bench.packs.code import KNOWN_DEFECTS, QUICK_IDS, CodePack, Sample, build_solution, check
from bench.packs.code import data as code_data
from bench.packs.code.crosscheck import KINDS, evalplus_own_statuses, mixed_kinds, reply_for
from bench.packs.code.extract import certain_failure, find_code, prompt_context
from bench.run.aggregate import build_results
from bench.testing import record_for
from bench.transcript import Exchange, Request, Response, Transcript

DATA_DIR = Path(os.environ.get("BENCH_DATA_DIR") or Path(__file__).parents[1].parent / "shared" / "data")
DATA_FILE = DATA_DIR / code_data.LOCAL_NAME


@pytest.fixture(scope="module", autouse=True)
def local_data() -> Iterator[None]:
    if not DATA_FILE.is_file():
        pytest.skip(f"HumanEval+ not found at {DATA_FILE}; set BENCH_DATA_DIR")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BENCH_DATA_DIR", str(DATA_DIR))
        patch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
        yield


@pytest.fixture(scope="module")
def pack(local_data: None) -> CodePack:
    return CodePack()


def reply(content: str | None, finish_reason: str = "stop") -> Transcript:
    response = Response(content=content, finish_reason=finish_reason)
    return Transcript(exchanges=[Exchange(request=Request(messages=[]), response=response)])


def timing_sensitive(task_id: str) -> bool:
    """Tasks with a ground-truth input slower than 0.1 s: evalplus's 4x time limit can trip under load."""
    times = code_data.reference_times(task_id)
    return max(times["base"] + times["plus"]) > 0.1


def raw_statuses(score: Score) -> tuple[str, str]:
    """What evalplus itself decided (before the known-defect correction)."""
    details = score.details
    return (
        details.get("evalplus_base_status", details["base_status"]),
        details.get("evalplus_plus_status", details["plus_status"]),
    )


def test_items_quick_tier_and_prompts(pack: CodePack) -> None:
    items = pack.items("full")
    assert len(items) == 164
    assert items[0].id == "HumanEval/0" and items[-1].id == "HumanEval/163"
    quick = pack.items("quick")
    assert [item.id for item in quick] == list(QUICK_IDS) and len(quick) == 15
    assert all("quick" in item.tiers for item in quick)
    message = pack.messages(items[0])[0]["content"]
    assert "```python" in message and "def has_close_elements" in message
    assert pack.data_files() == [DATA_FILE]


def test_every_reference_passes_and_every_wrong_fails(pack: CodePack) -> None:
    items = pack.items("full")
    references = pack.score_many([(item, reply(item.reference["content"])) for item in items if item.reference])
    wrongs = pack.score_many([(item, reply(item.wrong[0]["content"])) for item in items])
    failed = [item for item, score in zip(items, references) if not score.passed]
    # evalplus limits each input to 4x its ground-truth time: on a loaded machine a slow task can
    # trip it. Those (and only those) get one more try, alone, with room to spare on time.
    assert all(timing_sensitive(item.id) for item in failed), [item.id for item in failed]
    patient = CodePack(workers=1, time_limit_factor=40.0)
    retried = patient.score_many([(item, reply(item.reference["content"])) for item in failed if item.reference])
    assert all(score.passed for score in retried), [(item.id, score.reason) for item, score in zip(failed, retried)]
    for item, score in zip(items, references):
        assert score.status == "scored" and score.extraction == "fenced", item.id
        assert score.subscores == ({"base": 1.0, "plus": 1.0} if score.passed else score.subscores)
    for item, score in zip(items, wrongs):
        assert score.status == "scored" and not score.passed and score.value == 0.0, item.id
        assert score.subscores == {"base": 0.0, "plus": 0.0}, item.id


def test_scores_equal_evalplus_own_evaluator(pack: CodePack, tmp_path: Path) -> None:
    """Same programs, two graders: the pack (sandboxed driver) and ``python -m evalplus.evaluate``."""
    items = pack.items("full")
    problems = code_data.problems()
    kinds = mixed_kinds([item.id for item in items], seed=0)
    # Timing-sensitive tasks get the kinds that fail fast, so load cannot split the two graders.
    kinds.update({item.id: "wrong" for item in items if timing_sensitive(item.id)})
    pairs = [
        (item, reply(reply_for(kinds[item.id], problems[item.id], item.reference["content"], item.wrong[0]["content"])))
        for item in items
        if item.reference
    ]
    scores = pack.score_many(pairs)
    programs = {item.id: score.details["solution"] for item, score in zip(items, scores)}
    theirs = evalplus_own_statuses(programs, tmp_path / "evalplus", parallel=2)
    ours = {item.id: raw_statuses(score) for item, score in zip(items, scores)}
    assert ours == theirs
    seen = Counter((kinds[task_id], statuses) for task_id, statuses in ours.items())
    assert {kind for kind, _ in seen} == set(KINDS)
    assert seen[("plus_break", ("pass", "fail"))] > 10  # base and plus really do differ somewhere
    assert seen[("reference", ("pass", "pass"))] > 10


def test_known_evalplus_defect_is_corrected_and_reported(pack: CodePack) -> None:
    item = pack.item_by_id("HumanEval/32")
    assert item is not None and item.reference is not None and "HumanEval/32" in KNOWN_DEFECTS
    not_a_root = item.data["prompt"].rstrip() + "\n    return 0.5 + sum(xs)\n"
    replies = [item.reference["content"], item.wrong[0]["content"], f"```python\n{not_a_root}\n```"]
    good, wrong, off = pack.score_many([(item, reply(text)) for text in replies])
    assert good.passed and good.details["base_status"] == good.details["plus_status"] == "pass"
    # evalplus 0.3.1 itself fails even the canonical solution; that verdict is kept, not hidden.
    assert (good.details["evalplus_base_status"], good.details["evalplus_plus_status"]) == ("fail", "fail")
    assert "find_zero" in good.details["known_evalplus_defect"]
    assert not wrong.passed and not off.passed and off.details["base_status"] == "fail"
    records = [record_for(pack, item, reply("stored"), score=s) for s in (good, wrong, off)]
    summary = pack.aggregate(records)
    assert summary["known_evalplus_defect"]["HumanEval/32"]["plus_pass_corrected"] == 1
    assert summary["known_evalplus_defect"]["HumanEval/32"]["plus_pass_evalplus"] == 0
    assert summary["plus_pass_evalplus"] == 0.0


def test_aggregate_counts_base_plus_and_failures(pack: CodePack) -> None:
    items = [pack.item_by_id(task_id) for task_id in ("HumanEval/0", "HumanEval/2", "HumanEval/4")]
    assert all(isinstance(item, Item) for item in items)
    a, b, c = (item for item in items if item is not None)
    scores = pack.score_many(
        [(a, reply(a.reference["content"] if a.reference else "")), (b, reply(b.wrong[0]["content"])), (c, reply("Sorry, no."))]
    )
    records = [record_for(pack, i, reply("stored"), score=s) for i, s in zip((a, b, c), scores)]
    summary = pack.aggregate(records)
    assert summary["plus_status_counts"] == {"fail": 2, "pass": 1}
    # Status counts are figures, not a breakdown: code declares none, and results.json says so.
    assert build_results("r", {"code": pack}, records, {"code": 3}).packs["code"].breakdowns == {}
    assert summary["no_code"] == 1 and summary["errors"] == 0


def test_code_is_found_in_chat_replies(pack: CodePack) -> None:
    item = pack.item_by_id("HumanEval/0")
    assert item is not None
    entry, prompt = item.data["entry_point"], item.data["prompt"]
    body = "    return any(abs(a - b) < threshold for i, a in enumerate(numbers) for b in numbers[i + 1:])\n"
    bare = f"def {entry}(numbers: List[float], threshold: float) -> bool:\n{body}"
    two_blocks = f"First try:\n```python\ndef {entry}(numbers, threshold):\n    return True\n```\nBetter:\n```py\n{bare}```\nUse it: ```python\nprint(1)\n```"
    found = find_code(two_blocks, entry)
    assert found is not None and found.rule == "fenced" and "any(" in found.code
    unclosed = find_code(f"```python\n{bare}", entry)
    assert unclosed is not None and unclosed.rule == "fenced"
    assert find_code(f"<think>```python\ndef {entry}(): pass\n```</think>", entry) is None
    built = build_solution(f"Sure:\n```python\n{bare}```", prompt, entry)
    assert built is not None
    program, rule = built
    # ``List`` comes from the prompt's own imports, which the reply left out.
    assert program.startswith("from typing import List") and rule == "fenced"
    plain = build_solution(f"Here you go:\n\n{bare}\nThis runs in O(n^2).", prompt, entry)
    assert plain is not None and plain[1] == "unfenced" and "This runs" not in plain[0]
    score = pack.score(item, reply(f"```python\n{bare}```"))
    assert score.passed
    helpers = prompt_context(pack.item_by_id("HumanEval/10").data["prompt"], "make_palindrome")  # type: ignore[union-attr]
    assert "def is_palindrome" in helpers and "make_palindrome" not in helpers


def test_replies_evalplus_would_fail_unrun(pack: CodePack) -> None:
    item = pack.item_by_id("HumanEval/2")
    assert item is not None
    assert certain_failure("def truncate_number(:\n", "truncate_number") is not None
    assert certain_failure("def other():\n    return 1\n", "truncate_number") is not None
    assert certain_failure("def truncate_number(x):\n    return x % 1\n", "truncate_number") is None
    for text, why in [("I cannot help with that.", "does not parse"), ("", "no code"), ("```python\ndef f():\n    return 1\n```", "defines no")]:
        score = pack.score(item, reply(text))
        assert score.status == "scored" and not score.passed and score.details["not_run"], text
        assert why in score.reason, (text, score.reason)


def test_unjudgeable_replies_keep_their_status(pack: CodePack) -> None:
    item = pack.items("full")[3]
    assert pack.score(item, reply("```python\ndef below_zero(", finish_reason="length")).status == "truncated"


def test_printing_code_cannot_forge_the_result(pack: CodePack) -> None:
    item = pack.item_by_id("HumanEval/2")
    assert item is not None
    noisy = (
        "import sys\nprint('{\"results\": [{\"base\": \"pass\", \"plus\": \"pass\"}]}')\n"
        "def truncate_number(number: float) -> float:\n"
        "    print('{\"results\": []}')\n    sys.stderr.write('noise')\n    return 0.0\n"
    )
    score = pack.score(item, reply(f"```python\n{noisy}```"))
    assert score.status == "scored" and score.details["base_status"] == "fail"


def test_infinite_loop_is_failed_within_evalplus_limits(pack: CodePack) -> None:
    item = pack.item_by_id("HumanEval/2")
    assert item is not None
    score = pack.score(item, reply("```python\ndef truncate_number(number):\n    while True:\n        pass\n```"))
    assert score.status == "scored" and not score.passed
    assert score.details["check_s"] < 30


def test_checker_failure_is_an_error_not_a_zero(pack: CodePack, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(code_data, "payload_path", lambda task_id: tmp_path / "missing.pkl")
    [verdict] = check([Sample("HumanEval/2", "def truncate_number(x):\n    return x % 1\n")])
    assert verdict.error is not None and "missing.pkl" in verdict.error
    item = pack.item_by_id("HumanEval/2")
    assert item is not None and item.reference is not None
    score = pack.score(item, reply(item.reference["content"]))
    assert score.status == "error" and "checker failed" in score.reason


def test_missing_data_is_a_user_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HUMANEVAL_OVERRIDE_PATH", raising=False)
    monkeypatch.setenv("BENCH_DATA_DIR", str(tmp_path))
    with pytest.raises(UserError, match="HumanEval\\+ data not found"):
        code_data.configure_source()
    monkeypatch.setenv("HUMANEVAL_OVERRIDE_PATH", str(tmp_path / "nope.jsonl.gz"))
    with pytest.raises(UserError, match="HUMANEVAL_OVERRIDE_PATH"):
        code_data.configure_source()


def test_options() -> None:
    pack = CodePack.from_options({"workers": "3", "time_limit_factor": "8"})
    assert (pack.workers, pack.time_limit_factor) == (3, 8.0)
    with pytest.raises(UserError, match="pack 'code' has no option 'shots'; its options: workers"):
        CodePack.from_options({"shots": "1"})
    with pytest.raises(UserError, match="option workers='0': input should be greater than or equal to 1"):
        CodePack.from_options({"workers": "0"})
    with pytest.raises(UserError, match="must be positive"):
        CodePack(time_limit_factor=0)


def test_registered_under_the_entry_point() -> None:
    from bench import registry

    assert "code" in registry.available()
    assert type(registry.load("code")).__name__ == "CodePack"
