"""Run directories made by the real packs: their items, their ``run_item``, their scorers.

Each item is asked through the runner's own :func:`bench.run.runner.ask_item`, against a stand-in
for the server that replays one of the item's stored replies: its ``reference`` answer, or, where
a regression is planted, the ``wrong`` answer that attacks a chosen subdimension. So the requests
are the packs' real requests (multi-turn tool-call items included), the scores come from the
packs' real ``score()``, the health flags from the real scan, every record goes through the
store's schema check and ``results.json`` comes from ``bench.run.aggregate`` exactly as
``bench run`` writes it. Only the model is stood in for; the gate and the report then read
what a run of a model giving those answers would have left on disk.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, cast

from bench import __version__, registry
from bench.client import ChatClient
from bench.pack import Item, Pack, Tier
from bench.records import ItemRecord, Manifest, PackEntry, PreflightCheck, ServerInfo
from bench.run.aggregate import build_results
from bench.run.evaluation import pack_sampling
from bench.run.options import EvalOptions
from bench.run.runner import PackPlan, RunPlan, ask_item
from bench.run.store import RunStore
from bench.testing import transcript_for_answer
from bench.transcript import Request, Response, Usage

# Which items of each pack a run asks: a tier, or a seeded ``--limit`` of the full tier.
# toolcall runs in full so that its gate rules have the power to see a planted regression; the
# others run their quick tier (the code pack is left out: evalplus takes seconds per item).
DEFAULT_SELECTION: Mapping[str, Tier | int] = {
    "toolcall": "full",
    "dataextract": "quick",
    "instructfollow": "quick",
    "bugfind": "quick",
    "mmlu": "quick",
}
TEMPLATE_SHA = hashlib.sha256(b"{% for message in messages %}stored-run template{% endfor %}").hexdigest()
ENDPOINT = "http://127.0.0.1:8000/v1"
# What a server without a reasoning parser hands back when the template opens <think> itself:
# the tail of the reasoning and its closing tag, in content.
LEAKED_PREFIX = "The question is clear, so I can answer directly.\n</think>\n\n"


@dataclass(frozen=True)
class Regression:
    """Answer a share of one pack's items with their stored wrong reply attacking ``attacks``.

    ``fraction`` is the share (rounded up) of the items that have such a wrong reply, a seeded choice.
    """

    pack: str
    attacks: str
    fraction: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class RunSpec:
    """What differs between two stored runs: the model's answers and how it was served."""

    model: str = "baseline-model"
    selection: Mapping[str, Tier | int] = field(default_factory=lambda: dict(DEFAULT_SELECTION))
    regression: Regression | None = None
    leaked: Mapping[str, int] = field(default_factory=dict)  # pack -> replies leaking </think>
    chat_template_sha256: str = TEMPLATE_SHA
    seed: int = 0


class ReplayServer:
    """Stands in for the server for one item: returns the stored reply turns in order."""

    def __init__(self, item_id: str, turns: Sequence[dict[str, Any]], leak: bool) -> None:
        self.item_id = item_id
        self.turns = list(turns)
        self.leak = leak

    async def chat(self, request: Request) -> Response:
        if not self.turns:
            raise AssertionError(f"{self.item_id}: the pack asked more often than the stored reply has turns")
        turn = dict(self.turns.pop(0))
        if self.leak and turn.get("content"):
            turn["content"] = LEAKED_PREFIX + turn["content"]
        response = transcript_for_answer(turn).last
        assert response is not None
        # Token counts and latency in proportion to the text, as a server at ~100 tokens/s would report.
        completion = len((response.content or "") + "".join(c.arguments for c in response.tool_calls)) // 4 + 1
        response.usage = Usage(prompt_tokens=len(json.dumps(request.messages)) // 4, completion_tokens=completion)
        response.latency_s = round(0.05 + completion / 100, 3)
        response.endpoint = ENDPOINT
        return response


@cache
def _plans(selection: tuple[tuple[str, Tier | int], ...]) -> dict[str, PackPlan]:
    """Each selected pack, loaded once per process through the registry, with its items."""
    plans: dict[str, PackPlan] = {}
    for name, chosen in selection:
        pack = registry.load(name)
        items = pack.items(chosen) if isinstance(chosen, str) else pack.limit(pack.items("full"), chosen, 0)
        plans[name] = PackPlan(pack=pack, items=items, sampling=pack_sampling(pack, EvalOptions()))
    return plans


def pack_plans(selection: Mapping[str, Tier | int] = DEFAULT_SELECTION) -> dict[str, PackPlan]:
    """The real packs and the items a run with ``selection`` asks."""
    return _plans(tuple(selection.items()))


def planted_item_ids(regression: Regression, selection: Mapping[str, Tier | int] = DEFAULT_SELECTION) -> list[str]:
    """The items a run with ``regression`` answers wrongly, in the pack's order."""
    items = pack_plans(selection)[regression.pack].items
    eligible = [item.id for item in items if any(w.get("attacks") == regression.attacks for w in item.wrong)]
    if not eligible:
        raise ValueError(f"no {regression.pack} item has a wrong reply attacking {regression.attacks!r}")
    count = min(len(eligible), math.ceil(regression.fraction * len(eligible)))
    chosen = set(random.Random(regression.seed).sample(eligible, count))
    return [item_id for item_id in eligible if item_id in chosen]


def _stored_reply(item: Item, wrong_for: str | None) -> list[dict[str, Any]]:
    """The reply turns to replay: the reference, or the wrong reply attacking ``wrong_for``."""
    if wrong_for is not None:
        answer = next(w for w in item.wrong if w.get("attacks") == wrong_for)
    elif item.reference is not None:
        answer = item.reference
    else:
        raise ValueError(f"item {item.id} has no reference reply")
    turns: list[dict[str, Any]] = answer["turns"] if "turns" in answer else [answer]
    return turns


def _leaking(pack_plan: PackPlan, count: int) -> set[str]:
    """The first ``count`` items whose stored reply has text (a bare tool call has none to leak into)."""
    with_text = [item.id for item in pack_plan.items if (item.reference or {}).get("content")]
    return set(with_text[:count])


def _manifest(run_id: str, spec: RunSpec, plans: Mapping[str, PackPlan]) -> Manifest:
    model = f"/models/{spec.model}"
    return Manifest(
        run_id=run_id,
        created_at="2025-03-12T09:00:00+00:00",
        bench_version=__version__,
        model=model,
        server=ServerInfo(
            launched=True,
            command=["python", "-m", "vllm.entrypoints.openai.api_server", "--model", model,
                     "--reasoning-parser", "qwen3", "--enable-auto-tool-choice", "--tool-call-parser", "hermes"],
            endpoints=[ENDPOINT],
            served_model_name=spec.model,
            vllm_version="0.32.0",
            reasoning_parser="qwen3",
            tool_call_parser="hermes",
            chat_template_sha256=spec.chat_template_sha256,
            chat_template_source="checkpoint",
            max_model_len=2048,
        ),
        preflight=[
            PreflightCheck(name=name, ok=True, detail="stored run") for name in ("first_request", "plain_answer", "tool_call")
        ],
        packs=[
            PackEntry(
                name=name, version=plan.pack.version, data_hash=plan.pack.data_hash(), items=len(plan.items),
                tier=chosen if isinstance(chosen, str) else "full", subdimensions=list(plan.pack.subdimensions),
                sampling=plan.sampling.model_dump(exclude_none=True),
            )  # fmt: skip
            for (name, plan), chosen in zip(plans.items(), spec.selection.values(), strict=True)
        ],
        limit=None,
        repeats=1,
        seed=spec.seed,
        concurrency=8,
        status="complete",
    )


async def _ask_all(plan: RunPlan, spec: RunSpec) -> list[ItemRecord]:
    """Ask every item concurrently (scorers that run code do so in threads), in plan order."""
    regression = spec.regression
    planted = set(planted_item_ids(regression, spec.selection)) if regression else set()
    leaking = {name: _leaking(pack_plan, spec.leaked.get(name, 0)) for name, pack_plan in plan.packs.items()}
    servers: list[ReplayServer] = []
    calls = []
    for pack_plan, item, repeat in plan.todo(set()):
        name = pack_plan.pack.name
        wrong_for = regression.attacks if regression and name == regression.pack and item.id in planted else None
        server = ReplayServer(item.id, _stored_reply(item, wrong_for), leak=item.id in leaking[name])
        servers.append(server)
        calls.append(ask_item(pack_plan, item, repeat, plan.seed, cast(ChatClient, server)))
    records = list(await asyncio.gather(*calls))
    for server, record in zip(servers, records, strict=True):
        if record.error is not None or server.turns:
            raise AssertionError(f"{record.pack}/{record.item_id}: {record.error or 'stored turns left unasked'}")
    return records


def write_pack_run(runs_dir: Path, run_id: str, spec: RunSpec | None = None) -> Path:
    """Ask every selected item of the real packs with stored replies; write the run; return its path."""
    spec = spec or RunSpec()
    plans = pack_plans(spec.selection)
    unknown = set(spec.leaked) - set(plans)
    if unknown:
        raise ValueError(f"leaked names packs not in the selection: {sorted(unknown)}")
    plan = RunPlan(packs=dict(plans), seed=spec.seed)
    store = RunStore.create(runs_dir, run_id)
    manifest = _manifest(run_id, spec, plans)
    store.write_manifest(manifest)
    records = asyncio.run(_ask_all(plan, spec))
    for record in records:
        store.append_item(record)  # schema-checked on the way to disk, as a run appends them
    packs: dict[str, Pack] = {name: p.pack for name, p in plans.items()}
    results = build_results(run_id, packs, records, plan.expected(), preflight_ok=True, seed=spec.seed)
    store.write_results(results)
    return store.root
