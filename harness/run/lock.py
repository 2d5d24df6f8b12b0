"""One writer per run directory: an exclusive ``flock`` on ``writer.lock`` holding its owner.

Two processes appending to one items.jsonl double-count items and can hide a failed one, so
``bench run`` (new and ``--resume``) and ``bench rescore`` take this lock first. The kernel drops
an ``flock`` when its holder dies, so a lock file whose owner is gone is simply free again; its
recorded owner is only kept to name a live writer, or the dead one whose lock is taken over.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from bench.errors import UserError

LOCK_FILE = "writer.lock"


def _note(line: str) -> None:
    print(line, file=sys.stderr)


@dataclass(frozen=True)
class Owner:
    pid: int
    host: str
    since: str
    command: str

    def describe(self) -> str:
        return f"PID {self.pid} on {self.host} ({self.command}, since {self.since})"

    def is_this_process(self) -> bool:
        return self.pid == os.getpid() and self.host == platform.node()


def _read_owner(fd: int) -> Owner | None:
    raw = os.pread(fd, 4096, 0)
    try:
        data = json.loads(raw.decode("utf-8")) if raw.strip() else None
        return Owner(int(data["pid"]), str(data["host"]), str(data["since"]), str(data.get("command", "bench"))) if data else None
    except (ValueError, KeyError, TypeError):
        return None  # an unreadable owner says nothing: the flock alone decides


class RunLock:
    """A held lock; ``release`` (or process exit) frees it. ``fd`` is None when this process already held it."""

    def __init__(self, path: Path, fd: int | None) -> None:
        self.path = path
        self.fd = fd
        if fd is not None:
            _HELD.add(self)

    def release(self) -> None:
        if self.fd is None:
            return
        _HELD.discard(self)
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)  # an empty lock file: nobody to name, nothing to take over
        except OSError:
            pass
        os.close(fd)  # closing drops the flock


_HELD: set[RunLock] = set()


@atexit.register
def _release_all() -> None:
    """An orderly exit (an error, Ctrl-C) leaves no owner behind; only a killed process does."""
    for held in list(_HELD):
        held.release()


def acquire(run_dir: Path, command: str, *, note: Callable[[str], None] = _note) -> RunLock:
    """Lock ``run_dir`` for writing, or raise one line naming the live owner.

    A lock this same process already holds (an in-process resume after a failure) is not a
    second writer: the call succeeds without a second lock.
    """
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise UserError(f"cannot create {path}: {exc.strerror} (errno {exc.errno})") from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(fd)
        os.close(fd)
        if owner is not None and owner.is_this_process():
            return RunLock(path, None)
        who = owner.describe() if owner else "another process"
        raise UserError(f"{run_dir} is being written by {who}: wait for it to finish or stop it; "
                        "two writers would record items twice") from None
    previous = _read_owner(fd)
    if previous is not None and not previous.is_this_process():
        note(f"note: took over the lock of {run_dir} left by {previous.describe()}: that process is gone")
    mine = {"pid": os.getpid(), "host": platform.node(), "since": datetime.now(UTC).isoformat(timespec="seconds"),
            "command": command}
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(mine) + "\n").encode("utf-8"), 0)
    except OSError:
        pass  # a full disk must not stop the lock itself: the flock is what excludes
    return RunLock(path, fd)


def live_owner(run_dir: Path) -> Owner | None:
    """The process writing ``run_dir`` now, if any (a reader's hint; takes no lock of its own)."""
    path = run_dir / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _read_owner(fd)
    finally:
        os.close(fd)
    return None
