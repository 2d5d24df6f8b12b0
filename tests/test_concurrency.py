"""The concurrency level: the ``auto`` rule on scripted readings, the gate it moves, the record it leaves,
the fallback for a server without vLLM's gauges, and the gauges of a real vLLM server."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from bench.run.concurrency import (
    AutoSettings,
    ConcurrencyControl,
    Controller,
    Gate,
    LevelLog,
    concurrency_value,
    tokens_per_second,
)
from bench.serve.metrics import ServerLoad, VllmMetrics, parse_load

ROOM = ServerLoad(running=4, waiting=0, kv_usage=0.2)
QUEUED = ServerLoad(running=40, waiting=12, kv_usage=0.5)
KV_FULL = ServerLoad(running=40, waiting=0, kv_usage=0.95)


FAST = AutoSettings(settle=0, window=1)  # every reading is a judgement


def drive(controller: Controller, level: int, readings: list, *, binding: bool = True) -> list[int]:
    """The levels after each reading, with every allowed item in flight (the level binds).

    A reading is a load, or (load, generated tokens/s).
    """
    levels = []
    for reading in readings:
        load, rate = reading if isinstance(reading, tuple) else (reading, None)
        level = controller.next_level(level, load, in_flight=level, binding=binding, rate=rate)
        levels.append(level)
    return levels


def test_auto_doubles_while_it_pays_up_to_the_ceiling() -> None:
    controller = Controller(FAST, ceiling=100)
    rates = [100, 200, 400, 800, 1600, 2400, 2400]
    assert drive(controller, 4, [(ROOM, r) for r in rates]) == [8, 16, 32, 64, 100, 100, 100]


def test_a_doubling_that_does_not_pay_settles_halfway_at_the_knee() -> None:
    # A server short of CPU: from 16 items on, no more tokens, though nothing queues.
    controller = Controller(FAST, ceiling=256)
    assert drive(controller, 4, [(ROOM, 100), (ROOM, 190), (ROOM, 200), (ROOM, 190), (ROOM, 195)]) == [8, 16, 12, 12, 12]
    assert (controller.knee, controller.probing) == (12, False)


def test_after_pressure_a_step_that_lowers_the_rate_is_undone() -> None:
    controller = Controller(FAST, ceiling=256)
    queued = (QUEUED, 1000)
    assert drive(controller, 64, [queued, queued, (ROOM, 1000), (ROOM, 800), (ROOM, 1000)]) == [64, 48, 54, 48, 48]
    assert controller.knee == 48


def test_a_level_is_judged_after_it_settles() -> None:
    controller = Controller(AutoSettings(settle=1, window=2), ceiling=256)
    assert drive(controller, 4, [(ROOM, 100)] * 3 + [(ROOM, 300)] * 3) == [4, 4, 8, 8, 8, 16]


def test_tokens_per_second_from_the_counter() -> None:
    counted = None
    rate, counted = tokens_per_second(counted, ServerLoad(0, 0, None, generated=100.0), now=10.0)
    assert rate is None and counted == (10.0, 100.0)
    rate, counted = tokens_per_second(counted, ServerLoad(0, 0, None, generated=400.0), now=10.5)
    assert rate == 600.0
    assert tokens_per_second(counted, None, now=11.0) == (None, counted)  # a failed reading keeps the last count
    assert tokens_per_second(counted, ServerLoad(0, 0, None, generated=5.0), now=11.0)[0] is None  # restarted


def test_a_waiting_queue_twice_in_a_row_backs_off_then_growth_is_gentle() -> None:
    controller = Controller(AutoSettings(), ceiling=256)
    # One reading with a queue is a burst of prefills; the second in a row is pressure.
    assert drive(controller, 64, [QUEUED, ROOM, QUEUED, QUEUED]) == [64, 128, 128, 96]
    # After the first pressure the level grows by an eighth, not by doubling.
    assert drive(controller, 96, [ROOM, ROOM]) == [108, 121]


def test_a_nearly_full_kv_cache_backs_off_at_once_down_to_the_floor() -> None:
    controller = Controller(AutoSettings(floor=2), ceiling=256)
    assert drive(controller, 8, [KV_FULL] * 6) == [6, 4, 3, 2, 2, 2]


def test_no_second_back_off_while_the_first_drains() -> None:
    controller = Controller(AutoSettings(), ceiling=256)
    assert controller.next_level(100, KV_FULL, in_flight=100, binding=True) == 75
    assert controller.next_level(75, KV_FULL, in_flight=90, binding=True) == 75  # 15 items still above the level
    assert controller.next_level(75, KV_FULL, in_flight=75, binding=True) == 56


def test_the_level_holds_when_it_does_not_bind_or_a_reading_failed() -> None:
    controller = Controller(AutoSettings(), ceiling=256)
    assert drive(controller, 16, [ROOM, ROOM], binding=False) == [16, 16]
    assert drive(controller, 16, [None, None]) == [16, 16]
    assert drive(controller, 16, [ROOM]) == [32]


def test_level_log_means_over_time_and_thins_its_series() -> None:
    now = [0.0]
    log = LevelLog(4, clock=lambda: now[0], cap=8)
    now[0] = 1.0
    log.note(8)
    now[0] = 4.0
    log.note(8)  # unchanged: not a change
    log.note(2)
    now[0] = 5.0
    assert log.mean() == pytest.approx((4 * 1 + 8 * 3 + 2 * 1) / 5)
    assert (log.lowest, log.highest, log.raised, log.lowered) == (2, 8, 1, 1)
    assert log.series == [(0.0, 4), (1.0, 8), (4.0, 2)]
    for step in range(20):
        now[0] = 6.0 + step
        log.note(10 + step)
    assert len(log.series) <= 8 and log.series[0] == (0.0, 4) and log.series[-1][0] > 10


def test_gate_lowered_lets_items_finish_and_admits_waiters_in_order() -> None:
    async def scenario() -> tuple[list[str], list[int]]:
        gate = Gate(3)
        order: list[str] = []
        peaks: list[int] = []
        release = asyncio.Event()

        async def item(name: str) -> None:
            async with gate:
                order.append(name)
                peaks.append(gate.in_flight)
                await release.wait()

        tasks = [asyncio.ensure_future(item(f"i{n}")) for n in range(6)]
        await asyncio.sleep(0.01)
        assert gate.in_flight == 3 and gate.blocked
        gate.set_limit(1)  # nothing in flight is interrupted
        assert gate.in_flight == 3
        release.set()
        await asyncio.gather(*tasks)
        return order, peaks

    order, peaks = asyncio.run(scenario())
    assert order == [f"i{n}" for n in range(6)]
    assert peaks[:3] == [1, 2, 3] and max(peaks[3:]) == 1


def test_a_cancelled_waiter_takes_no_slot() -> None:
    async def scenario() -> int:
        gate = Gate(1)
        await gate.__aenter__()
        waiter = asyncio.ensure_future(gate.__aenter__())
        await asyncio.sleep(0)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await gate.__aexit__()
        async with gate:
            return gate.in_flight

    assert asyncio.run(scenario()) == 1


class ScriptedLoad:
    """A load source that answers from a script, then repeats its last reading."""

    def __init__(self, readings: list[ServerLoad | None]) -> None:
        self.readings = readings
        self.reads = 0

    async def probe(self) -> str | None:
        return None

    async def read(self) -> ServerLoad | None:
        self.reads += 1
        return self.readings[min(self.reads, len(self.readings)) - 1]

    async def close(self) -> None:
        return None


def test_auto_follows_readings_while_items_run_and_records_the_levels() -> None:
    settings = AutoSettings(interval_s=0.005, start=4)
    source = ScriptedLoad([ROOM] * 4 + [KV_FULL, None])  # then every reading fails: the level holds
    control = ConcurrencyControl("auto", [], settings=settings, source=source)
    seen: list[int] = []

    async def run() -> None:
        async with control.running(items=200) as gate:
            async def item() -> None:
                async with gate:
                    seen.append(gate.in_flight)
                    await asyncio.sleep(0.02)

            await asyncio.gather(*(item() for _ in range(200)))

    asyncio.run(run())
    record = control.record()
    assert record is not None and record.mode == "auto" and record.asked == "auto"
    assert (record.start, record.highest, record.final, record.raised, record.lowered) == (4, 64, 48, 4, 1)
    assert max(seen) == 64 and record.samples == source.reads and record.failed_samples == source.reads - 5
    assert record.series[0] == (0.0, 4) and record.lowest == 4
    assert 4 < record.mean < 64


def test_auto_is_bounded_by_the_items_left() -> None:
    control = ConcurrencyControl("auto", [], settings=AutoSettings(interval_s=0.005), source=ScriptedLoad([ROOM]))

    async def run() -> None:
        async with control.running(items=3) as gate:
            async def item() -> None:
                async with gate:
                    await asyncio.sleep(0.05)

            await asyncio.gather(item(), item(), item())
            assert (gate.limit, control.samples > 2) == (3, True)  # the level bound, and room was reported

    asyncio.run(run())


class NotVllm(BaseHTTPRequestHandler):
    """A real HTTP server that is not vLLM: it has no /metrics."""

    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        self.send_response(404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def not_vllm() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), NotVllm)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_server_without_metrics_gets_a_fixed_level_and_the_reason(not_vllm: str) -> None:
    said: list[str] = []
    control = ConcurrencyControl("auto", [not_vllm], echo=said.append)

    async def run() -> int:
        async with control.running(items=50) as gate:
            return gate.limit

    assert asyncio.run(run()) == AutoSettings().fallback
    record = control.record()
    assert record is not None and record.mode == "fixed" and record.asked == "auto"
    assert f"{not_vllm}/metrics answered HTTP 404" in record.reason
    assert said == [f"concurrency: fixed at 8 ({record.reason})"]


def test_a_fixed_level_is_kept_as_given() -> None:
    control = ConcurrencyControl(12, ["http://127.0.0.1:9"])  # never contacted

    async def run() -> int:
        async with control.running(items=3) as gate:
            return gate.limit

    assert asyncio.run(run()) == 12
    record = control.record()
    assert record is not None and (record.mode, record.mean, record.samples) == ("fixed", 12.0, 0)


def test_concurrency_values_and_flag_errors() -> None:
    from conftest import bench_cmd
    from pydantic_core import PydanticCustomError

    from bench.run.options import EvalOptions

    assert EvalOptions().concurrency == "auto"
    assert (concurrency_value("AUTO"), concurrency_value("16"), concurrency_value(3)) == ("auto", 16, 3)
    for bad in ("0", 0, "lots", 2.5, True):
        with pytest.raises(PydanticCustomError):
            concurrency_value(bad)
    result = subprocess.run([*bench_cmd(), "run", "--endpoint", "x", "--concurrency", "lots"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == "error: --concurrency 'lots': input should be 'auto' or a whole number of requests >= 1"


def test_parse_load_reads_labelled_gauges_of_several_engines() -> None:
    text = "\n".join([
        "# HELP vllm:num_requests_running Number of requests in model execution batches.",
        "# TYPE vllm:num_requests_running gauge",
        'vllm:num_requests_running{engine="0",model_name="m"} 3.0',
        'vllm:num_requests_running{engine="1",model_name="m {odd}"} 2.0',
        'vllm:num_requests_waiting{engine="0",model_name="m"} 1.0',
        'vllm:num_requests_waiting_by_reason{engine="0",model_name="m",reason="capacity"} 9.0',
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"} 0.25',
        'vllm:kv_cache_usage_perc{engine="1",model_name="m"} 0.5',
        'vllm:generation_tokens_total{engine="0",model_name="m"} 120.0',
        'vllm:generation_tokens_total{engine="1",model_name="m"} 30.0',
        'vllm:generation_tokens_created{engine="0",model_name="m"} 1.7e+09',
    ])
    assert parse_load(text) == ServerLoad(running=5, waiting=1, kv_usage=0.5, generated=150.0)
    assert parse_load("process_cpu_seconds_total 3.0\n") is None


@pytest.mark.vllm
def test_real_vllm_metrics_show_requests_in_flight_then_none(scripted_server: str) -> None:
    """The gauge names are vLLM's own: read while 24 requests are in flight, then at rest."""

    async def scenario() -> tuple[list[ServerLoad], ServerLoad]:
        metrics = VllmMetrics([scripted_server])
        body = {"model": "scripted", "max_tokens": 64, "temperature": 0.0,
                "messages": [{"role": "user", "content": "Say hello to visitor number 7."}]}
        async with httpx.AsyncClient(timeout=300) as http:
            sends = [asyncio.ensure_future(http.post(f"{scripted_server}/v1/chat/completions", json=body)) for _ in range(24)]
            busy: list[ServerLoad] = []
            while not all(send.done() for send in sends):
                load = await metrics.read()
                if load is not None:
                    busy.append(load)
                await asyncio.sleep(0.05)
            assert all(send.result().status_code == 200 for send in sends)
        deadline = time.monotonic() + 10
        rest = await metrics.read()
        while (rest is None or rest.running or rest.waiting) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)  # the gauges follow the engine's last step
            rest = await metrics.read()
        assert await metrics.probe() is None
        await metrics.close()
        assert rest is not None
        return busy, rest

    busy, rest = asyncio.run(scenario())
    assert max(load.running + load.waiting for load in busy) > 1
    assert all(load.kv_usage is not None and 0 <= load.kv_usage <= 1 for load in busy)
    assert max(load.kv_usage or 0 for load in busy) > 0
    assert (rest.running, rest.waiting) == (0, 0)
    assert busy[0].generated is not None and rest.generated is not None
    assert rest.generated - busy[0].generated >= 20  # the 24 answers' tokens, counted by the server


@pytest.mark.vllm
def test_auto_changes_when_items_are_sent_not_what_is_sent(scripted_server: str, tmp_path: Path) -> None:
    """The same plan asked under ``auto`` and at a fixed 1: the same requests, seeds and answers."""
    from bench.client import ChatClient, ClientConfig
    from bench.run.concurrency import client_limit
    from bench.run.evaluation import build_plan
    from bench.run.options import EvalOptions
    from bench.run.runner import run_plan
    from bench.run.store import RunStore

    def ask(setting: int | str, folder: str) -> tuple[dict, ConcurrencyControl]:
        plan = build_plan(EvalOptions(packs="smoke", repeats=2, concurrency=setting))
        control = ConcurrencyControl(plan.concurrency, [scripted_server], settings=AutoSettings(interval_s=0.1))

        async def run() -> None:
            client = ChatClient(ClientConfig(endpoints=[scripted_server + "/v1"], model="scripted",
                                             concurrency=client_limit(plan.concurrency), timeout_s=300.0))
            try:
                await run_plan(plan, client, RunStore(tmp_path / folder), show_progress=False, concurrency=control)
            finally:
                await client.close()

        (tmp_path / folder).mkdir()
        asyncio.run(run())
        records = RunStore(tmp_path / folder).read_items()
        return {(r.pack, r.item_id, r.repeat): (r.seed, [(ex.request.messages, ex.request.sampling, ex.response.content,
                                                          ex.response.reasoning, ex.response.tool_calls)
                                                         for ex in r.transcript.exchanges], r.score)
                for r in records}, control

    auto, auto_control = ask("auto", "auto")
    one, _ = ask(1, "one")
    assert len(auto) == 18 and auto == one
    record = auto_control.record()
    assert record is not None and record.mode == "auto" and record.reason == ""
