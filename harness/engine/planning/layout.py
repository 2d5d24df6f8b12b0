"""The files a writer will produce, planned from tensor headers before any tensor exists.

The safetensors header of each output shard is built from the plan alone, so the writer can emit
it first and then append each tensor's bytes as they are produced, and ``bench fit`` can predict
exactly how many bytes a conversion will put on disk.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from typing import Any

from bench.engine.planning.checkpoint import DTYPE_BYTES, SINGLE_NAME


@dataclass(frozen=True)
class PlannedTensor:
    """A tensor the writer will emit: its header entry is known before its bytes exist."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    # Asked for several times per tensor by layout and writer, so computed once, on creation (a
    # cached property takes a lock on first use, which costs more than the product itself).
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "nbytes", int(math.prod(self.shape) * DTYPE_BYTES[self.dtype]))


def shard_plan(plan: list[PlannedTensor], max_shard_bytes: int) -> list[list[PlannedTensor]]:
    """Split planned tensors, in order, into shards of at most ``max_shard_bytes`` (one tensor may exceed)."""
    shards: list[list[PlannedTensor]] = [[]]
    size = 0
    for tensor in plan:
        if shards[-1] and size + tensor.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(tensor)
        size += tensor.nbytes
    return shards


def _header_bytes(tensors: list[PlannedTensor], metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for tensor in tensors:
        header[tensor.name] = {
            "dtype": tensor.dtype,
            "shape": list(tensor.shape),
            "data_offsets": [offset, offset + tensor.nbytes],
        }
        offset += tensor.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors writes it
    return struct.pack("<Q", len(raw)) + raw


@dataclass(frozen=True)
class Shard:
    """One output file: its name, the tensors it holds in order, and its header bytes."""

    file_name: str
    tensors: list[PlannedTensor]
    header: bytes

    @property
    def file_bytes(self) -> int:
        return len(self.header) + sum(t.nbytes for t in self.tensors)


def layout_shards(plan: list[PlannedTensor], max_shard_bytes: int) -> list[Shard]:
    """The files the writer will produce for ``plan``, headers included, before any tensor exists."""
    groups = shard_plan(plan, max_shard_bytes)
    names = (
        [SINGLE_NAME]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    return [Shard(name, group, _header_bytes(group, {"format": "pt"})) for name, group in zip(names, groups, strict=True)]


def predicted_file_bytes(plan: list[PlannedTensor], max_shard_bytes: int) -> int:
    """Exact bytes the writer will put on disk for ``plan`` (headers included)."""
    return sum(shard.file_bytes for shard in layout_shards(plan, max_shard_bytes))
