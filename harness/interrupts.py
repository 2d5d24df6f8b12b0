"""SIGINT and SIGTERM end a run the same way: as a ``KeyboardInterrupt`` that unwinds through every
``finally`` (the server is stopped, finished items kept, the manifest marked), whatever the phase.

SIGTERM arrives as :class:`Terminated`, a ``KeyboardInterrupt`` that remembers its signal, so the
command can exit 143 for it and 130 for Ctrl-C.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the main thread is, like Ctrl-C."""


def exit_code(exc: KeyboardInterrupt) -> int:
    """128 + the signal: 143 for SIGTERM, 130 for Ctrl-C."""
    return 128 + (signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT)


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    raise Terminated


@contextlib.contextmanager
def interrupt_on_signals() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt`` inside the block (SIGINT even
    when the shell started bench with it ignored, as ``cmd &`` does), then the old handlers return."""
    previous = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_terminated)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
