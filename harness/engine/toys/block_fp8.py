"""A block-FP8 copy of a bf16 MoE checkpoint, stored the way DeepSeek-V3, Kimi-K2 and Qwen3 FP8 ship.

Each chosen linear weight becomes float8_e4m3fn beside a float32 ``weight_scale_inv`` with one
scale per ``block`` x ``block`` tile (the last row or column of tiles partial where a dimension is
not a multiple of the block), and ``config.json`` gains ``quantization_config: {quant_method: fp8,
fmt: e4m3, activation_scheme: dynamic, weight_block_size: [block, block]}``. Tests and demos use it
to exercise FP8 sources without a 600 GB download.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from bench.engine.planning.checkpoint import Checkpoint
from bench.engine.planning.fp8_plan import TensorPlan, plan_quantization
from bench.engine.planning.fp8_source import SCALE_SUFFIX
from bench.engine.planning.side_files import copy_side_files, write_config
from bench.errors import UserError

if TYPE_CHECKING:
    import torch

    from bench.engine.compute.tensor_reader import TensorReader

Scope = Literal["all", "experts"]


def block_fp8_config(block: int) -> dict[str, object]:
    """The ``quantization_config`` block-FP8 sources carry (vLLM's ``Fp8Config``)."""
    return {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic", "weight_block_size": [block, block]}


def write_block_fp8(source: Path, out: Path, *, block: int = 128, scope: Scope = "all") -> Path:
    """Write ``source`` (bf16, per-expert or fused experts) to ``out`` with block-FP8 linear weights.

    Args:
        source: a bf16 MoE checkpoint directory.
        out: the new checkpoint directory (one ``model.safetensors``; config and tokenizer copied).
        block: tile edge of the scales (128 in every shipped block-FP8 model).
        scope: ``"all"`` quantizes every linear weight FP8 covers (attention, dense and shared MLPs,
            routed experts), as shipped checkpoints do; ``"experts"`` only the routed experts, leaving
            a partly FP8 checkpoint for ``bench quantize`` to finish.
    """
    from safetensors.torch import save_file

    from bench.engine.compute.fp8 import quantize_blocks
    from bench.engine.compute.tensor_reader import TensorReader

    checkpoint = Checkpoint.open(source)
    if checkpoint.config.get("quantization_config"):
        raise UserError(f"{source} is quantized already: give a bf16 checkpoint")
    plan = plan_quantization(checkpoint, block=block, unfuse=True)
    reader = TensorReader(checkpoint)
    state: dict[str, torch.Tensor] = {}
    for item in plan.tensors:
        tensor = _source_rows(reader, item)
        if item.action == "keep" or (scope == "experts" and item.reason != "expert"):
            if item.select is not None:  # an unquantized expert cut out of a fused tensor: refuse, not guess
                raise UserError(f"{source}: scope {scope!r} with fused experts is not supported")
            state[item.source.name] = tensor.contiguous()
            continue
        name = item.outputs[0].name
        codes, scales = quantize_blocks(tensor, block)
        state[name] = codes.contiguous()
        state[name + SCALE_SUFFIX] = scales.contiguous()
    reader.close()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config = dict(checkpoint.config)
    config["quantization_config"] = block_fp8_config(block)
    write_config(out, config)
    copy_side_files(source, out)
    return out


def _source_rows(reader: TensorReader, item: TensorPlan) -> torch.Tensor:
    """The source values of one planned tensor (one expert's rows for a slice of a fused tensor)."""
    if item.select is None:
        return reader.get(item.source.name)
    expert, start, stop = item.select
    return reader.rows(item.source.name, expert, expert + 1)[0, start:stop]
