"""The run directory: manifest.json, items.jsonl (appended and flushed per item), results.json.

Every file is validated against its JSON Schema on write and on read, so a hand-edited or
truncated file is caught with its name and field, not three modules later. A run killed in the
middle leaves at most one partial last line in items.jsonl; reading skips it and resume asks that
item again.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from jsonschema import ValidationError
from pydantic import BaseModel

from bench import schemas
from bench.errors import UserError
from bench.records import ItemRecord, Manifest, Results

MANIFEST = "manifest.json"
ITEMS = "items.jsonl"
RESULTS = "results.json"
SERVER_LOG = "server.log"

M = TypeVar("M", bound=BaseModel)


def new_run_id(model_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model_name)[:40] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def _validate(kind: str, data: Any, where: str) -> None:
    try:
        schemas.validator(kind).validate(data)
    except ValidationError as exc:
        field = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise UserError(f"{where}: field {field}: {exc.message}") from exc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class RunStore:
    """Read and write one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def create(cls, runs_dir: Path, run_id: str) -> RunStore:
        root = runs_dir / run_id
        if root.exists() and any(root.iterdir()):
            raise UserError(f"run directory {root} already exists: use --resume {root} to finish it, or another --run-id")
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    @classmethod
    def open(cls, path: Path) -> RunStore:
        if not (path / MANIFEST).is_file():
            raise UserError(f"{path} is not a run directory (no {MANIFEST})")
        return cls(path)

    # paths
    @property
    def items_path(self) -> Path:
        return self.root / ITEMS

    @property
    def server_log(self) -> Path:
        return self.root / SERVER_LOG

    # manifest / results
    def _write_model(self, name: str, kind: str, model: BaseModel) -> None:
        data = model.model_dump(mode="json")
        _validate(kind, data, str(self.root / name))
        _atomic_write(self.root / name, json.dumps(data, indent=2) + "\n")

    def _read_model(self, name: str, kind: str, cls: type[M]) -> M:
        path = self.root / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UserError(f"{path} is missing") from exc
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        _validate(kind, data, str(path))
        return cls.model_validate(data)

    def write_manifest(self, manifest: Manifest) -> None:
        self._write_model(MANIFEST, "manifest", manifest)

    def read_manifest(self) -> Manifest:
        return self._read_model(MANIFEST, "manifest", Manifest)

    def write_results(self, results: Results) -> None:
        self._write_model(RESULTS, "results", results)

    def read_results(self) -> Results:
        return self._read_model(RESULTS, "results", Results)

    def has_results(self) -> bool:
        return (self.root / RESULTS).is_file()

    # items
    def encode_item(self, record: ItemRecord) -> str:
        """Validate a record and return its items.jsonl line (pure CPU: callable off the event loop)."""
        data = record.model_dump(mode="json")
        _validate("item", data, f"{self.items_path} (item {record.pack}/{record.item_id})")
        return json.dumps(data, ensure_ascii=False) + "\n"

    def append_line(self, line: str) -> None:
        """Append one encoded line and flush to the OS: a kill after this loses nothing."""
        with self.items_path.open("a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()

    def append_item(self, record: ItemRecord) -> None:
        """Validate, append one line, flush."""
        self.append_line(self.encode_item(record))

    def iter_items(self) -> Iterator[ItemRecord]:
        """Every complete record; a partial last line (a kill mid-write) is skipped."""
        if not self.items_path.exists():
            return
        with self.items_path.open(encoding="utf-8") as handle:
            lines = handle.readlines()
        for lineno, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            if not line.endswith("\n") and lineno == len(lines):
                break  # torn final write
            try:
                data = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UserError(f"{self.items_path}:{lineno}: not valid JSON ({exc.msg})") from exc
            _validate("item", data, f"{self.items_path}:{lineno}")
            yield ItemRecord.model_validate(data)

    def read_items(self) -> list[ItemRecord]:
        return list(self.iter_items())

    def rewrite_items(self, records: list[ItemRecord]) -> None:
        """Replace items.jsonl whole (rescoring), atomically."""
        lines = []
        for record in records:
            data = record.model_dump(mode="json")
            _validate("item", data, f"{self.items_path} (item {record.pack}/{record.item_id})")
            lines.append(json.dumps(data, ensure_ascii=False) + "\n")
        _atomic_write(self.items_path, "".join(lines))

    def drop_torn_tail(self) -> None:
        """Cut a partial last line left by a kill, so the next append starts on a fresh line."""
        if not self.items_path.exists():
            return
        data = self.items_path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            with self.items_path.open("r+b") as handle:
                handle.truncate(cut)

    def finished_keys(self) -> set[tuple[str, str, int]]:
        """(pack, item_id, repeat) of every item that finished without a request error."""
        return {(r.pack, r.item_id, r.repeat) for r in self.iter_items() if r.error is None}
