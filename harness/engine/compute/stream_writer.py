"""Writing safetensors shards as a stream: header first, then each tensor's bytes as it is produced.

The layout comes from :mod:`bench.engine.planning.layout`, so the header is known before any tensor
exists. The bytes are appended from a writer thread, so producing the next tensor overlaps writing
this one. Peak memory is one tensor plus a few MiB queued for the writer, never a shard.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from bench.engine.compute.append_writer import AppendWriter
from bench.engine.compute.torch_dtypes import st_dtype
from bench.engine.planning.checkpoint import DTYPE_BYTES, INDEX_NAME
from bench.engine.planning.layout import PlannedTensor, Shard, layout_shards

if TYPE_CHECKING:
    import numpy as np
    import torch


def write_streamed(
    out_dir: Path,
    plan: list[PlannedTensor] | list[Shard],
    tensors: Iterable[tuple[str, torch.Tensor | Encoded]],
    *,
    max_shard_bytes: int = 4 << 30,
) -> list[Path]:
    """Write ``plan`` as safetensors shards plus an index, streaming tensor bytes in plan order.

    Tensors come from ``tensors``, an iterator yielding ``(name, tensor)`` in exactly the plan's
    order. A large tensor may arrive as several consecutive chunks of its first dimension under
    the same name (so a fused ``[n_experts, ...]`` tensor never has to be whole in memory). Each
    chunk is checked against the planned dtype and shape before a byte is written, so a wrong
    plan fails loudly instead of writing a corrupt file. A tensor may also come as
    :class:`Encoded` bytes. ``plan`` may be the shards of
    :func:`layout_shards` already (``max_shard_bytes`` is then theirs).

    The bytes are written by a second thread (:class:`AppendWriter`) while the iterator makes the
    next tensors, so a yielded tensor's memory must not be reused by the iterator afterwards.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = plan if plan and isinstance(plan[0], Shard) else layout_shards(plan, max_shard_bytes)  # type: ignore[arg-type]
    stream = iter(tensors)
    weight_map: dict[str, str] = {}
    written: list[Path] = []
    for shard in shards:
        assert isinstance(shard, Shard)
        path = out_dir / shard.file_name
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            with AppendWriter(fd) as writer:
                writer.write(memoryview(shard.header))
                for planned in shard.tensors:
                    rows_needed = planned.shape[0] if planned.shape else 1
                    rows_done = 0
                    while rows_done < rows_needed:
                        item = next(stream, None)
                        if item is None:
                            raise RuntimeError(f"tensor stream ended before {planned.name} was complete")
                        name, tensor = item
                        _check_planned(planned, name, tensor, rows_needed - rows_done)
                        writer.write(_tensor_bytes(tensor))
                        rows_done += tensor.shape[0] if planned.shape else 1
                    weight_map[planned.name] = shard.file_name
        finally:
            os.close(fd)
        os.replace(tmp, path)
        written.append(path)
    leftover = next(stream, None)
    if leftover is not None:
        raise RuntimeError(f"tensor {leftover[0]!r} was produced but not planned")
    index_path = out_dir / INDEX_NAME
    if len(shards) > 1:
        total = sum(t.nbytes for shard in shards for t in shard.tensors)
        index_path.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    elif index_path.exists():
        index_path.unlink()
    return written


class Encoded(NamedTuple):
    """A tensor's bytes in a numpy array, with the safetensors dtype and shape they stand for.

    For the FP8 quantizer, whose codes and scales come from a compiled kernel as numpy arrays:
    they go to the writer as they are, without a torch view per expert (microseconds each, and a
    large MoE has tens of thousands of experts).
    """

    dtype: str
    shape: tuple[int, ...]
    data: np.ndarray  # C-contiguous, holding exactly the tensor's bytes


def _check_planned(planned: PlannedTensor, name: str, tensor: torch.Tensor | Encoded, rows_left: int) -> None:
    shape = tuple(tensor.shape)
    if isinstance(tensor, Encoded):
        dtype = tensor.dtype
        if tensor.data.nbytes != math.prod(shape) * DTYPE_BYTES.get(dtype, 0):
            raise RuntimeError(f"{name}: {tensor.data.nbytes} bytes do not hold {dtype}{list(shape)}")
    else:
        dtype = st_dtype(tensor)
    fits = shape == planned.shape or (
        len(shape) == len(planned.shape) and len(shape) > 0 and shape[1:] == planned.shape[1:]
        and 0 < shape[0] <= rows_left
    )
    if name != planned.name or dtype != planned.dtype or not fits:
        raise RuntimeError(
            f"writer expected {planned.name} {planned.dtype}{list(planned.shape)}, got {name} {dtype}{list(shape)}"
        )


def _tensor_bytes(tensor: torch.Tensor | Encoded) -> memoryview:
    import torch

    if isinstance(tensor, Encoded):
        return tensor.data.data
    if tensor.dim() and tensor.dtype != torch.bool and tensor.is_contiguous() and tensor.device.type == "cpu":
        return tensor.detach().view(torch.uint8).numpy().data  # the usual case, in three calls
    flat = tensor.detach().contiguous().reshape(-1).cpu()
    if flat.dtype == torch.bool:
        flat = flat.to(torch.uint8)
    return flat.view(torch.uint8).numpy().data
