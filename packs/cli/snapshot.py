"""What a work directory holds, read without trusting anything the command under test left there.

The command may leave symlinks to files outside (``ln -s /etc/shadow out.txt``), FIFOs that block
a reader, or a ``.git`` whose config would make a host-side git run a program. So the walk never
follows a symlink (a link is recorded by its target text), opens only regular files and with
``O_NOFOLLOW``, runs no program, and stops at fixed limits on entries and bytes. Inside a
top-level ``.git`` only the refs count (``HEAD``, loose and packed refs, read as text): objects,
index and logs change under read-only commands such as ``git status``, refs do not.
"""

from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Literal

EntryKind = Literal["file", "dir", "link", "other", "ref"]
MAX_ENTRIES = 20_000
MAX_BYTES = 256 * 1024 * 1024
KEEP_BYTES = 1024 * 1024  # files up to this size keep their content for the checks
_REF_BYTES = 4096


@dataclass(frozen=True)
class Entry:
    """One path: its kind, permission bits, and for files a sha256 (links: the target; refs: the commit id)."""

    kind: EntryKind
    digest: str = ""
    size: int = 0
    mode: int = 0  # st_mode & 0o7777 for files and folders; a chmod is a change like any other

    @property
    def executable(self) -> bool:
        return bool(self.mode & stat.S_IXUSR)


@dataclass
class Snapshot:
    """Every path under a root (``/``-separated, relative), with the bytes of small files."""

    entries: dict[str, Entry] = field(default_factory=dict)
    contents: dict[str, bytes] = field(default_factory=dict)
    complete: bool = True  # False when the walk hit MAX_ENTRIES or MAX_BYTES

    def files(self) -> list[str]:
        """Regular files, sorted."""
        return sorted(path for path, entry in self.entries.items() if entry.kind == "file")


def take_snapshot(root: Path) -> Snapshot:
    """Walk ``root`` (never through a symlink) and record every entry; ``.git`` by its refs only."""
    snap = Snapshot()
    budget = [MAX_BYTES]
    stack = [("", str(root))]
    while stack:
        rel_dir, abs_dir = stack.pop()
        try:
            with os.scandir(abs_dir) as scan:
                found = sorted(scan, key=lambda e: e.name)
        except OSError:
            continue
        for entry in found:
            if len(snap.entries) >= MAX_ENTRIES:
                snap.complete = False
                return snap
            rel = f"{rel_dir}{entry.name}"
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if rel == ".git" and stat.S_ISDIR(info.st_mode):
                snap.entries.update(read_refs(Path(entry.path)))
            elif stat.S_ISDIR(info.st_mode):
                snap.entries[rel] = Entry("dir", mode=stat.S_IMODE(info.st_mode))
                stack.append((rel + "/", entry.path))
            elif stat.S_ISLNK(info.st_mode):
                try:
                    snap.entries[rel] = Entry("link", os.readlink(entry.path))
                except OSError:
                    snap.entries[rel] = Entry("link")
            elif stat.S_ISREG(info.st_mode):
                snap.entries[rel] = _file_entry(entry.path, info, snap, rel, budget)
            else:
                snap.entries[rel] = Entry("other")
    return snap


def _file_entry(path: str, info: os.stat_result, snap: Snapshot, rel: str, budget: list[int]) -> Entry:
    mode = stat.S_IMODE(info.st_mode)
    if info.st_size > budget[0]:
        snap.complete = False
        return Entry("file", "", info.st_size, mode)
    digest = hashlib.sha256()
    kept = bytearray()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return Entry("file", "unreadable", info.st_size, mode)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return Entry("other")
        size = 0
        while chunk := handle.read(1024 * 1024):
            size += len(chunk)
            budget[0] -= len(chunk)
            digest.update(chunk)
            if size <= KEEP_BYTES:
                kept += chunk
            if budget[0] < 0:
                snap.complete = False
                break
    if size <= KEEP_BYTES:
        snap.contents[rel] = bytes(kept)
    return Entry("file", digest.hexdigest(), size, mode)


def read_refs(gitdir: Path) -> dict[str, Entry]:
    """``.git/HEAD`` and every branch and tag (loose files over ``packed-refs``), as text only."""
    refs: dict[str, Entry] = {}
    head = _small_text(gitdir / "HEAD")
    if head is not None:
        refs[".git/HEAD"] = Entry("ref", head.strip())
    packed = _small_text(gitdir / "packed-refs", limit=1024 * 1024) or ""
    for line in packed.splitlines():
        parts = line.split()
        if len(parts) == 2 and not line.startswith(("#", "^")):
            refs[f".git/{parts[1]}"] = Entry("ref", parts[0])
    stack = [(gitdir / "refs", "refs")]
    while stack and len(refs) < MAX_ENTRIES:
        folder, name = stack.pop()
        try:
            with os.scandir(folder) as scan:
                for entry in scan:
                    info = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        stack.append((Path(entry.path), f"{name}/{entry.name}"))
                    elif stat.S_ISREG(info.st_mode) and (text := _small_text(Path(entry.path))) is not None:
                        refs[f".git/{name}/{entry.name}"] = Entry("ref", text.strip())
        except OSError:
            continue
    return refs


def _small_text(path: Path, limit: int = _REF_BYTES) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return handle.read(limit).decode("utf-8", errors="replace")


def allowed(path: str, patterns: list[str]) -> bool:
    """Whether ``path`` matches one of ``patterns`` (fnmatch: ``*`` also crosses ``/``)."""
    return any(fnmatchcase(path, pattern) for pattern in patterns)


def damaged(before: Snapshot, after: Snapshot, may_change: list[str]) -> list[str]:
    """Paths that existed before and were deleted, rewritten, retyped or re-moded, and that the
    task did not allow to change. New paths are never damage (nor a folder's new contents)."""
    return sorted(path for path, old in before.entries.items()
                  if after.entries.get(path) != old and not allowed(path, may_change))
