"""Safetensors checkpoints read from headers and written as a stream.

Every engine step (fit, prune, quantize) must work on models far larger than memory. Headers
tell us every tensor's name, dtype and shape without reading a byte of weights, so the output
layout can be planned up front; the writer then emits the safetensors header first and appends
each tensor's bytes as it is produced (from a writer thread, so producing the next tensor
overlaps writing this one). Peak memory is one tensor plus a few MiB queued for the writer,
never a shard.

The header parser is plain Python (no torch), so ``bench fit`` runs without the engine extra.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import shutil
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from bench.errors import UserError

if TYPE_CHECKING:
    import numpy as np
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
# Files beside the weights that a served checkpoint needs unchanged.
SIDE_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "generation_config.json",
    "preprocessor_config.json",
    "processor_config.json",
    "video_preprocessor_config.json",
)

DTYPE_BYTES: dict[str, float] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as its file header describes it."""

    name: str
    dtype: str  # safetensors dtype code, e.g. "BF16"
    shape: tuple[int, ...]
    file: Path
    offset: int = 0  # byte offset of the data within its file's data section

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return int(self.numel * DTYPE_BYTES[self.dtype])


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (the 8-byte length, then the JSON)."""
    try:
        with path.open("rb") as fh:
            raw_len = fh.read(8)
            if len(raw_len) != 8:
                raise UserError(f"{path} is not a safetensors file (shorter than 8 bytes)")
            (header_len,) = struct.unpack("<Q", raw_len)
            if header_len > 100_000_000:
                raise UserError(f"{path} is not a safetensors file (header length {header_len})")
            return json.loads(fh.read(header_len))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read safetensors header of {path}: {exc}") from exc


def read_config(model_dir: Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory, with a clear error when it is missing."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        raise UserError(f"{model_dir} has no config.json: point --model at a Hugging Face checkpoint directory")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise UserError(f"{path} is not valid JSON: {exc}") from exc


@dataclass
class Checkpoint:
    """A checkpoint directory's config and tensor headers; weights are read only on demand."""

    path: Path
    config: dict[str, Any]
    tensors: dict[str, TensorInfo]

    @classmethod
    def open(cls, model_dir: Path | str) -> Checkpoint:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise UserError(f"model directory {model_dir} does not exist")
        config = read_config(model_dir)
        files = _weight_files(model_dir)
        tensors: dict[str, TensorInfo] = {}
        for file in files:
            for name, meta in read_header(file).items():
                if name == "__metadata__":
                    continue
                tensors[name] = TensorInfo(
                    name, meta["dtype"], tuple(meta["shape"]), file, int(meta["data_offsets"][0])
                )
        return cls(model_dir, config, tensors)

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def file_bytes(self) -> int:
        """Bytes on disk of the weight files (headers included)."""
        return sum(f.stat().st_size for f in _weight_files(self.path))

    def names_with_prefix(self, prefix: str) -> list[str]:
        return [n for n in self.tensors if n.startswith(prefix)]

    def reader(self, window_bytes: int | None = None) -> TensorReader:
        return TensorReader(self, window_bytes)

    def in_file_order(self) -> list[TensorInfo]:
        """Tensors in on-disk order, so a full pass reads every shard sequentially."""
        return sorted(self.tensors.values(), key=lambda t: (str(t.file), t.offset))


def _weight_files(model_dir: Path) -> list[Path]:
    index = model_dir / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as exc:
            raise UserError(f"{index} is not a valid safetensors index: {exc}") from exc
        files = sorted({model_dir / f for f in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise UserError(f"{index} names missing shard(s): {', '.join(missing)}")
        return files
    single = model_dir / SINGLE_NAME
    if single.is_file():
        return [single]
    found = sorted(model_dir.glob("*.safetensors"))
    if not found:
        raise UserError(f"{model_dir} has no .safetensors weights (only safetensors checkpoints are supported)")
    return found


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

    def _handle(self, name: str) -> Any:
        from safetensors import safe_open

        if self._window is not None and self._read_since_open >= self._window:
            self.close()
        info = self._checkpoint.tensors.get(name)
        if info is None:
            raise UserError(f"tensor {name!r} is not in {self._checkpoint.path}")
        handle = self._handles.get(info.file)
        if handle is None:
            handle = safe_open(str(info.file), framework="pt")
            self._handles[info.file] = handle
        return handle

    def get(self, name: str) -> torch.Tensor:
        tensor = self._handle(name).get_tensor(name)
        self._read_since_open += tensor.nbytes
        return tensor

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the first dimension, without reading the rest of the tensor."""
        tensor = self._handle(name).get_slice(name)[start:stop]
        self._read_since_open += tensor.nbytes
        return tensor

    def row_chunks(self, name: str, max_bytes: int = 256 << 20, multiple: int = 1) -> Iterator[torch.Tensor]:
        """The tensor in first-dimension chunks of at most ``max_bytes`` (rows a multiple of ``multiple``)."""
        info = self._checkpoint.tensors[name]
        mappable = info.dtype in TORCH_TO_ST.values() and len(info.shape) > 0
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


# --------------------------------------------------------------------------------------------
# Writing


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


TORCH_TO_ST = {
    "torch.float32": "F32",
    "torch.float16": "F16",
    "torch.bfloat16": "BF16",
    "torch.float64": "F64",
    "torch.int64": "I64",
    "torch.int32": "I32",
    "torch.int16": "I16",
    "torch.int8": "I8",
    "torch.uint8": "U8",
    "torch.bool": "BOOL",
    "torch.float8_e4m3fn": "F8_E4M3",
    "torch.float8_e5m2": "F8_E5M2",
}


def st_dtype(tensor: torch.Tensor) -> str:
    return TORCH_TO_ST[str(tensor.dtype)]


def torch_dtype(code: str) -> torch.dtype:
    """The torch dtype of a safetensors dtype code (the inverse of :func:`st_dtype`)."""
    import torch

    for name, st in TORCH_TO_ST.items():
        if st == code:
            return getattr(torch, name.removeprefix("torch."))  # type: ignore[no-any-return]
    raise UserError(f"safetensors dtype {code} has no torch equivalent here")


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
    from bench.engine.append_writer import AppendWriter

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
        total = sum(t.nbytes for shard in shards for t in shard.tensors)  # type: ignore[union-attr]
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


def copy_side_files(src: Path, dst: Path, *, skip: Iterable[str] = ()) -> list[str]:
    """Copy tokenizer, chat template and generation config files so the output serves the same way."""
    dst.mkdir(parents=True, exist_ok=True)
    copied = []
    skipped = set(skip)
    for name in SIDE_FILES:
        if name in skipped:
            continue
        source = src / name
        if source.is_file():
            shutil.copy2(source, dst / name)
            copied.append(name)
    return copied


def write_config(out_dir: Path, config: dict[str, Any]) -> None:
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@dataclass
class SizeReport:
    """Sizes of a conversion, for the one-line summary the CLI prints."""

    before_bytes: int
    after_bytes: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.after_bytes / self.before_bytes if self.before_bytes else float("nan")


def gib(n_bytes: float) -> str:
    return f"{n_bytes / (1 << 30):.3f} GiB" if n_bytes >= (1 << 28) else f"{n_bytes / (1 << 20):.2f} MiB"
