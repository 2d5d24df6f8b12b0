"""The run directory: manifest.json, items.jsonl (appended and flushed per item), results.json.

Every file is validated against its JSON Schema on write and on read, so a hand-edited or
truncated file is caught with its name and field, not three modules later. A run killed in the
middle leaves at most one partial last line in items.jsonl; reading skips it and resume asks that
item again.

items.jsonl may hold more than one line per (pack, item, repeat): a resumed item's new record
follows its old error record. :func:`read_effective` is the one place that decides which record
counts, and every reader (aggregation, rescore, resume, gate, report) goes through it.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from jsonschema import ValidationError
from pydantic import BaseModel

from bench import schemas
from bench.errors import UserError
from bench.records import SCHEMA_VERSION, ItemRecord, Manifest, Results
from bench.run.lock import LOCK_FILE, RunLock, acquire

MANIFEST = "manifest.json"
ITEMS = "items.jsonl"
RESULTS = "results.json"
SERVER_LOG = "server.log"

M = TypeVar("M", bound=BaseModel)


class StoreWriteError(UserError):
    """A run file could not be written (disk full, read-only, quota): finished records are kept."""


def write_error(path: Path, exc: OSError) -> StoreWriteError:
    code = errno.errorcode.get(exc.errno or 0, "?")
    return StoreWriteError(f"cannot write {path}: {exc.strerror or exc} (errno {exc.errno} {code})")


def check_schema_version(version: Any, where: str) -> None:
    """Refuse a file this bench cannot read, before anything compares or rewrites it."""
    whole = isinstance(version, int) and not isinstance(version, bool)
    if version is None or (whole and version == SCHEMA_VERSION):
        return  # files written before the field existed are version 1
    if whole and version > SCHEMA_VERSION:
        raise UserError(f"{where} was written by a newer bench (schema {version}); upgrade bench to read it")
    raise UserError(f"{where} has an unknown schema_version {version!r} (this bench reads {SCHEMA_VERSION})")


def new_run_id(model_name: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in model_name)[:40] or "run"
    return f"{stamp}-{safe}-{secrets.token_hex(2)}"


def _validate(kind: str, data: Any, where: str) -> None:
    try:
        schemas.validator(kind).validate(data)
    except ValidationError as exc:
        field_path = "/".join(str(p) for p in exc.absolute_path) or "(top level)"
        raise UserError(f"{where}: field {field_path}: {exc.message}") from exc


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise write_error(path, exc) from exc


class RecordKey(Protocol):
    """What :func:`read_effective` needs of a parsed line (a full record or a narrow view)."""

    @property
    def pack(self) -> str: ...
    @property
    def item_id(self) -> str: ...
    @property
    def repeat(self) -> int: ...
    @property
    def error(self) -> str | None: ...


R = TypeVar("R", bound=RecordKey)


@dataclass(frozen=True)
class ItemsDigest:
    """What results.json records of the items it was aggregated from, so readers see later edits."""

    sha256: str
    per_pack: dict[str, int]


@dataclass
class EffectiveItems(Generic[R]):
    records: list[R] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)  # line number of each record in items.jsonl
    digest: ItemsDigest = field(default_factory=lambda: ItemsDigest(hashlib.sha256().hexdigest(), {}))


def read_effective(path: Path, parse: Callable[[str, int], R]) -> EffectiveItems[R]:
    """The records that count, one per (pack, item, repeat), in file order of their key.

    A later record supersedes an earlier *error* record of its key (a resumed item); a later
    error after a scored record is ignored. Two scored records of one key mean two writers: an
    integrity error, never a silent repeat. A torn last line (a kill mid-write) is skipped and
    left out of the digest, so cutting it on resume does not count as a change.
    """
    out: EffectiveItems[R] = EffectiveItems()
    if not path.exists():
        return out
    raw = path.read_bytes()
    complete = raw[: raw.rfind(b"\n") + 1]
    chosen: dict[tuple[str, str, int], tuple[R, int]] = {}
    for lineno, line in enumerate(complete.decode("utf-8").splitlines(keepends=True), start=1):
        if not line.strip():
            continue
        record = parse(line, lineno)
        key = (record.pack, record.item_id, record.repeat)
        held = chosen.get(key)
        if held is not None and held[0].error is None:
            if record.error is None:
                raise UserError(
                    f"{path}:{lineno}: {record.pack}/{record.item_id} repeat {record.repeat} is scored twice "
                    f"(also line {held[1]}): two processes wrote this run; delete one of the two lines, "
                    f"then bench rescore {path.parent}")
            continue
        chosen[key] = (record, lineno)
    per_pack: dict[str, int] = {}
    for record, lineno in chosen.values():
        out.records.append(record)
        out.lines.append(lineno)
        per_pack[record.pack] = per_pack.get(record.pack, 0) + 1
    out.digest = ItemsDigest(hashlib.sha256(complete).hexdigest(), per_pack)
    return out


def _parse_item(path: Path) -> Callable[[str, int], ItemRecord]:
    def parse(line: str, lineno: int) -> ItemRecord:
        where = f"{path}:{lineno}"
        try:
            data = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{where}: not valid JSON ({exc.msg}: column {exc.colno})") from exc
        check_schema_version(data.get("schema_version") if isinstance(data, dict) else None, where)
        _validate("item", data, where)
        return ItemRecord.model_validate(data)

    return parse


class RunStore:
    """Read and write one run directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lock: RunLock | None = None

    @classmethod
    def create(cls, runs_dir: Path, run_id: str, *, lock: str | None = None) -> RunStore:
        """A new run directory; one that holds no manifest and no records is reused (a failed start).

        With ``lock`` (the writing command), the lock is taken before the directory is judged, so
        of two runs started with one id the second names the first instead of calling it finished.
        """
        root = runs_dir / run_id
        try:
            root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise write_error(root, exc) from exc
        store = cls(root)
        if lock:
            store.take_lock(lock)
        started = (root / MANIFEST).exists() or (store.items_path.exists() and store.items_path.stat().st_size > 0)
        if started:
            store.release()
            raise UserError(f"run directory {root} already exists: use --resume {root} to finish it, or another --run-id")
        return store

    @classmethod
    def open(cls, path: Path, *, lock: str | None = None) -> RunStore:
        if not (path / MANIFEST).is_file():
            if (path / LOCK_FILE).exists() and not (path / ITEMS).exists():  # bench made it, then failed to start
                raise UserError(f"{path} is not a run directory yet (no {MANIFEST}): its start failed before anything "
                                f"was asked; start it again with your bench run command plus "
                                f"--runs-dir {path.parent} --run-id {path.name}")
            raise UserError(f"{path} is not a run directory (no {MANIFEST})")
        store = cls(path)
        if lock:
            store.take_lock(lock)
        return store

    def take_lock(self, command: str) -> None:
        """Become the run's only writer (see :mod:`bench.run.lock`)."""
        if self.lock is None:
            self.lock = acquire(self.root, command)

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    # paths
    @property
    def items_path(self) -> Path:
        return self.root / ITEMS

    @property
    def server_log(self) -> Path:
        return self.root / SERVER_LOG

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_FILE

    # manifest / results
    def _write_model(self, name: str, kind: str, model: BaseModel) -> None:
        data = model.model_dump(mode="json")
        _validate(kind, data, str(self.root / name))
        _atomic_write(self.root / name, json.dumps(data, indent=2) + "\n")

    def _load_json(self, name: str) -> Any:
        path = self.root / name
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise UserError(f"{path} is missing") from exc
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} is not valid JSON ({exc.msg} at line {exc.lineno})") from exc
        check_schema_version(data.get("schema_version") if isinstance(data, dict) else None, str(path))
        return data

    def _read_model(self, name: str, kind: str, cls: type[M]) -> M:
        data = self._load_json(name)
        _validate(kind, data, str(self.root / name))
        return cls.model_validate(data)

    def check_versions(self) -> None:
        """Refuse a run whose manifest or results this bench cannot read, before anything rewrites them.

        (items.jsonl lines are checked as they are read.)
        """
        for name in (MANIFEST, RESULTS):
            if (self.root / name).is_file():
                self._load_json(name)

    def write_manifest(self, manifest: Manifest) -> None:
        self._write_model(MANIFEST, "manifest", manifest)

    def read_manifest(self) -> Manifest:
        return self._read_model(MANIFEST, "manifest", Manifest)

    def write_results(self, results: Results, digest: ItemsDigest | None = None) -> None:
        """Write results.json stamped with the digest of the items it came from (read now if not given)."""
        digest = digest or self.read_effective().digest
        stamped = results.model_copy(update={"items_sha256": digest.sha256, "item_records": dict(digest.per_pack)})
        self._write_model(RESULTS, "results", stamped)

    def read_results(self) -> Results:
        return self._read_model(RESULTS, "results", Results)

    def has_results(self) -> bool:
        return (self.root / RESULTS).is_file()

    def finished_results(self) -> Results | None:
        """The results when the run ran to the end (every item present, marked complete), else None."""
        if not self.has_results():
            return None
        try:
            results = self.read_results()
        except UserError:
            return None
        return results if results.complete and self.read_manifest().status == "complete" else None

    # items
    def encode_item(self, record: ItemRecord) -> str:
        """Validate a record and return its items.jsonl line (pure CPU: callable off the event loop)."""
        data = record.model_dump(mode="json")
        _validate("item", data, f"{self.items_path} (item {record.pack}/{record.item_id})")
        return json.dumps(data, ensure_ascii=False) + "\n"

    def append_line(self, line: str) -> None:
        """Append one encoded line and flush to the OS: a kill after this loses nothing.

        A write that fails part way (disk full) is cut back off, so the file never holds a torn
        line in its middle once later appends succeed.
        """
        try:
            with self.items_path.open("a", encoding="utf-8") as handle:
                start = handle.tell()
                try:
                    handle.write(line)
                    handle.flush()
                except OSError:
                    os.truncate(self.items_path, start)
                    raise
        except OSError as exc:
            raise write_error(self.items_path, exc) from exc

    def append_item(self, record: ItemRecord) -> None:
        """Validate, append one line, flush."""
        self.append_line(self.encode_item(record))

    def read_effective(self) -> EffectiveItems[ItemRecord]:
        """The records that count (see :func:`read_effective`), fully validated, with their digest."""
        return read_effective(self.items_path, _parse_item(self.items_path))

    def iter_items(self) -> Iterator[ItemRecord]:
        """Every record that counts: one per (pack, item, repeat); a torn last line is skipped."""
        yield from self.read_effective().records

    def read_items(self) -> list[ItemRecord]:
        return self.read_effective().records

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
            try:
                with self.items_path.open("r+b") as handle:
                    handle.truncate(cut)
            except OSError as exc:
                raise write_error(self.items_path, exc) from exc

    def finished_keys(self) -> set[tuple[str, str, int]]:
        """(pack, item_id, repeat) of every item that finished without a request error."""
        return {(r.pack, r.item_id, r.repeat) for r in self.iter_items() if r.error is None}
