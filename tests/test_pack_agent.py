"""agent pack: environments, the tool loop, the scripted user, injected failures, and scoring by replay.

Every task's reference trajectory and wrong trajectories are played through the pack's own
``run_item`` by a stand-in chat that returns the stored replies as a server would (parsed
``tool_calls``), so the loop, the environments and the scorer are the ones a live run uses.
One test runs the loop against the real vLLM server on the scripted model.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from conftest import bench_cmd, vllm_python

from bench import registry
from bench.client import ChatClient, ClientConfig, RequestFailed
from bench.errors import UserError
from bench.pack import Item, Sampling, Score
from bench.packs.agent import AgentPack
from bench.packs.agent.checks import MISSING, fact_stated, holds, normalize, numbers_in
from bench.packs.agent.environment import merge, seed_world
from bench.packs.agent.episode import ENVIRONMENTS, Episode
from bench.packs.agent.spec import Cond, NumberFact, TaskSpec, TextFact, Trajectory, task_schema
from bench.packs.agent.user import ScriptedUser
from bench.run.aggregate import build_results
from bench.run.runner import PackPlan, ask_item
from bench.run.store import RunStore
from bench.session import Session
from bench.testing import record_for, transcript_for_answer
from bench.transcript import Request, Response, ToolCall, Transcript

PACK_DIR = Path(__file__).resolve().parents[1] / "packs" / "agent"
SUBDIMENSIONS = {"task_success", "state_correctness", "efficiency", "recovery", "safety", "communication"}


@pytest.fixture(scope="module")
def pack() -> AgentPack:
    return AgentPack()


def reply(turn: dict[str, Any]) -> Response:
    """A stored reply as the server hands it back: content, parsed tool_calls (arguments a JSON string)."""
    response = transcript_for_answer(turn).last
    assert response is not None
    return response


class ScriptedChat:
    """Stands in for the server: returns the scripted replies in order and keeps every request."""

    def __init__(self, turns: list[dict[str, Any]]) -> None:
        self.replies = [reply(turn) for turn in turns]
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        if not self.replies:
            raise AssertionError("run_item asked more often than the script has replies")
        return self.replies.pop(0)


def play(pack: AgentPack, item: Item, turns: list[dict[str, Any]]) -> tuple[Score, ScriptedChat, Transcript]:
    """Run the item through the pack's run_item against scripted replies; score the stored transcript."""
    chat = ScriptedChat(turns)
    session = Session(chat, Sampling())
    asyncio.run(pack.run_item(item, session))
    stored = Transcript.model_validate_json(session.transcript.model_dump_json())
    return pack.score(item, stored), chat, stored


def item_by_id(pack: AgentPack, item_id: str) -> Item:
    item = pack.item_by_id(item_id)
    assert item is not None, item_id
    return item


def call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def tool_messages(request: Request) -> list[dict[str, Any]]:
    return [json.loads(m["content"]) for m in request.messages if m["role"] == "tool"]


# --- the data ------------------------------------------------------------------------------------


def test_registered_listed_and_part_of_all() -> None:
    registry.refresh()
    assert isinstance(registry.load("agent"), AgentPack)
    assert "agent" in registry.resolve("all")
    assert registry.load("agent", {"max_steps": "3"}).max_steps == 3  # type: ignore[attr-defined]


def test_tiers_environments_and_bands(pack: AgentPack) -> None:
    full, quick = pack.items("full"), pack.items("quick")
    assert len(full) >= 60 and len(quick) == 20
    envs = Counter(item.data["env"] for item in full)
    assert set(envs) == set(ENVIRONMENTS) and len(envs) == 5 and min(envs.values()) >= 12
    assert Counter(item.data["env"] for item in quick) == dict.fromkeys(ENVIRONMENTS, 4)
    bands = Counter(item.data["difficulty"] for item in full)
    assert set(bands) == {"1-3", "4-8", "9+"} and bands["9+"] >= 6
    assert {item.data["difficulty"] for item in quick} == {"1-3", "4-8", "9+"}
    assert sum(1 for item in full if item.data.get("failures")) >= 10
    assert sum(1 for item in full if item.data.get("user")) >= 4
    for item in full:
        assert item.reference is not None and item.wrong, item.id
        assert {wrong["attacks"] for wrong in item.wrong} <= SUBDIMENSIONS


def test_every_environment_offers_four_to_ten_tools_with_real_json_schemas(pack: AgentPack) -> None:
    for name, env in ENVIRONMENTS.items():
        assert 4 <= len(env.tools) <= 10, name
        for spec in env.tools.values():
            jsonschema.Draft202012Validator.check_schema(spec.parameters)
            assert spec.parameters["type"] == "object" and spec.parameters["additionalProperties"] is False
    item = pack.items("full")[0]
    offered = pack.tools(item)
    assert [tool["function"]["name"] for tool in offered] == list(ENVIRONMENTS[item.data["env"]].tools)
    assert all(set(tool) == {"type", "function"} and set(tool["function"]) == {"name", "description", "parameters"} for tool in offered)


def test_item_schema_file_is_generated_from_the_models() -> None:
    assert json.loads((PACK_DIR / "item.schema.json").read_text(encoding="utf-8")) == task_schema()


def test_messages_name_the_environment_and_the_day(pack: AgentPack) -> None:
    item = item_by_id(pack, "shop-order-status")
    system, user = pack.messages(item)
    assert "order system" in system["content"] and "10 June 2025" in system["content"]
    assert user == {"role": "user", "content": item.data["instruction"]}


# --- references and wrong trajectories, through the real loop -----------------------------------------


@pytest.mark.parametrize("item_id", [item.id for item in AgentPack().items("full")])
def test_reference_scores_one_and_every_wrong_trajectory_less(pack: AgentPack, item_id: str) -> None:
    item = item_by_id(pack, item_id)
    assert item.reference is not None
    score, chat, transcript = play(pack, item, item.reference["turns"])
    assert not chat.replies, f"{item_id}: the loop stopped before the reference's last reply"
    assert score.status == "scored" and score.passed and score.value == 1.0, f"{item_id}: {score.reason}"
    expected = SUBDIMENSIONS if item.data.get("failures") else SUBDIMENSIONS - {"recovery"}
    assert set(score.subscores) == expected and all(v == 1.0 for v in score.subscores.values()), (item_id, score.subscores)
    assert len(transcript.exchanges) == len(item.reference["turns"])
    for wrong in item.wrong:
        bad, chat, _ = play(pack, item, wrong["turns"])
        assert not chat.replies, f"{item_id} ({wrong['note']}): the loop stopped early"
        assert bad.status == "scored" and not bad.passed, f"{item_id} ({wrong['note']}) passed"
        assert bad.value < 1.0, f"{item_id} ({wrong['note']}): {bad.reason}"
        assert bad.subscores.get(wrong["attacks"], 0.0) < 1.0, f"{item_id} ({wrong['note']}) left {wrong['attacks']} at 1"
        assert bad.reason
    # An answer before any work: the reference's own final text, no tool call.
    early, _, _ = play(pack, item, item.reference["turns"][-1:])
    assert early.value < 1.0 and not early.passed, f"{item_id}: answering first passed ({early.reason})"


def test_minefield_zeroes_the_value_and_names_itself(pack: AgentPack) -> None:
    item = item_by_id(pack, "shop-goodwill-500")
    score, _, _ = play(pack, item, item.wrong[0]["turns"])
    assert score.value == 0.0 and score.subscores["safety"] == 0.0
    assert "minefield: refunded twice after the timeout" in score.reason
    assert score.details["minefields"] == ["refunded twice after the timeout"]


def test_partial_credit_counts_milestones(pack: AgentPack) -> None:
    item = item_by_id(pack, "cal-inspection")
    score, _, _ = play(pack, item, item.wrong[1]["turns"])  # the event, but no reply to the landlord
    assert score.subscores["state_correctness"] == 0.5 and score.subscores["communication"] == 1.0
    assert score.value == pytest.approx(3 / 4)
    assert "missing: confirmation sent to Rosa" in score.reason and "efficiency" not in score.subscores


def test_efficiency_is_reference_calls_over_calls_made(pack: AgentPack) -> None:
    item = item_by_id(pack, "ws-prod-timeout")
    assert item.reference is not None
    turns = [{"tool_calls": [call("list_files")]}, {"tool_calls": [call("read_file", path="config/settings.yaml")]},
             *item.reference["turns"]]
    score, _, _ = play(pack, item, turns)
    assert score.passed and score.value == 1.0
    assert score.subscores["efficiency"] == pytest.approx(2 / 4)


def test_recovery_only_where_failures_are_injected(pack: AgentPack) -> None:
    plain = item_by_id(pack, "ws-version")
    assert plain.reference is not None and "recovery" not in play(pack, plain, plain.reference["turns"])[0].subscores
    item = item_by_id(pack, "ws-tests-transient")
    score, chat, _ = play(pack, item, item.wrong[0]["turns"])
    assert score.subscores["recovery"] == 0.0
    error = tool_messages(chat.requests[1])[0]["error"]
    assert error["type"] == "server_error" and "crashed" in error["message"]


def test_score_survives_a_stored_round_trip_and_a_fresh_pack(pack: AgentPack) -> None:
    item = item_by_id(pack, "shop-recall")
    assert item.reference is not None
    score, _, transcript = play(pack, item, item.reference["turns"])
    assert AgentPack().score(item, Transcript.model_validate_json(transcript.model_dump_json())) == score
    assert pack.score(item, transcript) == score  # replay again: nothing carried over from the first


def test_a_transcript_from_other_environments_is_not_scored(pack: AgentPack) -> None:
    item = item_by_id(pack, "shop-order-status")
    assert item.reference is not None
    _, _, transcript = play(pack, item, item.reference["turns"])
    tampered = transcript.model_copy(deep=True)
    tool = next(m for m in tampered.exchanges[1].request.messages if m["role"] == "tool")
    tool["content"] = json.dumps({"id": "O-1004", "status": "delivered"})
    score = pack.score(item, tampered)
    assert score.status == "error" and "differ from this environment's replay" in score.reason


# --- the loop ---------------------------------------------------------------------------------------


def test_unknown_tool_gets_an_error_and_the_loop_goes_on(pack: AgentPack) -> None:
    item = item_by_id(pack, "cal-budget-number")
    score, chat, transcript = play(pack, item, [
        {"tool_calls": [call("get_weather", city="Paris")]}, {"content": "The weather tool has replied."}])
    assert len(chat.requests) == 2 and len(transcript.exchanges) == 2
    error = tool_messages(chat.requests[1])[0]["error"]
    assert error["type"] == "unknown_tool" and "'get_weather'" in error["message"] and "search_mail" in error["message"]
    assert score.status == "scored" and not score.passed and score.details["failed_calls"] == ["get_weather: unknown_tool"]


def test_every_request_offers_the_environment_tools(pack: AgentPack) -> None:
    item = item_by_id(pack, "trk-duplicate")
    assert item.reference is not None
    _, chat, _ = play(pack, item, item.reference["turns"])
    names = [tool["function"]["name"] for tool in pack.tools(item)]
    for request in chat.requests:
        assert request.tool_choice == "auto" and [t["function"]["name"] for t in request.tools or []] == names
    roles = [m["role"] for m in chat.requests[-1].messages]
    assert roles[:2] == ["system", "user"] and roles.count("tool") == 5


def test_the_step_cap_ends_the_episode() -> None:
    capped = AgentPack(max_steps=3)
    item = item_by_id(capped, "ws-typo")
    endless = [{"tool_calls": [call("list_files")]}] * 5
    chat = ScriptedChat(endless)
    session = Session(chat, Sampling())
    asyncio.run(capped.run_item(item, session))
    assert len(session.transcript.exchanges) == 3 and len(chat.replies) == 2
    score = capped.score(item, session.transcript)
    assert score.status == "scored" and score.details["calls"] == 3 and "no final answer" in score.reason


def test_parallel_calls_are_answered_in_order(pack: AgentPack) -> None:
    item = item_by_id(pack, "cal-budget-number")
    both = [{"tool_calls": [call("search_mail", query="budget"), call("read_mail", message_id="m-202")]},
            {"content": "The Q2 marketing budget is 48,500 EUR."}]
    score, chat, _ = play(pack, item, both)
    second = chat.requests[1].messages
    assert [m["role"] for m in second[-3:]] == ["assistant", "tool", "tool"]
    assert [m["tool_call_id"] for m in second[-2:]] == ["call_0", "call_1"]
    assert score.passed


def test_a_reply_cut_off_by_the_budget_is_not_acted_on(pack: AgentPack) -> None:
    item = item_by_id(pack, "ws-typo")
    turns = [{"tool_calls": [call("delete_file", path="README.md")], "finish_reason": "length"}]
    score, chat, _ = play(pack, item, turns)
    assert len(chat.requests) == 1 and score.status == "truncated"


def test_a_full_context_ends_the_episode_other_failures_do_not(pack: AgentPack) -> None:
    item = item_by_id(pack, "ws-version")

    class Overflow(ScriptedChat):
        def __init__(self, error: str) -> None:
            super().__init__([{"tool_calls": [call("read_file", path="pyproject.toml")]}])
            self.error = error

        async def __call__(self, request: Request) -> Response:
            if self.requests:
                raise RequestFailed(self.error)
            return await super().__call__(request)

    session = Session(Overflow("http://x/v1: HTTP 400: This model's maximum context length is 1024 tokens. However, ..."), Sampling())
    asyncio.run(pack.run_item(item, session))
    score = pack.score(item, session.transcript)
    assert len(session.transcript.exchanges) == 1 and score.status == "scored" and "no final answer" in score.reason
    with pytest.raises(RequestFailed):
        asyncio.run(pack.run_item(item, Session(Overflow("http://x/v1: HTTP 500: boom"), Sampling())))


def test_scripted_user_answers_questions_it_has_rules_for_once() -> None:
    spec = TaskSpec.model_validate(AgentPack().items("full")[0].data | {"user": [
        {"keywords": ["which"], "reply": "The first one."}, {"keywords": ["address"], "reply": "Main Street 1."}]})
    user = ScriptedUser(spec.user)
    assert user.answer("Done: I changed it.") is None  # no question
    assert user.answer("Anything else I can do?") is None  # a question no rule covers
    assert user.answer("Which order, and what is the new address?") == "The first one. Main Street 1."
    assert user.answer("Which one again?") is None  # each rule answers once


def test_clarification_goes_through_the_loop(pack: AgentPack) -> None:
    item = item_by_id(pack, "ws-bump-clarify")
    assert item.reference is not None
    _, chat, _ = play(pack, item, item.reference["turns"])
    asked = chat.requests[1].messages
    assert asked[-2]["role"] == "assistant" and "?" in asked[-2]["content"]
    assert asked[-1] == {"role": "user", "content": item.data["user"][0]["reply"]}


# --- environments and injected failures --------------------------------------------------------------


def test_each_task_starts_from_a_fresh_world(pack: AgentPack) -> None:
    item = item_by_id(pack, "ws-clean-tmp")
    spec = TaskSpec.model_validate(item.data)
    first = Episode(spec)
    first.execute(ToolCall(id="a", name="delete_file", arguments='{"path": "README.md"}'))
    assert "README.md" not in first.env.state["files"]
    again = Episode(spec)
    assert "README.md" in again.env.state["files"] and "cache/render.tmp" in again.env.state["files"]
    assert "cache/render.tmp" not in seed_world("workspace")["files"]


def test_overrides_merge_and_null_deletes() -> None:
    base = {"a": {"x": 1, "y": 2}, "b": [1, 2]}
    assert merge(base, {"a": {"y": None, "z": 3}, "b": [3]}) == {"a": {"x": 1, "z": 3}, "b": [3]}
    assert base == {"a": {"x": 1, "y": 2}, "b": [1, 2]}


def test_arguments_are_checked_against_the_schema_before_anything_runs(pack: AgentPack) -> None:
    episode = Episode(TaskSpec.model_validate(item_by_id(pack, "shop-cancel-placed").data))
    result = json.loads(episode.execute(ToolCall(name="cancel_order", arguments='{"order_id": "1005", "reason": "changed mind"}')))
    assert result["error"]["type"] == "validation_error" and "order_id" in result["error"]["message"]
    result = json.loads(episode.execute(ToolCall(name="cancel_order", arguments="not json")))
    assert result["error"]["type"] == "validation_error"
    assert episode.env.state["orders"]["O-1005"]["status"] == "placed"
    result = json.loads(episode.execute(ToolCall(name="cancel_order", arguments='{"order_id": "O-1004", "reason": "changed mind"}')))
    assert result["error"]["type"] == "conflict" and "shipped" in result["error"]["message"]


def test_a_rate_limit_changes_nothing_and_an_applied_500_changes_the_state(pack: AgentPack) -> None:
    limited = Episode(TaskSpec.model_validate(item_by_id(pack, "ws-sender-ratelimit").data))
    edit = ToolCall(name="edit_file", arguments=json.dumps(
        {"path": "config/settings.yaml", "old_text": "billing@example.com", "new_text": "x@example.com"}))
    error = json.loads(limited.execute(edit))["error"]
    assert error["type"] == "rate_limited" and error["retry_after_s"] == 1
    assert "billing@example.com" in limited.env.state["files"]["config/settings.yaml"]
    assert json.loads(limited.execute(edit)) == {"path": "config/settings.yaml", "replaced": 1}
    applied = Episode(TaskSpec.model_validate(item_by_id(pack, "shop-goodwill-500").data))
    refund = ToolCall(name="refund_order", arguments='{"order_id": "O-1011", "amount": 20, "reason": "goodwill"}')
    assert json.loads(applied.execute(refund))["error"]["type"] == "server_error"
    assert list(applied.env.state["refunds"]) == ["R-2990", "R-3001"]
    assert [r.injected for r in applied.log] == [True]


def test_workspace_tests_are_the_environments_own_checker(pack: AgentPack) -> None:
    episode = Episode(TaskSpec.model_validate(item_by_id(pack, "ws-fix-failing").data))
    run = json.loads(episode.execute(ToolCall(name="run_tests", arguments="{}")))
    assert run["summary"] == "4 passed, 1 failed" and "returned 1600" in run["failed"][0]["message"]
    edit = {"path": "src/invoicer/tax.py", "old_text": '"DE": 0.16', "new_text": '"DE": 0.19'}
    episode.execute(ToolCall(name="edit_file", arguments=json.dumps(edit)))
    assert json.loads(episode.execute(ToolCall(name="run_tests", arguments='{"name": "tax"}')))["summary"] == "1 passed, 0 failed"


def test_website_follows_links_and_validates_forms(pack: AgentPack) -> None:
    episode = Episode(TaskSpec.model_validate(item_by_id(pack, "web-room-capacity").data))
    page = json.loads(episode.execute(ToolCall(name="open_page", arguments='{"url": "/rooms"}')))
    assert {"text": "Book a room", "url": "/rooms/book"} in page["links"]
    assert json.loads(episode.execute(ToolCall(name="follow_link", arguments='{"link_text": "book a room"}')))["forms"] == ["room_booking"]
    values = {"room": "Anchor", "date": "2025-06-13", "start": "14:00", "end": "16:00", "people": 6, "name": "S", "email": "s@x.test"}
    error = json.loads(episode.execute(ToolCall(name="submit_form", arguments=json.dumps({"form_id": "room_booking", "values": values}))))
    assert error["error"] == {"type": "validation_error", "message": "Anchor seats at most 4 people"}
    assert episode.env.state["submissions"] == []


def test_tracker_reruns_get_the_declared_outcome(pack: AgentPack) -> None:
    episode = Episode(TaskSpec.model_validate(item_by_id(pack, "trk-ci-sweep").data))
    flaky = json.loads(episode.execute(ToolCall(name="rerun_ci_job", arguments='{"run_id": "run-903", "job": "integration"}')))
    real = json.loads(episode.execute(ToolCall(name="rerun_ci_job", arguments='{"run_id": "run-902", "job": "unit"}')))
    assert (flaky["run_id"], flaky["run_status"]) == ("run-905", "passed")
    assert (real["run_id"], real["run_status"]) == ("run-906", "failed")


# --- checks ---------------------------------------------------------------------------------------


def test_conditions() -> None:
    assert holds(Cond(eq="Cancelled "), "cancelled") and not holds(Cond(eq=1), True)
    assert holds(Cond(has="receive"), "To Receive invoices") and holds(Cond(has="a@x.test"), ["A@x.test", "b@x.test"])
    assert holds(Cond(absent=True), MISSING) and not holds(Cond(absent=False), MISSING)
    assert holds(Cond(lacks="x"), MISSING) and not holds(Cond(absent=False, lacks="x"), MISSING)
    assert holds(Cond(gte=2, lte=3), 2.0) and not holds(Cond(gte=2), "3")
    assert holds(Cond(one_of=["a", "b"]), "B") and holds(Cond(ne="shipped"), MISSING)


def test_facts_in_the_final_answer() -> None:
    assert numbers_in("Refunded 1,234.50 EUR on O-1001, and $49.90.") == [1234.5, 1001.0, 49.9]
    assert fact_stated(NumberFact(label="n", number=49.9), "a refund of 49.90 EUR")
    assert not fact_stated(NumberFact(label="n", number=49.9), "a refund of 49.80 EUR")
    assert fact_stated(TextFact(label="id", any=["R-3001"]), "Refund **R\u20113001** issued")
    assert normalize("  Café\u00a0 `x`  ") == "cafe x"


# --- run-level hooks --------------------------------------------------------------------------------


def test_breakdowns_by_difficulty_and_environment(pack: AgentPack) -> None:
    records = []
    for item in pack.items("quick"):
        assert item.reference is not None
        records.append(record_for(pack, item, play(pack, item, item.reference["turns"])[2]))
    result = build_results("r", {"agent": pack}, records, {"agent": len(records)}).packs["agent"]
    assert set(result.breakdowns) == {"difficulty", "environment"}
    assert set(result.breakdowns["environment"]) == set(ENVIRONMENTS)
    assert set(result.breakdowns["difficulty"]) == {"1-3", "4-8", "9+"}
    assert result.score.mean == 1.0 and result.subdimensions["recovery"].n == 4
    assert result.subdimensions["task_success"].n == 20


def test_limit_visits_every_environment_first(pack: AgentPack) -> None:
    chosen = pack.limit(pack.items("full"), 5, seed=0)
    assert {item.data["env"] for item in chosen} == set(ENVIRONMENTS)
    assert [i.id for i in pack.limit(pack.items("full"), 5, seed=0)] == [i.id for i in chosen]


def test_options_are_typed() -> None:
    assert AgentPack.from_options({"max_steps": "7"}).max_steps == 7
    with pytest.raises(UserError, match="max_steps") as caught:
        AgentPack.from_options({"max_steps": "0"})
    assert "\n" not in str(caught.value)


def test_data_hash_covers_items_schema_and_worlds(pack: AgentPack) -> None:
    names = {path.name for path in pack.data_files()}
    assert names == {"items.jsonl", "item.schema.json", *(f"world_{env}.json" for env in ENVIRONMENTS)}
    assert pack.data_hash() == AgentPack().data_hash()


def write_items(tmp_path: Path, item: dict[str, Any]) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(item) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda i: i["data"].update(difficulty="9+"), "difficulty '9\\+' but the reference makes 1 calls"),
        (lambda i: i["reference"]["turns"][0]["tool_calls"][0].update(name="get_weather"), "reference calls 'get_weather'"),
        (lambda i: i["reference"]["turns"][0]["tool_calls"][0]["arguments"].update(path=3), "arguments its schema refuses"),
        (lambda i: i["reference"]["turns"].pop(), "must end with a final answer"),
        (lambda i: i.update(wrong=[]), "needs a reference trajectory and at least one wrong one"),
        (lambda i: i["data"].update(minefields=[{"label": "x", "tool": "rm_rf"}]), "names tool 'rm_rf'"),
        (lambda i: i["data"].update(env="garden"), "field env"),
    ],
)
def test_broken_items_are_one_line_user_errors(tmp_path: Path, change: Any, message: str) -> None:
    raw = json.loads((PACK_DIR / "items.jsonl").read_text(encoding="utf-8").splitlines()[0])
    change(raw)
    with pytest.raises(UserError, match=message):
        AgentPack(data_path=write_items(tmp_path, raw)).items()


def test_reference_trajectories_parse(pack: AgentPack) -> None:
    for item in pack.items("full"):
        assert Trajectory.model_validate(item.reference).turns[-1].content


# --- end to end on the real server ------------------------------------------------------------------


@pytest.mark.vllm
def test_the_loop_against_the_scripted_vllm_server(scripted_server: str, tmp_path: Path) -> None:
    """The scripted model always calls get_weather, unknown to every environment: the environment answers
    an unknown-tool error, the loop asks again, and the model's plain answer (or the step cap) ends it."""
    env = {**os.environ, "BENCH_VLLM_PYTHON": vllm_python()}
    run = subprocess.run([*bench_cmd(), "run", "--endpoint", scripted_server, "--packs", "agent", "--limit", "2",
                          "--pack-option", "agent.max_steps=3", "--no-thinking", "--runs-dir", str(tmp_path), "--run-id", "agent", "--no-report"],
                         capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0, run.stderr
    store = RunStore.open(tmp_path / "agent")
    records = store.read_items()
    assert len(records) == 2 and {r.pack for r in records} == {"agent"}
    pack = AgentPack(max_steps=3)
    for record in records:
        assert record.error is None and record.score is not None and record.score.status == "scored"
        exchanges = record.transcript.exchanges
        assert len(exchanges) == 2  # a tool call, then the plain answer after the tool result
        first, last = exchanges[0].response, exchanges[1].response
        assert [c.name for c in first.tool_calls] == ["get_weather"] and not last.tool_calls and last.content
        result = next(m for m in exchanges[1].request.messages if m["role"] == "tool")
        assert json.loads(result["content"])["error"]["type"] == "unknown_tool"
        assert record.score.details["failed_calls"] == ["get_weather: unknown_tool"] and not record.score.passed
        item = pack.item_by_id(record.item_id)
        assert item is not None and pack.score(item, record.transcript) == record.score  # re-scored offline, same
    results = store.read_results().packs["agent"]
    assert results.n == 2 and set(results.breakdowns) == {"difficulty", "environment"}

    # The cap: with one step allowed, the first reply's call is executed and nothing more is asked.
    async def capped() -> Any:
        client = ChatClient(ClientConfig(endpoints=[scripted_server + "/v1"], model="scripted", concurrency=2, timeout_s=300.0))
        try:
            one = AgentPack(max_steps=1)
            plan = PackPlan(pack=one, items=one.items("quick")[:1], sampling=Sampling(max_tokens=64))
            return await ask_item(plan, plan.items[0], 0, 0, client)
        finally:
            await client.close()

    record = asyncio.run(capped())
    assert record.error is None and len(record.transcript.exchanges) == 1
    assert record.transcript.exchanges[0].response.tool_calls[0].name == "get_weather"
    assert record.score is not None and "no final answer" in record.score.reason
