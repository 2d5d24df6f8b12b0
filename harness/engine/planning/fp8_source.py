"""Checkpoints that arrive in block FP8 (DeepSeek-V3, Kimi-K2, Qwen3 FP8), recognised from headers.

Their config says ``quantization_config: {quant_method: fp8, fmt: e4m3, activation_scheme: dynamic,
weight_block_size: [128, 128]}``; each quantized linear weight is float8_e4m3fn beside a float32
``weight_scale_inv`` of shape ``[ceil(out / 128), ceil(in / 128)]``, and the real weight is the
codes times their block's scale. Pruning copies those tensors bit for bit; only scoring needs real
values, which it reads through :func:`compute_view`: the same checkpoint with every FP8 weight
presented in the model's own dtype and the scales hidden, so the layer code sees a plain
checkpoint and :class:`bench.engine.compute.tensor_reader.TensorReader` dequantizes on read.
Torch-free, like the rest of planning.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

from bench.engine.planning.checkpoint import Checkpoint, TensorInfo
from bench.engine.planning.moe import text_config
from bench.errors import UserError

SCALE_SUFFIX = "_scale_inv"  # beside ``x.weight``: ``x.weight_scale_inv``
FP8_DTYPE = "F8_E4M3"
# The config's compute dtype, as the safetensors code a dequantized weight is presented in.
_COMPUTE_DTYPES = {"bfloat16": "BF16", "float16": "F16", "float32": "F32"}


@dataclass(frozen=True)
class BlockFP8:
    """A block-FP8 source: its block shape, each FP8 weight's scale, and what it left unquantized."""

    block: tuple[int, int]  # (rows, cols) of one scale's tile: weight_block_size
    scales: dict[str, str]  # FP8 weight name -> its weight_scale_inv name
    ignored: tuple[str, ...] = ()  # modules the config leaves unquantized (ignored_layers, modules_to_not_convert)

    def describe(self) -> str:
        return f"block FP8 {self.block[0]}x{self.block[1]}"

    def is_ignored(self, weight_name: str) -> bool:
        module = weight_name.removesuffix(".weight")
        return any(module == entry or module.endswith(f".{entry}") for entry in self.ignored)


def quantization_of(config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``quantization_config`` block, top level or inside a multimodal wrapper's ``text_config``."""
    for where in (config, text_config(config)):
        quant = where.get("quantization_config")
        if isinstance(quant, dict) and quant:
            return quant
    return None


def block_fp8(checkpoint: Checkpoint) -> BlockFP8 | None:
    """The checkpoint's block-FP8 layout, or None when it is not quantized.

    Raises:
        UserError: quantized some other way (compressed-tensors, per-tensor FP8, GPTQ, ...), or a
            block-FP8 config whose tensors do not match it; the line names the method or tensor.
    """
    quant = quantization_of(checkpoint.config)
    if quant is None:
        return None
    method = str(quant.get("quant_method") or quant.get("format") or "?")
    if method != "fp8":
        raise UserError(
            f"{checkpoint.path} is quantized ({method}): the engine reads bf16 checkpoints and block-FP8 ones "
            "(quant_method fp8 with weight_block_size, as DeepSeek-V3, Kimi-K2 and Qwen3 FP8 ship); "
            "prune the bf16 checkpoint, then quantize the result"
        )
    block = _block_size(quant, checkpoint)
    scales: dict[str, str] = {}
    for info in checkpoint.tensors.values():
        if info.dtype != FP8_DTYPE:
            continue
        scales[info.name] = _checked_scale(checkpoint, info, block)
    if not scales:
        raise UserError(f"{checkpoint.path}: config.json declares quant_method fp8 but no tensor is float8_e4m3fn")
    ignored = tuple(str(m) for key in ("ignored_layers", "modules_to_not_convert") for m in quant.get(key) or [])
    return BlockFP8((block[0], block[1]), scales, ignored)


def _block_size(quant: dict[str, Any], checkpoint: Checkpoint) -> tuple[int, int]:
    block = quant.get("weight_block_size")
    if block is None:
        raise UserError(
            f"{checkpoint.path} is FP8 with one scale per tensor (quant_method fp8 without weight_block_size): "
            "only block-scaled FP8 sources are supported; prune the bf16 checkpoint, then quantize the result"
        )
    if not (isinstance(block, list) and len(block) == 2 and all(isinstance(b, int) and b > 0 for b in block)):
        raise UserError(f"{checkpoint.path}: quantization_config.weight_block_size {block!r} must be two positive integers")
    fmt = quant.get("fmt", "e4m3")
    if fmt != "e4m3":
        raise UserError(f"{checkpoint.path}: FP8 format {fmt!r} is not supported (only e4m3: float8_e4m3fn)")
    scheme = quant.get("activation_scheme", "dynamic")
    if scheme != "dynamic":
        raise UserError(f"{checkpoint.path}: block FP8 needs activation_scheme 'dynamic' (vLLM's rule), not {scheme!r}")
    return block[0], block[1]


def _checked_scale(checkpoint: Checkpoint, info: TensorInfo, block: tuple[int, int]) -> str:
    """The name of ``info``'s scale tensor, after checking its dtype and shape against the block."""
    if not info.name.endswith(".weight") or len(info.shape) != 2:
        raise UserError(
            f"{checkpoint.path}: FP8 tensor {info.name} {list(info.shape)} is not a 2D linear weight; "
            "block-FP8 sources store one float8 weight per projection"
        )
    name = info.name + SCALE_SUFFIX
    scale = checkpoint.tensors.get(name)
    want = (math.ceil(info.shape[0] / block[0]), math.ceil(info.shape[1] / block[1]))
    if scale is None:
        raise UserError(f"{checkpoint.path}: FP8 weight {info.name} has no {name} (its per-block scales)")
    if scale.dtype not in ("F32", "BF16", "F16") or scale.shape != want:
        raise UserError(
            f"{checkpoint.path}: {name} is {scale.dtype}{list(scale.shape)}, expected float scales of shape {list(want)} "
            f"for {info.name} {list(info.shape)} in {block[0]}x{block[1]} blocks"
        )
    return name


@dataclass
class DequantizedCheckpoint(Checkpoint):
    """A block-FP8 checkpoint as scoring sees it: FP8 weights in the compute dtype, scales hidden.

    ``stored`` keeps, for each presented weight, its on-disk FP8 header and its scale's, which the
    tensor reader uses to dequantize. Nothing here reads a weight.
    """

    stored: dict[str, tuple[TensorInfo, TensorInfo]] = field(default_factory=dict)
    block: tuple[int, int] = (128, 128)


def compute_view(checkpoint: Checkpoint, fp8: BlockFP8) -> DequantizedCheckpoint:
    """``checkpoint`` with its FP8 weights presented as real-valued ones (see the module docstring)."""
    config = copy.deepcopy(checkpoint.config)
    for where in (config, text_config(config)):
        where.pop("quantization_config", None)
    dtype_name = str(text_config(config).get("torch_dtype") or text_config(config).get("dtype") or "bfloat16")
    dtype = _COMPUTE_DTYPES.get(dtype_name, "BF16")
    hidden = set(fp8.scales.values())
    tensors: dict[str, TensorInfo] = {}
    stored: dict[str, tuple[TensorInfo, TensorInfo]] = {}
    for name, info in checkpoint.tensors.items():
        if name in hidden:
            continue
        if name in fp8.scales:
            stored[name] = (info, checkpoint.tensors[fp8.scales[name]])
            info = TensorInfo(name, dtype, info.shape, info.file, info.offset)
        tensors[name] = info
    return DequantizedCheckpoint(checkpoint.path, config, tensors, stored=stored, block=fp8.block)
