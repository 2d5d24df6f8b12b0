"""toolcall pack: data, matchers, scoring of references and wrong replies, the two-step session flow."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.errors import UserError
from bench.pack import Item, Sampling, Score
from bench.packs.toolcall import ToolCallPack
from bench.packs.toolcall.data import ITEMS_PATH, load_catalog, load_items
from bench.packs.toolcall.matchers import MISSING, check, check_fact, normalize_text, numbers_in, same_json
from bench.records import ItemRecord
from bench.run.aggregate import build_results
from bench.session import Session
from bench.testing import record_for, transcript_for_text
from bench.transcript import Exchange, Request, Response, ToolCall, Transcript

CATEGORIES = {"single", "selection", "parallel", "restraint", "arguments", "two_step"}


@pytest.fixture(scope="module")
def pack() -> ToolCallPack:
    return ToolCallPack()


def to_response(shape: dict[str, Any], finish_reason: str | None = None) -> Response:
    """A server reply from the items' response shape ({"content", "tool_calls"})."""
    calls = [
        ToolCall(id=f"chatcmpl-tool-{index}", name=call["name"], arguments=call["arguments"])
        for index, call in enumerate(shape.get("tool_calls", []))
    ]
    reason = finish_reason or ("tool_calls" if calls else "stop")
    return Response(content=shape.get("content"), tool_calls=calls, finish_reason=reason)


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


def play(pack: ToolCallPack, item: Item, shape: dict[str, Any]) -> tuple[Score, ScriptedChat, Session]:
    """Run the item through the pack's own run_item against scripted replies, then score it."""
    turns = shape["turns"] if "turns" in shape else [shape]
    chat = ScriptedChat([to_response(turn) for turn in turns])
    session = Session(chat, Sampling(temperature=0.0))
    asyncio.run(pack.run_item(item, session))
    assert not chat.replies, f"{item.id}: run_item stopped before using every scripted reply"
    return pack.score(item, session.transcript), chat, session


def single_reply(response: Response) -> Transcript:
    return Transcript(exchanges=[Exchange(request=Request(messages=[]), response=response)])


def item_by_id(pack: ToolCallPack, item_id: str) -> Item:
    item = pack.item_by_id(item_id)
    assert item is not None, item_id
    return item


# --- the data --------------------------------------------------------------------------------


def test_registered_under_its_entry_point() -> None:
    registry.refresh()
    assert isinstance(registry.load("toolcall"), ToolCallPack)


def test_tiers_and_category_coverage(pack: ToolCallPack) -> None:
    full, quick = pack.items("full"), pack.items("quick")
    assert len(full) >= 60
    assert len(quick) == 15
    by_category = Counter(item.data["category"] for item in full)
    assert set(by_category) == CATEGORIES
    assert by_category["two_step"] >= 8
    assert min(by_category.values()) >= 8
    assert {item.data["category"] for item in quick} == CATEGORIES
    for item in full:
        assert item.reference is not None and item.wrong, item.id
        for wrong in item.wrong:
            assert wrong["attacks"] in pack.subdimensions, (item.id, wrong)


def test_every_offered_tool_is_a_valid_openai_function(pack: ToolCallPack) -> None:
    for item in pack.items("full"):
        tools = pack.tools(item)
        assert [tool["function"]["name"] for tool in tools] == item.data["tools"]
        for tool in tools:
            assert tool["type"] == "function"
            assert set(tool["function"]) == {"name", "description", "parameters"}


def test_messages_carry_the_reference_date(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "args-flight-business")
    system, user = pack.messages(item)
    assert system["role"] == "system" and "12 March 2025" in system["content"]
    assert user == {"role": "user", "content": item.data["prompt"]}


# --- references and wrong replies --------------------------------------------------------------


@pytest.mark.parametrize("item_id", [item.id for item in ToolCallPack().items("full")])
def test_reference_scores_one_and_every_wrong_reply_less(pack: ToolCallPack, item_id: str) -> None:
    item = item_by_id(pack, item_id)
    assert item.reference is not None
    reference, _, _ = play(pack, item, item.reference)
    assert reference.status == "scored"
    assert reference.passed and reference.value == 1.0, f"{item_id}: {reference.reason}"
    assert reference.subscores and all(value == 1.0 for value in reference.subscores.values())
    for wrong in item.wrong:
        score, _, _ = play(pack, item, wrong)
        assert score.status == "scored"
        assert score.value < reference.value, f"{item_id} ({wrong['note']}): {score.reason}"
        assert not score.passed
        attacked = wrong["attacks"]
        assert score.subscores.get(attacked, 1.0) < 1.0, f"{item_id} ({wrong['note']}) left {attacked} at 1"
        assert score.reason, item_id


def test_subscores_present_only_where_they_apply(pack: ToolCallPack) -> None:
    for item in pack.items("full"):
        assert item.reference is not None
        score, _, _ = play(pack, item, item.reference)
        category = item.data["category"]
        if category == "restraint":
            assert set(score.subscores) == {"restraint"}, item.id
            continue
        expected = {"tool_selection", "call_structure"}
        if any(call.get("args") for call in item.data["turns"][0]["calls"]):
            expected.add("parameter_precision")
        if category == "two_step":
            expected.add("multi_step")
        assert set(score.subscores) == expected, item.id


def test_reasons_name_the_call_the_value_and_the_expectation(pack: ToolCallPack) -> None:
    thermostat = item_by_id(pack, "args-thermostat-fahrenheit")
    score, _, _ = play(pack, thermostat, thermostat.wrong[0])
    assert "called set_thermostat with unit='F', expected 'fahrenheit'" in score.reason
    parcel = item_by_id(pack, "args-shipping-parcel")
    score, _, _ = play(pack, parcel, parcel.wrong[0])
    assert "parcel.weight_kg=2500, expected 2.5" in score.reason
    forecast = item_by_id(pack, "select-forecast-dublin")
    score, _, _ = play(pack, forecast, forecast.wrong[0])
    assert score.reason.startswith("called get_current_weather, expected get_forecast(")
    capital = item_by_id(pack, "restraint-capital")
    score, _, _ = play(pack, capital, capital.wrong[0])
    assert score.reason == "called get_current_weather when a plain answer was expected"


def test_partial_credit_for_a_missing_parallel_call(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "parallel-three-quotes")
    score, _, _ = play(pack, item, item.wrong[1])  # two of three quotes
    assert score.subscores["tool_selection"] == pytest.approx(2 / 3)
    assert score.subscores["parameter_precision"] == pytest.approx(2 / 3)
    assert score.subscores["call_structure"] == 1.0
    assert "missing call get_stock_quote(symbol='GOOGL')" in score.reason


def test_call_order_within_a_parallel_reply_does_not_matter(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "parallel-bedtime-home")
    assert item.reference is not None
    reversed_reply = {"content": None, "tool_calls": list(reversed(item.reference["tool_calls"]))}
    score, _, _ = play(pack, item, reversed_reply)
    assert score.passed and score.value == 1.0


def test_an_optional_call_is_judged_when_made_and_not_missed_when_left_out(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-pay-card")
    balance = {"name": "get_account_balance", "arguments": '{"account": "credit_card"}'}
    transfer = {"name": "transfer_money",
                "arguments": '{"from_account": "savings", "to_account": "credit_card", "amount": 412.37}'}

    def script(*first_calls: dict[str, str]) -> dict[str, Any]:
        return {"turns": [{"content": None, "tool_calls": list(first_calls)}, {"content": None, "tool_calls": [transfer]}]}

    also_savings = {"name": "get_account_balance", "arguments": '{"account": "savings"}'}
    score, chat, _ = play(pack, item, script(balance, also_savings))
    assert score.passed, score.reason
    assert json.loads(chat.requests[1].messages[-1]["content"])["balance"] == 5230.10
    assert play(pack, item, script(balance))[0].passed
    wrong_optional = {"name": "get_account_balance", "arguments": '{"account": "checking"}'}
    score, _, _ = play(pack, item, script(balance, wrong_optional))
    assert score.subscores["tool_selection"] == 1.0 and score.subscores["parameter_precision"] == 0.5
    assert "account='checking', expected 'savings'" in score.reason


def test_unknown_tool_and_invented_parameter_break_structure(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "single-weather-lisbon")
    score, _, _ = play(pack, item, {"content": None, "tool_calls": [
        {"name": "get_weather", "arguments": json.dumps({"location": "Lisbon"})}]})
    assert score.subscores == {"tool_selection": 0.0, "parameter_precision": 0.0, "call_structure": 0.0}
    assert "'get_weather', which is not one of the offered tools" in score.reason
    score, _, _ = play(pack, item, {"content": None, "tool_calls": [
        {"name": "get_current_weather", "arguments": json.dumps({"location": "Lisbon", "unit": "celsius", "lang": "pt"})}]})
    assert score.subscores["call_structure"] == 0.0
    assert score.subscores["parameter_precision"] == 1.0
    assert "invented parameter 'lang'" in score.reason


def test_only_malformed_calls_lose_structure_credit(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "parallel-weather-two-cities")
    score, _, _ = play(pack, item, {"content": None, "tool_calls": [
        {"name": "get_current_weather", "arguments": json.dumps({"location": "Oslo"})},
        {"name": "get_current_weather", "arguments": json.dumps({"location": "Madrid", "unit": "kelvin"})}]})
    assert score.subscores["call_structure"] == 0.5
    assert score.subscores["tool_selection"] == 1.0


# --- status: what cannot be judged is not scored ------------------------------------------------


def test_content_null_with_tool_calls_is_a_normal_reply(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "single-stock-nvidia")
    response = Response(content=None, reasoning="The user wants NVDA.", finish_reason="tool_calls",
                        tool_calls=[ToolCall(id="c1", name="get_stock_quote", arguments='{"symbol": "NVDA"}')])
    score = pack.score(item, single_reply(response))
    assert score.status == "scored" and score.passed


def test_truncated_reply_is_counted_as_truncated(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "single-stock-nvidia")
    response = Response(content=None, finish_reason="length",
                        tool_calls=[ToolCall(id="c1", name="get_stock_quote", arguments='{"symbol": "NVDA"}')])
    score = pack.score(item, single_reply(response))
    assert score.status == "truncated" and score.value == 0.0 and not score.passed


def test_reasoning_without_answer_is_empty_not_wrong(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "restraint-capital")
    score = pack.score(item, single_reply(Response(content="", reasoning="Canberra.", finish_reason="stop")))
    assert score.status == "empty"
    score = pack.score(item, single_reply(Response(content="", finish_reason="stop")))
    assert score.status == "scored" and score.subscores == {"restraint": 0.0} and score.reason == "empty reply"


def test_score_survives_a_stored_round_trip(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-order-to-tracking")
    assert item.reference is not None
    score, _, session = play(pack, item, item.reference)
    stored = Transcript.model_validate_json(session.transcript.model_dump_json())
    assert pack.score(item, stored) == score


# --- the two-step session flow ----------------------------------------------------------------


def test_two_step_answers_each_call_with_its_mock_result(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-compare-shares")
    assert item.reference is not None
    score, chat, session = play(pack, item, item.reference)
    assert score.passed
    assert len(chat.requests) == 2
    for request in chat.requests:
        assert request.tool_choice == "auto"
        assert [tool["function"]["name"] for tool in request.tools or []] == ["get_stock_quote"]
    second = chat.requests[1].messages
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "tool"]
    assert [c["id"] for c in second[2]["tool_calls"]] == ["chatcmpl-tool-0", "chatcmpl-tool-1"]
    results = {m["tool_call_id"]: json.loads(m["content"]) for m in second[3:]}
    assert results["chatcmpl-tool-0"]["symbol"] == "ASML" and results["chatcmpl-tool-0"]["price"] == 687.40
    assert results["chatcmpl-tool-1"]["symbol"] == "SAP" and results["chatcmpl-tool-1"]["price"] == 241.15
    assert len(session.transcript.exchanges) == 2


def test_three_steps_chain_two_rounds_of_results(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-order-to-tracking")
    assert item.reference is not None
    _, chat, _ = play(pack, item, item.reference)
    assert len(chat.requests) == 3
    last = chat.requests[2].messages
    assert [m["role"] for m in last[2:]] == ["assistant", "tool", "assistant", "tool"]
    assert json.loads(last[3]["content"])["tracking_number"] == "JD014600003828"
    assert json.loads(last[5]["content"])["location"] == "Leipzig hub"


def test_wrong_arguments_get_an_error_result_not_the_data(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-order-to-tracking")
    script = {"turns": [
        {"content": None, "tool_calls": [{"name": "get_order", "arguments": '{"order_id": "ORD-000001"}'}]},
        {"content": "I could not find that order.", "tool_calls": []},
    ]}
    score, chat, _ = play(pack, item, script)
    tool_message = chat.requests[1].messages[-1]
    assert tool_message["role"] == "tool" and "error" in json.loads(tool_message["content"])
    assert score.subscores["multi_step"] == 0.0


def test_a_reply_without_calls_ends_the_item(pack: ToolCallPack) -> None:
    item = item_by_id(pack, "two-step-pay-card")
    score, chat, _ = play(pack, item, {"content": "You owe about 400 USD.", "tool_calls": []})
    assert len(chat.requests) == 1
    assert score.subscores["multi_step"] == 0.0
    assert "step 2 never happened" in score.reason


# --- matchers ----------------------------------------------------------------------------------


@pytest.mark.parametrize("actual", ["2025-03-14", "20250314", "2025-03-14T00:00:00", "2025-03-14T00:00Z"])
def test_date_accepts_equivalent_iso_forms(actual: str) -> None:
    assert check({"date": "2025-03-14"}, actual) is None


@pytest.mark.parametrize("actual", ["14/03/2025", "March 14", "2025-03-15", "2025-03-14T09:00", 20250314])
def test_date_rejects_other_days_and_non_iso_text(actual: Any) -> None:
    assert check({"date": "2025-03-14"}, actual) is not None


@pytest.mark.parametrize("actual", ["2025-03-14T14:30", "2025-03-14T14:30:00", "2025-03-14 14:30", "2025-03-14T14:30:00+01:00"])
def test_date_time_compares_wall_clock_when_an_offset_is_missing(actual: str) -> None:
    assert check({"date": "2025-03-14T14:30"}, actual) is None


def test_date_time_with_offsets_compares_instants() -> None:
    assert check({"date": "2025-03-14T14:30:00+01:00"}, "2025-03-14T13:30:00Z") is None
    assert check({"date": "2025-03-14T14:30:00+01:00"}, "2025-03-14T14:30:00Z") is not None
    assert check({"date": "2025-03-14T14:30"}, "2025-03-14T02:30") is not None


def test_normalized_text_ignores_case_punctuation_accents_and_spacing() -> None:
    assert normalize_text("  São  Paulo, BR! ") == "sao paulo br"
    assert check({"text": "Living Room"}, "living-room") is None
    assert check({"text": ["Vienna", "Wien"]}, "WIEN") is None
    assert check({"text": "Vienna"}, "Vienna, Austria") is not None
    assert check({"contains": "vienna"}, "Vienna, Austria") is None
    assert check({"contains": "vie"}, "Vienna") is not None  # whole words only
    assert check({"text": "Vienna"}, 3) is not None


def test_numbers_match_within_tolerance_and_are_never_strings_or_booleans() -> None:
    assert check({"number": 2.5, "tol": 0.01}, 2.505) is None
    assert check({"number": 2.5, "tol": 0.01}, 2.52) is not None
    assert check({"number": 40}, 40.0) is None
    assert check({"number": 40}, "40") is not None
    assert check({"number": 1}, True) is not None


def test_exact_is_json_equality() -> None:
    assert same_json(2, 2.0) and not same_json(True, 1) and not same_json("2", 2)
    assert same_json({"a": [1, "x"]}, {"a": [1.0, "x"]}) and not same_json({"a": 1}, {"a": 1, "b": 2})
    assert check({"exact": False}, "false") is not None
    assert check({"one_of": ["rst_1", "rst_2"]}, "rst_2") is None
    assert check({"one_of": ["rst_1", "rst_2"]}, "rst_3") is not None


def test_lists_in_any_order_or_in_order() -> None:
    unordered = {"items": [{"exact": "pool"}, {"exact": "wifi"}]}
    assert check(unordered, ["wifi", "pool"]) is None
    mismatch = check(unordered, ["wifi", "gym"])
    assert mismatch is not None and "missing 'pool'" in mismatch.expected and "not 'gym'" in mismatch.expected
    assert check(unordered, ["wifi", "pool", "gym"]) is not None
    ordered = {"items": [{"exact": "a"}, {"exact": "b"}], "ordered": True}
    assert check(ordered, ["a", "b"]) is None
    mismatch = check(ordered, ["b", "a"])
    assert mismatch is not None and mismatch.path == "[0]"


def test_nested_objects_report_the_path() -> None:
    matcher = {"fields": {"weight_kg": {"number": 2.5}, "size": {"fields": {"cm": {"exact": 40}}}}}
    assert check(matcher, {"weight_kg": 2.5, "size": {"cm": 40}, "note": "x"}) is None
    mismatch = check(matcher, {"weight_kg": 2.5, "size": {"cm": 41}})
    assert mismatch is not None and mismatch.path == ".size.cm" and mismatch.actual == 41
    mismatch = check(matcher, {"size": {"cm": 40}})
    assert mismatch is not None and mismatch.path == ".weight_kg" and mismatch.actual is MISSING


def test_optional_parameters_may_be_left_out_but_must_match_when_given() -> None:
    assert check({"exact": "celsius", "optional": True}, MISSING) is None
    assert check({"exact": "celsius", "optional": True}, "fahrenheit") is not None
    assert check({"exact": "celsius"}, MISSING) is not None


def test_answer_facts() -> None:
    assert numbers_in("ASML 1,234.50 vs −4.5 and 17") == [1234.5, -4.5, 17.0]
    assert check_fact({"number": 357.12, "tol": 0.01}, "That is 357.12 EUR.") is None
    assert check_fact({"number": 357.12, "tol": 0.01}, "About 350 EUR.") is not None
    assert check_fact({"contains": "Leipzig"}, "At the LEIPZIG hub.") is None
    assert check_fact({"contains_any": ["friday", "14 march"]}, "Arrives 14 March.") is None
    assert check_fact({"contains_any": ["friday", "14 march"]}, "Arrives soon.") is not None


# --- loading: broken data is a clear user error ----------------------------------------------------


def write_items(tmp_path: Path, *items: dict[str, Any]) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("".join(json.dumps(item) + "\n" for item in items), encoding="utf-8")
    return path


def good_item(**data: Any) -> dict[str, Any]:
    base = {
        "category": "single",
        "prompt": "Weather in Oslo?",
        "tools": ["get_current_weather"],
        "turns": [{"calls": [{"name": "get_current_weather", "args": {"location": {"contains": "oslo"}}}]}],
    }
    return {"id": "probe", "data": {**base, **data}}


def test_the_shipped_data_loads() -> None:
    assert len(load_items(ITEMS_PATH, load_catalog())) >= 60


def test_a_good_item_loads(tmp_path: Path) -> None:
    assert [item.id for item in load_items(write_items(tmp_path, good_item()), load_catalog())] == ["probe"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"tools": ["get_weather"]}, "offers unknown tool 'get_weather'"),
        ({"turns": [{"calls": [{"name": "get_current_weather", "args": {"city": {"exact": "Oslo"}}}]}]},
         "has no parameter 'city'"),
        ({"turns": [{"calls": [{"name": "get_forecast"}]}]}, "which the item does not offer"),
        ({"turns": [{"calls": [{"name": "get_current_weather", "args": {"location": {"date": "14/03/2025"}}}]}]},
         "not ISO 8601"),
        ({"turns": [{"calls": [{"name": "get_current_weather", "args": {"location": {"exact": 1, "text": "x"}}}]}]},
         "field turns/0/calls/0/args/location: .* is valid under each of"),
        ({"category": "restraint"}, "field turns/0: 'answer' is a required property"),
        ({"category": "parallel"}, "field turns/0/calls: .* is too short"),
        ({"category": "two_step", "turns": [{"calls": [{"name": "get_current_weather"}]}, {"answer": {}}]},
         "needs mock 'results'"),
        ({"turns": [{"calls": [{"name": "get_current_weather"}], "results": [{"name": "get_current_weather", "result": 1}]}]},
         "is the last step"),
        ({"turns": [{"calls": [{"name": "get_current_weather", "optional": True}]}]}, "only optional calls"),
    ],
)
def test_broken_items_are_user_errors(tmp_path: Path, data: dict[str, Any], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_items(write_items(tmp_path, good_item(**data)), load_catalog())


def test_broken_catalog_is_a_user_error(tmp_path: Path) -> None:
    path = tmp_path / "tools.json"
    bad = {"t": {"name": "t", "description": "d", "parameters": {"type": "object", "properties": {"x": {"type": "nope"}}}}}
    path.write_text(json.dumps(bad), encoding="utf-8")
    with pytest.raises(UserError, match="tool 't' parameters are not a valid JSON Schema"):
        load_catalog(path)
    path.write_text(json.dumps({"t": {**bad["t"], "name": "u"}}), encoding="utf-8")
    with pytest.raises(UserError, match="make them equal"):
        load_catalog(path)


# --- run-level hooks -------------------------------------------------------------------------------


def test_limit_takes_every_category_first(pack: ToolCallPack) -> None:
    chosen = pack.limit(pack.items("full"), 6, seed=0)
    assert {item.data["category"] for item in chosen} == CATEGORIES
    assert [i.id for i in pack.limit(pack.items("full"), 6, seed=0)] == [i.id for i in chosen]
    assert len(pack.limit(pack.items("full"), 1000, seed=1)) == len(pack.items("full"))


def test_breakdown_by_category(pack: ToolCallPack) -> None:
    def record(item_id: str, value: float, status: str = "scored", *, failed: bool = False) -> ItemRecord:
        item = pack.item_by_id(item_id)
        assert item is not None
        score = Score(value=value, passed=value == 1.0, status=status)  # type: ignore[arg-type]
        made = record_for(pack, item, transcript_for_text("x"), score=score)
        return made.model_copy(update={"score": None, "error": "connection refused"}) if failed else made

    records = [
        record("restraint-capital", 1.0), record("restraint-poem", 0.0),
        record("single-stock-nvidia", 0.0, "truncated"), record("single-order-status", 0.0, failed=True),
    ]  # fmt: skip
    result = build_results("r", {"toolcall": pack}, records, {"toolcall": 4}).packs["toolcall"]
    table = result.breakdowns["category"]
    assert table["restraint"].score.mean == 0.5 and table["restraint"].score.n == 2
    assert table["restraint"].pass_rate.mean == 0.5
    # A truncated reply is a zero, a failed request is left out: the same rules as the overall score.
    assert table["single"].score.n == 1 and table["single"].score.mean == 0.0
    assert result.extra == {}


def test_data_hash_covers_items_and_tools(pack: ToolCallPack) -> None:
    names = {path.name for path in pack.data_files()}
    assert {"items.jsonl", "tools.json"} <= names
    assert len(pack.data_hash()) == 64 and pack.data_hash() == ToolCallPack().data_hash()
