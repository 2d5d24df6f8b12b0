"""The core against a real vLLM server on the scripted model: preflight, run, resume, bad input."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from conftest import bench_cmd, install_echo_pack, vllm_python

from bench.client import ChatClient, ClientConfig
from bench.run.store import RunStore
from bench.serve.model_info import choose_parsers, read_checkpoint
from bench.serve.preflight import PreflightOptions, run_preflight

pytestmark = pytest.mark.vllm


def bench(*args: str, timeout: float = 600, pythonpath: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BENCH_VLLM_PYTHON": vllm_python()}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run([*bench_cmd(), *args], capture_output=True, text=True, timeout=timeout, env=env)


def requests_served(base_url: str) -> int:
    """Finished requests as the server itself counts them (Prometheus /metrics)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("vllm:request_success_total"):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def assert_one_clear_line(result: subprocess.CompletedProcess[str], needle: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert needle in errors[0], errors[0]


def test_parsers_picked_from_checkpoint(scripted_model: Path) -> None:
    choice = choose_parsers(read_checkpoint(scripted_model))
    assert (choice.reasoning_parser, choice.tool_call_parser) == ("qwen3", "hermes")


def test_preflight_passes_with_right_parsers(scripted_server: str) -> None:
    async def probe() -> list:
        client = ChatClient(ClientConfig(endpoints=[scripted_server + "/v1"], model="scripted", concurrency=8, timeout_s=300.0))
        try:
            return await run_preflight(client, PreflightOptions(reasoning_parser="qwen3", tool_call_parser="hermes"))
        finally:
            await client.close()

    checks = {c.name: c for c in asyncio.run(probe())}
    assert all(c.ok for c in checks.values()), checks
    assert "reasoning in: reasoning" in checks["plain_answer"].detail
    assert checks["tool_call"].detail.startswith("parsed tool_calls: get_weather")


@pytest.fixture(scope="module")
def smoke_run(scripted_server: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    result = bench("run", "--endpoint", scripted_server, "--packs", "smoke", "--runs-dir", str(runs),
                   "--run-id", "smoke", "--no-report")
    assert result.returncode == 0, result.stderr
    return runs / "smoke"


def test_run_scores_items_and_records_the_stack(smoke_run: Path) -> None:
    store = RunStore.open(smoke_run)
    manifest, results, records = store.read_manifest(), store.read_results(), store.read_items()
    assert results.valid and results.complete
    assert len(records) == 9
    pack = results.packs["smoke"]
    assert pack.score.mean == 1.0 and pack.n == 9
    assert pack.health.leaked_markers == 0 and pack.health.truncated == 0
    assert manifest.server.vllm_version and manifest.server.rendered_prompt_sha256
    assert manifest.options["serve"]["reasoning_parser"] == "auto" and manifest.options["evaluate"]["packs"] == "smoke"
    # The answer's 64 tokens plus an endpoint's default thinking budget, capped below its 4096-token context.
    assert manifest.packs[0].sampling == {"temperature": 0.0, "max_tokens": 4095, "thinking": True}
    budget = manifest.packs[0].budget
    assert budget is not None and budget["answer_tokens"] == 64 and "capped below the context" in budget["sources"]["max_tokens"]
    assert manifest.server.max_model_len == 4096 and manifest.server.max_model_len_source == "the endpoint's /models"
    names = ["first_request", "plain_answer", "thinking_off", "tool_call", "streaming_parity", "fingerprints"]
    assert [c.name for c in manifest.preflight] == names and all(c.ok for c in manifest.preflight)
    levels = manifest.concurrency_levels  # the default, auto, on a vLLM endpoint: bounded by the 9 items
    assert manifest.concurrency == "auto" and levels is not None and (levels.mode, levels.start) == ("auto", 8)
    assert 8 <= levels.highest <= 9 and levels.reason == ""
    say = next(r for r in records if r.item_id == "say-1").transcript.exchanges[0].response
    assert say.reasoning and say.content and "<think>" not in say.content
    assert say.usage.completion_tokens > 0 and say.latency_s > 0
    tool = next(r for r in records if r.item_id == "tool-1").transcript.exchanges[0].response
    assert tool.finish_reason == "tool_calls" and tool.tool_calls[0].name == "get_weather"
    two = next(r for r in records if r.item_id == "two-step").transcript
    assert len(two.exchanges) == 2 and two.exchanges[1].request.messages[-1]["role"] == "tool"


def flat_options(options: dict) -> dict:
    """The stored options in the flat shape of runs written before ``serve``/``evaluate`` were nested."""
    renamed = {"python": "vllm_python", "args": "vllm_args"}
    return {**{k: v for k, v in options.items() if k not in ("serve", "evaluate")},
            **{renamed.get(k, k): v for k, v in options["serve"].items()}, **options["evaluate"]}


@pytest.mark.parametrize("stored", ["nested", "flat"])
def test_resume_asks_only_unfinished_items(smoke_run: Path, scripted_server: str, tmp_path: Path, stored: str) -> None:
    # Copy the finished run, then cut it the way a kill would: 4 whole records and a torn fifth line.
    run = tmp_path / "killed"
    run.mkdir()
    for name in ("manifest.json", "items.jsonl"):
        (run / name).write_bytes((smoke_run / name).read_bytes())
    if stored == "flat":  # a run directory written before the options were nested still resumes
        manifest = json.loads((run / "manifest.json").read_text())
        manifest["options"] = flat_options(manifest["options"])
        (run / "manifest.json").write_text(json.dumps(manifest))
    lines = (run / "items.jsonl").read_text().splitlines(keepends=True)
    kept, dropped = lines[:4], lines[4:]
    (run / "items.jsonl").write_text("".join(kept) + dropped[0][:50])
    preflight_requests = 6  # plain, thinking off, tools; each streamed and not
    expected_requests = preflight_requests + sum(len(json.loads(line)["transcript"]["exchanges"]) for line in dropped)

    before = requests_served(scripted_server)
    result = bench("run", "--resume", str(run), "--no-report")
    assert result.returncode == 0, result.stderr
    asked = requests_served(scripted_server) - before
    assert asked == expected_requests, (asked, expected_requests)
    resumed = (run / "items.jsonl").read_text().splitlines(keepends=True)
    assert resumed[:4] == kept
    records = RunStore.open(run).read_items()
    assert sorted(r.item_id for r in records) == sorted(json.loads(line)["item_id"] for line in lines)
    assert RunStore.open(run).read_results().complete


def test_rescore_needs_no_server(smoke_run: Path) -> None:
    result = bench("rescore", str(smoke_run))
    assert result.returncode == 0, result.stderr
    assert "rescored 9 items; 0 changed score" in result.stderr


def test_replicas_share_the_load(scripted_server: str, tmp_path: Path) -> None:
    other = scripted_server.replace("127.0.0.1", "localhost")
    result = bench("run", "--endpoint", scripted_server, "--endpoint", other, "--packs", "smoke",
                   "--runs-dir", str(tmp_path), "--run-id", "replicas", "--no-report", "--concurrency", "4")
    assert result.returncode == 0, result.stderr
    used = {ex.response.endpoint for r in RunStore.open(tmp_path / "replicas").read_items() for ex in r.transcript.exchanges}
    assert used == {scripted_server + "/v1", other + "/v1"}


def test_preflight_fails_without_parsers(scripted_model: Path, tmp_path: Path) -> None:
    result = bench("run", "--model", str(scripted_model), "--reasoning-parser", "none", "--tool-call-parser", "none",
                   "--packs", "smoke", "--max-model-len", "1024", "--runs-dir", str(tmp_path), "--run-id", "noparse")
    assert result.returncode == 2
    assert_one_clear_line(result, "responses contain </think>: launch with --reasoning-parser qwen3")
    manifest = RunStore.open(tmp_path / "noparse").read_manifest()
    assert manifest.status == "failed"
    tool = next(c for c in manifest.preflight if c.name == "tool_call")
    assert not tool.ok and "tool call left as text in content (parser failure)" in tool.detail
    assert tool.fix == "launch with --enable-auto-tool-choice --tool-call-parser hermes"
    assert not list((tmp_path / "noparse").glob("items.jsonl"))


def test_bad_model_path_is_one_line(tmp_path: Path) -> None:
    assert_one_clear_line(bench("run", "--model", str(tmp_path / "missing"), "--runs-dir", str(tmp_path)),
                          "does not exist")


def test_port_in_use_is_one_line(scripted_model: Path, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        result = bench("run", "--model", str(scripted_model), "--port", str(port), "--runs-dir", str(tmp_path))
    assert_one_clear_line(result, f"port {port} on 127.0.0.1 is already in use")


def test_unreachable_endpoint_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert_one_clear_line(bench("run", "--endpoint", f"http://127.0.0.1:{port}", "--runs-dir", str(tmp_path)),
                          "cannot reach endpoint")
    assert not any(tmp_path.iterdir())


def test_failed_start_shows_log_and_command(scripted_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in scripted_model.iterdir():
        (broken / path.name).symlink_to(path)
    config = json.loads((scripted_model / "config.json").read_text())
    config["architectures"] = ["NoSuchModelForCausalLM"]
    (broken / "config.json").unlink()
    (broken / "config.json").write_text(json.dumps(config))
    result = bench("run", "--model", str(broken), "--packs", "smoke", "--runs-dir", str(tmp_path / "runs"))
    assert result.returncode == 2 and "Traceback (most recent call last)" not in result.stderr.split("--- last lines")[0]
    assert "vLLM exited with code" in result.stderr
    assert "vllm_serve.py serve " in result.stderr
    assert "--- last lines of" in result.stderr


def test_serve_checks_its_input_like_run(scripted_model: Path, tmp_path: Path) -> None:
    # bench serve and bench run build the launch the same way: the same checks, before any launch.
    for command in ("serve", "run"):
        result = bench(command, "--model", str(scripted_model), "--chat-template", str(tmp_path / "missing.j2"))
        assert result.returncode == 2, result.stderr
        assert result.stderr.strip().splitlines()[-1] == f"error: chat template {tmp_path / 'missing.j2'} does not exist"


def _interactive_signals() -> None:
    """Ctrl-C as a terminal delivers it: a suite started in the background (``cmd &``) inherits SIGINT
    ignored, which would make the server under test deaf to it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_serve_stops_its_process_group_on_ctrl_c(scripted_model: Path, tmp_path: Path) -> None:
    env = {**os.environ, "BENCH_VLLM_PYTHON": vllm_python()}
    proc = subprocess.Popen([*bench_cmd(), "serve", "--model", str(scripted_model), "--max-model-len", "1024",
                             "--log", str(tmp_path / "serve.log")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, start_new_session=True, preexec_fn=_interactive_signals)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line.startswith("serving scripted at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split(" ")[0]
        assert httpx.get(url + "/models", timeout=10).status_code == 200
        os.killpg(proc.pid, signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/models", timeout=2)
            except httpx.HTTPError:
                break
            time.sleep(0.5)
        else:
            pytest.fail("server still answers after Ctrl-C")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_third_party_pack_runs_against_the_server(scripted_server: str, tmp_path: Path) -> None:
    site = install_echo_pack(tmp_path)
    result = bench("run", "--endpoint", scripted_server, "--packs", "echo", "--runs-dir", str(tmp_path / "runs"),
                   "--run-id", "echo", "--no-report", pythonpath=str(site))
    assert result.returncode == 0, result.stderr
    results = RunStore.open(tmp_path / "runs" / "echo").read_results()
    assert results.packs["echo"].n == 2 and results.packs["echo"].subdimensions["said"].mean == 1.0
