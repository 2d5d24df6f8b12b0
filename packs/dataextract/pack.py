"""The dataextract pack: pull structured data out of realistic documents as schema-bound JSON.

Each item is a document written for this pack (invoice, receipt, email, log, table, CSV, form,
shipping notice, meeting notes, itinerary) and the JSON Schema the answer must follow. Some
fields are deliberately absent from the document: the right answer there is null, and a value
is a hallucination. Scoring lives in ``scoring``; items in ``items.jsonl`` (checked by ``data``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from bench.pack import Item, JsonlPack, Sampling, Score, unscorable
from bench.packs.dataextract.data import check_item
from bench.packs.dataextract.scoring import extraction_rules, score_reply
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

PROMPT = """Extract data from the document below into one JSON object that follows the JSON Schema.
- Use null for every field the document does not state. Do not guess or invent values.
- Numbers are JSON numbers, without currency symbols or thousands separators.
- Dates are YYYY-MM-DD and times are 24-hour HH:MM unless the schema says otherwise.

Document:
<<<
{document}
>>>

JSON Schema:
{schema}

Reply with the JSON object only: no schema, no explanation."""


def render_schema(schema: dict[str, Any]) -> str:
    """The schema as valid JSON with one property per line: readable, and about half the tokens of indented JSON."""

    def compact(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    lines = ["{"]
    entries = list(schema.items())
    for index, (key, value) in enumerate(entries):
        comma = "," if index < len(entries) - 1 else ""
        if key == "properties" and isinstance(value, dict):
            props = list(value.items())
            lines.append(f' {compact(key)}: {{')
            for prop_index, (name, sub) in enumerate(props):
                prop_comma = "," if prop_index < len(props) - 1 else ""
                lines.append(f"  {compact(name)}: {compact(sub)}{prop_comma}")
            lines.append(f" }}{comma}")
        else:
            lines.append(f" {compact(key)}: {compact(value)}{comma}")
    lines.append("}")
    return "\n".join(lines)


def render_prompt(data: dict[str, Any]) -> str:
    """The user message for one item: the instructions, the answer schema and the document."""
    return PROMPT.format(schema=render_schema(data["schema"]), document=data["document"])


class DataExtractPack(JsonlPack):
    """Document-to-JSON extraction: valid JSON, schema adherence, field accuracy, no hallucination."""

    name = "dataextract"
    version = "1"
    description = (
        "Extract fields from realistic documents into JSON that follows a given schema; "
        "fields the document does not state must be null."
    )
    subdimensions = ("valid_json", "schema_adherence", "field_accuracy", "no_hallucination")
    breakdowns = ("kind",)
    # Reading a document is not a reasoning task, and 768 tokens hold every answer with room to spare;
    # thinking on would spend that budget before the JSON and turn answers into truncations.
    default_sampling = Sampling(temperature=0.0, max_tokens=768, thinking=False)

    def check_items(self, items: list[Item]) -> None:
        for item in items:
            check_item(self.items_path, item)

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return [{"role": "user", "content": render_prompt(item.data)}]

    def score(self, item: Item, transcript: Transcript) -> Score:
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": {"kind": item.data["kind"]}})
        return score_reply(item.data, transcript.final_content)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """How often each extraction rule found the answer (per document kind: the breakdown)."""
        return {"extraction_rules": extraction_rules(records)}
