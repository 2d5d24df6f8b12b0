"""Safetensors checkpoints as their headers describe them: names, dtypes, shapes, offsets.

Every engine step (fit, prune, quantize) must work on models far larger than memory. Headers
tell us every tensor's name, dtype and shape without reading a byte of weights, so the output
layout can be planned up front. The parser is plain Python (no torch), so ``bench fit`` runs
without the engine extra; reading the weights themselves is
:class:`bench.engine.compute.tensor_reader.TensorReader`'s job.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.errors import UserError

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"

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
