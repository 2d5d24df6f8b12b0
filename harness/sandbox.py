"""The only place model-generated code runs.

Model output is untrusted, so it never runs in the harness process. :func:`run_python` writes the
files into a fresh private directory and runs ``python ENTRY`` there; :func:`run_command` runs a
program in a directory the caller prepared and reads back afterwards. Both run inside these layers:

- **bubblewrap**, when it is installed and works: new mount, pid, network, IPC and UTS
  namespaces; the root filesystem read-only, a private size-limited ``/tmp`` (and ``/dev/shm``),
  the home directory hidden, the work directory (seen inside as ``/tmp/work``) the only writable
  place on disk, no network but an empty loopback, killed with its parent, in a new session.
- **rlimits**, always: address space, CPU seconds, file size (which also caps stdout/stderr, written
  to files), open files and number of processes.
- **a wall clock** that SIGKILLs the whole process group (and, under bubblewrap, the pid namespace
  with it).
- **a throw-away user id** when the harness runs as root: root is exempt from the process-count
  limit and can raise its own limits, so the code runs as an unused uid, and every process still
  owned by that uid afterwards is killed.

Without a usable bubblewrap the backend is ``rlimits``: resource limits and the wall clock only.
That contains runaway code (loops, allocation, fork bombs when a uid can be dropped) but is NOT an
isolation boundary: network and the files the user can write stay reachable. Every result names
its backend so a run can record which one judged it (:func:`sandbox_backend`).
"""

from __future__ import annotations

import logging
import math
import os
import random
import select
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Literal

from bench.errors import UserError

BackendChoice = Literal["auto", "bwrap", "rlimits"]
_log = logging.getLogger(__name__)

WORKDIR_INSIDE = "/tmp/work"  # where the code's directory appears under bubblewrap
_TMPFS_BYTES = 64 * 1024 * 1024  # size of the private /tmp and /dev/shm under bubblewrap
_OPEN_FILES = 256
_UID_RANGE = (1_500_000_000, 1_500_999_999)  # throw-away uids; far from real and subordinate ids
_SWEEP_ROUNDS = 50

# Where util-linux's prlimit/setpriv are missing, a bare interpreter does their job: set the
# limits, optionally switch to the throw-away uid with no way back (no_new_privs), become the command.
_LAUNCH_SNIPPET = (
    "import ctypes, os, resource, sys\n"
    "limits, uid, command = sys.argv[1], int(sys.argv[2]), sys.argv[3:]\n"
    "for pair in limits.split(','):\n"
    "    name, value = pair.split('=')\n"
    "    soft, _, hard = value.partition(':')\n"
    "    resource.setrlimit(getattr(resource, name), (int(soft), int(hard or soft)))\n"
    "if uid >= 0:\n"
    "    if ctypes.CDLL(None, use_errno=True).prctl(38, 1, 0, 0, 0) != 0:\n"  # PR_SET_NO_NEW_PRIVS
    "        sys.exit('sandbox: cannot set no_new_privs')\n"
    "    os.setgroups([])\n"
    "    os.setresgid(uid, uid, uid)\n"
    "    os.setresuid(uid, uid, uid)\n"
    "os.execv(command[0], command)\n"
)

_SIGNAL_MEANING = {
    signal.SIGXCPU: "CPU time limit reached",
    signal.SIGXFSZ: "file or output size limit reached",
    signal.SIGKILL: "killed",
    signal.SIGSEGV: "segmentation fault (often the memory limit)",
    signal.SIGABRT: "aborted",
}


@dataclass(frozen=True)
class SandboxResult:
    """What one sandboxed run did. ``returncode`` is None when the wall clock killed it."""

    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    wall_s: float
    backend: str  # "bwrap" or "rlimits"
    output_truncated: bool = False  # stdout or stderr was longer than the returned text

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """How the run ended, in words fit for a score's reason."""
        if self.timed_out:
            return f"timed out after {self.wall_s:.1f} s"
        if self.returncode is None:
            return "did not finish"
        if self.returncode < 0:
            try:
                sig = signal.Signals(-self.returncode)
            except ValueError:
                return f"killed by signal {-self.returncode}"
            meaning = _SIGNAL_MEANING.get(sig)
            return f"killed by {sig.name}" + (f" ({meaning})" if meaning else "")
        return f"exit status {self.returncode}"


@dataclass(frozen=True)
class _Limits:
    """Resource limits, hard as well as soft so the code cannot raise them again."""

    memory_bytes: int
    cpu_s: int
    file_bytes: int
    processes: int
    open_files: int

    def pairs(self) -> list[tuple[str, str, str]]:
        """(prlimit option, resource constant, soft[:hard]) for each limit."""
        return [
            ("as", "RLIMIT_AS", str(self.memory_bytes)),
            # SIGXCPU at the soft limit, SIGKILL a second later.
            ("cpu", "RLIMIT_CPU", f"{self.cpu_s}:{self.cpu_s + 1}"),
            ("fsize", "RLIMIT_FSIZE", str(self.file_bytes)),
            ("nproc", "RLIMIT_NPROC", str(self.processes)),
            ("nofile", "RLIMIT_NOFILE", str(self.open_files)),
            ("core", "RLIMIT_CORE", "0"),
        ]


def run_python(
    code_files: dict[str, str],
    entry: str,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    args: Sequence[str] = (),
    python: str | None = None,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    max_processes: int = 64,
    file_size_mb: int = 16,
    max_output_chars: int = 256_000,
    backend: BackendChoice = "auto",
) -> SandboxResult:
    """Run ``python ENTRY ARGS`` on ``code_files`` in a fresh private directory, contained.

    Args:
        code_files: relative path -> text; written before the run, gone after it.
        entry: the script to run, one of ``code_files``.
        timeout_s: wall clock; on expiry the whole process tree is killed and ``timed_out`` set.
        memory_mb: address-space limit of every process.
        args: command-line arguments after the entry.
        python: the interpreter; defaults to the harness's own, so its packages are importable.
        stdin: text fed on standard input (empty input when None).
        env: extra environment variables (the rest of the environment is not passed through;
            ``PYTHON*`` variables are ignored, the interpreter runs with ``-E``).
        max_processes: processes and threads the code may have at once.
        file_size_mb: largest file the code may write; also the most stdout/stderr it may print.
        max_output_chars: characters of stdout and of stderr returned; the rest is cut.
        backend: ``auto`` (bubblewrap when usable), or insist on ``bwrap`` or ``rlimits``.

    Returns:
        The outcome; it never raises for anything the code itself does.

    Raises:
        ValueError: a file name is absolute or climbs out of the directory, or ``entry`` is
            not among ``code_files``.
        UserError: ``backend="bwrap"`` was asked for and bubblewrap is not usable here, or the
            sandbox cannot start ``python`` as the same interpreter it is outside (checked once).
    """
    _check_files(code_files, entry)
    interpreter = python or sys.executable
    chosen = _choose_backend(backend)
    sandbox_uid = _allocate_uid() if os.geteuid() == 0 else None
    try:
        if sandbox_uid is not None and chosen == "rlimits" and not _reachable_by_others(interpreter):
            # The uid could not start this interpreter; run as ourselves, process limit and all.
            _release_uid(sandbox_uid)
            sandbox_uid = None
        limits = _Limits(
            memory_bytes=memory_mb * 1024 * 1024,
            cpu_s=max(1, math.ceil(timeout_s)) + 1,
            file_bytes=file_size_mb * 1024 * 1024,
            processes=_process_limit(max_processes, sandbox_uid),
            open_files=_OPEN_FILES,
        )
        _check_interpreter(interpreter, chosen, sandbox_uid, replace(_PROBE_LIMITS, processes=limits.processes))
        with _private_dir() as root:
            return _run_in(
                root,
                code_files=code_files,
                entry=entry,
                interpreter=interpreter,
                chosen=chosen,
                sandbox_uid=sandbox_uid,
                timeout_s=timeout_s,
                limits=limits,
                args=args,
                stdin=stdin,
                env=env,
                max_output_chars=max_output_chars,
            )
    finally:
        if sandbox_uid is not None:
            _release_uid(sandbox_uid)


def run_command(
    argv: Sequence[str],
    workdir: Path,
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    stdin: str | None = None,
    env: Mapping[str, str] | None = None,
    max_processes: int = 64,
    file_size_mb: int = 16,
    max_output_chars: int = 256_000,
    backend: BackendChoice = "auto",
) -> SandboxResult:
    """Run the program ``argv`` in the caller's ``workdir``, contained as :func:`run_python` is.

    For packs that judge what a command leaves behind (the cli pack's shell replies): the caller
    fills ``workdir`` before the run and reads it after; it is the program's current and home
    directory and the only writable place on disk (seen inside as ``/tmp/work`` under
    bubblewrap). When the harness runs as root its contents are handed to the run's throw-away
    uid (symlinks themselves, never their targets) and stay owned by it; a later run in the same
    directory hands them to its own uid.

    Args:
        argv: the program and its arguments; ``argv[0]`` an absolute path readable by other users.
        workdir: an existing directory the caller owns.
        timeout_s, memory_mb, stdin, env, max_processes, file_size_mb, max_output_chars, backend:
            as for :func:`run_python`.

    Returns:
        The outcome; it never raises for anything the program itself does.

    Raises:
        ValueError: ``argv`` is empty or ``argv[0]`` is not an absolute path, or ``workdir`` is
            not a directory.
        UserError: ``backend="bwrap"`` was asked for and bubblewrap is not usable here.
    """
    if not argv or not os.path.isabs(argv[0]):
        raise ValueError(f"sandbox program {argv[0] if argv else None!r} must be an absolute path")
    if not workdir.is_dir() or workdir.is_symlink():
        raise ValueError(f"sandbox work directory {workdir} is not a directory")
    chosen = _choose_backend(backend)
    sandbox_uid = _allocate_uid() if os.geteuid() == 0 else None
    try:
        limits = _Limits(
            memory_bytes=memory_mb * 1024 * 1024,
            cpu_s=max(1, math.ceil(timeout_s)) + 1,
            file_bytes=file_size_mb * 1024 * 1024,
            processes=_process_limit(max_processes, sandbox_uid),
            open_files=_OPEN_FILES,
        )
        with _private_dir() as root:
            return _run_contained(root, workdir, argv, chosen=chosen, sandbox_uid=sandbox_uid, timeout_s=timeout_s,
                                  limits=limits, stdin=stdin, env=env, max_output_chars=max_output_chars)
    finally:
        if sandbox_uid is not None:
            _release_uid(sandbox_uid)


def sandbox_backend() -> str:
    """The backend ``run_python`` uses here by default: ``bwrap`` or ``rlimits`` (for the manifest)."""
    return _choose_backend("auto")


def _run_in(
    root: Path,
    *,
    code_files: dict[str, str],
    entry: str,
    interpreter: str,
    chosen: str,
    sandbox_uid: int | None,
    timeout_s: float,
    limits: _Limits,
    args: Sequence[str],
    stdin: str | None,
    env: Mapping[str, str] | None,
    max_output_chars: int,
) -> SandboxResult:
    workdir = root / "work"
    workdir.mkdir()
    for name, text in code_files.items():
        target = workdir / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")
    if sandbox_uid is not None:
        root.chmod(0o711)  # the uid may pass through to its directory, not list ours
    return _run_contained(root, workdir, [interpreter, "-B", "-E", "-s", entry, *args], chosen=chosen,
                          sandbox_uid=sandbox_uid, timeout_s=timeout_s, limits=limits, stdin=stdin, env=env,
                          max_output_chars=max_output_chars)


def _run_contained(
    root: Path,
    workdir: Path,
    program: Sequence[str],
    *,
    chosen: str,
    sandbox_uid: int | None,
    timeout_s: float,
    limits: _Limits,
    stdin: str | None,
    env: Mapping[str, str] | None,
    max_output_chars: int,
) -> SandboxResult:
    """Run ``program`` in ``workdir`` under the chosen layers; ``root`` (ours) holds its streams."""
    if sandbox_uid is not None:
        _hand_over(workdir, sandbox_uid)
    inside = WORKDIR_INSIDE if chosen == "bwrap" else str(workdir)
    # bubblewrap (as root it needs its privileges for the mounts), then limits and the uid switch,
    # then the program. No preexec_fn: Popen can then vfork, which stays cheap however big the harness is.
    command = _launch_prefix(limits, sandbox_uid) + list(program)
    if chosen == "bwrap":
        command = _bwrap_prefix(workdir, program[0], sandbox_uid) + command
    child_env = {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": inside,
        "TMPDIR": "/tmp" if chosen == "bwrap" else inside,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **(env or {}),
    }
    stdin_path = root / "stdin"
    stdin_path.write_text(stdin or "", encoding="utf-8")
    out_path, err_path = root / "stdout", root / "stderr"

    started = time.monotonic()
    with open(stdin_path, "rb") as fin, open(out_path, "wb") as fout, open(err_path, "wb") as ferr:
        process = subprocess.Popen(
            command,
            cwd=workdir,
            env=child_env,
            stdin=fin,
            stdout=fout,
            stderr=ferr,
            start_new_session=True,
            close_fds=True,
        )
        timed_out = not _exits_within(process, timeout_s)
        returncode: int | None = None
        if timed_out:
            _kill_group(process.pid)
            process.wait()
        else:
            returncode = process.wait()
        wall_s = time.monotonic() - started
        _kill_group(process.pid)  # anything it left behind in its group
        if sandbox_uid is not None and (timed_out or chosen == "rlimits"):
            # And anything that left the group. Under bubblewrap a normal exit has already
            # emptied the pid namespace; after a kill it empties a moment later.
            _kill_uid(sandbox_uid)

    stdout, cut_out = _read_capped(out_path, max_output_chars)
    stderr, cut_err = _read_capped(err_path, max_output_chars)
    return SandboxResult(
        returncode=returncode,
        stdout=stdout,
        stderr=stderr,
        timed_out=timed_out,
        wall_s=wall_s,
        backend=chosen,
        output_truncated=cut_out or cut_err,
    )


_PROBE = "import sys\nprint(sys.version)\nprint(sys.prefix)\n"
_PROBE_LIMITS = _Limits(memory_bytes=1024 * 1024 * 1024, cpu_s=60, file_bytes=1024 * 1024, processes=64,
                        open_files=_OPEN_FILES)
_checked_lock = threading.Lock()
_checked: set[tuple[str, str, bool]] = set()


def _check_interpreter(interpreter: str, chosen: str, sandbox_uid: int | None, limits: _Limits) -> None:
    """Once per interpreter and setup: the sandbox must start the same Python the harness would.

    A hidden or unreadable install directory does not always fail loudly: the dynamic loader can
    fall back to another libpython on the system and run the code under a different Python.
    """
    key = (interpreter, chosen, sandbox_uid is not None)
    with _checked_lock:
        if key in _checked:
            return
    try:
        direct = subprocess.run([interpreter, "-B", "-E", "-s", "-c", _PROBE], capture_output=True,
                                text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UserError(f"cannot start the sandbox interpreter {interpreter}: {exc}") from exc
    if direct.returncode != 0:
        raise UserError(f"the sandbox interpreter {interpreter} fails to start: {direct.stderr.strip()[-300:]}")
    with _private_dir() as root:
        inside = _run_in(root, code_files={"probe.py": _PROBE}, entry="probe.py", interpreter=interpreter,
                         chosen=chosen, sandbox_uid=sandbox_uid, timeout_s=60.0, limits=limits, args=(),
                         stdin=None, env=None, max_output_chars=4000)
    if not inside.ok:
        raise UserError(f"the {chosen} sandbox cannot start {interpreter} ({inside.describe()}: "
                        f"{inside.stderr.strip()[-300:]}); make it readable by other users or pass python=")
    if inside.stdout != direct.stdout:
        raise UserError(f"the {chosen} sandbox starts {interpreter} as a different Python "
                        f"({inside.stdout.split(chr(10))[0]!r}, not {direct.stdout.split(chr(10))[0]!r}); "
                        "make its install directory readable by other users or pass python=")
    with _checked_lock:
        _checked.add(key)


def _bwrap_prefix(workdir: Path, interpreter: str, sandbox_uid: int | None) -> list[str]:
    """bubblewrap arguments up to the command: read-only world, private /tmp, one writable dir."""
    size = str(_TMPFS_BYTES)
    argv = [
        _bwrap_path() or "bwrap",
        "--ro-bind", "/", "/",
        "--dev", "/dev",
        "--proc", "/proc",
        "--perms", "1777", "--size", size, "--tmpfs", "/tmp",
        "--perms", "1777", "--size", size, "--tmpfs", "/dev/shm",
    ]
    # The interpreter may live under the private /tmp (a checkout in /tmp) or the hidden home
    # (pyenv, a user venv): show just its directories again, read-only.
    argv += _show_again(interpreter, "/tmp")
    home = _home_to_hide()
    if home is not None:
        argv += ["--tmpfs", home]
        argv += _show_again(interpreter, home)
        argv += ["--remount-ro", home]
    argv += ["--bind", str(workdir), WORKDIR_INSIDE, "--chdir", WORKDIR_INSIDE]
    argv += ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
    if sandbox_uid is None:
        # Not root: a user namespace is what lets bubblewrap build the others.
        argv += ["--unshare-user"]
    argv += ["--hostname", "sandbox", "--die-with-parent", "--new-session", "--"]
    return argv


def _show_again(interpreter: str, hidden: str) -> list[str]:
    """bubblewrap arguments that re-expose, read-only, the interpreter's directories under ``hidden``."""
    argv: list[str] = []
    for keep in _interpreter_roots(interpreter):
        if _is_within(keep, hidden) and keep != hidden:
            # bubblewrap would create the missing parents private (0700) to everyone else.
            for parent in reversed(Path(keep).relative_to(hidden).parents[:-1]):
                argv += ["--perms", "0755", "--dir", str(Path(hidden) / parent)]
            argv += ["--ro-bind", keep, keep]
    return argv


def _launch_prefix(limits: _Limits, sandbox_uid: int | None) -> list[str]:
    """Command prefix that sets the limits and, as root, switches to ``sandbox_uid``."""
    prlimit, setpriv = _util_linux_tools()
    if prlimit is None or (sandbox_uid is not None and setpriv is None):
        encoded = ",".join(f"{name}={value}" for _, name, value in limits.pairs())
        uid = -1 if sandbox_uid is None else sandbox_uid
        return [sys.executable, "-S", "-E", "-s", "-B", "-c", _LAUNCH_SNIPPET, encoded, str(uid)]
    prefix = [prlimit, *(f"--{option}={value}" for option, _, value in limits.pairs()), "--"]
    if sandbox_uid is not None and setpriv is not None:
        prefix += [
            setpriv,
            f"--reuid={sandbox_uid}",
            f"--regid={sandbox_uid}",
            "--clear-groups",
            "--bounding-set=-all",
            "--inh-caps=-all",
            "--no-new-privs",
            "--",
        ]
    return prefix


def _util_linux_tools() -> tuple[str | None, str | None]:
    """util-linux's prlimit and setpriv, when installed (they save an interpreter start per run)."""
    return shutil.which("prlimit"), shutil.which("setpriv")


def _choose_backend(requested: BackendChoice) -> str:
    if requested == "rlimits":
        return "rlimits"
    usable, why = _bwrap_usable()
    if usable:
        return "bwrap"
    if requested == "bwrap":
        raise UserError(f"the bubblewrap sandbox is not usable here ({why}); install bubblewrap "
                        "and allow user namespaces, or let the sandbox fall back to rlimits")
    _warn_fallback(why)
    return "rlimits"


@lru_cache(maxsize=1)
def _warn_fallback(why: str) -> None:
    _log.warning("bubblewrap is not usable (%s): model-generated code runs under resource limits only, "
                 "with network and user-writable files reachable", why)


@lru_cache(maxsize=1)
def _bwrap_usable() -> tuple[bool, str]:
    """Probe once whether bubblewrap can build the namespaces it will be asked for."""
    path = _bwrap_path()
    if path is None:
        return False, "bwrap not found on PATH"
    probe = [path, "--ro-bind", "/", "/", "--proc", "/proc", "--dev", "/dev",
             "--unshare-pid", "--unshare-net", "--unshare-ipc", "--die-with-parent"]
    if os.geteuid() != 0:
        probe.append("--unshare-user")
    try:
        done = subprocess.run([*probe, "--", "/bin/true"], capture_output=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, f"bwrap did not start: {exc}"
    if done.returncode != 0:
        message = done.stderr.decode(errors="replace").strip().splitlines()
        return False, message[-1] if message else f"bwrap exit status {done.returncode}"
    return True, "ok"


def _bwrap_path() -> str | None:
    return shutil.which("bwrap")


def _home_to_hide() -> str | None:
    """The home directory, unless it is already out of sight (under the private /tmp) or is /."""
    home = os.path.realpath(os.path.expanduser("~"))
    if home in ("/", "") or not os.path.isdir(home) or _is_within(home, "/tmp"):
        return None
    return home


@lru_cache(maxsize=16)
def _interpreter_roots(interpreter: str) -> tuple[str, ...]:
    """Directories the interpreter needs: its prefixes (venv and base) and where its binary is."""
    roots = {os.path.dirname(os.path.dirname(os.path.realpath(interpreter)))}
    if os.path.realpath(interpreter) == os.path.realpath(sys.executable) or interpreter == sys.executable:
        roots |= {os.path.realpath(sys.prefix), os.path.realpath(sys.base_prefix)}
    else:
        roots.add(os.path.dirname(os.path.dirname(os.path.abspath(interpreter))))
    return tuple(sorted(root for root in roots if root and root != "/"))


def _is_within(path: str, parent: str) -> bool:
    return path == parent or path.startswith(parent.rstrip("/") + "/")


def _reachable_by_others(interpreter: str) -> bool:
    """Whether an unrelated uid can start the interpreter and read its libraries."""
    for root in (*_interpreter_roots(interpreter), os.path.realpath(interpreter)):
        path = Path(root)
        for directory in [*reversed(path.parents), path]:
            try:
                mode = directory.stat().st_mode
            except OSError:
                return False
            if stat.S_ISDIR(mode) and not mode & stat.S_IXOTH:
                return False
    return True


def _check_files(code_files: dict[str, str], entry: str) -> None:
    for name in code_files:
        parts = PurePosixPath(name).parts
        if not parts or PurePosixPath(name).is_absolute() or ".." in parts:
            raise ValueError(f"sandbox file name {name!r} must be a relative path inside the work directory")
    if entry not in code_files:
        raise ValueError(f"sandbox entry {entry!r} is not among the files given ({sorted(code_files)})")


def _hand_over(workdir: Path, uid: int) -> None:
    """Give the throw-away uid the work directory's tree, without following any symlink in it.

    A previous run may have left links to files outside (``ln -s /etc/passwd x``): chown on the
    link itself, and a walk that never descends through one, keeps those targets ours.
    """
    os.chown(workdir, uid, uid, follow_symlinks=False)
    for folder, dirs, files in os.walk(workdir):
        for name in (*dirs, *files):
            with suppress(FileNotFoundError):
                os.chown(os.path.join(folder, name), uid, uid, follow_symlinks=False)


@contextmanager
def _private_dir() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bench-sandbox-"))
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


_uid_lock = threading.Lock()
_uids_in_use: set[int] = set()


def _allocate_uid() -> int:
    """A uid no other run of this process is using (the range is wide enough for chance to do the rest)."""
    with _uid_lock:
        while True:
            uid = random.randint(*_UID_RANGE)
            if uid not in _uids_in_use:
                _uids_in_use.add(uid)
                return uid


def _release_uid(uid: int) -> None:
    with _uid_lock:
        _uids_in_use.discard(uid)


def _process_limit(wanted: int, sandbox_uid: int | None) -> int:
    """RLIMIT_NPROC counts every process of the real uid, not just the sandbox's."""
    if sandbox_uid is not None:
        return wanted
    return len(_pids_of_uid(os.getuid())) + wanted


def _pids_of_uid(uid: int) -> list[int]:
    """Processes whose real uid is ``uid``.

    Read from ``/proc/PID/status``, not the directory owner: a process that has just switched
    ids is not dumpable, and its ``/proc`` entry then belongs to root.
    """
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"Uid:"):
                        if int(line.split()[1]) == uid:
                            pids.append(int(entry.name))
                        break
        except (OSError, ValueError, IndexError):
            continue
    return pids


def _exits_within(process: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the process to exit, at most ``timeout_s``; True when it did.

    A pidfd wakes us the moment the child exits. ``Popen.wait(timeout)`` instead polls with
    sleeps growing to 50 ms, which would add tens of milliseconds to every short run.
    """
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):
        try:
            process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = time.monotonic() + timeout_s
        while True:
            remaining_ms = max(0, math.ceil((deadline - time.monotonic()) * 1000))
            if poller.poll(remaining_ms):
                return True
            if remaining_ms == 0:
                return False
    finally:
        os.close(pidfd)


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _kill_uid(uid: int) -> None:
    """Kill every process of the throw-away uid, including ones that left the process group."""
    for _ in range(_SWEEP_ROUNDS):
        pids = _pids_of_uid(uid)
        if not pids:
            return
        for pid in pids:
            with suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)


def _read_capped(path: Path, max_chars: int) -> tuple[str, bool]:
    """The first ``max_chars`` characters of a captured stream, and whether more was there."""
    limit_bytes = max_chars * 4 + 4
    with open(path, "rb") as stream:
        raw = stream.read(limit_bytes + 1)
    text = raw.decode("utf-8", errors="replace")
    cut = len(raw) > limit_bytes or len(text) > max_chars
    return text[:max_chars], cut
