"""Run integrity under faults: a dead server stops the run, bench's death takes its server with it,
signals end every phase the same way, and bad input is refused before any launch.

Two tests start real vLLM (on the scripted model, through `bench run` itself, so what is killed is
bench's own server); the rest use stand-ins: a tiny HTTP server, or a fake interpreter as the server.
"""

from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import bench_cmd, vllm_python

from bench.client import one_line
from bench.run.store import RunStore

# A stand-in for vLLM's interpreter: it passes bench's "is vLLM importable" probe and then, as the
# server, never becomes ready, like a slow start. Every process it becomes is findable by group.
SLOW_SERVER = """#!/bin/sh
case "$1" in -c) exit 0;; esac
exec sleep 600
"""
# An interpreter that must never run: the test fails if the marker appears.
LOUD = """#!/bin/sh
touch "{marker}"
echo "this interpreter must not run" >&2
exit 99
"""


def _script(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def _start(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """bench in its own session (so the test can signal it alone), with Ctrl-C deliverable."""
    return subprocess.Popen([*bench_cmd(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def _run(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*bench_cmd(), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def _wait_for(predicate: object, timeout: float, what: str) -> None:
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def _proc_stat(pid: int) -> tuple[int, int, int] | None:
    """(ppid, pgid, session) of a live, non-zombie process."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else (int(fields[1]), int(fields[2]), int(fields[3]))


def _processes() -> dict[int, tuple[int, int, int]]:
    out = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))) is not None:
            out[int(entry.name)] = stat
    return out


def _descendants(root: int, table: dict[int, tuple[int, int, int]]) -> set[int]:
    found, frontier = set(), {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in table.items() if ppid in frontier} - found
        found |= frontier
    return found


def _started_by(bench_pid: int, pgids: set[int], before: set[int]) -> set[int]:
    """Processes bench started: in its server's group or session, or below it in the parent chain."""
    table = _processes()
    tied = {pid for pid, (_, pgid, sid) in table.items() if pgid in pgids or sid in pgids}
    return (tied | _descendants(bench_pid, table)) - before - {os.getpid()}


def _gone(pids: set[int]) -> bool:
    return all(_proc_stat(pid) is None for pid in pids)


def _manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ---------------------------------------------------------------- real vLLM (two launches)


def _long_run_with_a_first_item(model: Path, runs_dir: Path, run_id: str, concurrency: int) -> subprocess.Popen[str]:
    """A `bench run` of the scripted model that asks for minutes, returned once its first item is recorded."""
    proc = _start("run", "--model", str(model), "--packs", "smoke", "--repeats", "40", "--concurrency", str(concurrency),
                  "--max-model-len", "1024", "--runs-dir", str(runs_dir), "--run-id", run_id, "--no-report",
                  env={"BENCH_VLLM_PYTHON": vllm_python()})
    items = runs_dir / run_id / "items.jsonl"
    try:
        _wait_for(lambda: items.exists() and items.stat().st_size > 0 or proc.poll() is not None, 240, "a first item")
        assert proc.poll() is None, proc.communicate()[1]
    except BaseException:
        proc.kill()
        raise
    return proc


@pytest.mark.vllm
def test_bench_killed_takes_its_whole_server_with_it(scripted_model: Path, tmp_path: Path) -> None:
    before = set(_processes())
    proc = _long_run_with_a_first_item(scripted_model, tmp_path, "killed", concurrency=1)
    run_dir = tmp_path / "killed"
    try:
        server = _manifest(run_dir)["server"]
        assert server["pgid"] and server["pid"] and server["port"] and server["bench_pid"] == proc.pid
        started = _started_by(proc.pid, {server["pgid"]}, before)
        names = {Path(f"/proc/{pid}/comm").read_text().strip() for pid in started if _proc_stat(pid)}
        assert server["pid"] in started and any(name.startswith("VLLM::EngineCor") for name in names), names
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_for(lambda: _gone(started), 30, f"every process bench started to end ({sorted(started)})")
        assert not _started_by(proc.pid, {server["pgid"]}, before)
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", server["port"])) != 0, "the port still answers"
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.vllm
def test_server_killed_mid_run_stops_the_run_at_once(scripted_model: Path, tmp_path: Path) -> None:
    before = set(_processes())
    proc = _long_run_with_a_first_item(scripted_model, tmp_path, "dead", concurrency=2)
    run_dir = tmp_path / "dead"
    try:
        server = _manifest(run_dir)["server"]
        started = _started_by(proc.pid, {server["pgid"]}, before)
        os.kill(server["pid"], signal.SIGKILL)
        killed_at = time.monotonic()
        _, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - killed_at < 30, "the run went on against a dead server"
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 2, stderr
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert errors[0].startswith("error: the vLLM server was killed by signal 9; last log lines: "), errors[0]
    assert f"resume with: bench run --resume {run_dir}" in errors[0]
    manifest = RunStore.open(run_dir).read_manifest()
    assert manifest.status == "interrupted"
    records = RunStore.open(run_dir).read_items()
    assert records and all(r.error is None for r in records), [r.error for r in records if r.error]
    assert len(records) < 40 * manifest.packs[0].items, "the run was not stopped"
    _wait_for(lambda: _gone(started), 20, "the engine and helpers of the dead server to end")


# ---------------------------------------------------------------- no vLLM


@pytest.mark.parametrize("flags", [["--temperature", "-1"], ["--max-tokens", "0"], ["--repeats", "0"]])
def test_bad_sampling_is_refused_before_any_launch(scripted_model: Path, tmp_path: Path, flags: list[str]) -> None:
    marker = tmp_path / "launched"
    loud = _script(tmp_path / "python", LOUD.format(marker=marker))
    result = _run("run", "--model", str(scripted_model), "--vllm-python", str(loud), "--packs", "smoke",
                  "--runs-dir", str(tmp_path / "runs"), *flags)
    assert result.returncode == 2, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and flags[0] in errors[0], result.stderr
    assert not marker.exists(), "the interpreter ran"
    assert not (tmp_path / "runs").exists()


def test_pack_sampling_is_checked_before_launch() -> None:
    from bench.errors import UserError
    from bench.pack import Sampling
    from bench.run.options import check_sampling

    check_sampling("p", Sampling(temperature=0.0, max_tokens=1, top_p=1.0))
    for bad in (Sampling(top_p=0.0), Sampling(top_p=1.5), Sampling(temperature=-0.1), Sampling(max_tokens=0)):
        with pytest.raises(UserError, match="pack 'p' sampling"):
            check_sampling("p", bad)


def test_missing_vllm_is_one_line_before_launch(scripted_model: Path, tmp_path: Path) -> None:
    marker = tmp_path / "launched"
    loud = _script(tmp_path / "python", LOUD.format(marker=marker))
    result = _run("run", "--model", str(scripted_model), "--vllm-python", str(loud), "--packs", "smoke",
                  "--runs-dir", str(tmp_path / "runs"), "--run-id", "novllm")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: vLLM is not importable from {loud}: pass --vllm-python, or run make setup")
    assert not (tmp_path / "runs" / "novllm" / "server.log").exists()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_during_startup_stops_the_server_and_says_how_to_resume(
        scripted_model: Path, tmp_path: Path, signum: int, code: int) -> None:
    slow = _script(tmp_path / "python", SLOW_SERVER)
    before = set(_processes())
    proc = _start("run", "--model", str(scripted_model), "--vllm-python", str(slow), "--packs", "smoke",
                  "--runs-dir", str(tmp_path), "--run-id", "startup", "--no-report", "--max-model-len", "64")
    try:
        def sleeping() -> bool:
            return any(Path(f"/proc/{pid}/comm").read_text().strip() == "sleep"
                       for pid in _started_by(proc.pid, set(), before) if _proc_stat(pid))
        _wait_for(lambda: sleeping() or proc.poll() is not None, 60, "the stand-in server to start")
        assert proc.poll() is None, proc.communicate()[1]
        started = _started_by(proc.pid, set(), before)
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"interrupted: finished items are kept; resume with: bench run --resume {tmp_path / 'startup'}" in stderr
    assert RunStore.open(tmp_path / "startup").read_manifest().status == "interrupted"
    assert "note: " in stderr and "do not fit at max-model-len 64: raise it" in stderr  # said before the launch
    _wait_for(lambda: _gone(started), 20, "the stand-in server to end")


def test_bench_killed_during_startup_leaves_no_process(scripted_model: Path, tmp_path: Path) -> None:
    slow = _script(tmp_path / "python", SLOW_SERVER)
    before = set(_processes())
    proc = _start("run", "--model", str(scripted_model), "--vllm-python", str(slow), "--packs", "smoke",
                  "--runs-dir", str(tmp_path), "--run-id", "startup", "--no-report")
    try:
        def started() -> set[int]:
            return _started_by(proc.pid, set(), before)
        _wait_for(lambda: len(started()) >= 2 or proc.poll() is not None, 60, "the watchdog and the stand-in server")
        assert proc.poll() is None, proc.communicate()[1]
        children = started()
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        _wait_for(lambda: _gone(children), 20, f"the processes bench started to end ({sorted(children)})")
    finally:
        if proc.poll() is None:
            proc.kill()


class _HangingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    models_delay_s = 0.0
    released = threading.Event()


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _HangingServer

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self.send_error(404)
            return
        time.sleep(self.server.models_delay_s)
        body = json.dumps({"object": "list", "data": [{"id": "stand-in", "object": "model"}]}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.server.released.wait(120)  # a chat request hangs until the test ends


@pytest.fixture
def hanging_endpoint() -> Iterator[_HangingServer]:
    server = _HangingServer(("127.0.0.1", 0), _Handler)
    server.released = threading.Event()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.released.set()
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_on_an_endpoint_run_marks_it_interrupted(hanging_endpoint: _HangingServer, tmp_path: Path,
                                                        signum: int, code: int) -> None:
    url = f"http://127.0.0.1:{hanging_endpoint.server_address[1]}"
    proc = _start("run", "--endpoint", url, "--packs", "smoke", "--runs-dir", str(tmp_path), "--run-id", "term",
                  "--no-report")
    try:
        _wait_for(lambda: (tmp_path / "term" / "manifest.json").exists() or proc.poll() is not None, 60, "the run to start")
        time.sleep(1.0)  # preflight's first request is now hanging on the stand-in
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signum)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, stderr
    assert "Traceback" not in stderr
    assert f"resume with: bench run --resume {tmp_path / 'term'}" in stderr
    assert RunStore.open(tmp_path / "term").read_manifest().status == "interrupted"


def test_models_probe_follows_request_timeout(hanging_endpoint: _HangingServer, tmp_path: Path) -> None:
    hanging_endpoint.models_delay_s = 3.0
    url = f"http://127.0.0.1:{hanging_endpoint.server_address[1]}"
    started = time.monotonic()
    result = _run("run", "--endpoint", url, "--packs", "smoke", "--runs-dir", str(tmp_path), "--request-timeout", "1")
    assert result.returncode == 2 and "cannot reach endpoint" in result.stderr and "Timeout" in result.stderr
    assert time.monotonic() - started < 30


def test_a_server_left_by_a_dead_bench_is_named(tmp_path: Path) -> None:
    dead = subprocess.Popen(["true"])
    dead.wait()
    leftover = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        run_dir = tmp_path / "runs" / "old"
        run_dir.mkdir(parents=True)
        server = {"launched": True, "pgid": leftover.pid, "pid": leftover.pid, "port": 45678, "bench_pid": dead.pid}
        (run_dir / "manifest.json").write_text(json.dumps({"server": server}))
        result = _run("run", "--endpoint", f"http://127.0.0.1:{_free_port()}", "--runs-dir", str(tmp_path / "runs"))
        notes = [line for line in result.stderr.splitlines() if line.startswith("note:")]
        assert notes == [f"note: a vLLM server left by a dead bench is still running: process group {leftover.pid}, "
                         f"port 45678 (run {run_dir}); stop it with: kill -- -{leftover.pid}"], result.stderr
    finally:
        leftover.kill()
        leftover.wait()


def test_an_html_error_page_is_one_line() -> None:
    page = "<!DOCTYPE html>\n<html>\n<head><title>502 Bad Gateway</title></head>\n<body>\n<center><h1>502 Bad " \
           "Gateway</h1></center>\n<hr><center>nginx</center>\n</body>\n</html>\n"
    assert one_line(page) == "502 Bad Gateway 502 Bad Gateway nginx"
    assert len(one_line("x" * 1000)) == 300


def test_items_over_the_context_are_named_and_never_sent(scripted_model: Path, tmp_path: Path) -> None:
    import asyncio

    from bench.client import ChatClient, ClientConfig
    from bench.run.aggregate import build_results
    from bench.run.context_fit import mark_unfit
    from bench.run.evaluation import build_plan
    from bench.run.options import EvalOptions
    from bench.run.runner import run_plan

    plan = build_plan(EvalOptions(packs="smoke"))
    lines: list[str] = []
    mark_unfit(plan, str(scripted_model), 64, lines.append)
    assert len(lines) == 1 and "do not fit at max-model-len 64: raise it" in lines[0], lines
    assert plan.unfit and len(plan.unfit) < len(plan.packs["smoke"].items), "every smoke item counted as too long"
    plan.packs["smoke"].items = [i for i in plan.packs["smoke"].items if ("smoke", i.id) in plan.unfit]
    store = RunStore(tmp_path)
    # Nothing listens here: a request sent would fail; an unfit item sends none.
    client = ChatClient(ClientConfig(endpoints=[f"http://127.0.0.1:{_free_port()}/v1"], model="m", concurrency=2,
                                     timeout_s=5))
    counters = asyncio.run(run_plan(plan, client, store, show_progress=False))
    records = store.read_items()
    assert counters.asked == 0 and len(records) == len(plan.unfit)
    assert all(r.not_asked and r.not_asked.startswith("does not fit at max-model-len 64: raise it (prompt of ")
               and r.error is None and not r.transcript.exchanges for r in records)
    assert not client.stats.requests
    # Counted as not askable, not as failures a resume could fix; a resume has nothing left to ask.
    results = build_results("r", {n: p.pack for n, p in plan.packs.items()}, records, plan.expected())
    assert results.complete and not results.valid and results.missing_items == 0
    assert results.invalid_reasons == [f"{len(records)} items not asked: {records[0].not_asked} "
                                       "(a new run with a larger --max-model-len asks them)"]
    assert not plan.todo(store.finished_keys())


def test_endpoints_that_keep_refusing_stop_the_run() -> None:
    import asyncio

    from bench.client import ChatClient, ClientConfig, RequestFailed, ServerDown
    from bench.pack import Sampling
    from bench.transcript import Request

    config = ClientConfig(endpoints=[f"http://127.0.0.1:{_free_port()}/v1"], model="m", concurrency=1, timeout_s=5,
                          backoff_s=0.2, down_grace_s=1.0, max_retries=6)
    request = Request(messages=[{"role": "user", "content": "hi"}], sampling=Sampling().model_dump())

    async def ask() -> None:
        client = ChatClient(config)
        try:
            await client.chat(request)
        finally:
            await client.close()

    with pytest.raises(ServerDown, match="every endpoint refused connections for 1 s"):
        asyncio.run(ask())
    config.down_grace_s = 60.0  # a short outage is retried, then is the item's error, not the run's end
    config.max_retries = 1
    with pytest.raises(RequestFailed, match="cannot connect"):
        asyncio.run(ask())
