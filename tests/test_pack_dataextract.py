"""The dataextract pack: its items agree with its scorer, extraction is tolerant, bad data is refused."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bench import registry
from bench.errors import UserError
from bench.pack import Item
from bench.packs.dataextract import DataExtractPack
from bench.packs.dataextract.extract import Extracted, NotFound, find_json
from bench.packs.dataextract.fields import compare_fields
from bench.packs.dataextract.normalize import is_blank, to_number, values_equal
from bench.records import ItemRecord
from bench.run.aggregate import build_results
from bench.testing import transcript_for_answer, transcript_for_text

PACK = DataExtractPack()
ITEMS_PATH = Path(str(DataExtractPack.resource("items.jsonl")))
ALL_ITEMS = PACK.items("full")
QUICK_ITEMS = PACK.items("quick")
KINDS = sorted({item.data["kind"] for item in ALL_ITEMS})
WRONG_CASES = [(item, index) for item in ALL_ITEMS for index in range(len(item.wrong))]


def null_leaves(value: Any) -> int:
    if value is None:
        return 1
    if isinstance(value, dict):
        return sum(null_leaves(v) for v in value.values())
    if isinstance(value, list):
        return sum(null_leaves(v) for v in value)
    return 0


def reply(item: Item, content: str) -> Any:
    return PACK.score(item, transcript_for_text(content))


# --- the items themselves ----------------------------------------------------------------------


def test_registered_under_its_name() -> None:
    assert isinstance(registry.load("dataextract"), DataExtractPack)


def test_tiers_and_coverage() -> None:
    assert len(ALL_ITEMS) >= 60
    assert len(QUICK_ITEMS) == 15
    assert {item.data["kind"] for item in QUICK_ITEMS} == set(KINDS)
    assert len(KINDS) >= 8
    for item in ALL_ITEMS:
        assert null_leaves(item.data["expected"]) >= 1, f"{item.id} has no field the document is silent on"
        assert item.reference is not None and item.wrong, item.id
        attacked = {wrong["attacks"] for wrong in item.wrong}
        assert attacked <= set(PACK.subdimensions), item.id


def test_default_sampling_and_prompt() -> None:
    assert PACK.default_sampling.temperature == 0.0
    assert PACK.default_sampling.max_tokens == 768
    item = ALL_ITEMS[0]
    [message] = PACK.messages(item)
    assert message["role"] == "user"
    assert item.data["document"] in message["content"]
    assert "null" in message["content"]
    schema_text = message["content"].split("JSON Schema:\n", 1)[1].split("\n\nReply with", 1)[0]
    assert json.loads(schema_text) == item.data["schema"]


@pytest.mark.parametrize("item", ALL_ITEMS, ids=lambda item: item.id)
def test_reference_scores_one(item: Item) -> None:
    assert item.reference is not None
    score = PACK.score(item, transcript_for_answer(item.reference))
    assert score.status == "scored"
    assert score.value == 1.0, score.reason
    assert score.passed
    assert set(score.subscores) == set(PACK.subdimensions)


@pytest.mark.parametrize("case", WRONG_CASES, ids=lambda case: f"{case[0].id}-{case[0].wrong[case[1]]['attacks']}")
def test_wrong_answer_scores_less_on_what_it_attacks(case: tuple[Item, int]) -> None:
    item, index = case
    wrong = item.wrong[index]
    score = PACK.score(item, transcript_for_answer(wrong))
    assert score.value < 1.0
    assert not score.passed
    attacked = wrong["attacks"]
    assert score.subscores[attacked] < 1.0, f"{wrong['why']}: {score.subscores}"
    assert score.reason


# --- tolerant extraction -----------------------------------------------------------------------

WRAPPINGS = {
    "fenced": lambda body: f"```json\n{body}\n```",
    "fenced_with_prose": lambda body: f"Here is the extracted data:\n\n```json\n{body}\n```\n\nLet me know if you need anything else.",
    "embedded": lambda body: f"Sure! The extracted JSON is {body} — all fields come from the document.",
}
RULES = {"fenced": "fenced", "fenced_with_prose": "fenced", "embedded": "embedded"}


@pytest.mark.parametrize("wrapping", sorted(WRAPPINGS))
@pytest.mark.parametrize("item", QUICK_ITEMS, ids=lambda item: item.id)
def test_wrapped_answers_score_like_bare_ones(item: Item, wrapping: str) -> None:
    assert item.reference is not None
    bodies = [item.reference["content"]] + [w["content"] for w in item.wrong if w["attacks"] != "valid_json"]
    for body in bodies:
        bare = reply(item, body)
        wrapped = reply(item, WRAPPINGS[wrapping](body))
        assert bare.extraction == "bare"
        assert wrapped.extraction == RULES[wrapping]
        assert (wrapped.value, wrapped.subscores, wrapped.reason) == (bare.value, bare.subscores, bare.reason)


def test_first_balanced_object_wins() -> None:
    found = find_json('Example: {"a": {"b": "}"}} and later {"c": 1}')
    assert isinstance(found, Extracted) and found.value == {"a": {"b": "}"}} and found.rule == "embedded"


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("", "empty"),
        ("I could not find the data.", "no JSON object"),
        ("{'total': None}", "does not parse"),
        ('```json\n{"total": 12.5,\n', "does not parse"),
    ],
)
def test_no_json_is_named(content: str, fragment: str) -> None:
    found = find_json(content)
    assert isinstance(found, NotFound) and fragment in found.error


def test_invalid_json_scores_zero_and_says_why() -> None:
    item = QUICK_ITEMS[0]
    score = reply(item, "{'invoice_number': 'NLS-20931'}")
    assert score.value == 0.0 and not score.passed and score.extraction is None
    assert score.subscores["valid_json"] == 0.0
    assert "no_hallucination" not in score.subscores  # nothing was answered, so nothing was invented
    assert score.reason.startswith("invalid JSON")


# --- tolerant comparison -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("1,234.50", 1234.5), ("$1234.5", 1234.5), ("1.234,50 EUR", 1234.5), ("€7,85", 7.85),
        ("(12.00)", -12.0), ("-$87.12", -87.12), ("1 150 lb", 1150.0), ("10.2%", 10.2), (3, 3.0),
    ],
)
def test_numbers_in_their_usual_spellings(text: Any, number: float) -> None:
    assert to_number(text) == pytest.approx(number)


@pytest.mark.parametrize("text", ["12 of 22", "about", True, None, [1]])
def test_not_one_number(text: Any) -> None:
    assert to_number(text) is None


@pytest.mark.parametrize("got", ["2024-03-02", "March 2, 2024", "2 Mar 2024", "2024/03/02", "03/02/2024", "2024-03-02T00:00:00"])
def test_equivalent_dates(got: str) -> None:
    assert values_equal("date", "2024-03-02", got)


@pytest.mark.parametrize("got", ["2024-03-03", "March 2", "2023-03-02", "soon", 20240302])
def test_different_dates(got: Any) -> None:
    assert not values_equal("date", "2024-03-02", got)


def test_times_and_instants() -> None:
    assert values_equal("time", "18:30", "6:30 PM")
    assert values_equal("time", "06:58", "06:58:13")  # expected has no seconds: minutes decide
    assert not values_equal("time", "03:12:46", "03:12:44")
    assert values_equal("date-time", "2024-04-10T12:58:00Z", "2024-04-10 12:58 UTC")
    assert values_equal("date-time", "2024-03-02T14:05:11.204Z", "2024-03-02T14:05:11Z")
    assert not values_equal("date-time", "2024-04-10T12:58:00Z", "2024-04-10T13:58:00+00:00")


def test_text_and_identifiers() -> None:
    assert values_equal("text", "Greenleaf Market", "  GREENLEAF   market ")
    assert values_equal("text", "Brightline Janitorial Services, Inc.", "brightline janitorial services, inc")
    assert not values_equal("text", "Greenleaf Market", "Greenleaf Market #112")
    assert values_equal("compact", "+1 (646) 555-0190", "+1-646-555-0190")
    assert values_equal("compact", "1SW 884 219 7730 5521", "1SW88421977305521")
    assert not values_equal("compact", "1SW 884 219 7730 5521", "1SW88421977305512")


@pytest.mark.parametrize("value", [None, "", "N/A", "not specified", "Unknown.", [], {"a": None}])
def test_blank_stand_ins(value: Any) -> None:
    assert is_blank(value)


def test_unordered_lists_pair_entries_by_content() -> None:
    schema = {"type": "object", "properties": {"lines": {"type": "array", "items": {
        "type": "object", "properties": {"sku": {"type": "string"}, "qty": {"type": "integer"}}}}}}
    expected = {"lines": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 2}, {"sku": "C", "qty": None}]}
    shuffled = {"lines": [{"sku": "C"}, {"sku": "A", "qty": 1}, {"sku": "B", "qty": 5}]}
    report = compare_fields(expected, shuffled, schema, {"lines": "unordered"})
    assert [c.path for c in report.accuracy if not c.ok] == ["lines[1].qty"]
    assert all(c.ok for c in report.silence)
    in_order = compare_fields(expected, shuffled, schema, {})
    assert sum(not c.ok for c in in_order.accuracy) > 1


def test_extra_list_entries_count_against_accuracy() -> None:
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"type": "string"}}}}
    report = compare_fields({"tags": ["a", "b"]}, {"tags": ["b", "a", "c"]}, schema, {"tags": "unordered"})
    assert [c.ok for c in report.accuracy] == [True, True, False]
    assert "unexpected extra entry 'c'" in report.accuracy[-1].problem


def test_reason_names_each_wrong_and_invented_field() -> None:
    item = next(i for i in ALL_ITEMS if i.id == "invoice-lighting-supply")
    answer = dict(item.data["expected"], total=1243.5, ship_date="2024-03-02")
    score = reply(item, json.dumps(answer))
    assert score.reason == "total: got 1243.5, expected 1360.42; ship_date should be null, got '2024-03-02'"
    assert score.details["wrong_fields"] == ["total"]
    assert score.details["hallucinated_fields"] == ["ship_date"]


def test_loose_spellings_keep_accuracy_but_break_the_schema() -> None:
    item = next(i for i in ALL_ITEMS if i.id == "invoice-lighting-supply")
    answer = dict(item.data["expected"], total="$1,360.42", invoice_date="March 4, 2024", vendor_name="NORTHWIND LIGHTING SUPPLY LLC",
                  purchase_order_number="N/A")
    score = reply(item, json.dumps(answer))
    assert score.subscores["field_accuracy"] == 1.0
    assert score.subscores["no_hallucination"] == 1.0
    assert score.subscores["schema_adherence"] == 0.0
    assert "schema: total" in score.reason and "schema: invoice_date" in score.reason


@pytest.mark.parametrize("item", QUICK_ITEMS, ids=lambda item: item.id)
def test_empty_handed_answers_score_near_zero(item: Item) -> None:
    all_null = reply(item, json.dumps({key: None for key in item.data["expected"]}))
    assert all_null.subscores["no_hallucination"] == 1.0 and all_null.subscores["field_accuracy"] == 0.0
    assert all_null.value < 0.25
    echoed = reply(item, json.dumps(item.data["schema"]))
    assert echoed.value < 0.25 and echoed.subscores["schema_adherence"] == 0.0


def test_answer_that_is_not_an_object() -> None:
    item = QUICK_ITEMS[0]
    score = reply(item, "[1, 2, 3]")
    assert score.subscores["valid_json"] == 1.0
    assert score.subscores["schema_adherence"] == 0.0
    assert score.subscores["field_accuracy"] == 0.0


# --- unscorable replies and aggregation --------------------------------------------------------


def test_truncated_and_empty_replies_are_not_wrong_answers() -> None:
    item = QUICK_ITEMS[0]
    truncated = PACK.score(item, transcript_for_text('{"invoice_number": "NLS', finish_reason="length"))
    assert truncated.status == "truncated" and truncated.details["kind"] == item.data["kind"]
    empty = PACK.score(item, transcript_for_text("", reasoning="Let me read the invoice..."))
    assert empty.status == "empty"


def _record(item: Item, content: str, *, finish_reason: str | None = None) -> ItemRecord:
    transcript = transcript_for_text(content, finish_reason=finish_reason)
    now = datetime.now(UTC).isoformat()
    record = ItemRecord(
        pack=PACK.name, pack_version=PACK.version, item_id=item.id, transcript=transcript,
        score=PACK.score(item, transcript), started_at=now, finished_at=now, elapsed_s=0.1,
    )
    return record


def test_aggregate_reports_each_document_kind() -> None:
    invoice = next(i for i in QUICK_ITEMS if i.data["kind"] == "invoice")
    email = next(i for i in QUICK_ITEMS if i.data["kind"] == "email")
    assert invoice.reference is not None and email.reference is not None
    records = [
        _record(invoice, invoice.reference["content"]),
        _record(invoice, f"```json\n{invoice.wrong[1]['content']}\n```"),
        _record(email, "no idea"),
        _record(email, "{", finish_reason="length"),
    ]
    by_kind = build_results("r", {"dataextract": PACK}, records, {"dataextract": 4}).packs["dataextract"].breakdowns["kind"]
    assert set(by_kind) == {"invoice", "email"}
    assert by_kind["invoice"].score.n == 1 and by_kind["invoice"].pass_rate.mean == 0.5  # two repeats of one item
    # A truncated reply is a zero in its group, as in the overall score.
    assert by_kind["email"].score.n == 1 and by_kind["email"].score.mean == 0.0
    extra = PACK.aggregate(records)
    assert extra == {"extraction_rules": {"bare": 1, "fenced": 1, "none": 1}}


# --- broken data files -------------------------------------------------------------------------


def _write_items(tmp_path: Path, lines: list[str]) -> Path:
    path = tmp_path / "items.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _good_line() -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(ITEMS_PATH.read_text(encoding="utf-8").splitlines()[0])
    return raw


def _broken(mutate: Any) -> str:
    raw = _good_line()
    mutate(raw)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"id": "x", "data": ', "items.jsonl:1: not valid JSON"),
        (_broken(lambda r: r["data"].update(kind="spreadsheet")), "field kind"),
        (_broken(lambda r: r["data"].pop("expected")), "'expected' is a required property"),
        (_broken(lambda r: r["data"]["expected"].update(total="lots")), "data.expected does not follow data.schema at total"),
        (_broken(lambda r: r["data"]["schema"]["properties"]["total"].update(type="money")), "not a valid JSON Schema"),
        (_broken(lambda r: r["data"].setdefault("compare", {}).update(totl="compact")), "data.compare names 'totl'"),
    ],
)
def test_broken_items_file_is_a_user_error(tmp_path: Path, line: str, message: str) -> None:
    pack = DataExtractPack(data_path=_write_items(tmp_path, [line]))
    with pytest.raises(UserError) as caught:
        pack.items()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_missing_items_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="cannot read pack data"):
        DataExtractPack(data_path=tmp_path / "nope.jsonl").items()


def test_data_hash_names_the_items_file() -> None:
    assert PACK.data_files() == [ITEMS_PATH]
    assert len(PACK.data_hash()) == 64
