"""How many items a run keeps in flight: a fixed number, or ``auto``, set from the server's own load.

A GPU vLLM server batches hundreds of sequences, so a fixed 8 leaves it mostly idle; a fixed 256
overfills a small server's KV cache (vLLM then preempts and recomputes), and on a server short of CPU
it only adds overhead. ``auto`` starts low and follows the server's own metrics
(:mod:`bench.serve.metrics`), read in the background: while nothing queues, the KV cache has room,
the level is actually reached and the server's generated tokens per second keep rising, it doubles
the level; when requests keep queueing or the KV cache nears full it backs off by a quarter, and a
doubling that did not pay is undone (:class:`Controller` has the details). A server without vLLM's
``/metrics`` gets a fixed level, and the record says why.

The level decides only when an item is sent, never what is sent: every request carries its own
seed (set by the runner), so the records do not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from pydantic_core import PydanticCustomError

from bench.records import ConcurrencyLevels
from bench.serve.metrics import ServerLoad, VllmMetrics

AUTO: Literal["auto"] = "auto"
Concurrency = int | Literal["auto"]


def concurrency_value(value: Any) -> Concurrency:
    """``auto`` or a whole number >= 1, from a flag's text, a plan's YAML or a stored manifest."""
    if isinstance(value, str):
        text = value.strip().lower()
        if text == AUTO:
            return AUTO
        if text.lstrip("-").isdigit():
            value = int(text)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise PydanticCustomError("greater_than_equal", "Input should be greater than or equal to 1", {"ge": 1})
        return value
    raise PydanticCustomError("concurrency", "Input should be 'auto' or a whole number of requests >= 1")


@dataclass(frozen=True)
class AutoSettings:
    """The knobs of ``auto`` (defaults fit both a CPU test server and a GPU server)."""

    start: int = 8  # the fixed level bench used before auto: never a slower start than that
    floor: int = 1
    ceiling: int = 256  # also bounded by the number of items left to ask
    interval_s: float = 0.5  # between two readings of /metrics
    kv_high: float = 0.9  # KV-cache use at or above this is pressure
    backoff: float = 0.75  # the level is multiplied by this under pressure
    growth: float = 0.125  # after the first pressure or knee, the level grows by this fraction per judgement
    min_gain: float = 0.1  # a doubling must raise the generated tokens/s by this much to be kept
    settle: int = 1  # readings after a change that are not judged (the new items are still in prefill)
    window: int = 2  # readings whose token rates judge a level
    fallback: int = 8  # the fixed level for a server without vLLM's gauges


AUTO_SETTINGS = AutoSettings()


def client_limit(setting: Concurrency, settings: AutoSettings = AUTO_SETTINGS) -> int:
    """Requests the HTTP client may have in flight: the gate below it decides under ``auto``."""
    return setting if isinstance(setting, int) else settings.ceiling


class Gate:
    """An async gate whose limit may change while items hold it; waiters are let in first come, first served.

    Lowering the limit never interrupts an item: the level falls as items finish.
    """

    def __init__(self, limit: int) -> None:
        self._limit = max(1, limit)
        self.in_flight = 0
        self.blocked = False  # an item had to wait since this was last cleared: the limit binds
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def limit(self) -> int:
        return self._limit

    def set_limit(self, limit: int) -> None:
        self._limit = max(1, limit)
        self._wake()

    async def __aenter__(self) -> None:
        if self.in_flight < self._limit and not self._waiters:
            self.in_flight += 1
            return
        self.blocked = True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # the slot was handed over just as the wait was cancelled
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.in_flight -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self._limit:
            waiter = self._waiters.popleft()
            if not waiter.done():  # a cancelled waiter takes no slot
                waiter.set_result(None)
                self.in_flight += 1


class Controller:
    """The ``auto`` rule, as a pure state machine: readings in, levels out, no I/O.

    Pressure is a waiting queue in two readings in a row (one may be a burst of prefills that the
    next engine step absorbs: it only stops growth) or KV-cache use at ``kv_high``. Under pressure the
    level backs off, but not again while the items of the last back-off are still draining.

    Without pressure the level grows only when it binds (items waited for it: room that no item uses
    tells nothing) and only while growing pays. The server's generated tokens per second judge each
    level: after ``settle`` readings (the new items are still in prefill), over ``window`` readings. A
    doubling that raises the rate by less than ``min_gain`` went past the knee: the level settles
    halfway back, and that is the most it will use. Past the knee a server short of CPU (a CPU build,
    a busy API process) serves fewer tokens, while its queue and KV cache still look empty. After the
    first pressure or knee, growth is by ``growth`` of the level, up to the knee, and a step that
    lowers the rate by ``min_gain`` is undone. A server that reports no token counter is judged by
    pressure alone.
    """

    def __init__(self, settings: AutoSettings, ceiling: int) -> None:
        self.settings = settings
        self.ceiling = max(settings.floor, ceiling)
        self.probing = True  # doubling until the first pressure or knee
        self.knee: int | None = None  # the level past which more items served no more tokens
        self._queued_last = False  # the previous reading showed a waiting queue
        self._seen = 0  # readings taken at this level (while it binds)
        self._rates: deque[float] = deque(maxlen=max(1, settings.window))
        self._before: tuple[int, float] | None = None  # the level before the last raise, and its rate

    def _pressure(self, load: ServerLoad) -> bool:
        queued_twice = load.waiting > 0 and self._queued_last
        self._queued_last = load.waiting > 0
        kv_full = load.kv_usage is not None and load.kv_usage >= self.settings.kv_high
        return kv_full or queued_twice

    def _move(self, level: int, new: int, before: tuple[int, float] | None = None) -> int:
        if new != level:
            self._seen = 0
            self._rates.clear()
            self._before = before
        return new

    def _measured(self, rate: float | None) -> tuple[bool, float | None]:
        """Whether this level has been watched long enough, and its token rate (None: not reported)."""
        if rate is None:
            return True, None
        self._seen += 1
        if self._seen <= self.settings.settle:
            return False, None
        self._rates.append(rate)
        return len(self._rates) == self._rates.maxlen, sum(self._rates) / len(self._rates)

    def next_level(self, level: int, load: ServerLoad | None, in_flight: int, binding: bool,
                   rate: float | None = None) -> int:
        """The level after one reading (None: the scrape failed, so the level holds); ``rate``: tokens/s."""
        if load is None:
            return level
        if self._pressure(load):
            self.probing = False
            self._seen = 0
            self._rates.clear()
            if in_flight > level:
                return level  # the last back-off has not taken effect yet
            lowered = min(level - 1, int(level * self.settings.backoff))
            return self._move(level, max(self.settings.floor, lowered))
        if not binding or load.waiting > 0:
            return level
        judged, measured = self._measured(rate)
        if not judged:
            return level
        before, self._before = self._before, None  # each raise is judged once
        if measured is not None and before is not None:
            gain = measured / before[1] - 1 if before[1] > 0 else float("inf")
            if self.probing and gain < self.settings.min_gain:
                # The knee lies between the two levels, and one window's rate is noisy: settle halfway.
                self.probing, self.knee = False, (before[0] + level) // 2
                return self._move(level, self.knee)
            if not self.probing and gain < -self.settings.min_gain:
                self.knee = before[0]
                return self._move(level, before[0])
        cap = min(self.ceiling, self.knee or self.ceiling)
        step = level if self.probing else max(1, int(level * self.settings.growth))
        raised = self._move(level, min(cap, level + step), None if measured is None else (level, measured))
        if raised == level and self.probing and measured is not None:
            self.probing = False  # at the ceiling: nothing left to probe
        return raised


def tokens_per_second(counted: tuple[float, float] | None, load: ServerLoad | None,
                      now: float) -> tuple[float | None, tuple[float, float] | None]:
    """The server's generated tokens per second since the last reading, and this reading's count."""
    if load is None or load.generated is None:
        return None, counted
    current = (now, load.generated)
    if counted is None or now <= counted[0] or load.generated < counted[1]:  # first, or the server restarted
        return None, current
    return (load.generated - counted[1]) / (now - counted[0]), current


class LevelLog:
    """The levels a run used over time, summarized for the manifest (changes thinned to ``cap``)."""

    def __init__(self, level: int, clock: Callable[[], float] = time.monotonic, cap: int = 100) -> None:
        self._clock = clock
        self._started = self._last_at = clock()
        self.start = self.level = self.lowest = self.highest = level
        self._weighted = 0.0
        self.series: list[tuple[float, int]] = [(0.0, level)]
        self._cap = cap
        self.raised = self.lowered = 0

    def note(self, level: int) -> None:
        if level == self.level:
            return
        now = self._clock()
        self._weighted += self.level * (now - self._last_at)
        self.raised += int(level > self.level)
        self.lowered += int(level < self.level)
        self.level, self._last_at = level, now
        self.lowest, self.highest = min(self.lowest, level), max(self.highest, level)
        self.series.append((round(now - self._started, 2), level))
        if len(self.series) > self._cap:
            self.series = self.series[::2]  # keep the whole run's shape at half the detail

    def mean(self) -> float:
        """The level averaged over time (what the run sustained, not how often it changed)."""
        now = self._clock()
        span = now - self._started
        if span <= 0:
            return float(self.level)
        return (self._weighted + self.level * (now - self._last_at)) / span


class LoadSource(Protocol):
    """Where ``auto`` reads the server's load: :class:`VllmMetrics` for a real server."""

    async def probe(self) -> str | None: ...

    async def read(self) -> ServerLoad | None: ...

    async def close(self) -> None: ...


class ConcurrencyControl:
    """A run's concurrency: the gate items pass, the background reader under ``auto``, and the record."""

    def __init__(self, setting: Concurrency, roots: Sequence[str], *, settings: AutoSettings = AUTO_SETTINGS,
                 api_key: str | None = None, echo: Callable[[str], Any] | None = None,
                 source: LoadSource | None = None) -> None:
        self.setting = setting
        self.settings = settings
        self._roots = list(roots)
        self._api_key = api_key
        self._echo = echo
        self._source = source
        self._log: LevelLog | None = None
        self._mode: Literal["fixed", "auto"] = "fixed"
        self._reason = ""
        self.samples = self.failed_samples = 0

    @contextlib.asynccontextmanager
    async def running(self, items: int) -> AsyncIterator[Gate]:
        """The gate for ``items`` items; under ``auto`` a reader adjusts it until the block ends."""
        if isinstance(self.setting, int):
            yield self._fixed(self.setting, "")
            return
        source = self._source or VllmMetrics(self._roots, api_key=self._api_key)
        try:
            reason = await source.probe()
            if reason is not None:
                yield self._fixed(self.settings.fallback, f"auto needs vLLM's /metrics: {reason}")
                return
            ceiling = min(self.settings.ceiling, max(1, items))
            gate = Gate(min(self.settings.start, ceiling))
            self._mode, self._log = "auto", LevelLog(gate.limit)
            self._say(f"concurrency: auto, from {gate.limit} up to {ceiling}, following the server's /metrics")
            reader = asyncio.ensure_future(self._follow(gate, source, Controller(self.settings, ceiling)))
            try:
                yield gate
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        finally:
            if self._source is None:
                await source.close()

    def _fixed(self, level: int, reason: str) -> Gate:
        self._mode, self._reason, self._log = "fixed", reason, LevelLog(level)
        if reason:
            self._say(f"concurrency: fixed at {level} ({reason})")
        return Gate(level)

    def _say(self, line: str) -> None:
        if self._echo is not None:
            self._echo(line)

    async def _follow(self, gate: Gate, source: LoadSource, controller: Controller) -> None:
        assert self._log is not None
        counted: tuple[float, float] | None = None  # (when, generated tokens) at the last reading
        while True:
            await asyncio.sleep(self.settings.interval_s)
            try:
                load = await source.read()
            except Exception:  # a reader bug must not end the run: the level holds
                load = None
            rate, counted = tokens_per_second(counted, load, time.monotonic())
            self.samples += 1
            self.failed_samples += int(load is None)
            binding = gate.blocked or gate.in_flight >= gate.limit
            gate.blocked = False
            level = controller.next_level(gate.limit, load, gate.in_flight, binding, rate)
            if level != gate.limit:
                gate.set_limit(level)
                self._log.note(level)

    def summary(self) -> str:
        """One line on the levels used, for the console."""
        record = self.record()
        if record is None:
            return "concurrency: no item was asked"
        if record.mode == "fixed":
            return f"concurrency: fixed at {record.start}"
        return (f"concurrency: auto kept {record.lowest} to {record.highest} items in flight (mean {record.mean:g}, "
                f"final {record.final}; {record.samples} readings of /metrics)")

    def record(self) -> ConcurrencyLevels | None:
        """What the run used, for the manifest (None before :meth:`running` was entered)."""
        log = self._log
        if log is None:
            return None
        return ConcurrencyLevels(
            asked=self.setting, mode=self._mode, reason=self._reason, start=log.start, final=log.level,
            lowest=log.lowest, highest=log.highest, mean=round(log.mean(), 2), samples=self.samples,
            failed_samples=self.failed_samples, raised=log.raised, lowered=log.lowered,
            series=list(log.series),
        )
