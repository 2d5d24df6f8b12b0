"""This process's memory: its peak, and handing freed heap pages back to the system.

Pruning and quantization promise a peak of one layer (or a few chunks) whatever the model size;
these are how that promise is measured and kept.
"""

from __future__ import annotations

import ctypes
import resource
from typing import Any


def peak_rss_bytes() -> int:
    """Peak resident memory of this process so far.

    Linux's ``VmHWM`` first: ``ru_maxrss`` survives ``exec``, so a process started from a big
    parent (a benchmark, ``bench candidate``) would report the parent's size instead of its own.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def release_freed_memory() -> None:
    """Hand memory the allocator keeps after frees back to the system (glibc only; else nothing).

    glibc keeps freed heap memory for reuse, but a new layer's tensors rarely fit the holes the
    last one left, so each layer added resident memory on top of the last: a fifth of the peak
    on a 16-layer model. ``malloc_trim`` returns the free pages, wherever they lie in the heap.
    """
    global _MALLOC_TRIM
    if _MALLOC_TRIM is None:
        try:
            _MALLOC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):
            _MALLOC_TRIM = False
    if _MALLOC_TRIM:
        _MALLOC_TRIM(0)


_MALLOC_TRIM: Any = None
