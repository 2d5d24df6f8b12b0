"""FP8 conversion, planned from headers: which tensors become FP8, their scales, and the config block.

Every linear weight becomes float8_e4m3fn with a float32 scale, per output channel (FP8_DYNAMIC)
or per block (FP8_BLOCK), experts in both on-disk layouts included; routers, norms, embeddings and
lm_head keep their precision and are listed in the config's ``ignore`` so loaders know. Deciding
all of it from headers lets ``bench fit`` predict the FP8 size exactly, without torch.

A block-FP8 source (see :mod:`bench.engine.planning.fp8_source`) keeps its FP8 weights, their
scales and its own ``quantization_config``; only linear weights it still holds in bf16 (and does
not list as ignored) are quantized, in its own block size and scale naming. With none left, the
checkpoint is already FP8 and there is nothing to do.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from bench.engine.planning.checkpoint import Checkpoint, TensorInfo
from bench.engine.planning.fp8_source import SCALE_SUFFIX, BlockFP8, block_fp8, quantization_of
from bench.engine.planning.layout import PlannedTensor, predicted_file_bytes
from bench.engine.planning.moe import MoEModel, resolve_if_moe
from bench.errors import UserError

FLOAT_DTYPES = {"BF16", "F16", "F32"}
# Linear weights kept in high precision in every family: input and output embeddings.
ALWAYS_KEPT = (r"(^|\.)embed_tokens\.weight$", r"(^|\.)lm_head\.weight$", r"(^|\.)wte\.weight$",
               r"(^|\.)embeddings?\.")

Action = Literal["quantize", "keep"]


@dataclass(frozen=True)
class TensorPlan:
    """What happens to one source tensor (or one expert's slice of a fused one), and what it becomes."""

    source: TensorInfo
    action: Action
    reason: str  # why it is kept, or "linear" / "expert"
    outputs: tuple[PlannedTensor, ...]
    # For an expert cut out of a fused [n_experts, out, in] tensor: (expert, first row, end row).
    select: tuple[int, int, int] | None = None


@dataclass
class QuantPlan:
    """The whole conversion, known before any weight is read."""

    checkpoint: Checkpoint
    moe: MoEModel | None
    block: int | None
    skip_experts: bool
    unfuse: bool
    tensors: list[TensorPlan]
    ignore: list[str]
    source: BlockFP8 | None = None  # the checkpoint was block FP8 already: its format is kept

    @property
    def output(self) -> list[PlannedTensor]:
        return [out for plan in self.tensors for out in plan.outputs]

    def predicted_bytes(self, max_shard_bytes: int) -> int:
        return predicted_file_bytes(self.output, max_shard_bytes)

    def counts(self) -> dict[str, int]:
        quantized = sum(1 for p in self.tensors if p.action == "quantize")
        return {"quantized": quantized, "kept": len(self.tensors) - quantized}


def scale_shape(shape: tuple[int, ...], block: int | None) -> tuple[int, ...]:
    """Scale shape of a 2D ``[out, in]`` or fused 3D ``[experts, out, in]`` weight."""
    *lead, out_dim, in_dim = shape
    if block is None:
        return (*lead, out_dim, 1)
    return (*lead, math.ceil(out_dim / block), math.ceil(in_dim / block))


def plan_quantization(
    checkpoint: Checkpoint, *, block: int | None = None, skip_experts: bool = False, unfuse: bool = True
) -> QuantPlan:
    """Decide, from headers alone, which tensors become FP8 and what the output holds.

    ``unfuse`` writes quantized fused experts as per-expert 2D tensors
    (``experts.<e>.gate_proj.weight`` + ``weight_scale``): the layout both transformers'
    compressed-tensors loader and vLLM's per-expert mapping read. With ``unfuse=False`` the
    3D tensors stay fused with ``[n_experts, out, 1]`` scales (``experts.gate_up_proj_scale``).
    """
    if block is not None and block <= 0:
        raise UserError(f"--block must be a positive number of rows/columns, got {block}")
    quant = quantization_of(checkpoint.config)
    if quant and quant.get("quant_method") != "fp8":
        raise UserError(
            f"{checkpoint.path} is already quantized ({quant.get('quant_method', quant.get('format', '?'))}); "
            "quantize the original bf16 checkpoint instead"
        )
    source = block_fp8(checkpoint) if quant else None
    if source is not None:
        block = _source_block(checkpoint, source, block)
    moe = resolve_if_moe(checkpoint)
    experts = moe.expert_tensor_names() if moe else set()
    routers = moe.router_tensor_names() if moe else set()
    shared_gates = set()
    if moe:
        shared_gates = {n for layer in moe.layers for n in layer.shared_tensors if n.endswith("_gate.weight")}
    family_keep = [re.compile(p) for p in (moe.family.keep_high_precision if moe else ())]
    always = [re.compile(p) for p in ALWAYS_KEPT]
    plans: list[TensorPlan] = []
    ignore: list[str] = []
    fused_names = {n for layer in moe.layers if layer.layout == "fused" for n in layer.fused_tensors} if moe else set()
    stored_fp8 = set(source.scales) | set(source.scales.values()) if source else set()
    scale_of: Callable[[str], str] = (lambda name: name + SCALE_SUFFIX) if source else _scale_name
    for info in checkpoint.in_file_order():
        if info.name in stored_fp8:
            if skip_experts and info.name in experts:
                raise UserError(
                    f"--skip-experts keeps routed experts in bf16, but {checkpoint.path} stores them in FP8 already "
                    f"({info.name}): drop --skip-experts"
                )
            plans.append(TensorPlan(info, "keep", "already FP8", (PlannedTensor(info.name, info.dtype, info.shape),)))
            continue
        reason = _keep_reason(info, experts, routers, shared_gates, family_keep, always, skip_experts)
        if reason is None and source is not None and source.is_ignored(info.name):
            reason = "the source keeps it unquantized"
        if reason is None and unfuse and info.name in fused_names:
            plans.extend(_unfused_plans(info, block, moe, scale_of))
            continue
        if reason is None:
            weight = PlannedTensor(info.name, "F8_E4M3", info.shape)
            scale = PlannedTensor(scale_of(info.name), "F32", scale_shape(info.shape, block))
            kind = "expert" if info.name in experts else "linear"
            plans.append(TensorPlan(info, "quantize", kind, (weight, scale)))
            continue
        plans.append(TensorPlan(info, "keep", reason, (PlannedTensor(info.name, info.dtype, info.shape),)))
        if reason in {"embedding", "router", "shared-expert gate", "family", "too small"} \
                and info.name.endswith(".weight") \
                and len(info.shape) == 2:
            ignore.append(info.name.removesuffix(".weight"))
    if skip_experts and experts:
        # vLLM asks for <experts>.0.<proj> of every MoE layer; one pattern covers both layouts.
        ignore.append(r"re:.*\.experts\..*")
    if source is not None and not any(p.action == "quantize" for p in plans):
        raise UserError(
            f"{checkpoint.path} is already FP8 ({source.describe()}, {len(source.scales)} float8 weights): every "
            "linear weight FP8 covers is stored in float8_e4m3fn, so there is nothing to quantize; serve or prune it "
            "as it is"
        )
    return QuantPlan(checkpoint, moe, block, skip_experts, unfuse, plans, ignore, source)


def _source_block(checkpoint: Checkpoint, source: BlockFP8, block: int | None) -> int:
    """The block edge for a block-FP8 source's remaining bf16 weights: its own, so one config covers all."""
    rows, cols = source.block
    if rows != cols:
        raise UserError(
            f"{checkpoint.path} is {source.describe()}: quantizing its remaining bf16 weights needs square blocks"
        )
    if block is not None and block != rows:
        raise UserError(
            f"{checkpoint.path} is {source.describe()} already: its remaining bf16 weights are quantized in the same "
            f"blocks, so drop --block or pass --block {rows}"
        )
    return rows


def _unfused_plans(info: TensorInfo, block: int | None, moe: MoEModel | None,
                   scale_of: Callable[[str], str]) -> list[TensorPlan]:
    """Per-expert 2D plans for one fused 3D expert tensor (gate_up_proj splits into gate and up)."""
    assert moe is not None
    stems = moe.family.projections
    block_prefix, stem = info.name.rsplit("experts.", 1)
    n_experts, out_dim, in_dim = info.shape
    if stem == "gate_up_proj":
        half = out_dim // 2
        parts = [(stems.gate, 0, half), (stems.up, half, out_dim)]
    else:
        parts = [(stems.down if stem == "down_proj" else stem, 0, out_dim)]
    plans = []
    for expert in range(n_experts):
        for proj, start, stop in parts:
            name = f"{block_prefix}experts.{expert}.{proj}.weight"
            shape = (stop - start, in_dim)
            outputs = (
                PlannedTensor(name, "F8_E4M3", shape),
                PlannedTensor(scale_of(name), "F32", scale_shape(shape, block)),
            )
            plans.append(TensorPlan(info, "quantize", "expert", outputs, select=(expert, start, stop)))
    return plans


def _scale_name(name: str) -> str:
    # Fused expert tensors have no ".weight" suffix (experts.gate_up_proj): the scale sits beside them.
    return name.removesuffix(".weight") + ".weight_scale" if name.endswith(".weight") else name + "_scale"


def _keep_reason(info: TensorInfo, experts: set[str], routers: set[str], shared_gates: set[str],
                 family_keep: list[re.Pattern[str]], always: list[re.Pattern[str]], skip_experts: bool) -> str | None:
    if info.dtype not in FLOAT_DTYPES:
        return "not floating point"
    if info.name in experts:
        if skip_experts:
            return "expert (--skip-experts)"
        if len(info.shape) == 3 and not info.name.endswith("_bias"):
            return None
        if len(info.shape) == 2 and info.name.endswith(".weight"):
            return None
        return "expert bias"
    if info.name in routers:
        return "router"
    if info.name in shared_gates:
        return "shared-expert gate"
    if not info.name.endswith(".weight") or len(info.shape) != 2:
        return "not a linear weight"
    if any(p.search(info.name) for p in always):
        return "embedding"
    if any(p.search(info.name) for p in family_keep):
        return "family"
    if min(info.shape) < 16:
        return "too small"
    return None


def quantization_config(plan: QuantPlan) -> dict[str, Any]:
    """The ``quantization_config`` block, built by compressed-tensors from its own preset scheme.

    compressed-tensors (engine extra) is imported here only: planning itself stays torch-free.
    A block-FP8 source keeps its own block, unchanged.
    """
    if plan.source is not None:
        return dict(quantization_of(plan.checkpoint.config) or {})
    from compressed_tensors import CompressionFormat
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationStatus,
        preset_name_to_scheme,
    )

    preset = "FP8_DYNAMIC" if plan.block is None else "FP8_BLOCK"
    scheme = preset_name_to_scheme(preset, targets=["Linear"])
    if plan.block is not None and scheme.weights is not None:
        scheme.weights.block_structure = [plan.block, plan.block]
        if scheme.input_activations is not None:
            scheme.input_activations.group_size = plan.block
    config = QuantizationConfig(
        config_groups={"group_0": scheme},
        format=CompressionFormat.float_quantized.value,
        quantization_status=QuantizationStatus.COMPRESSED,
        ignore=plan.ignore,
    )
    return config.model_dump(mode="json")
