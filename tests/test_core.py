"""Core pieces that need no model: parser choice, store, schemas, health scan, retries, registry."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import install_echo_pack
from bench import schemas
from bench.serve.model_info import choose_parsers, read_checkpoint
from bench.run.client import ChatClient, ClientConfig, RequestFailed
from bench.errors import UserError
from bench.serve.health import scan_response
from bench.run.records import ItemRecord
from bench.run.store import RunStore
from bench.transcript import Request, Response, ToolCall, Transcript

QWEN3_TEMPLATE = "{% if tools %}<tools>{% endif %}<tool_call>{% if enable_thinking %}<think>{% endif %}"
QWEN35_TEMPLATE = "<tools>{{ tools }}</tools><tool_call>\n<function=name>\n<think>"
CHATML_TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


def make_checkpoint(root: Path, model_type: str, template: str) -> Path:
    root.mkdir(parents=True)
    (root / "config.json").write_text(json.dumps({"model_type": model_type, "architectures": ["X"]}))
    (root / "tokenizer_config.json").write_text(json.dumps({"chat_template": template}))
    (root / "generation_config.json").write_text(json.dumps({"temperature": 0.6, "top_p": 0.95, "top_k": 20}))
    return root


@pytest.mark.parametrize(
    ("model_type", "template", "expected"),
    [
        ("qwen3_moe", QWEN3_TEMPLATE, ("qwen3", "hermes")),
        ("qwen3", QWEN3_TEMPLATE, ("qwen3", "hermes")),
        ("qwen3_5_moe", QWEN35_TEMPLATE, ("qwen3", "qwen3_coder")),
        ("deepseek_v3", "<think> tool", ("deepseek_r1", "deepseek_v3")),
        ("llama", CHATML_TEMPLATE, (None, "hermes")),
    ],
)
def test_parsers_from_family_and_template(tmp_path: Path, model_type: str, template: str, expected: tuple) -> None:
    info = read_checkpoint(make_checkpoint(tmp_path / "m", model_type, template))
    choice = choose_parsers(info)
    assert (choice.reasoning_parser, choice.tool_call_parser) == expected
    assert info.generation_config["top_k"] == 20


def test_checkpoint_errors_are_user_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="has no config.json"):
        read_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("{broken")
    with pytest.raises(UserError, match="config.json is not valid JSON"):
        read_checkpoint(tmp_path)


def test_schemas_are_generated_from_the_models() -> None:
    for name in schemas.MODELS:
        on_disk = json.loads(schemas.path_of(name).read_text())
        assert on_disk == json.loads(json.dumps(schemas.generate(name))), f"run python -m bench.schemas ({name})"


def _record(item_id: str) -> ItemRecord:
    return ItemRecord(pack="smoke", pack_version="1", item_id=item_id, transcript=Transcript(),
                      started_at="t", finished_at="t", elapsed_s=0.0)


def test_store_validates_and_survives_a_torn_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.append_item(_record("a"))
    store.append_item(_record("b"))
    with store.items_path.open("a") as handle:
        handle.write('{"pack": "smoke", "item_')  # a kill mid-write
    assert [r.item_id for r in store.read_items()] == ["a", "b"]
    store.drop_torn_tail()
    store.append_item(_record("c"))
    assert [r.item_id for r in store.read_items()] == ["a", "b", "c"]
    assert store.finished_keys() == {("smoke", "a", 0), ("smoke", "b", 0), ("smoke", "c", 0)}


def test_store_rejects_a_hand_broken_record(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    store.append_item(_record("a"))
    data = json.loads(store.items_path.read_text())
    data["elapsed_s"] = "slow"
    store.items_path.write_text(json.dumps(data) + "\n")
    with pytest.raises(UserError, match=r"items.jsonl:1: field elapsed_s"):
        store.read_items()


def test_open_non_run_directory(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is not a run directory"):
        RunStore.open(tmp_path)


@pytest.mark.parametrize(
    ("response", "flag"),
    [
        (Response(content="<think>hmm</think>Paris"), "leaked_markers"),
        (Response(content="<think>still thinking"), "unclosed_think"),
        (Response(content='<tool_call>{"name": "f"}</tool_call>'), "leaked_markers"),
        (Response(content=None, finish_reason="stop"), "null_content"),
        (Response(content="Par", finish_reason="length"), "truncated"),
    ],
)
def test_health_scan_flags(response: Response, flag: str) -> None:
    flags = scan_response(response).model_dump()
    assert flags[flag] == 1
    assert sum(flags.values()) >= 1


def test_health_scan_clean_reply_and_tool_call() -> None:
    assert sum(scan_response(Response(content="Paris.", reasoning="easy", finish_reason="stop")).model_dump().values()) == 0
    call = Response(content=None, tool_calls=[ToolCall(name="f", arguments="{}")], finish_reason="tool_calls")
    assert sum(scan_response(call).model_dump().values()) == 0


class _Flaky(BaseHTTPRequestHandler):
    """A tiny OpenAI-shaped server that fails with a given status a set number of times."""

    failures: list[int] = []
    hits = 0

    def do_POST(self) -> None:  # noqa: N802
        type(self).hits += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        if self.failures:
            status = self.failures.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b'{"error": {"message": "busy"}}')
            return
        body = {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": "hi", "reasoning_content": "r"}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4},
        }
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(body).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def flaky_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()


def _ask(url: str) -> Response:
    async def go() -> Response:
        client = ChatClient(ClientConfig(endpoints=[url], model="m", backoff_s=0.01))
        try:
            return await client.chat(Request(messages=[{"role": "user", "content": "hi"}]))
        finally:
            await client.close()

    return asyncio.run(go())


def test_client_retries_transient_errors(flaky_server) -> None:
    _Flaky.failures, _Flaky.hits = [503, 429], 0
    reply = _ask(f"http://127.0.0.1:{flaky_server.server_port}/v1")
    assert reply.content == "hi" and reply.reasoning == "r" and _Flaky.hits == 3


def test_client_does_not_retry_client_errors(flaky_server) -> None:
    _Flaky.failures, _Flaky.hits = [400], 0
    with pytest.raises(RequestFailed, match="HTTP 400"):
        _ask(f"http://127.0.0.1:{flaky_server.server_port}/v1")
    assert _Flaky.hits == 1


def test_client_times_out_on_a_hung_server_without_retrying() -> None:
    # A server that accepts the connection and reads the request, then never answers.
    accepted: list[int] = []

    async def go() -> tuple[str, float, int]:
        async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            accepted.append(1)
            await reader.read(65536)
            await asyncio.sleep(60)

        server = await asyncio.start_server(hang, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client = ChatClient(ClientConfig(endpoints=[f"http://127.0.0.1:{port}/v1"], model="m", timeout_s=1.0,
                                         backoff_s=0.01))
        started = time.perf_counter()
        try:
            await client.chat(Request(messages=[{"role": "user", "content": "hi"}]))
        except RequestFailed as exc:
            return str(exc), time.perf_counter() - started, client.stats.retries
        finally:
            await client.close()
            server.close()
        raise AssertionError("a hung server produced a reply")

    message, elapsed, retries = asyncio.run(go())
    assert message.endswith("request timed out") and retries == 0 and len(accepted) == 1
    assert 0.9 < elapsed < 10


def test_third_party_pack_is_discovered_without_touching_core(tmp_path: Path) -> None:
    site = install_echo_pack(tmp_path)
    code = "from bench import registry; p = registry.load('echo'); print(p.name, p.version, registry.resolve('all'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}).stdout
    assert out.startswith("echo 7") and "'echo'" in out
