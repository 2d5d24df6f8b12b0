"""FP8 checkpoints in the compressed-tensors format that vLLM and transformers load.

Every linear weight becomes float8_e4m3fn with a float32 scale, per output channel (the
FP8_DYNAMIC scheme: activations are quantized per token at run time, so no calibration data is
needed) or per 128x128 block (FP8_BLOCK, for kernels that want block scales). That includes
every expert in both on-disk layouts: per-expert 2D tensors and fused ``[n_experts, out, in]``
tensors, which get ``[n_experts, out, 1]`` scales. Routers, norms, embeddings and lm_head stay
in their original precision, and are listed in the config's ``ignore`` so loaders know.

The work is streamed: the output layout is planned from headers, then each tensor is read in
row chunks (experts, for fused tensors), quantized, and appended to the output file. Peak memory
is one chunk, whatever the model size.
"""

from __future__ import annotations

import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from harness.engine.checkpoint import (
    Checkpoint,
    PlannedTensor,
    TensorInfo,
    copy_side_files,
    predicted_file_bytes,
    write_config,
    write_streamed,
)
from harness.engine.moe import MoEModel, resolve_if_moe
from harness.pruning import PRUNING_FILE
from harness.errors import UserError

if TYPE_CHECKING:
    import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn value
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
    quant = checkpoint.config.get("quantization_config")
    if quant:
        raise UserError(
            f"{checkpoint.path} is already quantized ({quant.get('quant_method', quant.get('format', '?'))}); "
            "quantize the original bf16 checkpoint instead"
        )
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
    for info in checkpoint.in_file_order():
        reason = _keep_reason(info, experts, routers, shared_gates, family_keep, always, skip_experts)
        if reason is None and unfuse and info.name in fused_names:
            plans.extend(_unfused_plans(info, block, moe))
            continue
        if reason is None:
            weight = PlannedTensor(info.name, "F8_E4M3", info.shape)
            scale = PlannedTensor(_scale_name(info.name), "F32", scale_shape(info.shape, block))
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
    return QuantPlan(checkpoint, moe, block, skip_experts, unfuse, plans, ignore)


def _unfused_plans(info: TensorInfo, block: int | None, moe: MoEModel | None) -> list[TensorPlan]:
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
                PlannedTensor(_scale_name(name), "F32", scale_shape(shape, block)),
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
    """The ``quantization_config`` block, built by compressed-tensors from its own preset scheme."""
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


# --------------------------------------------------------------------------------------------
# Quantization arithmetic


def quantize_rows(weight: torch.Tensor, block: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """FP8 weight and float32 scale for a ``[..., out, in]`` chunk (per output channel or per block)."""
    import torch

    w = weight.to(torch.float32)
    if block is None:
        amax = w.abs().amax(dim=-1, keepdim=True)
        scale = (amax / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
        q = (w / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        return q, scale
    *lead, out_dim, in_dim = w.shape
    rows, cols = math.ceil(out_dim / block), math.ceil(in_dim / block)
    padded = torch.nn.functional.pad(w, (0, cols * block - in_dim, 0, rows * block - out_dim))
    tiles = padded.reshape(*lead, rows, block, cols, block)
    amax = tiles.abs().amax(dim=(-3, -1))
    scale = (amax / FP8_MAX).clamp_(min=torch.finfo(torch.float32).tiny)
    expanded = scale.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :out_dim, :in_dim]
    q = (w / expanded).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def dequantize_rows(q: torch.Tensor, scale: torch.Tensor, block: int | None) -> torch.Tensor:
    """Inverse of :func:`quantize_rows`, in float32."""
    if block is None:
        return fp8_to_float32(q).mul_(scale)
    out_dim, in_dim = q.shape[-2:]
    expanded = scale.repeat_interleave(block, dim=-2).repeat_interleave(block, dim=-1)[..., :out_dim, :in_dim]
    return fp8_to_float32(q).mul_(expanded)


def fp8_to_float32(q: torch.Tensor) -> torch.Tensor:
    """``q.to(torch.float32)`` for float8_e4m3fn, value for value, NaN included.

    torch's CPU cast converts one element at a time and dominated quantization; these in-place
    integer steps vectorize (about 4x faster). An e4m3 code's sign and magnitude bits moved into a
    float16 make the same number divided by 2**8, subnormals included (the exponent biases differ
    by 8); only the NaN magnitude (0x7f) needs a float16 NaN exponent of its own.
    """
    import torch

    if q.device.type != "cpu":
        return q.to(torch.float32)
    code = q.view(torch.int8).to(torch.int16)  # sign-extended
    nan_bits = (code & 0x7F).add_(1).bitwise_right_shift_(7).neg_().bitwise_and_(0x7E00)  # 0x7e00 where NaN
    half = code.bitwise_left_shift_(7).bitwise_and_(~0x4000).bitwise_or_(nan_bits)  # sign to bit 15
    return half.view(torch.float16).to(torch.float32).mul_(256.0)


# --------------------------------------------------------------------------------------------
# The conversion


@dataclass
class FP8Result:
    """What ``quantize_checkpoint`` did, for the CLI summary and for callers."""

    out_dir: Path
    before_bytes: int
    after_bytes: int
    predicted_bytes: int
    quantized: int
    kept: int
    worst_error: float
    worst_tensor: str
    errors: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    scheme: str = "FP8_DYNAMIC"


def quantize_checkpoint(
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    block: int | None = None,
    skip_experts: bool = False,
    unfuse: bool = True,
    max_shard_bytes: int = 4 << 30,
    chunk_bytes: int = 64 << 20,
    progress: Callable[[str], None] | None = None,
) -> FP8Result:
    """Write an FP8 (compressed-tensors) copy of ``model_dir`` to ``out_dir``, streamed tensor by tensor.

    Args:
        model_dir: a bf16/fp16/fp32 safetensors checkpoint.
        out_dir: where the FP8 checkpoint goes (created; config, tokenizer and template copied).
        block: ``None`` for per-channel scales (FP8_DYNAMIC), or a block edge (128) for block scales.
        skip_experts: keep routed experts in their original precision (FP8 attention and dense
            layers only): what vLLM's CPU backend can serve.
        unfuse: write fused 3D experts as per-expert FP8 tensors (see :func:`plan_quantization`).
        max_shard_bytes: output shard size limit.
        chunk_bytes: largest piece of one tensor held in memory at a time.
        progress: called with a short line per tensor group, for the CLI.
    """
    import torch

    started = time.perf_counter()
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise UserError("--out must differ from --model: quantization writes a new checkpoint")
    checkpoint = Checkpoint.open(model_dir)
    plan = plan_quantization(checkpoint, block=block, skip_experts=skip_experts, unfuse=unfuse)
    errors: dict[str, float] = {}
    reader = checkpoint.reader()

    def stream() -> Iterator[tuple[str, torch.Tensor]]:
        for item in plan.tensors:
            name = item.source.name
            if item.action == "keep":
                for chunk in reader.row_chunks(name, chunk_bytes):
                    yield name, chunk
                continue
            multiple = block if (block and len(item.source.shape) == 2) else 1
            scales: list[torch.Tensor] = []
            err_sq = ref_sq = 0.0
            if item.select is not None:
                expert, start, stop = item.select
                chunks: Iterator[torch.Tensor] = iter([reader.rows(name, expert, expert + 1)[0, start:stop]])
                name = item.outputs[0].name
            else:
                chunks = reader.row_chunks(name, chunk_bytes, multiple=multiple)
            for chunk in chunks:
                ref = chunk.to(torch.float32)
                q, scale = quantize_rows(ref, block)
                err_sq += float(torch.linalg.vector_norm(dequantize_rows(q, scale, block).sub_(ref))) ** 2
                ref_sq += float(torch.linalg.vector_norm(ref)) ** 2
                del ref
                scales.append(scale)
                yield name, q
            errors[name] = math.sqrt(err_sq / ref_sq) if ref_sq > 0 else 0.0
            yield item.outputs[1].name, torch.cat(scales, dim=0)
            if progress:
                progress(f"{name}: rel. error {errors[name]:.4f}")

    write_streamed(out_dir, plan.output, stream(), max_shard_bytes=max_shard_bytes)
    reader.close()
    config = dict(checkpoint.config)
    config["quantization_config"] = quantization_config(plan)
    write_config(out_dir, config)
    copy_side_files(model_dir, out_dir)
    if (model_dir / PRUNING_FILE).is_file():  # the quantized checkpoint keeps its pruning record
        shutil.copy2(model_dir / PRUNING_FILE, out_dir / PRUNING_FILE)
    after = Checkpoint.open(out_dir).file_bytes()
    worst_tensor = max(errors, key=lambda n: errors[n]) if errors else ""
    counts = plan.counts()
    return FP8Result(
        out_dir=out_dir,
        before_bytes=checkpoint.file_bytes(),
        after_bytes=after,
        predicted_bytes=plan.predicted_bytes(max_shard_bytes),
        quantized=counts["quantized"],
        kept=counts["kept"],
        worst_error=errors.get(worst_tensor, 0.0),
        worst_tensor=worst_tensor,
        errors=errors,
        seconds=time.perf_counter() - started,
        scheme="FP8_DYNAMIC" if block is None else f"FP8_BLOCK {block}x{block}",
    )
