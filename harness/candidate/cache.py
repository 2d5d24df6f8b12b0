"""Step folders: ``steps/<key>/`` with ``step.json`` (what it is) and ``done.json`` (it finished).

A step is reused only when its ``done.json`` exists, the outputs it names are still there, and
every upstream step it consumed still carries the same completion stamp. The last rule makes a
re-executed upstream step (a run that was resumed, a checkpoint rebuilt) re-run everything
downstream of it, even though the keys, which name inputs, stay the same.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from bench import __version__
from bench.errors import UserError

StepKind = Literal["run", "prune", "quantize", "gate", "diverge"]
STEP_FILE = "step.json"
DONE_FILE = "done.json"
LOCK_FILE = ".lock"


@dataclass(frozen=True)
class Step:
    """One unit of cached work: its key, what it is, and which steps it consumes."""

    kind: StepKind
    key: str
    label: str
    inputs: dict[str, Any]
    upstream: tuple[str, ...] = ()


@dataclass
class Done:
    """A finished step's record."""

    key: str
    kind: str
    label: str
    stamp: str
    seconds: float
    outputs: dict[str, Any] = field(default_factory=dict)
    consumed: dict[str, str] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


class StepStore:
    """The ``steps/`` folder of one output directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / key

    def done(self, key: str) -> Done | None:
        """The step's completion record, or None when it has not finished."""
        try:
            data = json.loads((self.path(key) / DONE_FILE).read_text(encoding="utf-8"))
            return Done(**{name: data[name] for name in Done.__dataclass_fields__ if name in data})
        except (OSError, ValueError, TypeError):
            return None

    def fresh(self, step: Step) -> Done | None:
        """The completion record when it can be reused as is, else None."""
        done = self.done(step.key)
        if done is None:
            return None
        for name in done.outputs.get("paths", []):
            if not (self.path(step.key) / name).exists():
                return None
        for upstream in step.upstream:
            before = self.done(upstream)
            if before is None or done.consumed.get(upstream) != before.stamp:
                return None
        return done

    def begin(self, step: Step) -> Path:
        """Create the step folder, record what the step is, and forget an older completion."""
        folder = self.path(step.key)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / DONE_FILE).unlink(missing_ok=True)
        _write_json(folder / STEP_FILE, {
            "key": step.key, "kind": step.kind, "label": step.label, "inputs": step.inputs,
            "upstream": list(step.upstream), "bench_version": __version__, "started_at": _now(),
        })
        return folder

    def finish(self, step: Step, started: float, outputs: dict[str, Any]) -> Done:
        """Mark the step finished; ``outputs["paths"]`` lists files that must survive for reuse."""
        consumed = {}
        for upstream in step.upstream:
            before = self.done(upstream)
            if before is None:
                raise RuntimeError(f"step {step.key} finished before its upstream {upstream}")
            consumed[upstream] = before.stamp
        done = Done(key=step.key, kind=step.kind, label=step.label, stamp=secrets.token_hex(8),
                    seconds=round(time.monotonic() - started, 2), outputs=outputs, consumed=consumed)
        _write_json(self.path(step.key) / DONE_FILE, {**done.__dict__, "finished_at": _now()})
        return done

    def clear(self, key: str, name: str) -> Path:
        """Remove a half-written output of a step (a killed prune or quantize) and return its path."""
        target = self.path(key) / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
        return target


@contextlib.contextmanager
def exclusive(out_dir: Path) -> Iterator[None]:
    """Hold the output directory's lock, so two loops never write the same steps at once."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / LOCK_FILE).open("w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise UserError(
                f"another bench candidate is working in {out_dir}: wait for it, or pass another --out"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
