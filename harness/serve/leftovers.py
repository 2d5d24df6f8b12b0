"""Name a vLLM server that a dead bench left running, from the PIDs its run's manifest recorded.

The watchdog normally ends a server with its bench; this catches what it cannot (a server from an
older bench, a watchdog killed with it), so a port and gigabytes of memory are never held unnoticed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def _alive(pid: int, *, group: bool = False) -> bool:
    """Whether the process (or, with ``group``, any process of the group) still exists."""
    try:
        (os.killpg if group else os.kill)(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def left_servers(runs_dir: Path) -> list[str]:
    """One line per run under ``runs_dir`` whose launched server outlived the bench that started it."""
    lines = []
    for manifest in sorted(runs_dir.glob("*/manifest.json")):
        try:
            server = json.loads(manifest.read_text(encoding="utf-8")).get("server") or {}
        except (OSError, ValueError):
            continue
        pgid, owner = server.get("pgid"), server.get("bench_pid")
        if not (server.get("launched") and isinstance(pgid, int) and isinstance(owner, int)):
            continue
        if _alive(owner) or not _alive(pgid, group=True):
            continue
        port = server.get("port")
        lines.append(f"a vLLM server left by a dead bench is still running: process group {pgid}"
                     f"{f', port {port}' if port else ''} (run {manifest.parent}); stop it with: kill -- -{pgid}")
    return lines
