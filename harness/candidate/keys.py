"""Cache keys: what identifies a step's result, so a rerun knows it already has it.

A step's key hashes its kind, its settings, the bench version, and its inputs: the base
checkpoint's content fingerprint, or the keys of the steps it consumes. Derived checkpoints are
therefore never re-hashed; their identity is the chain of steps that made them.

Hashing a 70 GB checkpoint takes a minute, so file digests are remembered by (size, mtime,
inode), as git's index does: an untouched file is not read again, a rewritten one is.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bench import __version__
from bench.errors import UserError

KEY_LENGTH = 20  # hex characters: 80 bits, plenty for one output folder
_READ_BYTES = 8 << 20


def step_key(kind: str, inputs: Mapping[str, Any]) -> str:
    """The cache key of one step: kind, inputs and bench version, canonically serialized."""
    payload = {"kind": kind, "bench_version": __version__, "inputs": inputs}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:KEY_LENGTH]


class FileDigests:
    """sha256 of files, remembered across invocations by (size, mtime_ns, inode) in a JSON file."""

    def __init__(self, memo_path: Path | None = None) -> None:
        self.memo_path = memo_path
        self._memo: dict[str, dict[str, Any]] = {}
        self._dirty = False
        if memo_path is not None and memo_path.is_file():
            try:
                loaded = json.loads(memo_path.read_text(encoding="utf-8"))
                self._memo = loaded if isinstance(loaded, dict) else {}
            except (OSError, ValueError):
                self._memo = {}  # a damaged memo only costs re-hashing

    def digest(self, path: Path) -> str:
        """sha256 of one file's content."""
        resolved = path.resolve()
        try:
            stat = resolved.stat()
        except OSError as exc:
            raise UserError(f"cannot read {path}: {exc.strerror}") from exc
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "inode": stat.st_ino}
        known = self._memo.get(str(resolved))
        if known and known.get("stamp") == stamp:
            return str(known["sha256"])
        digest = hashlib.sha256()
        with resolved.open("rb") as handle:
            while chunk := handle.read(_READ_BYTES):
                digest.update(chunk)
        self._memo[str(resolved)] = {"stamp": stamp, "sha256": digest.hexdigest()}
        self._dirty = True
        return digest.hexdigest()

    def directory(self, path: Path) -> str:
        """One digest over every visible file of a checkpoint directory (names and contents)."""
        if not path.is_dir():
            raise UserError(f"model directory {path} does not exist")
        digest = hashlib.sha256()
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            relative = file.relative_to(path)
            if any(part.startswith(".") for part in relative.parts):
                continue  # build markers, caches and partial writes are not the model
            digest.update(f"{relative.as_posix()}\0{self.digest(file)}\n".encode())
        return digest.hexdigest()

    def save(self) -> None:
        """Write the memo (atomically) if anything new was hashed."""
        if self.memo_path is None or not self._dirty:
            return
        self.memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.memo_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._memo, indent=0, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self.memo_path)
        self._dirty = False
