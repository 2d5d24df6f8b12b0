"""The background writer that lets quantization overlap its writes: order, byte counts, memory bound, errors."""

from __future__ import annotations

import os
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pytest

from bench.engine.compute import append_writer
from bench.engine.compute.append_writer import AppendWriter, write_all


def _open(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)


def test_writes_every_buffer_in_order_whatever_its_shape(tmp_path: Path) -> None:
    """2D and 1D arrays of several dtypes and sizes, past several batches: the file is their bytes in order."""
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 255, size=(rows, 300), dtype=np.uint8) for rows in (1, 7, 4000, 2)]
    arrays += [rng.standard_normal(n).astype(np.float32) for n in (0, 1, 1 << 20, 5)]
    arrays += [rng.integers(0, 255, size=(40, 40), dtype=np.uint8)[:, :8].copy() for _ in range(600)]  # > MAX_BUFFERS
    fd = _open(tmp_path / "out.bin")
    with AppendWriter(fd) as writer:
        for array in arrays:
            writer.write(memoryview(array))
    os.close(fd)
    assert (tmp_path / "out.bin").read_bytes() == b"".join(a.tobytes() for a in arrays)


def test_holds_a_bounded_number_of_bytes_while_the_disk_is_slow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With writes slower than production, the producer waits: buffers the writer still refers to
    never add up to more than the pending limit plus one batch (counted in bytes, not rows)."""
    monkeypatch.setattr(append_writer, "BATCH_BYTES", 64 << 10)
    monkeypatch.setattr(append_writer, "PENDING_BYTES", 256 << 10)
    real_writev = os.writev

    def slow_writev(fd: int, buffers: list[memoryview]) -> int:
        time.sleep(0.002)
        return real_writev(fd, buffers)

    monkeypatch.setattr(append_writer.os, "writev", slow_writev)
    alive: list[weakref.ref[np.ndarray]] = []
    most = 0
    fd = _open(tmp_path / "out.bin")
    with AppendWriter(fd) as writer:
        for index in range(400):
            array = np.full((64, 256), index % 251, dtype=np.uint8)  # 16 KiB in 64 rows
            alive.append(weakref.ref(array))
            writer.write(memoryview(array))
            del array
            most = max(most, sum(ref() is not None for ref in alive))
    os.close(fd)
    assert (tmp_path / "out.bin").stat().st_size == 400 * 64 * 256
    assert most * (16 << 10) <= (256 << 10) + (64 << 10) + (16 << 10)
    assert all(ref() is None for ref in alive)  # nothing kept once closed


def test_partial_writes_are_resumed_where_they_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The system may write fewer bytes than asked: the rest follows, splitting a buffer if need be."""
    real_writev = os.writev
    calls = []

    def short_writev(fd: int, buffers: list[memoryview]) -> int:
        calls.append(len(buffers))
        first = bytes(buffers[0])[:7] if len(buffers[0]) > 7 else bytes(buffers[0])
        return real_writev(fd, [first])

    monkeypatch.setattr(append_writer.os, "writev", short_writev)
    parts = [b"abcdefghijklmnop", b"", b"xyz", bytes(range(40))]
    fd = _open(tmp_path / "out.bin")
    write_all(fd, [memoryview(p) for p in parts if p])
    os.close(fd)
    assert (tmp_path / "out.bin").read_bytes() == b"".join(parts)
    assert len(calls) > 3


def test_a_failed_write_is_raised_to_the_producer(tmp_path: Path) -> None:
    """A write error in the writer thread (here: a read-only descriptor) surfaces on close, and the thread ends."""
    (tmp_path / "ro.bin").write_bytes(b"")
    fd = os.open(tmp_path / "ro.bin", os.O_RDONLY)
    writer = AppendWriter(fd)
    writer.write(memoryview(b"some bytes"))
    with pytest.raises(OSError):
        writer.close()
    os.close(fd)
    assert not [t for t in threading.enumerate() if t.name.startswith("append-writer")]  # its thread is gone
