"""Core pieces that need no model: parser choice, store, schemas, health scan, retries, registry."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import install_echo_pack

from bench import schemas
from bench.client import ChatClient, ClientConfig, RequestFailed
from bench.errors import UserError
from bench.records import ItemRecord
from bench.run.store import RunStore
from bench.serve.health import scan_response
from bench.serve.model_info import choose_parsers, read_checkpoint
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
        client = ChatClient(ClientConfig(endpoints=[url], model="m", concurrency=8, timeout_s=30.0, backoff_s=0.01))
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
        client = ChatClient(ClientConfig(endpoints=[f"http://127.0.0.1:{port}/v1"], model="m", concurrency=8, timeout_s=1.0,
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


# --- run options: declared once, checked once, stored nested, old flat manifests still resume ---

REPO_ROOT = Path(__file__).resolve().parents[1]
# Files that carry run settings from the flags, a plan or a manifest to the server and the client.
SETTINGS_FILES = [path for d in ("run", "serve", "candidate") for path in sorted((REPO_ROOT / "harness" / d).glob("*.py"))]
SETTINGS_FILES += [REPO_ROOT / "harness" / "cli" / "run.py", REPO_ROOT / "harness" / "cli" / "candidate.py"]
# Restatements known and left for their owners: the stored manifest's defaults (records.py) and the
# bootstrap seed parameter of build_results (aggregate.py), which callers pass the run's seed.
# The bootstrap seed of an aggregation a test makes without a run: not a run setting's default.
KNOWN_RESTATED = {("aggregate.py", "seed")}


def _literal_pattern(value: object) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return rf"{int(value)}(?:\.0)?\b"
    if isinstance(value, int):
        return rf"{value}\b(?!\.)"
    return rf"[\"']{re.escape(str(value))}[\"']"


def test_every_run_setting_default_is_written_once() -> None:
    """Each option field's default literal is bound to that setting in exactly one place: its model
    (or a module constant the model uses).

    A flag, a plan field, a dataclass or a keyword argument that restates ``max_model_len = 2048``
    (or ``= Field(2048``, ``= Path("runs")``, ``max_model_len=2048``) fails here.
    """
    from bench.cli.run import EVAL_FLAGS, RUN_FLAGS, SERVE_FLAGS
    from bench.run.options import EvalOptions, RunOptions
    from bench.serve.options import ServeOptions

    sources = {path: [line for line in path.read_text().splitlines() if not line.lstrip().startswith("#")]
               for path in SETTINGS_FILES}
    checked = 0
    for model, flags in ((ServeOptions, SERVE_FLAGS), (EvalOptions, EVAL_FLAGS), (RunOptions, RUN_FLAGS)):
        for name, info in model.model_fields.items():
            if info.default is None or info.default_factory is not None:
                continue
            spellings = {name} | {flag.lstrip("-").replace("-", "_") for flag, field in flags.items() if field == name}
            names, literal = "|".join(sorted(spellings)), _literal_pattern(info.default)
            pattern = re.compile(rf"\b(?:{names})\b[^=\n]*(?<![=!<>])=\s*(?:\w+\(\s*)?(?:default=)?{literal}"
                                 rf"|^[A-Z][A-Z0-9_]*\s*=\s*{literal}")  # or a module constant that holds it
            hits = [(path.name, line.strip()) for path, lines in sources.items() for line in lines if pattern.search(line)]
            hits = [hit for hit in hits if (hit[0], name) not in KNOWN_RESTATED]
            assert len(hits) == 1, f"{model.__name__}.{name} = {info.default!r} is written {len(hits)} times: {hits}"
            checked += 1
    assert checked >= 12


def test_plan_sections_are_the_run_option_models() -> None:
    from bench.candidate.plan import EvaluateSpec, Plan
    from bench.run.options import EvalOptions
    from bench.serve.options import ServeOptions

    plan = Plan.model_validate({"prune": {"ratios": [0.5], "mixes": ["m"]},
                                "evaluate": {"packs": ["smoke", "mmlu"], "pack_options": {"mmlu": {"shots": 5, "cot": True}}},
                                "vllm": {"python": "/usr/bin/python3", "args": ["--seed=1"]}})
    assert isinstance(plan.vllm, ServeOptions) and isinstance(plan.evaluate, EvalOptions)
    assert plan.evaluate.packs == "smoke,mmlu"
    assert plan.evaluate.pack_options == {"mmlu": {"shots": "5", "cot": "true"}}
    assert plan.vllm.python == "/usr/bin/python3" and plan.vllm.args == ["--seed=1"]
    # The plan's one stated difference: it runs the quick tier unless told otherwise.
    assert EvaluateSpec().tier == "quick" and EvalOptions().tier == "full"
    assert {n: f.default for n, f in EvaluateSpec.model_fields.items() if n != "tier"} == \
        {n: f.default for n, f in EvalOptions.model_fields.items() if n != "tier"}


def test_launch_and_client_take_their_values_from_the_options(tmp_path: Path) -> None:
    from bench.run.evaluation import client_config
    from bench.run.options import EvalOptions
    from bench.serve.launch import LaunchConfig, build_command
    from bench.serve.model_info import ParserChoice
    from bench.serve.options import ServeOptions

    config = LaunchConfig(model=tmp_path, served_model_name="m", parsers=ParserChoice("qwen3", None, "test"),
                          serve=ServeOptions(python=sys.executable, args=["--seed=3"]))
    command = build_command(config, 8000)
    assert command[command.index("--max-model-len") + 1] == str(ServeOptions().max_model_len)
    assert command[-1] == "--seed=3" and "--tool-call-parser" not in command
    options = EvalOptions(concurrency=3, request_timeout_s=7.5)
    client = client_config(["http://x/v1"], "m", options)
    assert (client.concurrency, client.timeout_s) == (3, 7.5)


def test_sampling_maps_to_request_fields_in_one_place() -> None:
    from bench.client import request_fields
    from bench.pack import Sampling
    from bench.run.options import EvalOptions

    sampling = EvalOptions(temperature=0.6, no_thinking=True).sampling_for(Sampling(max_tokens=64, top_p=0.95, top_k=20))
    kwargs, extra = request_fields(sampling.model_copy(update={"seed": 4}))
    assert kwargs == {"temperature": 0.6, "max_tokens": 64, "top_p": 0.95, "seed": 4}
    assert extra == {"top_k": 20, "chat_template_kwargs": {"enable_thinking": False}}
    assert request_fields(Sampling()) == ({"temperature": 0.0, "max_tokens": 512}, {})


FLAT_OPTIONS = {  # manifest.json "options" as runs written before the nested shape stored them
    "model": None, "endpoints": ["http://127.0.0.1:8000/v1"], "served_model_name": "scripted",
    "vllm_python": "/opt/vllm/bin/python", "port": None, "max_model_len": 1024, "chat_template": None,
    "reasoning_parser": "qwen3", "tool_call_parser": "auto", "vllm_args": ["--seed=1"], "packs": "smoke",
    "pack_options": {"smoke": {"k": "v"}}, "tier": "quick", "limit": 3, "repeats": 2, "seed": 5, "concurrency": 4,
    "temperature": 0.2, "max_tokens": 99, "no_thinking": True, "request_timeout_s": 30.0, "startup_timeout_s": 60.0,
    "runs_dir": "somewhere", "run_id": "old",
}


def _run_dir_with_options(root: Path, options: dict) -> Path:
    from bench.records import Manifest, ServerInfo

    store = RunStore.create(root, "r")
    store.write_manifest(Manifest(run_id="r", created_at="t", bench_version="0", model=None,
                                  server=ServerInfo(launched=False), packs=[], repeats=1, seed=0, concurrency=8,
                                  options=options))
    return store.root


def test_flat_options_of_an_older_run_are_read_for_resume(tmp_path: Path) -> None:
    from bench.run.evaluation import options_from_run
    from bench.run.options import RunOptions

    options = options_from_run(_run_dir_with_options(tmp_path / "old", FLAT_OPTIONS))
    assert options.serve.python == "/opt/vllm/bin/python" and options.serve.args == ["--seed=1"]
    assert options.serve.max_model_len == 1024 and options.serve.reasoning_parser == "qwen3"
    newer = {"thinking_budget": None, "pack_sampling": {}}  # fields added since: their defaults
    assert options.evaluate.model_dump() == {k: newer[k] if k in newer else FLAT_OPTIONS[k]
                                             for k in options.evaluate.model_dump()}
    assert (options.served_model_name, options.runs_dir, options.run_id) == ("scripted", "somewhere", "old")
    # Written again, the run stores the nested shape, which reads back the same.
    nested = _run_dir_with_options(tmp_path / "new", options.model_dump(mode="json"))
    assert options_from_run(nested) == options
    assert set(options.model_dump()) == set(RunOptions.model_fields)


def test_a_broken_stored_option_is_one_line(tmp_path: Path) -> None:
    from bench.run.evaluation import options_from_run

    with pytest.raises(UserError, match=r"options\.evaluate\.concurrency: Input should be greater than or equal to 1"):
        options_from_run(_run_dir_with_options(tmp_path, {**FLAT_OPTIONS, "concurrency": 0}))


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["run", "--model", "x", "--max-model-len", "0"], "error: --max-model-len 0: input should be greater than or equal to 1"),
        (["run", "--model", "x", "--tier", "fast"], "error: --tier 'fast': input should be 'quick' or 'full'"),
        (["run", "--endpoint", "x", "--repeats", "0"], "error: --repeats 0: input should be greater than or equal to 1"),
        (["serve", "--model", "x", "--port", "70000"], "error: --port 70000: input should be less than or equal to 65535"),
    ],
)
def test_a_bad_flag_value_is_one_line(args: list[str], line: str) -> None:
    from conftest import bench_cmd

    result = subprocess.run([*bench_cmd(), *args], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == line


def test_tool_probe_is_fatal_only_for_runs_that_send_tools() -> None:
    from bench.run.evaluation import build_plan, sends_tools
    from bench.run.options import EvalOptions

    assert sends_tools(build_plan(EvalOptions(packs="toolcall", limit=2)))
    assert sends_tools(build_plan(EvalOptions(packs="smoke")))
    assert not sends_tools(build_plan(EvalOptions(packs="instructfollow,dataextract", limit=2)))
