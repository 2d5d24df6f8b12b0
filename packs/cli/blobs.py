"""Fixture bytes made at copy time instead of shipped: large files and a reproducible archive."""

from __future__ import annotations

import gzip
import io
import tarfile

FIXED_MTIME = 1710244800  # 2024-03-12T12:00:00Z: every template file (and archive member) carries this time


def repeated_bytes(size: int, line: str) -> bytes:
    """``size`` bytes of numbered copies of ``line``: large, deterministic and cheap to make."""
    out = bytearray()
    number = 0
    while len(out) < size:
        out += f"{line} {number:08d}\n".encode()
        number += 1
    return bytes(out[:size])


def tar_gz(members: dict[str, str]) -> bytes:
    """A reproducible gzipped tar of text members (fixed times, owner and order)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as archive:
        for name in sorted(members):
            data = members[name].encode()
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), FIXED_MTIME, 0o644
            info.uname = info.gname = "shelf"
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)
