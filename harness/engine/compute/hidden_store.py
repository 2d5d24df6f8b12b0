"""Calibration hidden states between decoder layers, kept on disk so memory does not grow with tokens.

Scoring runs every calibration token through one decoder layer at a time, so the states handed
from a layer to the next are as large as the calibration set: 1,024 sequences of 16,384 tokens at
hidden size 2,048 are 64 GiB in bfloat16, 128 GiB in float32. Held in memory they would decide which
machine can prune a model. Here they live in one scratch file, one row per token. A layer reads a
sequence, runs it, and writes its output back over it: a sequence's output depends only on its own
input, so the same file serves as input and output and the scratch is one copy of the states.
Reads and writes are plain positioned I/O, not a memory map, so the pages the kernel caches are
never counted as this process's memory: host and device hold one sequence whatever the token count.

``MemoryHiddenStates`` keeps the same interface in memory, in the compute precision, for small
runs and as the reference the disk store is compared with.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from bench.engine.planning.sizes import gib
from bench.errors import UserError

if TYPE_CHECKING:
    import torch

STORE_DTYPES = ("bfloat16", "float32")
SCRATCH_PREFIX = "bench-hidden-"


class HiddenStates(Protocol):
    """Per-sequence hidden states ``[tokens, hidden]`` that a layer reads and overwrites."""

    def __len__(self) -> int: ...

    def read(self, index: int) -> torch.Tensor: ...

    def write(self, index: int, states: torch.Tensor) -> None: ...

    def close(self) -> None: ...


def store_bytes(tokens: int, hidden: int, dtype: str = "bfloat16") -> int:
    """Scratch bytes of a disk store holding ``tokens`` rows of width ``hidden``."""
    return tokens * hidden * (2 if dtype == "bfloat16" else 4)


class MemoryHiddenStates:
    """The states as a list of tensors on the scoring device, in the compute precision."""

    def __init__(self, count: int) -> None:
        self._states: list[torch.Tensor | None] = [None] * count

    def __len__(self) -> int:
        return len(self._states)

    def read(self, index: int) -> torch.Tensor:
        states = self._states[index]
        if states is None:
            raise RuntimeError(f"hidden states of sequence {index} were never written")
        return states

    def write(self, index: int, states: torch.Tensor) -> None:
        self._states[index] = states

    def close(self) -> None:
        self._states = [None] * len(self._states)


class DiskHiddenStates:
    """The states in one scratch file under ``directory``, stored in ``dtype`` (bfloat16 by default).

    ``read`` returns a sequence on ``device`` in ``compute_dtype``; ``write`` rounds to the store's
    precision. The file lives in a private temporary folder removed by :meth:`close` (or on leaving
    a ``with`` block), and its size is checked against the free space before anything is written.
    """

    def __init__(self, directory: Path | str, lengths: Sequence[int], hidden: int, *, dtype: str = "bfloat16",
                 device: str = "cpu", compute_dtype: str = "float32") -> None:
        import torch

        if dtype not in STORE_DTYPES:
            raise UserError(f"hidden state store dtype {dtype!r} must be one of {', '.join(STORE_DTYPES)}")
        root = Path(directory).expanduser()
        if not root.is_dir():
            raise UserError(f"scratch directory {root} does not exist: create it or pass another --scratch-dir")
        self.lengths = [int(n) for n in lengths]
        self.hidden = hidden
        self.dtype: torch.dtype = getattr(torch, dtype)
        self.device = torch.device(device)
        self.compute_dtype = getattr(torch, compute_dtype)
        self._row_bytes = hidden * self.dtype.itemsize
        self.offsets = [0]
        for n in self.lengths:
            self.offsets.append(self.offsets[-1] + n * self._row_bytes)
        self.nbytes = self.offsets[-1]
        free = shutil.disk_usage(root).free
        if self.nbytes > free:
            raise UserError(
                f"the calibration hidden states need {gib(self.nbytes)} of scratch in {root}, which has "
                f"{gib(free)} free: pass --scratch-dir on a larger disk, or fewer --samples / a shorter --seq-len"
            )
        self.folder = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=root))
        self.path = self.folder / "hidden.bin"
        self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(self._fd, self.nbytes)  # sparse until written: no time spent zero-filling

    def __len__(self) -> int:
        return len(self.lengths)

    def __enter__(self) -> DiskHiddenStates:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.close()

    def _file(self) -> int:
        if self._fd is None:
            raise RuntimeError("the hidden state store is closed")
        return self._fd

    def read(self, index: int) -> torch.Tensor:
        import torch

        start, stop = self.offsets[index], self.offsets[index + 1]
        buffer = bytearray(stop - start)
        view, done = memoryview(buffer), 0
        while done < len(buffer):
            got = os.preadv(self._file(), [view[done:]], start + done)
            if got <= 0:
                raise UserError(f"{self.path} is shorter than the hidden states written to it (disk full?)")
            done += got
        states = torch.frombuffer(buffer, dtype=self.dtype).view(self.lengths[index], self.hidden)
        return states.to(device=self.device, dtype=self.compute_dtype)

    def write(self, index: int, states: torch.Tensor) -> None:
        import torch

        expected = (self.lengths[index], self.hidden)
        if tuple(states.shape) != expected:
            raise RuntimeError(f"sequence {index}: hidden states of shape {tuple(states.shape)}, expected {expected}")
        rows = states.detach().to(device="cpu", dtype=self.dtype).contiguous()
        data = rows.view(-1).view(torch.uint8).numpy().data
        start, done = self.offsets[index], 0
        while done < len(data):
            try:
                done += os.pwrite(self._file(), data[done:], start + done)
            except OSError as exc:
                raise UserError(f"cannot write calibration hidden states to {self.path}: {exc.strerror}") from exc

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        shutil.rmtree(self.folder, ignore_errors=True)
