"""Ask every planned item, score it, and append its record as soon as it finishes.

All packs run concurrently against the same endpoints; the client bounds the number of requests
in flight. A finished item is on disk before the next one is counted, so a killed run resumes
from items.jsonl without asking any finished item again. A dead server (:class:`ServerDown`) is
not an item's error: it ends the run, and the items still in flight are asked again on resume.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from bench.client import ChatClient, RequestFailed, ServerDown, server_root
from bench.pack import Item, Pack, Sampling, Score
from bench.records import ItemRecord
from bench.run.budgets import PackBudget
from bench.run.concurrency import Concurrency, ConcurrencyControl, Gate
from bench.run.options import EvalOptions, field_default
from bench.run.store import RunStore
from bench.serve.health import scan_transcript
from bench.session import Session
from bench.transcript import Transcript


@dataclass
class PackPlan:
    """One pack's share of a run: the items to ask and the sampling to ask them with."""

    pack: Pack
    items: list[Item]
    sampling: Sampling
    budget: PackBudget | None = None  # how the sampling was worked out (None: taken as given)


@dataclass
class RunPlan:
    """The packs to ask, and the run-level settings the runner needs (defaults: :class:`EvalOptions`'s)."""

    packs: dict[str, PackPlan]
    repeats: int = field_default(EvalOptions, "repeats")
    seed: int = field_default(EvalOptions, "seed")
    concurrency: Concurrency = field_default(EvalOptions, "concurrency")
    # (pack, item id) -> why it is not asked: its prompt cannot fit the server's context
    unfit: dict[tuple[str, str], str] = field(default_factory=dict)

    def expected(self) -> dict[str, int]:
        return {name: len(plan.items) * self.repeats for name, plan in self.packs.items()}

    def todo(self, finished: set[tuple[str, str, int]]) -> list[tuple[PackPlan, Item, int]]:
        """Every (pack, item, repeat) not yet finished, interleaved across packs."""
        queues = [
            [(plan, item, rep) for rep in range(self.repeats) for item in plan.items if (name, item.id, rep) not in finished]
            for name, plan in self.packs.items()
        ]
        out: list[tuple[PackPlan, Item, int]] = []
        longest = max((len(q) for q in queues), default=0)
        for index in range(longest):
            out.extend(q[index] for q in queues if index < len(q))
        return out


@dataclass
class RunCounters:
    asked: int = 0  # items answered (their record has no request error)
    errors: int = 0  # items whose request failed for good (resumable)
    per_pack: dict[str, int] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def score_safely(pack: Pack, item: Item, record_transcript: Any) -> Score:
    """A scorer bug must not kill the run: it becomes an ``error`` score with the reason."""
    try:
        return pack.score(item, record_transcript)
    except Exception as exc:  # scorer bugs are reported per item, the run goes on
        return Score(value=0.0, passed=False, status="error", reason=f"scorer raised {type(exc).__name__}: {exc}")


def unasked_record(plan: PackPlan, item: Item, repeat: int, seed: int, why: str) -> ItemRecord:
    """The record of an item that is not sent at all (its prompt cannot fit), saying why."""
    now = _now()
    return ItemRecord(pack=plan.pack.name, pack_version=plan.pack.version, item_id=item.id, repeat=repeat,
                      seed=seed + repeat, transcript=Transcript(), not_asked=why,
                      started_at=now, finished_at=now, elapsed_s=0.0)


async def ask_item(plan: PackPlan, item: Item, repeat: int, seed: int, client: ChatClient) -> ItemRecord:
    """Run one item through its pack and score it; request failures become the record's error."""
    session = Session(client.chat, plan.sampling.model_copy(update={"seed": seed + repeat}))
    started_at, started = _now(), time.perf_counter()
    error: str | None = None
    try:
        await plan.pack.run_item(item, session)
    except RequestFailed as exc:
        error = str(exc)
    except ServerDown:
        raise
    except Exception as exc:  # a pack's run_item bug is this item's error, not the run's end
        error = f"pack {plan.pack.name} run_item raised {type(exc).__name__}: {exc}"
    transcript = session.transcript
    # Scoring may run code in the sandbox (seconds): keep it off the event loop so requests keep flowing.
    score = await asyncio.to_thread(score_safely, plan.pack, item, transcript) if error is None else None
    return ItemRecord(
        pack=plan.pack.name,
        pack_version=plan.pack.version,
        item_id=item.id,
        repeat=repeat,
        seed=seed + repeat,
        transcript=transcript,
        score=score,
        error=error,
        flags=scan_transcript(transcript),
        started_at=started_at,
        finished_at=_now(),
        elapsed_s=time.perf_counter() - started,
    )


def _progress(enabled: bool) -> Progress | None:
    if not enabled:
        return None
    return Progress(TextColumn("{task.description:<16}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False)


async def run_plan(
    plan: RunPlan,
    client: ChatClient,
    store: RunStore,
    *,
    show_progress: bool | None = None,
    on_record: Callable[[ItemRecord], None] | None = None,
    concurrency: ConcurrencyControl | None = None,
) -> RunCounters:
    """Ask every unfinished item; append each record as it completes.

    ``concurrency`` decides how many items are in flight (default: the plan's level, ``auto`` following
    the client's endpoints); pass one to read the levels it used afterwards.
    """
    finished = store.finished_keys()
    todo = plan.todo(finished)
    counters = RunCounters()
    show = sys.stderr.isatty() if show_progress is None else show_progress
    progress = _progress(show)
    tasks: dict[str, Any] = {}
    if progress is not None:
        for name, pack_plan in plan.packs.items():
            total = len(pack_plan.items) * plan.repeats
            done = sum(1 for key in finished if key[0] == name)
            tasks[name] = progress.add_task(name, total=total, completed=done)
        progress.start()
    control = concurrency or ConcurrencyControl(plan.concurrency, [server_root(e) for e in client.config.endpoints],
                                                api_key=client.config.api_key)

    async def one(gate: Gate, pack_plan: PackPlan, item: Item, repeat: int) -> None:
        unfit = plan.unfit.get((pack_plan.pack.name, item.id))
        if unfit is not None:
            record = unasked_record(pack_plan, item, repeat, plan.seed, unfit)
        else:
            async with gate:
                record = await ask_item(pack_plan, item, repeat, plan.seed, client)
        # Schema validation costs milliseconds: do it off the loop; the write itself stays on it,
        # so lines never interleave.
        store.append_line(await asyncio.to_thread(store.encode_item, record))
        counters.asked += int(record.error is None and record.not_asked is None)
        counters.errors += int(record.error is not None)
        counters.per_pack[record.pack] = counters.per_pack.get(record.pack, 0) + 1
        if progress is not None:
            progress.advance(tasks[record.pack])
        if on_record is not None:
            on_record(record)

    try:
        async with control.running(items=len(todo)) as gate:
            tasks_in_flight = [asyncio.ensure_future(one(gate, p, i, r)) for p, i, r in todo]
            try:
                await asyncio.gather(*tasks_in_flight)
            except BaseException:
                # One failure ends the run (a dead server): nothing else is sent, finished records stay.
                for task in tasks_in_flight:
                    task.cancel()
                await asyncio.gather(*tasks_in_flight, return_exceptions=True)
                raise
    finally:
        if progress is not None:
            progress.stop()
    return counters
