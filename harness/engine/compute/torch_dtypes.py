"""Safetensors dtype codes and torch dtypes, both ways (the one place that maps them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from bench.errors import UserError

if TYPE_CHECKING:
    import torch

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
            return getattr(torch, name.removeprefix("torch."))
    raise UserError(f"safetensors dtype {code} has no torch equivalent here")
