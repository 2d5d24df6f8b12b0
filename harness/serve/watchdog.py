"""Keep a launched vLLM server tied to bench's life: ``watchdog.py BENCH_PID -- COMMAND...``.

bench starts this in a new session; it starts the server in the same process group and stays
beside it. vLLM renames its children (``VLLM::EngineCore``) and a parent-death signal reaches only
direct children, so the group is the unit: when bench is gone (even after SIGKILL), when bench asks
it to stop, or when the server exits on its own, every process left in the group is ended. The server
gets a parent-death signal, so killing this watchdog alone stops it too. It exits with the server's
status (128 + signal when the server was killed). Standard library only, and run by file path, so it
needs nothing installed.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

PR_SET_PDEATHSIG: int = 1  # from <sys/prctl.h>
POLL_S = 0.2
STOP_GRACE_S = 15.0  # bench asked: give vLLM time to shut down cleanly
ORPHAN_GRACE_S = 3.0  # bench is gone: nobody waits for a clean shutdown
LEFTOVER_GRACE_S = 2.0  # the server exited: its helpers get a moment to follow


def set_parent_death_signal(signum: int) -> None:
    """Ask the kernel to send ``signum`` when the parent dies (Linux; a no-op elsewhere)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signum, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid``, this one excluded."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 2 and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def end_group(pgid: int, grace_s: float) -> None:
    """SIGTERM the group, wait up to ``grace_s`` for it to empty, SIGKILL whatever is left."""
    for pid in group_members(pgid):
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while group_members(pgid) and time.monotonic() < deadline:
        time.sleep(POLL_S)
    for pid in group_members(pgid):
        _signal(pid, signal.SIGKILL)


def _signal(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def exit_status(code: int) -> int:
    return 128 - code if code < 0 else code


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: watchdog.py BENCH_PID -- COMMAND...", file=sys.stderr)
        return 2
    bench_pid, command = int(argv[0]), argv[2:]
    # bench's death is seen by polling the parent, not by a parent-death signal of our own: that
    # signal follows the launching *thread*, and bench may launch from one that ends before it does.
    stop_asked = False

    def on_stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stop_asked
        stop_asked = True

    signal.signal(signal.SIGTERM, on_stop)
    signal.signal(signal.SIGINT, on_stop)
    signal.signal(signal.SIGHUP, on_stop)
    pgid = os.getpgid(0)
    if os.getppid() != bench_pid:
        return 1  # bench died before this started
    server = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                              preexec_fn=lambda: set_parent_death_signal(signal.SIGTERM))
    while True:
        code = server.poll()
        if code is not None:
            end_group(pgid, LEFTOVER_GRACE_S)
            return exit_status(code)
        orphaned = os.getppid() != bench_pid
        if stop_asked or orphaned:
            _signal(server.pid, signal.SIGTERM)
            try:
                code = server.wait(timeout=ORPHAN_GRACE_S if orphaned else STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                code = -signal.SIGKILL
            end_group(pgid, LEFTOVER_GRACE_S if not orphaned else 0.5)
            return exit_status(code)
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
