"""Run a reply's shell text in a work directory, inside the sandbox.

Each run is a fresh ``bash -c`` in the directory (no network, read-only system, a wall clock):
files persist between runs in one directory, shell state does not. The environment is fixed,
with a git identity so a task may commit, and no user or system git configuration.

Only the bubblewrap backend is used: a model's shell command routinely names paths and hosts, and
the resource-limits fallback leaves both the network and the user's files reachable. Where
bubblewrap is not usable the pack's items are not measurable, rather than run unguarded.
"""

from __future__ import annotations

import os
import shutil
from functools import cache
from pathlib import Path

from bench.sandbox import SandboxResult, run_command, sandbox_backend

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
MAX_SCRIPT_CHARS = 64_000  # one argv string must stay well under the kernel's 128 KiB limit
TOOL_OUTPUT_CHARS = 4000

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Sandbox User",
    "GIT_AUTHOR_EMAIL": "sandbox@example.org",
    "GIT_COMMITTER_NAME": "Sandbox User",
    "GIT_COMMITTER_EMAIL": "sandbox@example.org",
}


@cache
def bash_path() -> str:
    """bash by absolute path (the sandbox starts programs by path, not through PATH)."""
    return shutil.which("bash", path=SANDBOX_PATH) or "/bin/bash"


def shell_env(path: str = SANDBOX_PATH) -> dict[str, str]:
    return {
        "PATH": path,
        "TZ": "UTC",
        "TERM": "dumb",
        "PAGER": "cat",
        "GIT_PAGER": "cat",
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_TERMINAL_PROMPT": "0",
        **GIT_IDENTITY,
    }


def run_script(script: str, workdir: Path, *, timeout_s: float, path: str = SANDBOX_PATH) -> SandboxResult:
    """``bash -c SCRIPT`` in ``workdir``; a script too long to pass is an error result, not a raise."""
    if len(script) > MAX_SCRIPT_CHARS:
        return SandboxResult(returncode=126, stdout="", stderr=f"script longer than {MAX_SCRIPT_CHARS} characters",
                             timed_out=False, wall_s=0.0, backend="none")
    if "\x00" in script:
        return SandboxResult(returncode=126, stdout="", stderr="script holds a NUL character",
                             timed_out=False, wall_s=0.0, backend="none")
    return run_command([bash_path(), "-c", script], workdir, timeout_s=timeout_s, env=shell_env(path),
                       max_output_chars=256_000, backend="bwrap")


def isolation_missing() -> str | None:
    """Why shell replies cannot run isolated here, or None when bubblewrap is usable."""
    if sandbox_backend() == "bwrap":
        return None
    return "the bubblewrap sandbox is not usable here (install bubblewrap and allow user namespaces)"


def missing_tools(tools: list[str], path: str = SANDBOX_PATH) -> list[str]:
    """Which of ``tools`` the sandbox would not find on its PATH."""
    return [tool for tool in tools if shutil.which(tool, path=path) is None]


def tool_result_text(result: SandboxResult) -> str:
    """What the ``run_command`` tool answers: how it ended, then both streams, each capped."""
    parts = [result.describe() if not result.ok else "exit status 0"]
    for name, text in (("stdout", result.stdout), ("stderr", result.stderr)):
        if text:
            shown = text if len(text) <= TOOL_OUTPUT_CHARS else (
                text[:TOOL_OUTPUT_CHARS] + f"\n[... {len(text) - TOOL_OUTPUT_CHARS} more characters]")
            parts.append(f"--- {name} ---\n{shown.rstrip(os.linesep)}")
    return "\n".join(parts)
