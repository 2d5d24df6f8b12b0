"""The directories a task runs in: built once per process from what the pack ships, copied per run.

A fixture is a folder under ``fixtures/`` plus what ``fixtures.json`` says to add at copy time:
large files (generated, never shipped), files whose names a wheel handles badly (spaces), empty
folders (a wheel cannot hold them), a ``.tar.gz`` built from listed members, or a git history
(``repo.json``; a nested ``.git`` cannot be shipped). The template is built once, with fixed
modes and times so every run starts from the same bytes; each run gets its own copy, because the
command under test may delete or rewrite anything in it.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import stat
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from bench.errors import UserError
from bench.packs.cli.blobs import FIXED_MTIME, repeated_bytes, tar_gz
from bench.packs.cli.gitrepo import build_repo
from bench.packs.cli.snapshot import Snapshot, take_snapshot

_PACKAGE = __name__.rpartition(".")[0]


@dataclass(frozen=True)
class FixtureSpec:
    """One fixture as ``fixtures.json`` describes it."""

    name: str
    description: str
    generated: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    archives: dict[str, dict[str, str]] = field(default_factory=dict)
    git: str | None = None

    @property
    def needs(self) -> list[str]:
        """Host programs the template build itself needs."""
        return ["git"] if self.git else []


def _resource(name: str) -> Traversable:
    return resources.files(_PACKAGE).joinpath(name)


@cache
def fixture_specs() -> dict[str, FixtureSpec]:
    """Every fixture the pack ships, by name."""
    raw = json.loads(_resource("fixtures.json").read_text(encoding="utf-8"))
    return {name: FixtureSpec(name=name, **spec) for name, spec in raw.items()}


def data_files() -> list[Traversable]:
    """What the fixtures are made from: hashed into the run manifest with the items."""
    found: list[Traversable] = [_resource("fixtures.json"), _resource("repo.json")]

    def walk(folder: Traversable) -> Iterator[Traversable]:
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            if entry.is_dir():
                yield from walk(entry)
            else:
                yield entry

    found.extend(walk(_resource("fixtures")))
    return found


class Templates:
    """Built fixtures, one per name, made on first use and removed when the process exits."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._root: Path | None = None
        self._built: dict[str, tuple[Path, Snapshot]] = {}

    def get(self, name: str) -> tuple[Path, Snapshot]:
        """The template folder of fixture ``name`` and its snapshot."""
        with self._lock:
            if name not in self._built:
                if self._root is None:
                    self._root = Path(tempfile.mkdtemp(prefix="bench-cli-fixtures-"))
                    _remove_at_exit(self._root)
                folder = self._root / name
                build_template(fixture_specs()[name], folder)
                self._built[name] = (folder, take_snapshot(folder))
            return self._built[name]


def build_template(spec: FixtureSpec, dest: Path) -> None:
    """Make fixture ``spec`` in the empty or absent folder ``dest``."""
    shipped = _resource("fixtures").joinpath(spec.name)
    dest.mkdir(parents=True)
    if shipped.is_dir():
        _copy_traversable(shipped, dest)
    for rel, how in spec.generated.items():
        _write(dest / rel, repeated_bytes(int(how["size"]), str(how["line"])))
    for rel, text in spec.files.items():
        _write(dest / rel, text.encode())
    for rel in spec.dirs:
        (dest / rel).mkdir(parents=True, exist_ok=True)
    for rel, members in spec.archives.items():
        _write(dest / rel, tar_gz(members))
    if spec.git:
        description = json.loads(_resource(spec.git).read_text(encoding="utf-8"))
        build_repo(description, dest, fixed_mtime=FIXED_MTIME)
    _fix_modes_and_times(dest)


def _copy_traversable(source: Traversable, dest: Path) -> None:
    for entry in source.iterdir():
        if entry.is_dir():
            (dest / entry.name).mkdir(exist_ok=True)
            _copy_traversable(entry, dest / entry.name)
        else:
            _write(dest / entry.name, entry.read_bytes())


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _fix_modes_and_times(root: Path) -> None:
    """Folders 0755, files 0644 (scripts lose their x bit in a wheel anyway), one fixed time."""
    for folder, dirs, files in os.walk(root):
        for name in dirs:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in files:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                os.chmod(path, 0o644)
    for folder, dirs, files in os.walk(root, topdown=False):
        for name in (*files, *dirs):
            os.utime(os.path.join(folder, name), (FIXED_MTIME, FIXED_MTIME), follow_symlinks=False)
    os.chmod(root, 0o755)
    os.utime(root, (FIXED_MTIME, FIXED_MTIME))


_TEMPLATES = Templates()


def template(name: str) -> tuple[Path, Snapshot]:
    """The process-wide template of fixture ``name`` and its snapshot."""
    if name not in fixture_specs():
        raise UserError(f"cli fixture {name!r} is not shipped; known: {', '.join(sorted(fixture_specs()))}")
    return _TEMPLATES.get(name)


@contextmanager
def workspace(name: str, parent: Path | None = None) -> Iterator[tuple[Path, Snapshot]]:
    """A private copy of fixture ``name`` (and the template's snapshot), removed afterwards.

    ``parent`` is where the copy goes (default: the temporary directory); a memory-backed one
    such as ``/dev/shm`` makes the copy and its removal much cheaper than a busy disk does.
    """
    folder, before = template(name)
    root = Path(tempfile.mkdtemp(prefix="bench-cli-", dir=parent))
    work = root / "work"
    try:
        shutil.copytree(folder, work, symlinks=True)
        yield work, before
    finally:
        remove_tree(root)


def remove_tree(root: Path) -> None:
    """Remove what a command left, even folders it made unreadable (a non-root harness needs this)."""

    def retry(function: Any, path: str, _exc: Any) -> None:
        parent = os.path.dirname(path)
        try:
            os.chmod(parent, stat.S_IRWXU)
            if os.path.isdir(path) and not os.path.islink(path):
                os.chmod(path, stat.S_IRWXU)
            function(path)
        except OSError:
            pass

    shutil.rmtree(root, onerror=retry)


def _remove_at_exit(root: Path) -> None:
    atexit.register(remove_tree, root)
