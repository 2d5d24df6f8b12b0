"""Reading single tensors, or row ranges of them, from a checkpoint without loading its shards.

Tensors come either through safetensors' own handles or as flat views of a memory map, so one
read can cover a run of adjacent tensors. Peak memory is a window of the checkpoint, not all of it.

A block-FP8 source read through its compute view (:func:`bench.engine.planning.fp8_source.compute_view`)
gives real-valued weights from :meth:`TensorReader.get` and :meth:`TensorReader.rows`: codes times
their block's scale, in the dtype the view presents. Writers read the checkpoint itself, whose
tensors come out exactly as stored.
"""

from __future__ import annotations

import mmap
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.engine.compute.torch_dtypes import TORCH_TO_ST, torch_dtype
from bench.engine.planning.checkpoint import DTYPE_BYTES, Checkpoint, TensorInfo
from bench.engine.planning.fp8_source import DequantizedCheckpoint
from bench.errors import UserError

if TYPE_CHECKING:
    import torch

# Tensors read from safetensors are views of a memory map whose pages count as this process's
# memory while the map is open: a windowed reader reopens its files after this many bytes.
MAP_WINDOW_BYTES = 16 << 20


class TensorReader:
    """Reads single tensors from a checkpoint, keeping one open handle per shard.

    With ``window_bytes``, the handles are dropped (and reopened on demand) once that many bytes
    were read through them, so a streaming pass keeps a window of the checkpoint resident, not all
    of it. The drop happens at the next read, after the caller is done with the last tensor.
    """

    def __init__(self, checkpoint: Checkpoint, window_bytes: int | None = None) -> None:
        self._checkpoint = checkpoint
        self._handles: dict[Path, Any] = {}
        self._maps: dict[Path, tuple[mmap.mmap, int]] = {}
        self._window = window_bytes
        self._read_since_open = 0
        # Presented name -> (stored FP8 weight, its scales), for a block-FP8 compute view.
        self._fp8 = checkpoint.stored if isinstance(checkpoint, DequantizedCheckpoint) else {}
        self._block = checkpoint.block if isinstance(checkpoint, DequantizedCheckpoint) else (1, 1)

    def _handle(self, name: str) -> Any:
        info = self._checkpoint.tensors.get(name)
        if info is None:
            raise UserError(f"tensor {name!r} is not in {self._checkpoint.path}")
        return self._file_handle(info.file)

    def _file_handle(self, file: Path) -> Any:
        from safetensors import safe_open

        if self._window is not None and self._read_since_open >= self._window:
            self.close()
        handle = self._handles.get(file)
        if handle is None:
            handle = safe_open(str(file), framework="pt")
            self._handles[file] = handle
        return handle

    def get(self, name: str) -> torch.Tensor:
        if name in self._fp8:
            return self._dequantized(name, 0, self._fp8[name][0].shape[0])
        tensor = self._handle(name).get_tensor(name)
        self._read_since_open += tensor.nbytes
        return tensor

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the first dimension, without reading the rest of the tensor."""
        if name in self._fp8:
            return self._dequantized(name, start, stop)
        tensor = self._handle(name).get_slice(name)[start:stop]
        self._read_since_open += tensor.nbytes
        return tensor

    def _dequantized(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a block-FP8 weight as real values: each code times its block's scale.

        Computed in float32 (an e4m3 code times a float32 scale), then cast to the presented dtype.
        """
        from bench.engine.compute.fp8 import dequantize_block_scaled
        from bench.engine.compute.torch_dtypes import torch_dtype

        weight, scale = self._fp8[name]
        rows_per_scale = self._block[0]
        stop = min(stop, weight.shape[0])
        first, last = start // rows_per_scale, -(-stop // rows_per_scale)
        codes = self._file_handle(weight.file).get_slice(weight.name)[start:stop]
        scales = self._file_handle(scale.file).get_slice(scale.name)[first:last]
        self._read_since_open += codes.nbytes + scales.nbytes
        # The scales cover whole blocks from ``first``: expand them, then drop the rows before ``start``.
        offset = start - first * rows_per_scale
        real = dequantize_block_scaled(codes, scales.float(), self._block, row_offset=offset)
        return real.to(torch_dtype(self._checkpoint.tensors[name].dtype))

    def row_chunks(self, name: str, max_bytes: int = 256 << 20, multiple: int = 1) -> Iterator[torch.Tensor]:
        """The tensor in first-dimension chunks of at most ``max_bytes`` (rows a multiple of ``multiple``)."""
        info = self._checkpoint.tensors[name]
        mappable = info.dtype in TORCH_TO_ST.values() and len(info.shape) > 0 and name not in self._fp8
        if name in self._fp8 and info.nbytes > max_bytes:  # real values: row ranges, whole scale blocks each
            step = max(max_bytes // max(info.nbytes // info.shape[0], 1) // self._block[0], 1) * self._block[0]
            for start in range(0, info.shape[0], step):
                yield self._dequantized(name, start, start + step)
            return
        if not mappable or info.nbytes <= max_bytes:
            yield self.span(info, 0, info.numel).view(info.shape) if mappable else self.get(name)
            return
        row_bytes = max(info.nbytes // info.shape[0], 1)
        step = max(max_bytes // row_bytes // multiple, 1) * multiple
        row_numel = info.numel // info.shape[0]
        for start in range(0, info.shape[0], step):
            stop = min(start + step, info.shape[0])
            yield self.span(info, start * row_numel, (stop - start) * row_numel).view(stop - start, *info.shape[1:])

    def span(self, info: TensorInfo, start: int, count: int) -> torch.Tensor:
        """``count`` elements of ``info``'s dtype from element ``start``, as a flat view of the file.

        The view may run past the end of ``info`` into the tensors stored right after it, so one
        read covers a run of adjacent same-dtype tensors (every expert of a layer): a per-tensor
        read through safetensors costs tens of microseconds, a cost paid per expert otherwise.
        """
        import torch

        if info.name in self._fp8:
            raise RuntimeError(f"{info.name} is stored as FP8 codes: read its real values with get() or rows()")
        if self._window is not None and self._read_since_open >= self._window:
            self.close()
        mapped = self._maps.get(info.file)
        if mapped is None:
            with info.file.open("rb") as fh:
                # Copy-on-write pages are never written here; a read-only map would make torch warn.
                mapped = (mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_COPY), _data_start(info.file))
            self._maps[info.file] = mapped
        itemsize = int(DTYPE_BYTES[info.dtype])
        offset = mapped[1] + info.offset + start * itemsize
        if offset + count * itemsize > len(mapped[0]):
            raise UserError(f"{info.file} is shorter than its header says (tensor {info.name!r})")
        self._read_since_open += count * itemsize
        return torch.frombuffer(mapped[0], dtype=torch_dtype(info.dtype), count=count, offset=offset)

    def close(self) -> None:
        self._handles.clear()
        self._maps.clear()  # each map is unmapped once the last tensor viewing it is gone
        self._read_since_open = 0


def _data_start(path: Path) -> int:
    """Byte offset of a safetensors file's data section (after the length and the JSON header)."""
    with path.open("rb") as fh:
        (header_len,) = struct.unpack("<Q", fh.read(8))
    return 8 + int(header_len)
