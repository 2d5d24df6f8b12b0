"""The harness's own cost per request, and its throughput against a bare async loop.

Builds the scripted model, serves it with vLLM, then sends the same requests twice:
  1. a bare loop: AsyncOpenAI + a semaphore, nothing else;
  2. bench's runner: Session, client with retries, scorer, health scan, schema-validated append.
Prints the per-request overhead (harness wall minus bare wall, per request, at concurrency 1)
and the throughput ratio at the chosen concurrency (target: within 1.1x of the bare loop).

    .venv/bin/python benchmarks/harness_overhead.py [--requests 200] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

from openai import AsyncOpenAI

from bench.client import ChatClient, ClientConfig
from bench.engine.toys.builders import build_scripted
from bench.pack import Item, Sampling
from bench.packs.smoke.pack import SmokePack
from bench.run.runner import PackPlan, RunPlan, run_plan
from bench.run.store import RunStore
from bench.serve.launch import LaunchConfig, serving
from bench.serve.model_info import choose_parsers, read_checkpoint
from bench.serve.options import ServeOptions

REPO = Path(__file__).resolve().parents[1]
SAMPLING = {"temperature": 0.0, "max_tokens": 64}


def items(n: int) -> list[Item]:
    return [Item(id=f"say-{i}", data={"kind": "say", "prompt": f"Say hello to visitor number {i}."}) for i in range(n)]


async def bare_loop(url: str, n: int, concurrency: int) -> float:
    client = AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0)
    gate = asyncio.Semaphore(concurrency)

    async def one(item: Item) -> None:
        async with gate:
            await client.chat.completions.create(
                model="scripted", messages=[{"role": "user", "content": item.data["prompt"]}], seed=0, **SAMPLING
            )

    started = time.perf_counter()
    await asyncio.gather(*(one(item) for item in items(n)))
    elapsed = time.perf_counter() - started
    await client.close()
    return elapsed


OUTSIDE_REQUESTS: list[float] = []  # per run at concurrency 1: wall minus the time spent inside requests, per item


async def harness_loop(url: str, n: int, concurrency: int, run_dir: Path) -> float:
    client = ChatClient(ClientConfig(endpoints=[url], model="scripted", concurrency=concurrency, timeout_s=300.0))
    plan = RunPlan(packs={"smoke": PackPlan(SmokePack(), items(n), Sampling(**SAMPLING))}, concurrency=concurrency)
    started = time.perf_counter()
    await run_plan(plan, client, RunStore(run_dir), show_progress=False)
    elapsed = time.perf_counter() - started
    await client.close()
    if concurrency == 1:
        in_requests = sum(ex.response.latency_s for r in RunStore(run_dir).read_items() for ex in r.transcript.exchanges)
        OUTSIDE_REQUESTS.append((elapsed - in_requests) / n)
    return elapsed


def measure(url: str, n: int, concurrency: int, rounds: int) -> tuple[list[float], list[float]]:
    bare, ours = [], []
    for _ in range(rounds):  # interleave so drift in the machine hits both alike
        bare.append(asyncio.run(bare_loop(url, n, concurrency)))
        with tempfile.TemporaryDirectory() as tmp:
            ours.append(asyncio.run(harness_loop(url, n, concurrency, Path(tmp))))
    return bare, ours


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    python = os.environ.get("BENCH_VLLM_PYTHON", str(REPO / ".vllm-venv" / "bin" / "python"))
    with tempfile.TemporaryDirectory() as tmp:
        model = build_scripted(Path(tmp) / "scripted")
        config = LaunchConfig(model=model, served_model_name="scripted", parsers=choose_parsers(read_checkpoint(model)),
                              serve=ServeOptions(python=python, max_model_len=1024), cache_root=Path(tmp) / "cache")
        with serving(config, Path(tmp) / "server.log") as server:
            url = server.base_url + "/v1"
            print(f"vLLM ready in {server.start_seconds:.1f} s")
            asyncio.run(bare_loop(url, 16, 4))  # warm up
            bare1, ours1 = measure(url, args.requests // 4, 1, args.rounds)
            bare_c, ours_c = measure(url, args.requests, args.concurrency, args.rounds)
    n1 = args.requests // 4
    per_request_ms = (statistics.median(ours1) - statistics.median(bare1)) / n1 * 1000
    print(f"concurrency 1, {n1} requests: bare {statistics.median(bare1):.2f} s, bench {statistics.median(ours1):.2f} s "
          f"(min/median/max bench {min(ours1):.2f}/{statistics.median(ours1):.2f}/{max(ours1):.2f})")
    print(f"harness overhead per request, bench wall minus bare wall: {per_request_ms:.2f} ms (noise-bound)")
    outside = sorted(OUTSIDE_REQUESTS)
    print(f"harness overhead per request, bench wall minus time inside requests (session, scoring, health scan, "
          f"validated append): min/median/max {outside[0] * 1000:.2f}/{statistics.median(outside) * 1000:.2f}/"
          f"{outside[-1] * 1000:.2f} ms")
    ratio = statistics.median(ours_c) / statistics.median(bare_c)
    print(f"concurrency {args.concurrency}, {args.requests} requests: bare {args.requests / statistics.median(bare_c):.1f} req/s, "
          f"bench {args.requests / statistics.median(ours_c):.1f} req/s")
    print(f"bench wall time / bare loop wall time: {ratio:.3f}x (target <= 1.10x)")


if __name__ == "__main__":
    main()
