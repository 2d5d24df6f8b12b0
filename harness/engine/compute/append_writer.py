"""Appending bytes to a file from a second thread, so producing the next tensor overlaps writing this one.

A streamed conversion alternates compute (quantize a batch of rows) and I/O (write its bytes).
Done in turn, the two add up; with the writes in their own thread (the system call runs without
the interpreter lock, as does the quantization kernel) they overlap, and a conversion costs about
the larger of the two. Buffers are gathered into batches written with one ``writev`` call each,
since a layer's experts arrive as thousands of small tensors. The bytes held for writing are
bounded, so memory stays a few batches whatever the model size.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from types import TracebackType

BATCH_BYTES = 1 << 20  # buffers gathered before one writev
PENDING_BYTES = 4 << 20  # bytes handed to the writer before the producer waits
MAX_BUFFERS = 512  # within every system's writev limit (IOV_MAX is 1024 on Linux)


def write_all(fd: int, buffers: list[memoryview]) -> None:
    """Write ``buffers`` in order to ``fd``, however the system splits the writes."""
    while buffers:
        written = os.writev(fd, buffers)
        while buffers and written >= len(buffers[0]):
            written -= len(buffers[0])
            buffers = buffers[1:]
        if buffers and written:
            buffers = [buffers[0][written:], *buffers[1:]]


class AppendWriter:
    """Appends buffers to an open file descriptor in a background thread, in the order given.

    The caller must not change a buffer's memory after handing it over (pass fresh tensors, not a
    reused scratch buffer). An error in the writer (a full disk) is raised by the next ``write``
    or by ``close``.
    """

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="append-writer")
        self._batch: list[memoryview] = []
        self._batch_bytes = 0
        self._pending: deque[tuple[Future[None], int]] = deque()
        self._pending_bytes = 0

    def write(self, data: memoryview) -> None:
        flat = data.cast("B")  # bytes, whatever the shape: len() of a 2D view counts its rows
        if not len(flat):
            return
        self._batch.append(flat)
        self._batch_bytes += len(flat)
        if self._batch_bytes >= BATCH_BYTES or len(self._batch) >= MAX_BUFFERS:
            self._submit()

    def _submit(self) -> None:
        if not self._batch:
            return
        self._pending.append((self._pool.submit(write_all, self._fd, self._batch), self._batch_bytes))
        self._pending_bytes += self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        while self._pending and (self._pending_bytes > PENDING_BYTES or self._pending[0][0].done()):
            self._wait_oldest()

    def _wait_oldest(self) -> None:
        future, size = self._pending.popleft()
        self._pending_bytes -= size
        future.result()

    def close(self) -> None:
        """Write what is left and wait for every write to finish (raising the first error)."""
        try:
            self._submit()
            while self._pending:
                self._wait_oldest()
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> AppendWriter:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        if kind is None:
            self.close()
        else:  # the caller failed: stop without hiding its error behind a write error
            self._pool.shutdown(wait=True, cancel_futures=True)
