"""The sandbox really contains what it runs: network, files, time, memory, processes, output.

Every test runs real code through ``run_python``. Isolation tests need bubblewrap and skip with
the reason when it is not usable; the ``rlimits`` fallback is checked for what it promises
(limits and the wall clock), and for file containment only where it can drop to another uid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

import bench.sandbox as sandbox_module
from bench.sandbox import (  # the probes the backend choice uses
    BackendChoice,
    SandboxResult,
    _bwrap_usable,
    _reachable_by_others,
    run_python,
    sandbox_backend,
)

REPO = Path(__file__).resolve().parents[1]

needs_bwrap = pytest.mark.skipif(not _bwrap_usable()[0], reason=f"bubblewrap not usable: {_bwrap_usable()[1]}")


def _dropping_python() -> str | None:
    """An interpreter the rlimits backend can run under a throw-away uid (root only)."""
    if os.geteuid() != 0:
        return None
    for candidate in (sys.executable, "/usr/bin/python3"):
        if os.path.exists(candidate) and _reachable_by_others(candidate):
            return candidate
    return None


DROPPING_PYTHON = _dropping_python()

# (backend, interpreter) pairs under which files outside the work dir and stray processes are
# contained: bubblewrap always, the rlimits fallback only when it can switch to another uid.
CONTAINED = [pytest.param("bwrap", None, marks=needs_bwrap, id="bwrap")] + [
    pytest.param(
        "rlimits",
        DROPPING_PYTHON,
        marks=pytest.mark.skipif(DROPPING_PYTHON is None, reason="rlimits backend cannot drop to another uid here"),
        id="rlimits-dropped-uid",
    )
]
BOTH = [pytest.param("bwrap", marks=needs_bwrap, id="bwrap"), pytest.param("rlimits", id="rlimits")]


def _processes_with(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker``."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                cmdline = Path(f"/proc/{entry.name}/cmdline").read_bytes()
            except OSError:
                continue
            if marker.encode() in cmdline:
                found.append(int(entry.name))
    return found


@pytest.mark.parametrize("backend", BOTH)
def test_normal_code_returns_stdout_and_reads_its_files(backend: BackendChoice) -> None:
    files = {
        "main.py": "import sys\nfrom helper import twice\nprint(twice(int(sys.argv[1])), input())\n",
        "helper.py": "def twice(n):\n    return 2 * n\n",
    }
    result = run_python(files, "main.py", args=["21"], stdin="hello\n", backend=backend)
    assert isinstance(result, SandboxResult)
    assert result.ok, result.stderr
    assert result.stdout == "42 hello\n"
    assert result.backend == backend
    assert result.wall_s > 0


def test_default_backend_is_bubblewrap_when_usable() -> None:
    expected = "bwrap" if _bwrap_usable()[0] else "rlimits"
    assert sandbox_backend() == expected
    assert run_python({"a.py": "print(1)"}, "a.py").backend == expected


def test_default_interpreter_has_the_harness_packages() -> None:
    code = "import sys, jsonschema\nprint(sys.version)\n"
    result = run_python({"a.py": code}, "a.py")
    assert result.ok, result.stderr
    assert result.stdout.strip() == sys.version


@needs_bwrap
def test_loopback_server_of_the_host_is_unreachable() -> None:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    accepted: list[object] = []

    def accept() -> None:
        listener.settimeout(5)
        with contextlib.suppress(OSError):
            accepted.append(listener.accept())

    watcher = threading.Thread(target=accept)
    watcher.start()
    # Control: the same code outside the sandbox does reach it, so the test can fail.
    code = (
        "import socket, sys\n"
        f"s = socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
        "print('connected')\n"
    )
    try:
        result = run_python({"net.py": code}, "net.py", timeout_s=5)
        assert not result.ok
        assert "connected" not in result.stdout
        assert "ConnectionRefusedError" in result.stderr
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        watcher.join()
        listener.close()
    assert len(accepted) == 1  # only the control connection arrived


@needs_bwrap
def test_outside_address_is_unreachable() -> None:
    code = (
        "import socket\n"
        "for host, port in [('1.1.1.1', 53), ('10.0.0.1', 80), ('pypi.org', 443)]:\n"
        "    try:\n"
        "        socket.create_connection((host, port), timeout=2).close()\n"
        "        print('reached', host)\n"
        "    except OSError as exc:\n"
        "        print('blocked', host, type(exc).__name__)\n"
    )
    result = run_python({"net.py": code}, "net.py", timeout_s=10)
    assert result.ok, result.stderr
    assert "reached" not in result.stdout
    assert result.stdout.count("blocked") == 3


@pytest.mark.parametrize(("backend", "python"), CONTAINED)
def test_writes_outside_the_work_dir_fail_and_leave_nothing(backend: BackendChoice, python: str | None) -> None:
    name = f"sandbox-escape-{uuid.uuid4().hex}.txt"
    targets = [REPO / name, Path.home() / name, REPO / "harness" / name]
    lines = ["import sys", "failures = 0"]
    for target in targets:
        lines += [
            "try:",
            f"    open({str(target)!r}, 'w').write('x')",
            f"    print('wrote', {str(target)!r})",
            "except OSError as exc:",
            "    failures += 1",
        ]
    lines += ["open('inside.txt', 'w').write('ok')", "print('failures', failures)"]
    try:
        result = run_python({"escape.py": "\n".join(lines)}, "escape.py", backend=backend, python=python)
        assert result.ok, result.stderr
        assert "wrote" not in result.stdout
        assert f"failures {len(targets)}" in result.stdout
    finally:
        leaked = [target for target in targets if target.exists()]
        for target in leaked:
            target.unlink()
    assert leaked == []


@needs_bwrap
def test_home_is_hidden_and_tmp_is_private() -> None:
    tag = uuid.uuid4().hex
    in_tmp = Path("/tmp") / f"sandbox-visible-{tag}"
    in_home = Path.home() / f"sandbox-secret-{tag}"
    scratch = Path("/tmp") / f"sandbox-scratch-{tag}"
    in_tmp.write_text("host")
    in_home.write_text("host")
    try:
        code = (
            "import os\n"
            f"print(os.path.exists({str(in_tmp)!r}), os.path.exists({str(in_home)!r}))\n"
            f"open({str(scratch)!r}, 'w').write('inside')\n"
            "print(os.getcwd())\n"
        )
        result = run_python({"a.py": code}, "a.py")
        assert result.ok, result.stderr
        assert result.stdout.split() == ["False", "False", "/tmp/work"]
        assert not scratch.exists()
    finally:
        in_tmp.unlink()
        in_home.unlink()


@pytest.mark.parametrize("backend", BOTH)
def test_infinite_loop_is_killed_at_the_wall_clock(backend: BackendChoice) -> None:
    started = time.monotonic()
    result = run_python({"loop.py": "while True:\n    pass\n"}, "loop.py", timeout_s=1.0, backend=backend)
    elapsed = time.monotonic() - started
    assert result.timed_out
    assert result.returncode is None
    assert "timed out" in result.describe()
    assert 1.0 <= result.wall_s < 3.0
    assert elapsed < 10.0


@pytest.mark.parametrize("backend", BOTH)
def test_sleeping_code_is_killed_too(backend: BackendChoice) -> None:
    # A sleeper uses no CPU: only the wall clock can stop it.
    result = run_python({"s.py": "import time\ntime.sleep(60)\n"}, "s.py", timeout_s=0.5, backend=backend)
    assert result.timed_out
    assert result.wall_s < 3.0


@pytest.mark.parametrize(("backend", "python"), CONTAINED)
def test_fork_bomb_is_capped_and_nothing_survives(backend: BackendChoice, python: str | None) -> None:
    marker = f"bomb-{uuid.uuid4().hex}"
    code = (
        "import os, sys, time\n"
        "made = 0\n"
        "try:\n"
        "    for _ in range(5000):\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()\n"  # try to leave the process group, too
        "            time.sleep(120)\n"
        "            os._exit(0)\n"
        "        made += 1\n"
        "except OSError as exc:\n"
        "    print('refused after', made, type(exc).__name__, flush=True)\n"
    )
    # The parent exits at once, leaving its children asleep in their own sessions: the sandbox
    # must reap them even though nothing timed out.
    result = run_python({"bomb.py": code}, "bomb.py", args=[marker], timeout_s=20, max_processes=32,
                        backend=backend, python=python)
    assert result.ok, result.stderr
    words = result.stdout.split()
    assert words[:2] == ["refused", "after"], result.stdout + result.stderr
    assert int(words[2]) < 32
    deadline = time.monotonic() + 5
    while _processes_with(marker) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _processes_with(marker) == []


@pytest.mark.parametrize("backend", BOTH)
def test_huge_allocation_fails_inside(backend: BackendChoice) -> None:
    code = "data = bytearray(8 * 1024 ** 3)\nprint('allocated')\n"
    result = run_python({"big.py": code}, "big.py", memory_mb=512, backend=backend)
    assert not result.ok
    assert "allocated" not in result.stdout
    assert "MemoryError" in result.stderr


@pytest.mark.parametrize("backend", BOTH)
def test_output_is_capped(backend: BackendChoice) -> None:
    code = "import sys\nsys.stdout.write('x' * 2_000_000)\n"
    result = run_python({"loud.py": code}, "loud.py", max_output_chars=1000, backend=backend)
    assert result.ok, result.stderr
    assert result.stdout == "x" * 1000
    assert result.output_truncated


@pytest.mark.parametrize("backend", BOTH)
def test_file_size_limit_stops_big_writes(backend: BackendChoice) -> None:
    code = "with open('big.bin', 'wb') as out:\n    out.write(b'0' * (8 * 1024 * 1024))\nprint('written')\n"
    result = run_python({"w.py": code}, "w.py", file_size_mb=1, backend=backend)
    assert not result.ok
    assert "written" not in result.stdout
    assert "file or output size limit" in result.describe() or "File too large" in result.stderr


@pytest.mark.parametrize("backend", BOTH)
def test_failure_keeps_the_traceback(backend: BackendChoice) -> None:
    result = run_python({"bad.py": "raise ValueError('nope')\n"}, "bad.py", backend=backend)
    assert result.returncode == 1
    assert not result.timed_out
    assert "ValueError: nope" in result.stderr
    assert result.describe() == "exit status 1"


@pytest.mark.parametrize("bad_name", ["../up.py", "/etc/x.py", "a/../../b.py"])
def test_file_names_must_stay_inside(bad_name: str) -> None:
    with pytest.raises(ValueError, match="relative path"):
        run_python({bad_name: "print(1)"}, bad_name)


def test_entry_must_be_given() -> None:
    with pytest.raises(ValueError, match="not among the files"):
        run_python({"a.py": "print(1)"}, "b.py")


def test_work_dir_is_removed_afterwards() -> None:
    result = run_python({"where.py": "import os\nprint(os.path.realpath('.'))\n"}, "where.py", backend="rlimits")
    assert result.ok, result.stderr
    assert not Path(result.stdout.strip()).exists()


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bwrap not installed")
def test_bwrap_choice_is_recorded_even_for_failures() -> None:
    result = run_python({"a.py": "import sys\nsys.exit(3)\n"}, "a.py", backend="bwrap")
    assert result.backend == "bwrap"
    assert result.returncode == 3


LIMITS_CODE = (
    "import os, resource\n"
    "nproc = resource.getrlimit(resource.RLIMIT_NPROC)\n"
    "memory = resource.getrlimit(resource.RLIMIT_AS)\n"
    "try:\n"
    "    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))\n"
    "    raised = 'raised'\n"
    "except (ValueError, OSError):\n"
    "    raised = 'kept'\n"
    "print(nproc[1], memory[0], memory[1], raised, os.getuid())\n"
)


@pytest.mark.parametrize("util_linux", [True, False], ids=["prlimit-setpriv", "python-launcher"])
@pytest.mark.parametrize(("backend", "python"), CONTAINED)
def test_limits_are_hard_and_root_is_dropped(
    monkeypatch: pytest.MonkeyPatch, backend: BackendChoice, python: str | None, util_linux: bool
) -> None:
    if not util_linux:
        monkeypatch.setattr(sandbox_module, "_util_linux_tools", lambda: (None, None))
    result = run_python({"lim.py": LIMITS_CODE}, "lim.py", memory_mb=700, max_processes=16,
                        backend=backend, python=python)
    assert result.ok, result.stderr
    nproc, soft, hard, raised, uid = result.stdout.split()
    assert (int(soft), int(hard)) == (700 * 1024 * 1024, 700 * 1024 * 1024)
    assert raised == "kept"
    if os.geteuid() == 0:
        assert int(uid) != 0
        assert int(nproc) == 16
