"""What divergence measurement costs: its teacher-forced pass against the server's raw prefill.

Serves a checkpoint (the scripted toy by default, or --model DIR, with vLLM's prefix caching off so
no pass reuses another's prompts; or --endpoint URL), stores the base's reference on the shipped
texts, then alternates, --rounds times:
  1. a bare loop: the same token ids to /v1/completions, max_tokens 1, no logprobs (raw prefill);
  2. the same bare loop asking for top-k prompt logprobs (what the server itself pays for them);
  3. the divergence pass of ``bench diverge`` measuring the model against its own reference
     (those logprobs plus bench's parsing, comparison and bookkeeping).
Prints prompt tokens per second for each and their ratio to raw prefill, plus the whole
measurement's wall time (tokenizer check and drift included).

    .venv/bin/python benchmarks/divergence_throughput.py [--tier quick] [--max-text-tokens 512] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.divergence.collect import collect_reference, measure_candidate
from bench.divergence.endpoint import Endpoint
from bench.divergence.options import DivergenceOptions
from bench.divergence.reference import load_reference, write_reference
from bench.divergence.runner import serve_or_connect
from bench.serve.options import ServeOptions

REPO = Path(__file__).resolve().parents[1]


async def bare_prefill(url: str, model: str, prompts: list[list[int]], concurrency: int, logprobs: int = 0) -> float:
    """Seconds to send every prompt once, as plainly as an OpenAI-compatible client can (with
    ``logprobs`` > 0: asking for that many prompt logprobs, answers read but not parsed)."""
    gate = asyncio.Semaphore(concurrency)
    async with httpx.AsyncClient(timeout=600.0) as client:

        async def one(ids: list[int]) -> None:
            async with gate:
                body = {"model": model, "prompt": ids, "max_tokens": 1, "temperature": 0.0}
                if logprobs:
                    body["prompt_logprobs"] = logprobs
                response = await client.post(f"{url}/completions", json=body)
                response.raise_for_status()

        started = time.perf_counter()
        await asyncio.gather(*(one(ids) for ids in prompts))
        return time.perf_counter() - started


async def main(args: argparse.Namespace) -> None:
    options = DivergenceOptions(tier=args.tier, limit=args.limit, max_text_tokens=args.max_text_tokens,
                                generate=args.generate, max_new_tokens=32, concurrency=args.concurrency)
    with tempfile.TemporaryDirectory(prefix="divergence-bench-") as scratch:
        model = args.model
        if model is None and args.endpoint is None:
            from bench.engine.toys.builders import build_scripted

            model = str(build_scripted(Path(scratch) / "scripted"))
        serve = ServeOptions(max_model_len=args.max_text_tokens + 64, reasoning_parser="none", tool_call_parser="none",
                             args=["--no-enable-prefix-caching"])
        with serve_or_connect(model=model, endpoint=args.endpoint, served_model_name=None, serve=serve,
                              folder=Path(scratch) / "server", echo=print) as served:
            endpoint = Endpoint(served.url, served.model, concurrency=args.concurrency)
            started = time.perf_counter()
            meta, measured = await collect_reference(endpoint, options, echo=print)
            write_reference(Path(scratch) / "ref", meta, measured)
            reference = load_reference(Path(scratch) / "ref")
            print(f"reference: {len(measured)} texts, {meta.tokens} tokens, top-{meta.k}, "
                  f"{time.perf_counter() - started:.1f} s (generation included)")
            prompts = [m.token_ids for m in reference.measured]
            tokens = sum(len(p) for p in prompts)
            await bare_prefill(served.url, served.model, prompts[:4], args.concurrency)  # warm-up
            raw, with_logprobs, diverged, walls = [], [], [], []
            for _ in range(args.rounds):
                raw.append(tokens / await bare_prefill(served.url, served.model, prompts, args.concurrency))
                with_logprobs.append(tokens / await bare_prefill(served.url, served.model, prompts, args.concurrency, meta.k))
                started = time.perf_counter()
                summary, _, _ = await measure_candidate(endpoint, reference, options, echo=lambda line: None)
                walls.append(time.perf_counter() - started)
                diverged.append(summary.tokens_per_s or 0.0)
            await endpoint.close()
    raw_rate, div_rate = statistics.median(raw), statistics.median(diverged)
    print(f"model {served.model}: {len(prompts)} texts, {tokens} prompt tokens, concurrency {args.concurrency}, "
          f"{args.rounds} rounds (medians)")
    bare_rate = statistics.median(with_logprobs)
    print(f"  raw prefill (bare loop, max_tokens 1):      {raw_rate:8.0f} tokens/s")
    print(f"  bare loop asking top-{meta.k} prompt logprobs:  {bare_rate:8.0f} tokens/s  ({bare_rate / raw_rate:.2f}x raw)")
    print(f"  divergence pass (top-{meta.k} prompt logprobs): {div_rate:8.0f} tokens/s  ({div_rate / raw_rate:.2f}x raw)")
    print(f"  whole measurement (tokenizer check, logprobs, compare, {len(meta.generations)} continuations): "
          f"{statistics.median(walls):.1f} s")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", help="checkpoint to serve (default: the scripted toy)")
    parser.add_argument("--endpoint", help="a running server instead (its prefix cache may flatter the bare loop)")
    parser.add_argument("--tier", default="quick", choices=["quick", "full"])
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--max-text-tokens", type=int, default=512)
    parser.add_argument("--generate", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    asyncio.run(main(parser.parse_args()))
