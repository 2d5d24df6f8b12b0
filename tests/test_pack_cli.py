"""cli pack: items and gold, every reference and wrong reply run for real in the sandbox, containment,
the tool mode's session flow, and items a machine cannot measure.

Nothing is mocked: replies run through the pack's own scorer, which copies the fixture, runs the
command in the sandbox and judges the snapshot it leaves. The references and wrong replies of all
items run side by side on a few threads (sandbox runs spend their time waiting on processes).
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import shutil
import socket
import subprocess
import threading
import time
import tomllib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.errors import UserError
from bench.pack import Item, Sampling, Score
from bench.packs.cli import CliPack
from bench.packs.cli.checks import normalize
from bench.packs.cli.extract import command_lines, extract_script
from bench.packs.cli.fixtures import build_template, fixture_specs, template
from bench.packs.cli.pack import FAMILIES, RUN_COMMAND_TOOL
from bench.packs.cli.snapshot import take_snapshot
from bench.run.aggregate import build_results
from bench.run.store import RunStore
from bench.sandbox import _bwrap_usable
from bench.session import Session
from bench.testing import record_for, transcript_for_answer, transcript_for_text
from bench.transcript import Request, Response, ToolCall

REPO = Path(__file__).resolve().parents[1]
# Copies of the fixtures go to memory where it exists: copying and removing them there costs far
# less than on a busy disk, and the runs are the same.
SHM = Path("/dev/shm") if Path("/dev/shm").is_dir() and os.access("/dev/shm", os.W_OK) else None
PACK = CliPack(work_parent=SHM)
ITEMS = PACK.items("full")
BY_ID = {item.id: item for item in ITEMS}
WORKERS = 8

# The pack runs shell replies only under bubblewrap (elsewhere its items are not measurable).
pytestmark = pytest.mark.skipif(not _bwrap_usable()[0], reason=f"bubblewrap not usable: {_bwrap_usable()[1]}")


def fenced(command: str) -> str:
    return f"```bash\n{command}\n```"


def score_text(item: Item, content: str, pack: CliPack = PACK) -> Score:
    """Score a reply as a reply-mode run records it: one exchange, the answer in content."""
    return pack.score(item, transcript_for_text(content))


# --- the data --------------------------------------------------------------------------------


def test_registered_listed_and_part_of_all() -> None:
    registry.refresh()
    assert "cli" in registry.available() and "cli" in registry.resolve("all")
    assert isinstance(registry.load("cli"), CliPack)


def test_items_cover_every_family_with_quick_tier_and_wrong_replies() -> None:
    assert len(ITEMS) >= 60
    families = Counter(item.data["family"] for item in ITEMS)
    assert set(families) == set(FAMILIES) and min(families.values()) >= 8, families
    quick = PACK.items("quick")
    assert len(quick) == 15 and {item.data["family"] for item in quick} == set(FAMILIES)
    assert {item.data["fixture"] for item in ITEMS} == {"project", "logs", "data", "repo"}
    for item in ITEMS:
        assert item.reference and item.wrong, item.id
        assert {wrong["attacks"] for wrong in item.wrong} <= {"correctness", "safety"}, item.id
    attacks = Counter(wrong["attacks"] for item in ITEMS for wrong in item.wrong)
    assert attacks["safety"] >= 40 and attacks["correctness"] >= 100
    network = [w for item in ITEMS for w in item.wrong if w["note"].startswith("network")]
    assert len(network) >= 5 and all(("curl" in w["content"]) or ("wget" in w["content"]) or ("fetch" in w["content"]) for w in network)
    families_with_damage = {item.data["family"] for item in ITEMS for w in item.wrong if w["attacks"] == "safety"}
    assert families_with_damage == set(FAMILIES)


def test_gold_is_written_out_not_derived() -> None:
    """Every item states its expectation: output lines, file assertions or check commands with lines."""
    for item in ITEMS:
        data = item.data
        assert data.get("stdout") or data.get("files") or data.get("verify"), item.id
        for spec in data.get("verify", []):
            assert spec["lines"], item.id
        if "stdout" in data:
            assert data["stdout"]["lines"], item.id


def test_prompt_shows_fixture_task_and_rules_but_not_the_reference() -> None:
    item = BY_ID["text-errors-per-day"]
    [message] = PACK.messages(item)
    text = message["content"]
    assert item.data["prompt"] in text and "app.log" in text and "archive/app-2024-02-28.log" in text
    assert "```bash" in text and "no network" in text.lower() and "leave every other file" in text
    assert item.reference is not None and "uniq -c" not in text
    assert PACK.tools(item) is None
    tool_pack = CliPack(mode="tool", work_parent=SHM)
    assert "run_command" in tool_pack.messages(item)[0]["content"]
    assert tool_pack.tools(item) == [RUN_COMMAND_TOOL]


def test_a_small_limit_asks_every_family_and_is_seeded() -> None:
    six = PACK.limit(ITEMS, 6, seed=0)
    assert sorted(item.data["family"] for item in six) == sorted(FAMILIES)
    assert [item.id for item in PACK.limit(ITEMS, 6, seed=0)] == [item.id for item in six]
    assert [item.id for item in PACK.limit(ITEMS, 6, seed=1)] != [item.id for item in six]
    assert len({item.id for item in PACK.limit(ITEMS, 200, seed=0)}) == len(ITEMS)


def test_options_select_mode_and_clock_and_refuse_bad_values() -> None:
    pack = registry.load("cli", {"mode": "tool", "timeout_s": "3", "max_turns": "4"})
    assert isinstance(pack, CliPack) and (pack.mode, pack.timeout_s, pack.max_turns) == ("tool", 3.0, 4)
    with pytest.raises(UserError, match=r"pack 'cli' option mode='shell': input should be 'reply' or 'tool'"):
        CliPack.from_options({"mode": "shell"})
    with pytest.raises(UserError, match="pack 'cli' has no option 'turns'"):
        CliPack.from_options({"turns": "3"})


def test_fixture_files_ship_in_the_wheel_by_the_package_data_globs() -> None:
    """Every file under fixtures/ matches pyproject's package-data for the pack (test_packaging
    builds the wheel; this keeps the link visible where the fixtures live)."""
    with (REPO / "pyproject.toml").open("rb") as handle:
        patterns = tomllib.load(handle)["tool"]["setuptools"]["package-data"]["bench.packs.cli"]
    root = REPO / "packs" / "cli"
    shipped = sorted(p.relative_to(root).as_posix() for p in (root / "fixtures").rglob("*") if p.is_file())
    assert len(shipped) >= 40
    globbed = {p.relative_to(root).as_posix() for pattern in patterns for p in root.glob(pattern) if p.is_file()}
    assert set(shipped) <= globbed
    assert not any(name.endswith(".py") for name in shipped)  # a .py there would need a package of its own
    assert not any(fnmatch.fnmatch(name, "* *") for name in shipped)  # spaced names are made at copy time


def test_templates_are_reproducible_and_hold_generated_parts(tmp_path: Path) -> None:
    folder, snap = template("project")
    for path, how in fixture_specs()["project"].generated.items():
        assert snap.entries[path].size == how["size"], path
    assert snap.entries["assets/video/intro.mp4"].size > 1024 * 1024  # made at copy time, never shipped
    assert not (REPO / "packs" / "cli" / "fixtures" / "project" / "assets" / "video").exists()
    assert snap.entries["tmp/old cache.tmp"].kind == "file" and snap.entries["uploads"].kind == "dir"
    assert "backups/site-2024-03-01.tar.gz" in snap.entries
    repo_folder, repo_snap = template("repo")
    heads = {path: entry.digest for path, entry in repo_snap.entries.items() if entry.kind == "ref"}
    assert heads[".git/HEAD"] == "ref: refs/heads/main"
    assert {".git/refs/heads/main", ".git/refs/heads/feature/export", ".git/refs/tags/v0.1.0"} <= set(heads)
    # Fixed dates and authors give the same commit ids on every build, and every file the same bytes.
    build_template(fixture_specs()["repo"], tmp_path / "again")
    assert take_snapshot(tmp_path / "again").entries == repo_snap.entries
    assert take_snapshot(folder).entries == snap.entries and repo_folder != tmp_path / "again"


# --- every reference scores 1, every wrong reply less ---------------------------------------------


def _score_all() -> tuple[dict[tuple[str, int], Score], float]:
    jobs: list[tuple[str, int, dict[str, Any]]] = []
    for item in ITEMS:
        assert item.reference is not None
        jobs.append((item.id, -1, item.reference))
        jobs += [(item.id, index, wrong) for index, wrong in enumerate(item.wrong)]
    started = time.monotonic()
    with ThreadPoolExecutor(WORKERS) as pool:
        scores = list(pool.map(lambda job: PACK.score(BY_ID[job[0]], transcript_for_answer(job[2])), jobs))
    return {(item_id, index): score for (item_id, index, _), score in zip(jobs, scores)}, time.monotonic() - started


@pytest.fixture(scope="module")
def scored() -> dict[tuple[str, int], Score]:
    scores, elapsed = _score_all()
    print(f"\ncli: {len(scores)} replies run and scored in the sandbox in {elapsed:.1f} s ({WORKERS} threads)")
    return scores


@pytest.mark.parametrize("item_id", sorted(BY_ID))
def test_reference_scores_one_and_wrong_replies_less(item_id: str, scored: dict[tuple[str, int], Score]) -> None:
    item = BY_ID[item_id]
    reference = scored[(item_id, -1)]
    assert reference.value == 1.0 and reference.passed, reference.reason
    assert reference.subscores["correctness"] == 1.0 and reference.subscores["safety"] == 1.0
    assert reference.reason == "solved" and reference.extraction == "fence:shell"
    for index, wrong in enumerate(item.wrong):
        score = scored[(item_id, index)]
        assert score.value < 1.0 and not score.passed, f"{item_id}: wrong reply {wrong['note']!r} scored {score.value}"
        assert score.subscores[wrong["attacks"]] == 0.0, f"{item_id}: {wrong['note']!r}: {score.subscores}"
        if wrong["attacks"] == "safety":
            assert score.reason.startswith("destructive:"), score.reason


def test_breakdown_by_family_reaches_results(scored: dict[tuple[str, int], Score]) -> None:
    records = []
    for item in ITEMS:
        assert item.reference is not None
        records.append(record_for(PACK, item, transcript_for_answer(item.reference), score=scored[(item.id, -1)]))
        records.append(record_for(PACK, item, transcript_for_answer(item.wrong[0]), repeat=1, score=scored[(item.id, 0)]))
    result = build_results("r", {"cli": PACK}, records, {"cli": len(records)}).packs["cli"]
    assert set(result.breakdowns["family"]) == set(FAMILIES)
    for family, group in result.breakdowns["family"].items():
        assert group.score.mean == 0.5, family  # one reference and one wrong reply per item
    assert list(result.subdimensions) == ["correctness", "safety", "single_command"]
    assert result.extra["extraction"] == {"fence:shell": len(records)}
    assert "not_measurable" not in result.extra


# --- reading replies -----------------------------------------------------------------------------


def test_extraction_rules_and_single_command() -> None:
    assert extract_script("Use this:\n```bash\nls -1\n```\nor ```sh\nls\n```").script == "ls -1"
    assert extract_script("```python\nprint(1)\n```\n```\nwc -l app.log\n```").rule == "fence"
    assert extract_script("```console\n$ cd logs\n$ wc -l app.log\n```").script == "cd logs\nwc -l app.log"
    whole = extract_script("  wc -l app.log \n")
    assert (whole.script, whole.rule) == ("wc -l app.log", "whole")
    assert command_lines("find . -name x \\\n  -delete") == 1
    assert command_lines("#!/bin/bash\n# count\nset -e\nwc -l a\n") == 2


def test_the_answer_is_read_from_content_not_reasoning() -> None:
    item = BY_ID["jq-email-by-id"]
    assert item.reference is not None
    transcript = transcript_for_text("```bash\necho nobody@example.org\n```", reasoning=item.reference["content"])
    assert PACK.score(item, transcript).subscores["correctness"] == 0.0
    empty = PACK.score(item, transcript_for_text("", reasoning=item.reference["content"]))
    assert empty.status == "empty" and empty.value == 0.0
    cut = PACK.score(item, transcript_for_text("```bash\njq -r", finish_reason="length"))
    assert cut.status == "truncated"
    nothing = score_text(item, "```bash\n```")
    assert nothing.value == 0.0 and nothing.reason == "the reply holds no command"


def test_a_correct_script_solves_but_is_not_a_single_command() -> None:
    item = BY_ID["text-errors-per-day"]
    script = "set -e\nfor day in $(cut -c1-10 app.log | sort -u); do\n  n=$(grep -c \"^$day.* ERROR \" app.log || true)\n  [ \"$n\" -gt 0 ] && echo \"$day $n\"\ndone\n"
    score = score_text(item, fenced(script))
    assert score.value == 1.0, score.reason
    assert score.subscores == {"correctness": 1.0, "safety": 1.0, "single_command": 0.0}


def test_normalization_is_what_the_items_promise() -> None:
    assert normalize("  3 apples\t 4 \n\n./src/a.js\n", {"paths": True}) == ["3 apples 4", "src/a.js"]
    assert normalize("b\na\n", {"order": "any"}) == ["a", "b"]
    assert normalize("192.00\n", {"numbers": True}) == normalize("192.0", {"numbers": True})


# --- containment ------------------------------------------------------------------------------


def test_a_destructive_reply_cannot_reach_files_outside_its_copy(tmp_path: Path) -> None:
    canary = tmp_path / "canary.txt"
    canary.write_text("keep me\n", encoding="utf-8")
    folder, snap = template("logs")
    attack = (
        f"rm -rf ~/canary.txt {canary} {folder}/app.log; echo pwned > {canary}; echo pwned > {tmp_path}/new.txt; "
        f"rm -rf {tmp_path} {folder} 2>/dev/null; touch /etc/pwned /usr/pwned 2>/dev/null; echo done"
    )
    score = score_text(BY_ID["text-errors-per-day"], fenced(attack))
    assert score.value == 0.0 and score.subscores["safety"] == 1.0  # nothing in its own copy was touched
    assert canary.read_text(encoding="utf-8") == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["canary.txt"]
    assert not Path("/etc/pwned").exists() and not Path("/usr/pwned").exists()
    assert take_snapshot(folder).entries == snap.entries  # the shared template is intact


def test_rm_rf_in_the_copy_is_caught_as_damage_and_the_template_survives() -> None:
    folder, snap = template("project")
    score = score_text(BY_ID["find-count-js"], fenced("rm -rf ./* ; echo 10"))
    assert score.subscores == {"correctness": 1.0, "safety": 0.0, "single_command": 0.0}
    assert not score.passed and len(score.details["damaged"]) >= 40
    assert take_snapshot(folder).entries == snap.entries


def test_a_network_reply_fails_and_makes_no_connection() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0.2)
    port = listener.getsockname()[1]
    accepted: list[object] = []
    stop = threading.Event()

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except OSError:
                continue
            accepted.append(connection)
            connection.close()

    watcher = threading.Thread(target=accept)
    watcher.start()
    try:
        if shutil.which("curl") is None:
            pytest.skip("curl not installed")
        fetch = f"curl -s -m 3 http://127.0.0.1:{port}/app.log"
        # Control: outside the sandbox the same command reaches the listener, so the test can fail.
        subprocess.run(["bash", "-c", fetch], capture_output=True, timeout=10, check=False)
        deadline = time.monotonic() + 5
        while not accepted and time.monotonic() < deadline:
            time.sleep(0.05)
        assert accepted, "control connection from outside the sandbox never arrived"
        accepted.clear()
        reply = fenced(f"{fetch} | grep ' ERROR ' | cut -c1-10 | uniq -c; echo x > /dev/tcp/127.0.0.1/{port}; "
                       "curl -s -m 3 http://example.com/ | head -n 3")
        score = score_text(BY_ID["text-errors-per-day"], reply)
        time.sleep(0.3)
        assert accepted == []
        assert score.value == 0.0 and score.subscores["correctness"] == 0.0
    finally:
        stop.set()
        watcher.join()
        listener.close()


def test_symlinks_left_by_a_reply_are_never_followed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret\n", encoding="utf-8")
    owner = secret.stat().st_uid
    item = BY_ID["jq-users-csv"]
    score = score_text(item, fenced(f"ln -s {secret} users.csv"))
    assert score.value == 0.0 and "is a link" in score.reason
    assert "top secret" not in str(score.model_dump())
    # In tool mode the copy is handed to a fresh uid before every command: links stay links.
    tool_pack = CliPack(mode="tool", work_parent=SHM)
    calls = [{"name": "run_command", "arguments": {"command": f"ln -s {secret} link"}},
             {"name": "run_command", "arguments": {"command": "ls -l link"}}]
    tool_score, _, _ = play(tool_pack, item, [calls])
    assert tool_score.value == 0.0
    assert secret.stat().st_uid == owner and secret.read_text(encoding="utf-8") == "top secret\n"


def test_odd_file_names_left_by_a_reply_still_store(tmp_path: Path) -> None:
    item = BY_ID["find-delete-tmp"]
    score = score_text(item, fenced("find . -name '*.tmp' -delete; touch \"$(printf 'odd\\377name.tmp')\""))
    assert score.value == 0.0 and "odd" in score.reason
    store = RunStore.create(tmp_path, "r")
    store.append_item(record_for(PACK, item, transcript_for_text("x"), score=score))  # schema-checked, UTF-8 on disk
    assert "odd" in (tmp_path / "r" / "items.jsonl").read_text(encoding="utf-8")


def test_a_command_that_never_ends_is_stopped_by_the_clock() -> None:
    fast = CliPack(timeout_s=1.0, work_parent=SHM)
    started = time.monotonic()
    score = score_text(BY_ID["find-count-js"], fenced("find src -name '*.js' | wc -l; sleep 30"), pack=fast)
    assert time.monotonic() - started < 15
    assert score.value == 0.0 and "time limit" in score.reason


# --- tool mode ----------------------------------------------------------------------------------


class ScriptedChat:
    """Stands in for the server: replays scripted replies in order and keeps every request."""

    def __init__(self, replies: list[Response]) -> None:
        self.replies = list(replies)
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("run_item asked more often than the script has replies")
        return self.replies.pop(0)


def _calls_response(calls: list[dict[str, Any]], turn: int) -> Response:
    tool_calls = [ToolCall(id=f"call_{turn}_{i}", name=call["name"],
                           arguments=call["arguments"] if isinstance(call["arguments"], str) else json.dumps(call["arguments"]))
                  for i, call in enumerate(calls)]
    return Response(content=None, tool_calls=tool_calls, finish_reason="tool_calls")


def play(pack: CliPack, item: Item, turns: list[list[dict[str, Any]]], final: str | None = "Done.") -> tuple[Score, ScriptedChat, Session]:
    """Run the item through the pack's own run_item against scripted replies (tool calls, then
    ``final``), so the transcript is the one a tool-mode run records; then score it."""
    replies = [_calls_response(calls, turn) for turn, calls in enumerate(turns)]
    if final is not None:
        replies.append(Response(content=final, finish_reason="stop"))
    chat = ScriptedChat(replies)
    session = Session(chat, Sampling())
    asyncio.run(pack.run_item(item, session))
    return pack.score(item, session.transcript), chat, session


def test_tool_mode_explores_then_answers_with_its_last_command() -> None:
    pack = CliPack(mode="tool", work_parent=SHM)
    item = BY_ID["text-errors-per-day"]
    answer = "grep ' ERROR ' app.log | cut -c1-10 | sort | uniq -c | awk '{print $2, $1}'"
    score, chat, session = play(pack, item, [
        [{"name": "run_command", "arguments": {"command": "ls"}}],
        [{"name": "run_command", "arguments": {"command": "head -n 2 app.log"}}],
        [{"name": "run_command", "arguments": {"command": answer}}],
    ])
    assert not chat.replies and len(chat.requests) == 4
    assert all(request.tools and request.tools[0]["function"]["name"] == "run_command" for request in chat.requests)
    tool_messages = [m for m in session.conversation if m["role"] == "tool"]
    assert "app.log" in tool_messages[0]["content"] and "exit status 0" in tool_messages[0]["content"]
    assert "2024-03-02 7" in tool_messages[2]["content"]
    assert score.value == 1.0, score.reason
    assert score.extraction == "tool" and score.subscores["single_command"] == 0.0  # three commands
    assert score.details["commands"] == 3


def test_tool_mode_state_persists_between_calls_and_damage_counts() -> None:
    pack = CliPack(mode="tool", work_parent=SHM)
    item = BY_ID["jq-set-replicas"]
    score, _, session = play(pack, item, [
        [{"name": "run_command", "arguments": {"command": "jq '.services.api.replicas = 5' config.json > new.json"}}],
        [{"name": "run_command", "arguments": {"command": "mv new.json config.json && rm sales.csv"}}],
    ])
    assert [m["content"] for m in session.conversation if m["role"] == "tool"] == ["exit status 0", "exit status 0"]
    assert score.subscores["correctness"] == 1.0 and score.subscores["safety"] == 0.0 and not score.passed
    assert "sales.csv" in score.reason


def test_tool_mode_stops_at_max_turns_and_skips_unusable_calls() -> None:
    pack = CliPack(mode="tool", max_turns=2, work_parent=SHM)
    item = BY_ID["find-count-js"]
    score, chat, session = play(pack, item, [
        [{"name": "run_command", "arguments": "not json"}, {"name": "list_files", "arguments": {}}],
        [{"name": "run_command", "arguments": {"command": "find src -type f -name '*.js' | wc -l"}}],
    ], final=None)
    assert len(chat.requests) == 2 and not chat.replies
    errors = [m["content"] for m in session.conversation if m["role"] == "tool"][:2]
    assert all(text.startswith("error: call run_command") for text in errors)
    assert score.value == 1.0 and score.subscores["single_command"] == 1.0
    silent, _, _ = play(pack, item, [], final="There are 10.")
    assert silent.value == 0.0 and silent.reason == "no run_command call was made"


# --- machines without a tool -------------------------------------------------------------------


def test_items_needing_a_missing_tool_are_not_measurable_not_zero(tmp_path: Path) -> None:
    pack = CliPack(tool_path=str(tmp_path))  # a PATH with neither jq nor git on it
    asked = pack.items("full")
    assert not any("jq" in item.data.get("requires", []) or item.data["fixture"] == "repo" for item in asked)
    assert {item.data["family"] for item in asked} == {"text", "find", "xargs", "tar"}
    assert len(asked) == len(ITEMS) - len(pack.unmeasurable["jq"]) - len(pack.unmeasurable["git"])
    assert len(pack.items("quick")) < 15
    extra = pack.aggregate([])
    assert extra["not_measurable"] == {
        "git": f"not measurable: git missing ({len(pack.unmeasurable['git'])} items not asked)",
        "jq": f"not measurable: jq missing ({len(pack.unmeasurable['jq'])} items not asked)",
    }
    assert pack.item_by_id("jq-email-by-id") is not None  # a stored run still rescores
