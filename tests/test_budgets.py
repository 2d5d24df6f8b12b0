"""Token budgets and sampling from the model: a long thinker answers under the defaults, where a
budget without thinking room cuts it off; every value is recorded with where it came from."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import bench_cmd, vllm_python

from bench.errors import UserError
from bench.pack import Sampling
from bench.run.budgets import (
    CPU_CONTEXT_CAP,
    FAMILY_THINKING,
    GENERIC_THINKING,
    ModelFacts,
    pack_budget,
    resolve_context,
    truncation_warnings,
)
from bench.run.evaluation import build_plan
from bench.run.options import EvalOptions
from bench.run.store import RunStore
from bench.serve.model_info import read_checkpoint

THINK_STEPS = 600  # past the 512 answer tokens of toolcall, let alone smoke's 64


@pytest.fixture(scope="module")
def thinker(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from bench.engine.toys.builders import build_scripted

    return build_scripted(tmp_path_factory.mktemp("models") / "thinker", think_steps=THINK_STEPS)


def test_the_long_thinker_thinks_long(thinker: Path) -> None:
    from tokenizers import Tokenizer

    from bench.engine.toys.scripted import scripted_reply

    tokenizer = Tokenizer.from_file(str(thinker / "tokenizer.json"))
    reply = scripted_reply("plain", steps=THINK_STEPS)
    think = reply[: reply.index("</think>")]
    assert len(tokenizer.encode(think, add_special_tokens=False).ids) > THINK_STEPS
    assert reply.endswith("Here is the scripted answer.")


def test_budgets_come_from_the_model_and_say_so(thinker: Path) -> None:
    facts = ModelFacts.of(read_checkpoint(thinker))
    assert facts.family == "qwen3_moe" and facts.thinks and facts.context == 32768
    assert facts.recommended == {"temperature": 0.6, "top_p": 0.95, "top_k": 20}
    plan = build_plan(EvalOptions(packs="smoke,toolcall"), facts, context=32768)
    smoke = plan.packs["smoke"].budget
    assert smoke is not None
    assert (smoke.answer_tokens, smoke.thinking_tokens) == (64, FAMILY_THINKING["qwen3_moe"])
    assert smoke.sampling.max_tokens == 64 + FAMILY_THINKING["qwen3_moe"]
    assert (smoke.sampling.temperature, smoke.sampling.top_p, smoke.sampling.top_k) == (0.6, 0.95, 20)
    assert smoke.sources == {
        "temperature": "generation_config.json", "top_p": "generation_config.json", "top_k": "generation_config.json",
        "thinking": "pack", "answer_tokens": "pack", "thinking_tokens": "default for qwen3_moe",
        "max_tokens": "answer + thinking",
    }
    # Flags override the checkpoint, a plan's per-pack sampling overrides the flags.
    options = EvalOptions(packs="smoke,toolcall", temperature=0.0, max_tokens=100, thinking_budget=1000,
                          pack_sampling={"toolcall": {"temperature": 0.3, "thinking_budget": 50}})
    plan = build_plan(options, facts, context=32768)
    smoke, tool = plan.packs["smoke"].budget, plan.packs["toolcall"].budget
    assert smoke is not None and tool is not None
    assert (smoke.sampling.temperature, smoke.sampling.max_tokens) == (0.0, 1100)
    assert smoke.sources["temperature"] == "--temperature" and smoke.sources["thinking_tokens"] == "--thinking-budget"
    assert smoke.warnings and "greedy decoding in thinking mode" in smoke.warnings[0]
    assert (tool.sampling.temperature, tool.sampling.max_tokens) == (0.3, 150)
    assert tool.sources["temperature"] == "sampling.toolcall.temperature"
    assert tool.sources["thinking_tokens"] == "sampling.toolcall.thinking_budget"
    # Thinking off: no thinking budget; a context smaller than the sum caps it.
    off = build_plan(EvalOptions(packs="smoke", no_thinking=True), facts, context=32768).packs["smoke"].budget
    assert off is not None and off.sampling.max_tokens == 64 and off.sources["thinking_tokens"] == "thinking off"
    small = build_plan(EvalOptions(packs="smoke"), facts, context=1024).packs["smoke"].budget
    assert small is not None and small.sampling.max_tokens == 1023 and "capped below the context" in small.sources["max_tokens"]


def test_a_model_without_a_recommendation_keeps_the_pack_sampling() -> None:
    facts = ModelFacts(family="llama", thinks=False, context=8192, recommended={})
    budget = pack_budget("mmlu", Sampling(temperature=0.0, max_tokens=32), facts, flags={}, per_pack={},
                         flag_thinking_budget=None, context=8192)
    assert budget.sampling.temperature == 0.0 and budget.sampling.max_tokens == 32
    assert budget.sources["thinking_tokens"] == "the model does not think" and not budget.warnings
    unknown = pack_budget("mmlu", Sampling(max_tokens=32), ModelFacts(), flags={}, per_pack={},
                          flag_thinking_budget=None, context=None)
    assert unknown.thinking_tokens == GENERIC_THINKING and "not known" in unknown.sources["thinking_tokens"]


def test_auto_context(thinker: Path) -> None:
    info = read_checkpoint(thinker)
    assert resolve_context(4096, info, cpu=True, kv_cache_gib=1).value == 4096
    auto = resolve_context("auto", info, cpu=True, kv_cache_gib=1)
    assert auto.value == CPU_CONTEXT_CAP and auto.source == "auto: the CPU cap"
    tight = resolve_context("auto", info, cpu=True, kv_cache_gib=1 / 1024)  # 1 MiB of KV cache
    assert tight.value < CPU_CONTEXT_CAP and "of CPU KV cache holds" in tight.source
    assert resolve_context("auto", info, cpu=False, kv_cache_gib=1).value == "auto"  # vLLM sizes it to the GPU


def test_truncation_warning_names_the_fix() -> None:
    facts = ModelFacts(family="qwen3_moe", thinks=True, context=32768)
    budget = pack_budget("toolcall", Sampling(max_tokens=512), facts, flags={}, per_pack={},
                         flag_thinking_budget=None, context=32768)
    lines = truncation_warnings({"toolcall": (3, 20), "mmlu": (1, 20)}, {"toolcall": budget, "mmlu": None}, 32768)
    assert len(lines) == 1 and "pack toolcall: 3/20 replies (15%) were cut off" in lines[0]
    assert "raise --thinking-budget" in lines[0]


def test_bad_sampling_keys_are_one_line() -> None:
    with pytest.raises(ValueError, match="unknown key"):
        EvalOptions(pack_sampling={"smoke": {"temprature": 0.1}})
    with pytest.raises(UserError, match="not in this run"):
        build_plan(EvalOptions(packs="smoke", pack_sampling={"mmlu": {"temperature": 0.1}}))


# --------------------------------------------------------------------------------------------
# On a real vLLM server: the long thinker, launched with --max-model-len auto.


@pytest.fixture(scope="module")
def thinker_server(thinker: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from bench.run.evaluation import launch_config
    from bench.serve.launch import serving
    from bench.serve.options import ServeOptions

    logs = tmp_path_factory.mktemp("thinker-server")
    config, _ = launch_config(str(thinker), ServeOptions(python=vllm_python()), cache_root=logs / "cache")
    assert config.serve.max_model_len == CPU_CONTEXT_CAP  # auto, on CPU
    with serving(config, logs / "server.log") as server:
        yield server.base_url


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENCH_VLLM_PYTHON": vllm_python()}
    return subprocess.run([*bench_cmd(), "run", *args, "--no-report"], capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.mark.vllm
@pytest.mark.engine
def test_default_budgets_let_the_long_thinker_answer(thinker_server: str, tmp_path: Path) -> None:
    cards = httpx.get(f"{thinker_server}/v1/models", timeout=10).json()["data"]
    assert cards[0]["max_model_len"] == CPU_CONTEXT_CAP

    answered = _run("--endpoint", thinker_server, "--packs", "smoke", "--tier", "quick",
                    "--runs-dir", str(tmp_path), "--run-id", "default")
    assert answered.returncode == 0, answered.stderr
    run = RunStore.open(tmp_path / "default")
    manifest, results = run.read_manifest(), run.read_results()
    assert results.packs["smoke"].health.truncated == 0 and results.packs["smoke"].score.mean == 1.0
    says = [r for r in run.read_items() if r.item_id.startswith("say-")]
    replies = [r.transcript.exchanges[0].response for r in says]
    assert replies and all((r.content or "").strip() == "Here is the scripted answer." for r in replies)
    assert all(r.usage.reasoning_tokens > THINK_STEPS for r in replies)  # it thought first, past 512 tokens
    budget = manifest.packs[0].budget
    assert budget is not None and budget["thinking_tokens"] == GENERIC_THINKING
    assert budget["max_tokens"] == 64 + GENERIC_THINKING and budget["sources"]["answer_tokens"] == "pack"
    assert manifest.server.max_model_len == CPU_CONTEXT_CAP
    assert manifest.server.max_model_len_source == "the endpoint's /models"

    # Today's budget (the answer's tokens only) cuts the same model off inside its think block.
    cut = _run("--endpoint", thinker_server, "--packs", "smoke", "--tier", "quick", "--thinking-budget", "0",
               "--runs-dir", str(tmp_path), "--run-id", "cut")
    assert "warning: pack smoke:" in cut.stderr and "were cut off at answer 64 + thinking 0 tokens" in cut.stderr
    results = RunStore.open(tmp_path / "cut").read_results()
    assert results.packs["smoke"].health.truncated > 0 and results.packs["smoke"].score.mean < 1.0
    stored = json.loads((tmp_path / "cut" / "manifest.json").read_text())
    assert stored["packs"][0]["budget"]["sources"]["thinking_tokens"] == "--thinking-budget"
