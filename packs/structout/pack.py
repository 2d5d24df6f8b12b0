"""The structout pack: JSON that must follow a JSON Schema, asked with and without guided decoding.

Each task in ``items.jsonl`` (a prompt, the answer's JSON Schema, and the gold fields) is asked as
two items with the same messages: ``<task>@guided`` also sends the schema as the OpenAI-style
``response_format`` (``json_schema``, ``strict``), which vLLM turns into structured outputs (the
decoder can only emit text the schema allows), and ``<task>@prompted`` sends nothing more than
the schema in the prompt. The breakdown ``mode`` has the two halves; each item pairs with itself
across runs. Reading them together separates the model from the decoder: right guided and wrong
prompted is a model that knows the content but not the format; wrong in both, the content itself.

Thinking is off by default: the tasks read a short text or follow stated settings, with nothing
to reason out; and with thinking on a server whose structured-output backend does not know where
the reasoning ends would force JSON into the think block, so the two modes would no longer ask
the same thing.

A server that refuses ``response_format`` (HTTP 400 or 422 on the guided request, its error about
the field or structured output) leaves the guided half not measured: the pack says so in one line
on stderr (once per distinct refusal: a server may refuse the field outright, or only a schema its
backend cannot compile), each such guided item is scored with status ``unmeasured`` (left out of
every mean and of the paired comparison, never a zero), and ``extra.guided_unmeasured`` and
``extra.guided_note`` in results.json count and say it.
"""

from __future__ import annotations

import logging
import math
import re
from collections import defaultdict
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import openai

from bench.client import RequestFailed
from bench.pack import Item, JsonlPack, Sampling, Score, load_jsonl_items, round_robin, unscorable
from bench.packs.structout.data import MODE_SEPARATOR, SUBDIMENSIONS, check_task
from bench.packs.structout.prompt import render_messages, response_format
from bench.packs.structout.scoring import extraction_rules, not_measured, score_reply
from bench.session import Session
from bench.transcript import Transcript

if TYPE_CHECKING:
    from bench.records import ItemRecord

MODES = ("guided", "prompted")
# What a server answers when it does not take a request field it does not know or support, and
# what its error then talks about (a 400 for a prompt over the context length is a plain error).
REJECTING_STATUSES = frozenset({400, 422})
ABOUT_STRUCTURED_OUTPUT = re.compile(r"response_format|json_schema|schema|structured|guided|grammar", re.IGNORECASE)
NOT_MEASURED_WHY = "the server refused the request with response_format (HTTP 400 or 422), so guided decoding could not be asked"
_log = logging.getLogger(__name__)


def task_id(item_id: str) -> str:
    """``invoice-totals@guided`` -> ``invoice-totals``."""
    return item_id.rpartition(MODE_SEPARATOR)[0] or item_id


def rejection(exc: RequestFailed) -> bool:
    """Whether a failed request was refused for its structured-output field, not for anything else."""
    cause = exc.__cause__
    return (isinstance(cause, openai.APIStatusError) and cause.status_code in REJECTING_STATUSES
            and ABOUT_STRUCTURED_OUTPUT.search(str(exc)) is not None)


class StructOutPack(JsonlPack):
    """Schema-following JSON, guided and prompted: parses, schema_valid, field_accuracy, no_extra_fields."""

    name = "structout"
    version = "1"
    description = (
        "Produce JSON that follows a JSON Schema (nested objects, bounded arrays, enums, patterns, ranges), "
        "once with the server's guided decoding (response_format) and once with the schema in the prompt only."
    )
    subdimensions = SUBDIMENSIONS
    breakdowns = ("mode", "kind")
    # The longest reference answer (study-plan) is about 760 characters compact and 1,370 indented,
    # roughly 250 and 400 tokens: 512 holds a pretty-printed answer and stops a runaway one early.
    default_sampling = Sampling(temperature=0.0, max_tokens=512, thinking=False)

    def __init__(self, data_path: Path | None = None) -> None:
        super().__init__(data_path)
        self._refusals_said: set[str] = set()  # each distinct refusal is said once, not once per item

    @cached_property
    def _all_items(self) -> list[Item]:
        """Each task of items.jsonl as its two items, guided first."""
        tasks = load_jsonl_items(self.items_path, self.item_schema())
        for task in tasks:
            check_task(self.items_path, task)
        return [
            task.model_copy(update={"id": f"{task.id}{MODE_SEPARATOR}{mode}", "data": {**task.data, "mode": mode}})
            for task in tasks
            for mode in MODES
        ]

    def limit(self, items: list[Item], n: int, seed: int) -> list[Item]:
        """Whole tasks, both modes, round-robin over kinds in a seeded order: ``n`` rounded up to even,
        so every guided item keeps its prompted twin."""
        by_kind: dict[str, list[str]] = defaultdict(list)
        for item in items:
            task = task_id(item.id)
            if task not in by_kind[item.data["kind"]]:
                by_kind[item.data["kind"]].append(task)
        chosen = set(round_robin([tasks for _, tasks in sorted(by_kind.items())], math.ceil(n / len(MODES)), seed))
        return [item for item in items if task_id(item.id) in chosen]

    def messages(self, item: Item) -> list[dict[str, Any]]:
        return render_messages(item.data)

    async def run_item(self, item: Item, session: Session) -> None:
        """Ask once; a guided request the server refuses is recorded as nothing asked (see ``score``)."""
        if item.data["mode"] != "guided":
            await session.ask(self.messages(item))
            return
        try:
            await session.ask(self.messages(item), response_format=response_format(item.data))
        except RequestFailed as exc:
            if not rejection(exc):
                raise
            said = str(exc).partition(": ")[2]  # without the endpoint URL
            if said not in self._refusals_said:
                self._refusals_said.add(said)
                _log.warning("structout: guided half not measured: %s (%s)", NOT_MEASURED_WHY, said)

    def score(self, item: Item, transcript: Transcript) -> Score:
        data = item.data
        if data["mode"] == "guided" and not transcript.exchanges:
            # run_item records no exchange only when the server refused response_format.
            return not_measured(data, NOT_MEASURED_WHY)
        if (bad := unscorable(transcript)) is not None:
            return bad.model_copy(update={"details": {"mode": data["mode"], "kind": data["kind"]}})
        return score_reply(data, transcript.final_content)

    def aggregate(self, records: Sequence[ItemRecord]) -> dict[str, Any]:
        """Extraction rules per mode, and the guided items the server refused or seems not to have constrained."""
        rules = extraction_rules(records)
        guided = [r.score for r in records if r.score is not None and r.error is None and r.score.details.get("mode") == "guided"]
        unmeasured = sum(1 for score in guided if score.status == "unmeasured")
        # A constraining server can only return bare JSON (or a reply cut off, counted apart).
        not_bare = sum(count for rule, count in rules.get("guided", {}).items() if rule != "bare")
        out: dict[str, Any] = {"extraction_rules": rules, "guided_unmeasured": unmeasured, "guided_not_bare": not_bare}
        if unmeasured:
            out["guided_note"] = f"guided half not measured on {unmeasured} of {len(guided)} items: {NOT_MEASURED_WHY}"
        elif not_bare:
            out["guided_note"] = (f"{not_bare} guided replies were not bare JSON: the server may have accepted "
                                  "response_format without constraining the decoder")
        return out
