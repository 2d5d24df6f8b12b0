"""How busy a vLLM server is, read from its Prometheus ``/metrics``.

The adaptive concurrency limit (:mod:`bench.run.concurrency`) needs three gauges: requests the
engine is running, requests queued behind them, and the fraction of KV-cache blocks in use; and one
counter, the tokens generated so far, to tell whether more requests in flight still pay. The
KV gauge was renamed with vLLM's V1 engine (``gpu_cache_usage_perc`` before, ``kv_cache_usage_perc``
since; both are fractions despite the name), so either is read. A server that exposes none of them
(not vLLM, or metrics turned off) is told apart from one scrape that failed.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import httpx

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
GENERATED = "vllm:generation_tokens_total"
_WANTED = (RUNNING, WAITING, *KV_USAGE, GENERATED)


@dataclass(frozen=True)
class ServerLoad:
    """One reading of the load, summed over the server's engines (data-parallel ranks)."""

    running: int
    waiting: int
    kv_usage: float | None  # fraction of KV-cache blocks in use, 0..1; None where not exposed
    generated: float | None = None  # tokens generated since the server started (a counter)


def parse_samples(text: str, names: Iterable[str] = _WANTED) -> dict[str, list[float]]:
    """The values of the named metrics in a Prometheus text exposition, one per label set.

    Only lines that start with a wanted name are parsed: a vLLM exposition holds hundreds of
    histogram buckets this reader never needs.
    """
    wanted = tuple(names)
    found: dict[str, list[float]] = {}
    for line in text.splitlines():
        if not line.startswith(wanted):
            continue
        name, rest = _split_name(line)
        if name not in wanted:
            continue  # a longer name with a wanted prefix (..._total, ..._created)
        fields = rest.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
        except ValueError:
            continue
        if math.isfinite(value):
            found.setdefault(name, []).append(value)
    return found


def _split_name(line: str) -> tuple[str, str]:
    """A sample line's metric name, and what follows its label set."""
    brace, space = line.find("{"), line.find(" ")
    if brace != -1 and (space == -1 or brace < space):
        return line[:brace], line[_label_end(line, brace) + 1:]
    return (line, "") if space == -1 else (line[:space], line[space:])


def _label_end(line: str, start: int) -> int:
    """Index of the ``}`` closing the label set opened at ``start`` (label values may hold braces)."""
    quoted = escaped = False
    for index in range(start + 1, len(line)):
        char = line[index]
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == "}" and not quoted:
            return index
    return len(line) - 1


def parse_load(text: str) -> ServerLoad | None:
    """The load a ``/metrics`` body reports, or None when it holds no vLLM request gauges."""
    samples = parse_samples(text)
    if RUNNING not in samples and WAITING not in samples:
        return None
    kv = next((samples[name] for name in KV_USAGE if name in samples), None)
    return ServerLoad(running=round(sum(samples.get(RUNNING, []))), waiting=round(sum(samples.get(WAITING, []))),
                      kv_usage=max(kv) if kv else None,
                      generated=sum(samples[GENERATED]) if GENERATED in samples else None)


def combine(loads: Sequence[ServerLoad]) -> ServerLoad:
    """Several replicas as one: requests add up, the fullest KV cache speaks for all."""
    kv = [load.kv_usage for load in loads if load.kv_usage is not None]
    counts = [load.generated for load in loads]
    return ServerLoad(running=sum(load.running for load in loads), waiting=sum(load.waiting for load in loads),
                      kv_usage=max(kv) if kv else None,
                      generated=None if any(c is None for c in counts) else sum(c for c in counts if c is not None))


class VllmMetrics:
    """Reads the combined load of a run's endpoints; one HTTP client for the whole run."""

    def __init__(self, roots: Sequence[str], *, timeout_s: float = 5.0, api_key: str | None = None) -> None:
        if not roots:
            raise ValueError("at least one server root is needed")
        self.roots = list(roots)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key and api_key != "EMPTY" else None
        self._http = httpx.AsyncClient(timeout=timeout_s, headers=headers)

    async def _one(self, root: str) -> ServerLoad:
        response = await self._http.get(f"{root}/metrics")
        if response.status_code != 200:
            raise LookupError(f"{root}/metrics answered HTTP {response.status_code}")
        load = parse_load(response.text)
        if load is None:
            raise LookupError(f"{root}/metrics has no {RUNNING} / {WAITING} gauges (not a vLLM server?)")
        return load

    async def probe(self) -> str | None:
        """None when every endpoint exposes vLLM's load gauges, else the line that says why not."""
        try:
            await self.read_or_raise()
        except LookupError as exc:
            return str(exc)
        except httpx.HTTPError as exc:
            return f"cannot read /metrics: {type(exc).__name__} ({exc})"
        return None

    async def read_or_raise(self) -> ServerLoad:
        return combine(await asyncio.gather(*(self._one(root) for root in self.roots)))

    async def read(self) -> ServerLoad | None:
        """The current load, or None when this scrape failed (a busy server may be slow to answer)."""
        try:
            return await self.read_or_raise()
        except (LookupError, httpx.HTTPError):
            return None

    async def close(self) -> None:
        await self._http.aclose()
